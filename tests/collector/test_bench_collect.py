"""Smoke test of the collection benchmark's modes (tiny settings; no timing asserted)."""

from __future__ import annotations

import numpy as np
import pytest

from amago_fast.bench import collect as bench
from amago_fast.bench import policy_step

pytestmark = pytest.mark.filterwarnings("ignore:.*precision lowered.*")


def test_bench_modes_run_and_report_their_fields():
    rows = bench.run(envs=("tmaze-passive",), num_envs=(2,), modes=("sync",), seconds=0.001,
                     repeats=1, agents=False, context_check=False)["results"]
    assert rows[0]["nonfinite_steps"] == 0
    assert rows[0]["raw_steps_per_s"] > 0 and rows[0]["collector_random_ratio_vs_raw"] > 0
    over = bench.framework_overhead(envs=("CartPole-v1",), num_envs=(4,), modes=("async",),
                                    repeats=2, vec_steps=3)
    assert over[0]["batch"] == 2 and over[0]["collector_random_cpu_us_min"] > 0
    split = bench.overhead_breakdown(envs=("tmaze-passive",), num_envs=(2,), modes=("sync",),
                                     seconds=0.001, repeats=1)
    parts = ("env_us", "policy_us", "buffer_us", "bookkeeping_us", "collector_us")
    assert split[0]["total_us"] == pytest.approx(sum(split[0][k] for k in parts))


def test_replay_env_replays_the_recorded_steps():
    from amago_fast.envs import make_env

    real = make_env("envpool:CartPole-v1", 4, seed=1, batch_size=2)
    env = bench.ReplayEnv(real, steps=5)
    # The first async batch holds whichever 2 envs EnvPool finished first (not fixed), so the
    # replayed reset is checked per env id against a sync twin (EnvPool seeds env i with
    # seed + i in either mode).
    twin = make_env("envpool:CartPole-v1", 4, seed=1)
    obs0 = twin.reset()["observation"]
    first = env.reset()["observation"]
    np.testing.assert_array_equal(first, obs0[np.asarray(env.last_env_ids)])
    for t in range(7):  # wraps around after 5
        got = env.step_trusted(np.zeros(2, np.int32), env.last_env_ids)
        want = env._record[t % 5]
        np.testing.assert_array_equal(got[0]["observation"], want[0]["observation"])
        np.testing.assert_array_equal(got[4]["env_id"], env.last_env_ids)
    with pytest.raises(ValueError, match="out of range"):
        env.step(np.array([0, 9], np.int32), env.last_env_ids)


def test_policy_context_cost_reports_its_fields():
    """The context check on a short run: both rollouts reach their times, the bytes attention
    reads follow the cache dtype and the filled length (tiny model: 2 layers, d_model 64)."""
    out = policy_step.policy_context_cost(steps_lo=4, steps_hi=16, measure=3, sizes=("tiny",))
    hi = out["tiny_capacity_hi"]
    assert hi["context_len"] == 16
    native = hi.get("native", hi["torch"])
    per_key = 2 * 2 * 64 * (2 if native["kv_cache_dtype"] == "float16" else 4)
    assert native["kv_mb_read_at_t16"] == pytest.approx(8 * 16 * per_key / 1e6)
    assert native["ratio"] > 0 and native["ms_per_step_at_t4"] > 0
    f32 = out["tiny_capacity_hi_kv_float32"]
    assert all(f32[p]["kv_cache_dtype"] == "float32" for p in ("native", "torch") if p in f32)
    own = out["tiny_default_context"]  # the model's own context 64 > 16 steps: not yet full
    assert own["context_len"] == 64


def test_policy_context_cost_keeps_other_rows_when_one_fails(monkeypatch):
    """A path or cache dtype that raises (say, a kernel that does not compile on some GPU) is
    reported in its own row; the other rows are still measured."""
    real = policy_step._context_row

    def int8_breaks(size, ctx, kv, *args, **kwargs):
        if kv == "int8":
            raise RuntimeError("int8 decode failed to compile")
        return real(size, ctx, kv, *args, **kwargs)

    monkeypatch.setattr(policy_step, "_context_row", int8_breaks)
    out = policy_step.policy_context_cost(steps_lo=2, steps_hi=6, measure=2, sizes=("tiny",))
    bad = out["tiny_capacity_hi_kv_int8"]
    assert bad and all(v == {"error": "RuntimeError: int8 decode failed to compile"}
                       for v in bad.values())
    good = out["tiny_capacity_hi_kv_float32"]
    assert all(good[p]["ratio"] > 0 for p in ("native", "torch") if p in good)
