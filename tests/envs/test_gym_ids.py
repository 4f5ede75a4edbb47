"""Gymnasium ids whose package registers them on import work with only the env name given."""

from __future__ import annotations

import subprocess
import sys

import pytest

from amago_fast.envs import make_env
from amago_fast.envs.gym_adapter import resolve_gym_id


def _fresh(code: str) -> subprocess.CompletedProcess:
    """`code` in a new interpreter, where no plugin package has been imported yet."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("env_id,package", [("popgym-RepeatFirstEasy-v0", "popgym"),
                                            ("MiniGrid-MemoryS7-v0", "minigrid")])
def test_known_prefix_imports_the_registering_package(env_id, package):
    pytest.importorskip(package)
    out = _fresh(
        "import sys, gymnasium as gym\n"
        f"assert {package!r} not in sys.modules and {env_id!r} not in gym.registry\n"
        "from amago_fast.envs import make_env\n"
        f"env = make_env('gym:{env_id}', 2, seed=0)\n"
        "obs = env.reset()\n"
        "print(env.num_envs, sorted(obs)[0])\n"
        "env.close()\n")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[0] == "2"


def test_module_colon_id_form():
    pytest.importorskip("popgym")
    assert resolve_gym_id("popgym:popgym-CountRecallEasy-v0") == "popgym-CountRecallEasy-v0"
    env = make_env("gym:popgym:popgym-CountRecallEasy-v0", 1, seed=0)
    try:
        assert env.num_envs == 1 and env.reset()
    finally:
        env.close()


@pytest.mark.parametrize("env_id,match", [
    ("no_such_pkg_xyz:Foo-v0", "needs the package 'no_such_pkg_xyz'"),
    ("json:Foo-v0", "importing 'json' did not register it"),
    (":Foo-v0", "expected 'module:EnvId'"),
    ("NoSuchEnv-v9", "unknown gymnasium id 'NoSuchEnv-v9'$"),
])
def test_unresolvable_ids_are_one_line_errors(env_id, match):
    with pytest.raises(ValueError, match=match) as info:
        resolve_gym_id(env_id)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("env_id,package,limit", [
    ("popgym-RepeatFirstEasy-v0", "popgym", 51),  # POPGym's max_episode_length
    ("MiniGrid-MemoryS7-v0", "minigrid", 245),  # MiniGrid's max_steps (5 * 7 ** 2)
])
def test_suite_declared_episode_limits_reach_the_spec(env_id, package, limit, mode):
    """Neither registration has a TimeLimit; the suites' own attributes give the limit the
    profiles size context, window and exploration from. Random play never runs past it, and
    async workers survive the lookup (asking them for an attribute they lack kills them)."""
    pytest.importorskip(package)
    import numpy as np

    env = make_env(f"gym:{env_id}", 2, seed=0, vectorization=mode,
                   **({"flatten_keys": ["image"]} if package == "minigrid" else {}))
    try:
        assert env.spec.max_episode_steps == limit
        env.reset()
        rng = np.random.default_rng(0)
        n = env.spec.action.n
        t = np.zeros(2, int)
        lengths = []
        for _ in range(limit + 2):
            _, _, te, tr, _ = env.step(rng.integers(0, n, 2).astype(np.int32))
            t += 1
            done = te | tr
            lengths += t[done].tolist()
            t[done] = -1  # EnvPool-style: the step after done is the reset step
        assert lengths and max(lengths) <= limit
    finally:
        env.close()
