"""The native core's per-piece relabeling tables (csrc/buffer/goals.h GoalIndex) against the
NumPy oracle: exact-match value classes (signed zeros, NaN, every goal dtype), tables of evicted
pieces, max-length cut pieces, the tolerance scan, the Python match_fn slow path, save/load, and
relabeled sampling while the collector commits and evicts."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from amago_fast.buffer import NATIVE_AVAILABLE, RelabelConfig, TrajectoryBuffer
from amago_fast.buffer.synthetic import GoalRollouts, drive, goal_env_spec
from tests._buffers import assert_same_samples, engine_pair, race

pytestmark = pytest.mark.skipif(not NATIVE_AVAILABLE, reason="amago_fast._core not built")

STRATEGIES = ["none", "all", "some", "final", "future"]


def _assert_all_strategies(native, ref, lengths=(1, 7, 40), what="", p=0.8):
    for strategy in STRATEGIES:
        for L in lengths:
            for mode in ("timesteps", "trajectories"):
                assert_same_samples(native, ref, 13, L, RelabelConfig(strategy, p), mode,
                             f"{what} {strategy} L={L} {mode}")


def _trajectory(spec, T, rng, values, active0=0):
    """T+1 rows whose achieved vectors (and instruction goals) are drawn from `values`; the goal
    fields of row 0 carry an arbitrary state (as a continuation piece would)."""
    g = spec.goals
    vals = np.asarray(values, g.goal_dtype)

    def pick(shape):
        return vals[rng.integers(0, len(vals), shape)]

    rows = {
        "obs": rng.standard_normal((T + 1, spec.observation[0].shape[0])).astype(np.float32),
        "action": rng.integers(0, 4, T + 1).astype(np.int32),
        "reward": rng.standard_normal(T + 1).astype(np.float32),
        "terminated": np.zeros(T + 1, bool),
        "truncated": np.zeros(T + 1, bool),
        g.goal_field: np.broadcast_to(pick((1, g.k, g.goal_dim)), (T + 1, g.k, g.goal_dim)).copy(),
        g.achieved_field: pick((T + 1, g.goal_dim)),
        g.active_field: np.full(T + 1, active0, np.int32),
        g.completed_field: np.zeros((T + 1, g.k), bool),
    }
    rows[g.completed_field][:, :active0] = True
    rows["truncated"][-1] = True
    return rows


FLOAT_VALUES = [0.0, -0.0, np.nan, 1.0, -1.0, np.inf]


@pytest.mark.parametrize("dtype,values", [
    (np.float32, FLOAT_VALUES), (np.float16, FLOAT_VALUES), (np.uint8, [0, 1, 255]),
    (np.bool_, [False, True]), (np.int32, [-1, 0, 2**31 - 1]), (np.int64, [-(2**62), 0, 7]),
])
def test_exact_value_classes_match_numpy_equality(dtype, values):
    """-0 == 0, NaN equals nothing (not even itself): the hashed classes must follow `==`."""
    spec = goal_env_spec(k=3, goal_dim=2, goal_dtype=dtype)
    native, ref = engine_pair(spec, capacity_steps=400, num_envs=1, max_trajectory_len=60, seed=5)
    rng = np.random.default_rng(1)
    for i in range(9):
        rows = _trajectory(spec, int(rng.integers(3, 90)), rng, values, active0=i % 4)
        native.add_trajectory(rows, time_offset=i)
        ref.add_trajectory(rows, time_offset=i)
    x = assert_same_samples(native, ref, 64, 30, RelabelConfig("all", 1.0))
    assert x["reward"].sum() > 0
    _assert_all_strategies(native, ref, what=str(np.dtype(dtype)))


def test_signed_zero_instruction_is_reached_and_nan_goal_never():
    """Hand-built piece: goal 0 = -0.0 is reached by an achieved +0.0; goal 1 = NaN never."""
    spec = goal_env_spec(k=2, goal_dim=1)
    native, ref = engine_pair(spec, capacity_steps=50, num_envs=1, seed=0)
    rng = np.random.default_rng(0)
    rows = _trajectory(spec, 6, rng, [5.0])
    rows["goal"][:] = np.array([[-0.0], [np.nan]], np.float32)
    rows["achieved"][:, 0] = [0.0, 3.0, 0.0, np.nan, 2.0, np.nan, 4.0]
    for b in (native, ref):
        b.add_trajectory(rows)
    out = assert_same_samples(native, ref, 4, 6, RelabelConfig("none"))
    np.testing.assert_array_equal(out["reward"][0, 1:], [0, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(out["goal_active"][0], [0, 0, 1, 1, 1, 1, 1])
    # relabeled goal 1 = an achieved value after row 2 (rows 3..6): 2.0 or 4.0 complete it on
    # their row; NaN rows never do
    out = assert_same_samples(native, ref, 16, 6, RelabelConfig("future", 1.0))
    for b in range(16):
        g1 = out["goal"][b, 0, 1, 0]
        if np.isnan(g1):
            assert out["goal_active"][b].max() == 1
        else:
            row = int(np.nonzero(rows["achieved"][:, 0] == g1)[0][0])
            assert out["terminated"][b, row] and out["mask"][b].sum() == row + 1


def test_tables_of_evicted_pieces_are_not_reused():
    """Every piece draws its achieved values from its own alphabet: a table that outlived its
    piece (or one of a piece now overwritten at the same ring position) would change the
    successes. Checked after every commit, as the ring wraps and evicts."""
    spec = goal_env_spec(k=3, goal_dim=2)
    native, ref = engine_pair(spec, capacity_steps=70, num_envs=1, max_trajectory_len=40, seed=11)
    rng = np.random.default_rng(2)
    for i in range(30):
        values = [float(10 * i + v) for v in range(3)]
        rows = _trajectory(spec, int(rng.integers(5, 55)), rng, values)
        native.add_trajectory(rows, time_offset=i)
        ref.add_trajectory(rows, time_offset=i)
        assert native.num_trajectories == ref.num_trajectories
        for strategy in ("none", "all", "future"):
            assert_same_samples(native, ref, 9, 12, RelabelConfig(strategy, 1.0),
                                what=f"{i} {strategy}")
    np.testing.assert_array_equal(native.storage.pieces(), ref.storage.pieces())


@pytest.mark.parametrize("match,eps,dtype", [("exact", 0.0, np.float32),
                                             ("tolerance", 0.2, np.float32),
                                             ("tolerance", 0.2, np.float16)])
def test_max_length_cut_pieces_carry_goal_state(match, eps, dtype):
    """Streamed rollouts cut every 23 transitions: continuation pieces start with goals already
    completed (row 0's goal_active > 0), and windows longer than a piece see all of it."""
    spec = goal_env_spec(k=4, goal_dim=1, match=match, eps=eps, goal_dtype=dtype)
    native, ref = engine_pair(spec, capacity_steps=500, num_envs=3, max_trajectory_len=23, seed=3)
    roll = GoalRollouts(spec, 3, seed=4, p_truncate=0.005, values=8)
    drive([native, ref], roll, 150)
    pieces = native.storage.pieces()  # (id, pos, rows, offset)
    active0 = native.storage.ring["goal_active"][pieces[:, 1]]
    assert (active0 > 0).any() and (pieces[:, 2] == 24).any() and (pieces[:, 3] > 0).any()
    _assert_all_strategies(native, ref, lengths=(1, 5, 22, 60), what=match)


def test_tolerance_scan_past_the_window_start():
    """Long pieces, short windows late in them: the tolerance path scans from the last original
    success (before the window) through the window."""
    spec = goal_env_spec(k=3, goal_dim=2, match="tolerance", eps=0.3)
    native, ref = engine_pair(spec, capacity_steps=2000, num_envs=1, seed=8)
    rng = np.random.default_rng(3)
    for i in range(5):
        rows = _trajectory(spec, 300, rng, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
        rows["achieved"] += rng.uniform(-0.25, 0.25, rows["achieved"].shape).astype(np.float32)
        native.add_trajectory(rows, time_offset=i)
        ref.add_trajectory(rows, time_offset=i)
    _assert_all_strategies(native, ref, lengths=(3, 17), what="tolerance")


def test_match_fn_slow_path_agrees_with_tables_and_reference():
    """A Python predicate equal to the built-in exact match gives the tables' windows."""
    spec = goal_env_spec(k=3, goal_dim=2)
    native, ref = engine_pair(spec, capacity_steps=300, num_envs=2, max_trajectory_len=31, seed=6)
    drive([native, ref], GoalRollouts(spec, 2, seed=9, p_truncate=0.01, values=3), 140)

    def exact(achieved, goals):
        return np.all(achieved == goals, axis=-1)

    for strategy in STRATEGIES:
        slow = RelabelConfig(strategy, 0.9, match_fn=exact)
        x = assert_same_samples(native, ref, 11, 25, slow, what=strategy)
        native._sample_counter -= 1
        fast = native.sample_windows(11, 25, relabel=RelabelConfig(strategy, 0.9))
        for k in x:
            np.testing.assert_array_equal(x[k], fast[k], err_msg=f"{strategy} {k}")


@pytest.mark.parametrize("mmap", [False, True])
def test_save_load_rebuilds_the_tables(tmp_path, mmap):
    spec = goal_env_spec(k=3, goal_dim=2)
    native, ref = engine_pair(spec, capacity_steps=250, num_envs=3, max_trajectory_len=29, seed=12)
    roll = GoalRollouts(spec, 3, seed=13, p_truncate=0.01, values=3)
    drive([native, ref], roll, 130)  # wrapped and evicted, envs mid-trajectory
    native.save(tmp_path / "snap")
    loaded = TrajectoryBuffer.load(tmp_path / "snap", mmap=mmap)
    _assert_all_strategies(loaded, ref, lengths=(4, 30), what="loaded")
    drive([loaded, ref], roll, 60, started=True)  # commits and evictions after the load
    _assert_all_strategies(loaded, ref, lengths=(4, 30), what="resumed")


def _check_rule(out, b, k):
    """Every valid row after the window's first follows the goal rule for the window's
    instruction in both directions (a success exactly where achieved == goal[active])."""
    v = int(out["mask"][b].sum())
    instr = out["goal"][b, 0]
    for t in range(1, v):
        prev = int(out["goal_active"][b, t - 1])
        hit = prev < k and bool(np.all(out["achieved"][b, t] == instr[prev]))
        assert int(out["goal_active"][b, t]) == prev + hit
        assert out["reward"][b, t] == (1.0 if hit else 0.0)
        assert out["terminated"][b, t] == (prev + hit == k)
        assert out["goal_completed"][b, t].sum() == prev + hit


def test_relabeled_sampling_while_committing_and_evicting():
    """The tables are built outside the ring lock and swapped in with their piece: samplers
    racing the collector (small ring, constant evictions) only ever see consistent windows."""
    spec = goal_env_spec(k=3, goal_dim=1)
    buf = TrajectoryBuffer.from_env_spec(spec, capacity_steps=200, num_envs=4,
                                         max_trajectory_len=40, seed=0, num_threads=2)
    roll = GoalRollouts(spec, 4, seed=1, p_truncate=0.02, values=3)
    drive([buf], roll, 60)
    stop = threading.Event()
    errors: list[str] = []
    checked = [0]
    deadline = time.monotonic() + 30.0

    def collector():
        try:
            steps = 0
            while not stop.is_set() and (steps < 1500 or checked[0] < 300):
                if time.monotonic() > deadline:
                    break
                drive([buf], roll, 10, started=True)
                steps += 10
        except Exception as e:  # pragma: no cover - reported below
            errors.append(f"collector: {e!r}")
        finally:
            stop.set()

    def sampler(i):
        out = buf.allocate_batch(8, 30)
        rel = RelabelConfig(["all", "future"][i], 1.0)
        try:
            while not stop.is_set():
                buf.sample_windows(8, 30, out=out, relabel=rel)
                for b in range(8):
                    _check_rule(out, b, 3)
                checked[0] += 8
        except Exception as e:
            errors.append(f"sampler {i}: {e!r}")
            stop.set()

    race(collector, sampler, timeout=60)
    assert not errors, errors[:2]
    assert checked[0] >= 100


def test_many_goals_use_the_heap_scratch():
    """k = 40 goals of 3 float32s: the per-window scratch (16k + goal bytes + k = 1160 bytes)
    no longer fits the 512-byte stack buffer."""
    spec = goal_env_spec(k=40, goal_dim=3)
    native, ref = engine_pair(spec, capacity_steps=600, num_envs=1, max_trajectory_len=150, seed=21)
    rng = np.random.default_rng(4)
    for i in range(6):
        rows = _trajectory(spec, int(rng.integers(20, 200)), rng, [0.0, 1.0], active0=3 * i)
        native.add_trajectory(rows, time_offset=i)
        ref.add_trajectory(rows, time_offset=i)
    x = assert_same_samples(native, ref, 16, 50, RelabelConfig("all", 1.0))
    assert x["reward"].sum() > 0
    _assert_all_strategies(native, ref, lengths=(9, 120), what="k=40")
