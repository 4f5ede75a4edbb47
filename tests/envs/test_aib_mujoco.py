"""The eight MuJoCo AIB tasks: build and step, the morphs reach the compiled models, default
contexts reproduce the stock dm_control / gymnasium tasks, the sign flip, worker processes equal
in-process stepping, crashes name the slot, exact resume, and one-line errors."""

from __future__ import annotations

import gc
import os
import signal
import time

import numpy as np
import pytest

from amago_fast.envs import make_env
from amago_fast.envs.aib_mujoco import MUJOCO_TASKS, AIBMujocoEnv, morph_xml, mujoco_available

_MISSING = mujoco_available()
pytestmark = pytest.mark.skipif(
    _MISSING is not None,
    reason=f"dm_control / mujoco not importable ({_MISSING}); scripts/setup.sh installs them")

SEED = 3


def _actions(env, steps: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, (steps, env.num_envs, env.task.action_dim)).astype(np.float32)


def _rollout(env, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    obs = [env.reset()["observation"]]
    rewards = []
    for a in actions:
        o, r, _, _, _ = env.step(a)
        obs.append(o["observation"])
        rewards.append(r)
    return np.stack(obs), np.stack(rewards)


def _stock_model(domain: str):
    import mujoco
    from dm_control.suite import common
    return common.read_model(f"{domain}.xml"), common.ASSETS, mujoco


def _compile(name: str, context: dict[str, float]):
    xml, assets, mujoco = _stock_model(MUJOCO_TASKS[name].domain)
    return mujoco.MjModel.from_xml_string(morph_xml(name, xml, context).decode(), assets)


# ------------------------------------------------------------------ (a) build and step
@pytest.mark.parametrize("name", list(MUJOCO_TASKS))
def test_each_task_builds_and_steps(name):
    env = make_env(name, 2, seed=SEED, num_workers=0, warmup_steps=5)
    assert env.spec.observation[0].shape == (MUJOCO_TASKS[name].obs_dim,)
    obs, rewards = _rollout(env, _actions(env, 30))
    assert obs.dtype == np.float32 and obs.shape == (31, 2, MUJOCO_TASKS[name].obs_dim)
    assert np.isfinite(obs).all() and np.isfinite(rewards).all()
    assert (rewards[:5] == 0).all()  # the warm-up is unscored
    assert not np.array_equal(obs[1], obs[20])  # the physics moves
    env.close()


# ------------------------------------------------------------------ default = stock task
_STOCK = {
    "aib-walker": ("walker", "walk", [9.81, 1.0]),
    "aib-ballincup": ("ball_in_cup", "catch", [9.81, 0.3]),
    "aib-cheetah": ("cheetah", "run", [1.0, 1.0]),
    "aib-reacher-easy": ("reacher", "easy", [1.0, 1.0]),
    "aib-reacher-hard": ("reacher", "hard", [1.0, 1.0]),
    "aib-cartpole": ("cartpole", "balance", [0.5, 1.0]),
}


@pytest.mark.parametrize("name", list(_STOCK))
def test_default_context_is_the_stock_dm_control_task(name):
    """At the default context the morphed model, the seeding and the flattening reproduce
    dm_control's own suite task step for step (the authors' gymnasium wrapper flattens the
    observation dict in sorted key order: gymnasium's Dict sorts its keys)."""
    from dm_control import suite
    from gymnasium import spaces

    domain, task, context = _STOCK[name]
    env = AIBMujocoEnv(name, 1, seed=SEED, instances=[context], warmup_steps=0, num_workers=0)
    actions = _actions(env, 60)
    obs, rewards = _rollout(env, actions)
    start_seed = int(np.random.default_rng(SEED).integers(0, 2**31 - 1))
    stock = suite.load(domain, task, task_kwargs={"random": start_seed})
    space = spaces.Dict({k: spaces.Box(-np.inf, np.inf, v.shape) for k, v in
                         stock.observation_spec().items()})
    ts = stock.reset()
    flat = [spaces.flatten(space, dict(ts.observation)).astype(np.float32)]
    stock_rewards = []
    for a in actions[:, 0]:
        ts = stock.step(a)
        flat.append(spaces.flatten(space, dict(ts.observation)).astype(np.float32))
        stock_rewards.append(ts.reward)
    np.testing.assert_array_equal(obs[:, 0], np.stack(flat))
    np.testing.assert_array_equal(rewards[:, 0], np.float32(stock_rewards))


@pytest.mark.parametrize("name,gym_id", [("aib-walkergym", "Walker2d-v5"),
                                         ("aib-hoppergym", "Hopper-v5")])
def test_default_context_is_the_stock_gymnasium_env(name, gym_id):
    import gymnasium as gym

    env = AIBMujocoEnv(name, 1, seed=SEED, instances=[[9.81, 1.0]], warmup_steps=0,
                       num_workers=0)
    actions = _actions(env, 60)
    obs, rewards = _rollout(env, actions)
    stock = gym.make(gym_id, terminate_when_unhealthy=False)
    o, _ = stock.reset(seed=int(np.random.default_rng(SEED).integers(0, 2**31 - 1)))
    flat, stock_rewards = [o], []
    for a in actions[:, 0]:
        o, r, term, _, _ = stock.step(a)
        assert not term
        flat.append(o)
        stock_rewards.append(r)
    np.testing.assert_array_equal(obs[:, 0], np.float32(flat))
    np.testing.assert_array_equal(rewards[:, 0], np.float32(stock_rewards))


# ------------------------------------------------------------------ (b) morphs reach the model
def test_cartpole_length_sets_the_pole_geometry():
    stock = _compile("aib-cartpole", {"length": 0.5})
    long = _compile("aib-cartpole", {"length": 1.2})
    g = long.geom("pole_1").id
    assert long.geom_size[g][1] == pytest.approx(1.2)  # capsule half-length = pole half-length
    assert stock.geom_size[g][1] == pytest.approx(0.5)
    b = long.body("pole_1").id
    assert long.body_mass[b] == pytest.approx(0.1) == stock.body_mass[b]  # mass kept
    assert long.body_ipos[b][2] == pytest.approx(1.2)  # centre of mass at the half-length
    assert long.body_inertia[b][0] > 4 * stock.body_inertia[b][0]


def test_gravity_and_actuator_strength_set_the_model():
    stock = _compile("aib-walker", {"gravity": 9.81, "actuator_strength": 1.0})
    morphed = _compile("aib-walker", {"gravity": 4.91, "actuator_strength": 1.5})
    np.testing.assert_allclose(morphed.opt.gravity, [0, 0, -4.91])
    np.testing.assert_allclose(stock.actuator_gear[:, 0], [100, 50, 20, 100, 50, 20])
    np.testing.assert_allclose(morphed.actuator_gear[:, 0], 1.5 * stock.actuator_gear[:, 0])
    cup = _compile("aib-ballincup", {"gravity": 12.0, "distance": 0.4})
    np.testing.assert_allclose(cup.opt.gravity, [0, 0, -12.0])
    np.testing.assert_allclose(cup.tendon_range[0], [0, 0.4])
    assert cup.body_pos[cup.body("ball").id][2] == pytest.approx(0.2 - 0.1)


def test_segment_lengths_scale():
    base = _compile("aib-cheetah", {"length": 1.0})
    big = _compile("aib-cheetah", {"length": 1.4})
    for part in ("bthigh", "bshin", "bfoot", "fthigh", "fshin", "ffoot"):
        g = big.geom(part).id
        assert big.geom_size[g][1] == pytest.approx(1.4 * base.geom_size[g][1])
    for part in ("bshin", "bfoot", "fshin", "ffoot"):
        b = big.body(part).id
        np.testing.assert_allclose(big.body_pos[b][[0, 2]], 1.4 * base.body_pos[b][[0, 2]])
    assert big.body_subtreemass[1] == pytest.approx(14.0)  # settotalmass keeps the total
    arm = _compile("aib-reacher-easy", {"length": 0.6})
    for part in ("hand", "finger"):
        assert arm.body_pos[arm.body(part).id][0] == pytest.approx(0.6 * 0.12)
    assert arm.geom_size[arm.geom("arm").id][1] == pytest.approx(0.6 * 0.12 / 2)


@pytest.mark.parametrize("name,a,b", [
    ("aib-cartpole", [0.3, 1.0], [1.5, 1.0]),
    ("aib-walkergym", [9.81, 1.0], [4.91, 1.0]),
    ("aib-hoppergym", [9.81, 1.0], [9.81, 1.8]),
])
def test_context_changes_the_dynamics(name, a, b):
    """Same seed and actions, different context: same start, different trajectory."""
    envs = [AIBMujocoEnv(name, 1, seed=SEED, instances=[c], warmup_steps=0, num_workers=0)
            for c in (a, b)]
    actions = _actions(envs[0], 20)
    (oa, _), (ob, _) = (_rollout(e, actions) for e in envs)
    if name != "aib-cartpole":  # a cartpole observation holds the pole tip height: differs
        np.testing.assert_array_equal(oa[0], ob[0])
    assert np.abs(oa[-1] - ob[-1]).max() > 1e-3


# ------------------------------------------------------------------ (c) the sign flip
@pytest.mark.parametrize("name", ["aib-cheetah", "aib-reacher-hard", "aib-cartpole"])
def test_sign_flip_equals_negated_actions(name):
    length = {"aib-cartpole": 0.7}.get(name, 1.1)
    flipped = AIBMujocoEnv(name, 1, seed=SEED, instances=[[length, -1.0]], warmup_steps=0,
                           num_workers=0)
    plain = AIBMujocoEnv(name, 1, seed=SEED, instances=[[length, 1.0]], warmup_steps=0,
                         num_workers=0)
    actions = _actions(flipped, 50)
    of, rf = _rollout(flipped, actions)
    op, rp = _rollout(plain, -actions)
    np.testing.assert_array_equal(of, op)
    np.testing.assert_array_equal(rf, rp)
    o2, _ = _rollout(plain, actions)  # and the flip is not a no-op
    assert not np.array_equal(o2, op)


# ------------------------------------------------------------------ (d) worker processes
def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped) counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _wait_gone(pids: list[int], timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not any(_alive(p) for p in pids):
            return True
        time.sleep(0.05)
    return False


def _workers_match(steps: int) -> None:
    kw = dict(seed=SEED, warmup_steps=30)
    local = make_env("aib-cartpole", 3, num_workers=0, **kw)
    pool = make_env("aib-cartpole", 3, num_workers=2, **kw)
    assert len(pool.worker_pids) == 2
    actions = _actions(local, steps)
    ol, rl = _rollout(local, actions)
    op, rp = _rollout(pool, actions)
    np.testing.assert_array_equal(ol, op)
    np.testing.assert_array_equal(rl, rp)
    # Resume through the pipes: the workers' state equals the in-process one, and a pool
    # restored to it replays the in-process continuation.
    state = pool.state_dict()
    for k, v in local.state_dict()["arrays"].items():
        np.testing.assert_array_equal(state["arrays"][k], v, err_msg=k)
    tail = [local.step(x)[0]["observation"] for x in actions[:40]]
    pool.step(actions[0])
    pool.load_state_dict(state)
    np.testing.assert_array_equal([pool.step(x)[0]["observation"] for x in actions[:40]], tail)
    pids = pool.worker_pids
    pool.close()
    pool.close()  # idempotent
    assert _wait_gone(pids)
    with pytest.raises(RuntimeError, match="closed"):
        pool.step(actions[0])


def test_workers_match_in_process_and_close():
    """3 slots over 2 workers for 120 steps (the warm-up ends at 30: every slot resets):
    bit-identical to in-process stepping, state_dict / load_state_dict through the workers;
    workers end on close()."""
    _workers_match(120)


@pytest.mark.slow
def test_workers_match_in_process_over_a_rollout_end():
    """As above for 1150 steps: the rollout ends at 1030 and new ones start."""
    _workers_match(1150)


@pytest.mark.slow  # two more worker spawns: ~3 s quiet, ~50 s on the loaded 2-core VM
def test_workers_end_on_garbage_collection():
    env = make_env("aib-reacher-easy", 2, num_workers=2)
    env.reset()
    pids = env.worker_pids
    del env
    gc.collect()
    assert _wait_gone(pids)


def test_dead_worker_is_a_clear_error():
    env = make_env("aib-cartpole", 4, num_workers=2, warmup_steps=0)
    env.reset()
    os.kill(env.worker_pids[1], signal.SIGKILL)
    with pytest.raises(RuntimeError, match=r"worker process 1 \(env slots 2\.\.3\) died"):
        env.step(np.zeros((4, 1), np.float32))
    with pytest.raises(RuntimeError, match="unusable"):
        env.step(np.zeros((4, 1), np.float32))
    env.close()


@pytest.mark.parametrize("workers,where", [
    (0, "env slot 1 failed: .*PhysicsError"),
    pytest.param(2, "env slot 1 failed in worker process 1: .*PhysicsError",
                 marks=pytest.mark.slow),  # two more worker spawns: ~3 s quiet, ~40 s loaded
])
def test_slot_failure_names_the_slot(workers, where):
    """A simulation error (NaN controls: MuJoCo's bad-acceleration warning) names its slot."""
    env = make_env("aib-walker", 2, num_workers=workers, warmup_steps=0)
    env.reset()
    actions = np.zeros((2, 6), np.float32)
    actions[1] = np.nan
    with pytest.raises(RuntimeError, match=where):
        env.step_trusted(actions)
    env.close()


# ------------------------------------------------------------------ resume
@pytest.mark.parametrize("name,workers", [("aib-reacher-easy", 0), ("aib-walker", 0),
                                          ("aib-hoppergym", 0)])
def test_state_dict_resumes_exactly(name, workers, tmp_path):
    """Reacher keeps its target in the model, the walker steps with a legacy mj_step2 /
    mj_step1 split, the hopper is a gymnasium env: all continue bit-exactly, through the
    checkpoint file format (torch.load with weights_only=True)."""
    from amago_fast.checkpoint import load_object, save_object

    kw = dict(seed=SEED, warmup_steps=50, num_workers=workers)  # a reset after the snapshot
    a = make_env(name, 2, **kw)
    actions = _actions(a, 90)
    a.reset()
    for x in actions[:40]:
        a.step(x)
    save_object(a.state_dict(), tmp_path / "env.pt")
    state = load_object(tmp_path / "env.pt")
    tail_a = [a.step(x) for x in actions[40:]]
    b = make_env(name, 2, **kw)
    b.load_state_dict(state)
    tail_b = [b.step(x) for x in actions[40:]]
    for (oa, ra, *_), (ob, rb, *_) in zip(tail_a, tail_b):
        np.testing.assert_array_equal(oa["observation"], ob["observation"])
        np.testing.assert_array_equal(ra, rb)
    other = make_env("aib-reacher-hard" if name != "aib-reacher-hard" else "aib-cartpole", 2,
                     num_workers=0)
    with pytest.raises(ValueError, match="state is for"):
        other.load_state_dict(state)
    for e in (a, b, other):
        e.close()


# ------------------------------------------------------------------ (e) errors
def test_bad_arguments_are_one_clear_error():
    with pytest.raises(ValueError, match="unknown AIB MuJoCo env 'aib-nope'"):
        AIBMujocoEnv("aib-nope", 2)
    with pytest.raises(ValueError, match="unknown env"):
        make_env("aib-nope", 2)
    with pytest.raises(TypeError, match=r"unknown keyword arguments \['workers'\]"):
        make_env("aib-walker", 2, workers=2)
    with pytest.raises(ValueError, match="num_workers must be an integer >= 0"):
        make_env("aib-walker", 2, num_workers=-1)
    with pytest.raises(ValueError, match="num_workers must be an integer >= 0"):
        make_env("aib-walker", 2, num_workers=1.5)
    with pytest.raises(ValueError, match="unknown AIB split"):
        make_env("aib-cheetah", 2, split="test")
    with pytest.raises(ValueError, match=r"must be > 0"):
        make_env("aib-cartpole", 2, instances=[[0.0, 1.0]], num_workers=0)
    with pytest.raises(ValueError, match="action_factor must be -1 or"):
        make_env("aib-cartpole", 2, instances=[[0.5, 0.5]], num_workers=0)
    with pytest.raises(ValueError, match=r"instances must be a finite \(k, 2\) array"):
        make_env("aib-walker", 2, instances=[[9.81]], num_workers=0)
