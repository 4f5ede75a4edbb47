"""The native core against the NumPy oracle (exact), thread-count independence, concurrency."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from amago_fast.buffer import NATIVE_AVAILABLE, RelabelConfig, TrajectoryBuffer
from amago_fast.buffer.synthetic import GoalRollouts, drive, goal_env_spec, plain_env_spec
from amago_fast.spaces import ActionSpec, EnvSpec, FieldSpec
from tests._buffers import NUMPY, assert_same_batches, engine_pair, race

pytestmark = pytest.mark.skipif(not NATIVE_AVAILABLE, reason="amago_fast._core not built")

STRATEGIES = [None, "none", "all", "some", "final", "future"]


@pytest.mark.parametrize(
    "goal_dtype,match,eps",
    [(np.float32, "exact", 0.0), (np.float32, "tolerance", 0.2), (np.float16, "tolerance", 0.2),
     (np.uint8, "exact", 0.0), (np.int32, "tolerance", 1.0), (np.int64, "exact", 0.0)],
)
def test_native_equals_reference_exactly(goal_dtype, match, eps):
    spec = goal_env_spec(k=3, goal_dim=2, match=match, eps=eps, goal_dtype=goal_dtype)
    # small capacity: wrap-around, evictions and max-length cuts all happen
    native, ref = engine_pair(spec, capacity_steps=97, num_envs=3, max_trajectory_len=17, seed=123)
    roll = GoalRollouts(spec, 3, seed=7, p_truncate=0.04, values=2)
    drive([native, ref], roll, 120)
    for _ in range(2):
        drive([native, ref], roll, 37, started=True)
        assert len(native) == len(ref) and native.num_trajectories == ref.num_trajectories
        np.testing.assert_array_equal(native.storage.pieces(), ref.storage.pieces())
        np.testing.assert_array_equal(native.storage.open_lengths(), ref.storage.open_lengths())
        for strategy in STRATEGIES:
            rel = None if strategy is None else RelabelConfig(strategy, 0.7)
            for L, mode in ((1, "timesteps"), (9, "trajectories"), (40, "timesteps")):
                x = native.sample_windows(11, L, relabel=rel, mode=mode)
                y = ref.sample_windows(11, L, relabel=rel, mode=mode)
                assert_same_batches(x, y, f"{strategy} L={L} {mode}")
    for k in native.storage.ring:
        np.testing.assert_array_equal(native.storage.ring[k], ref.storage.ring[k])


def test_native_match_fn_slow_path_equals_reference():
    spec = goal_env_spec(k=2, goal_dim=3)
    native, ref = engine_pair(spec, capacity_steps=200, num_envs=2, seed=1)
    drive([native, ref], GoalRollouts(spec, 2, seed=3, values=2), 120)

    def near(achieved, goals):  # L1 distance <= 1: a predicate the built-ins do not offer
        return np.abs(achieved - goals).sum(-1) <= 1.0

    for strategy in ("all", "future"):
        rel = RelabelConfig(strategy, 1.0, match_fn=near)
        assert_same_batches(native.sample_windows(9, 12, relabel=rel),
                              ref.sample_windows(9, 12, relabel=rel), strategy)

    def broken(achieved, goals):
        raise RuntimeError("user predicate failed")

    counter = native.sample_counter
    with pytest.raises(RuntimeError, match="user predicate failed"):
        native.sample_windows(3, 4, relabel=RelabelConfig("all", match_fn=broken))
    assert native.sample_counter == counter
    with pytest.raises(ValueError, match="match_fn"):
        native.sample_windows(3, 4, relabel=RelabelConfig("all", match_fn=lambda a, g: a))
    native.sample_windows(3, 4)  # not deadlocked, still usable


def test_gather_threads_do_not_change_results():
    spec = plain_env_spec(obs_dim=16, image=(16, 16, 3))
    bufs = [TrajectoryBuffer.from_env_spec(spec, capacity_steps=3000, num_envs=4, seed=9,
                                           num_threads=n) for n in (1, 2, 4)]
    assert [b.storage.num_threads() for b in bufs] == [1, 2, 4]
    drive(bufs, GoalRollouts(spec, 4, seed=1, p_truncate=0.01), 400)
    for _ in range(3):  # > 64 KiB per call: the pool is used
        outs = [b.sample_windows(24, 64) for b in bufs]
        for o in outs[1:]:
            assert_same_batches(outs[0], o)


def test_big_batch_equals_reference_with_images():
    spec = plain_env_spec(obs_dim=16, image=(8, 8, 3))
    native, ref = engine_pair(spec, capacity_steps=1500, num_envs=4, seed=2, num_threads=3)
    drive([native, ref], GoalRollouts(spec, 4, seed=4, p_truncate=0.02), 300)
    assert_same_batches(native.sample_windows(24, 100), ref.sample_windows(24, 100))
    out = native.allocate_batch(24, 100)
    native.sample_windows(24, 100, out=out)
    assert_same_batches(out, ref.sample_windows(24, 100))


def test_core_path_override_loads_that_module():
    from amago_fast._native import core as _core

    code = ("import amago_fast._native as n, amago_fast.buffer as b; assert b.NATIVE_AVAILABLE; "
            "print(n.core.__file__)")
    env = {**os.environ, "AMAGO_FAST_CORE_PATH": _core.__file__}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=Path(__file__).resolve().parents[2])
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == _core.__file__
    env["AMAGO_FAST_CORE_PATH"] = "/nonexistent/_core.so"
    code = "import amago_fast.buffer as b; assert not b.NATIVE_AVAILABLE"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert res.returncode == 0 and "NumPy reference" in res.stderr, res.stderr


# ---------------------------------------------------------------- concurrency

D = 1024  # 4 KiB rows: commits and gathers are long enough to overlap often


def _rows(uid: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Rows t of rollouts uid: every value derives from (uid, t)."""
    obs = np.empty((len(uid), D), np.float32)
    obs[:] = (uid * 1000 + t)[:, None]
    obs[:, 0], obs[:, 1] = uid, t
    return obs


def test_append_while_sampling_never_tears_or_overwrites():
    """One collector commits and evicts constantly (small ring, long pieces) while two threads
    sample; every sampled window must be exactly rows uid, t..t+n of one rollout."""
    spec = EnvSpec("count", (FieldSpec("obs", (D,), np.float32),), ActionSpec("discrete", n=5))
    num_envs = 4
    buf = TrajectoryBuffer.from_env_spec(spec, capacity_steps=300, num_envs=num_envs,
                                         max_trajectory_len=64, seed=0, num_threads=2)
    stop = threading.Event()
    errors: list[str] = []
    checked = [0]
    steps_done = [0]
    # The collector keeps appending until the samplers have checked enough windows (the count a
    # quiet machine reaches in a fraction of a second): on a loaded CI box the threads may be
    # scheduled so that a fixed number of appends ends before the samplers get going.
    min_checked, min_steps, deadline = 400, 4000, time.monotonic() + 60.0

    def collector():
        rng = np.random.default_rng(0)
        uid = np.arange(num_envs)
        t = np.zeros(num_envs, np.int64)
        next_uid = num_envs
        buf.reset_envs({"obs": _rows(uid, t)})
        try:
            while steps_done[0] < min_steps or (
                checked[0] < min_checked and time.monotonic() < deadline
            ):
                steps_done[0] += 1
                t += 1
                done = rng.random(num_envs) < 0.01
                buf.append_step({
                    "obs": _rows(uid, t),
                    "action": ((uid * 7 + t) % 5).astype(np.int32),
                    "reward": t.astype(np.float32),
                    "terminated": done,
                    "truncated": np.zeros(num_envs, bool),
                })
                ids = np.nonzero(done)[0]
                if len(ids):
                    uid[ids] = np.arange(next_uid, next_uid + len(ids))
                    next_uid += len(ids)
                    t[ids] = 0
                    buf.reset_envs({"obs": _rows(uid[ids], t[ids])}, ids)
                if stop.is_set():
                    return
        except Exception as e:  # pragma: no cover - reported below
            errors.append(f"collector: {e!r}")
        finally:
            stop.set()

    def sampler(seed):
        B, L = 8, 60
        out = buf.allocate_batch(B, L)
        owner: dict[int, int] = {}
        try:
            while buf.num_trajectories == 0 and not stop.is_set():
                time.sleep(0.001)
            while not stop.is_set():
                buf.sample_windows(B, L, out=out)
                m = out["mask"]
                v = m.sum(1)
                assert (v >= 2).all() and (m == (np.arange(L + 1) < v[:, None])).all()
                uid = out["obs"][:, 0, 0].astype(np.int64)
                t = out["obs"][:, :, 1].astype(np.int64)
                expect = np.where(m[:, :, None], (uid[:, None] * 1000 + t)[:, :, None], 0)
                np.testing.assert_array_equal(out["obs"][:, :, 2:], np.broadcast_to(
                    expect, out["obs"][:, :, 2:].shape).astype(np.float32))
                np.testing.assert_array_equal(np.where(m, out["obs"][:, :, 0], 0),
                                              np.where(m, uid[:, None], 0))
                np.testing.assert_array_equal(np.where(m, t, 0), out["time_index"])
                steps = np.diff(t, axis=1)[m[:, 1:]]
                assert (steps == 1).all()
                rew = np.where(m[:, 1:], t[:, 1:], 0).astype(np.float32)
                np.testing.assert_array_equal(out["reward"][:, 1:], rew)
                for b in range(B):
                    tid = int(out["trajectory_id"][b])
                    assert owner.setdefault(tid, int(uid[b])) == uid[b]  # one id, one rollout
                checked[0] += B
        except Exception as e:
            errors.append(f"sampler {seed}: {e!r}")
            stop.set()

    race(collector, sampler, timeout=120)
    assert not errors, errors[:2]
    assert checked[0] >= min_checked
    assert buf.total_steps_added == steps_done[0] * num_envs


def test_match_fn_sampling_with_concurrent_appends_does_not_deadlock():
    """A match_fn runs under the read lock and needs the GIL; appends (waiting writers) and
    other threads' metadata calls must not hold the GIL while they wait for the lock."""
    spec = goal_env_spec(k=2)
    buf = TrajectoryBuffer.from_env_spec(spec, capacity_steps=300, num_envs=4,
                                         max_trajectory_len=20, num_threads=2)
    roll = GoalRollouts(spec, 4, seed=0, p_truncate=0.1, values=2)
    drive([buf], roll, 30)
    rel = RelabelConfig("all", 1.0, match_fn=lambda a, g: np.all(a == g, axis=-1))
    stop = threading.Event()
    errors: list[str] = []

    def run(fn):
        try:
            while not stop.is_set():
                fn()
        except Exception as e:
            errors.append(repr(e))
            stop.set()

    threads = [threading.Thread(target=run, args=(f,), daemon=True) for f in (
        lambda: buf.sample_windows(4, 8, relabel=rel),
        lambda: buf.sample_windows(4, 8, relabel=rel),
        lambda: (len(buf), buf.num_trajectories, buf.storage.pieces()),
    )]
    for th in threads:
        th.start()
    drive([buf], roll, 300, started=True)
    stop.set()
    for th in threads:
        th.join(timeout=30)
    assert not any(th.is_alive() for th in threads), "deadlock"
    assert not errors, errors


def _torch_backed_out(buf, B, L, pin):
    import torch

    out = buf.allocate_batch(B, L)  # shapes and dtypes
    tensors = {k: torch.zeros(v.shape, dtype=torch.from_numpy(v[:0]).dtype, pin_memory=pin)
               for k, v in out.items()}
    return tensors, {k: t.numpy() for k, t in tensors.items()}


def test_sample_into_torch_backed_arrays_without_copies():
    spec = goal_env_spec(k=2)
    native, ref = engine_pair(spec, capacity_steps=200, num_envs=2, seed=8)
    drive([native, ref], GoalRollouts(spec, 2, seed=1), 80)
    tensors, out = _torch_backed_out(native, 5, 9, pin=False)
    native.sample_windows(5, 9, out=out, relabel=RelabelConfig("some", 0.5))
    expect = ref.sample_windows(5, 9, relabel=RelabelConfig("some", 0.5))
    for k, t in tensors.items():
        np.testing.assert_array_equal(t.numpy(), expect[k], err_msg=k)


@pytest.mark.gpu
def test_sample_into_pinned_memory():
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA for pinned memory")
    spec = plain_env_spec(obs_dim=4)
    native, ref = engine_pair(spec, capacity_steps=200, num_envs=2, seed=8)
    drive([native, ref], GoalRollouts(spec, 2, seed=1), 80)
    out = native.allocate_batch(5, 9, pin_memory=True)
    native.sample_windows(5, 9, out=out)
    expect = ref.sample_windows(5, 9)
    for k in out:
        assert torch.from_numpy(out[k]).is_pinned()
        np.testing.assert_array_equal(out[k], expect[k])


# ---------------------------------------------------------------- write_step (one call per step)

def _write_step_streams(spec, buffers_ws, buffers_two_calls, steps, seed):
    """The same autoresetting stream into `buffers_ws` via write_step (start rows carry junk in
    their non-observation fields) and into `buffers_two_calls` via reset_envs + append_step;
    env order permuted every step."""
    n = 3
    roll = GoalRollouts(spec, n, seed=seed, p_truncate=0.08, values=2)
    rng = np.random.default_rng(seed + 1)
    r0 = roll.reset_rows(np.arange(n))
    for b in buffers_ws + buffers_two_calls:
        b.reset_envs(r0)
    pending = np.zeros(n, bool)
    appended = 0
    for _ in range(steps):
        rows, done = roll.step_rows()
        starts_ids = np.flatnonzero(pending)
        if len(starts_ids):
            reset = roll.reset_rows(starts_ids)
            for k, v in reset.items():
                rows[k][starts_ids] = v
            rows["reward"][starts_ids] = rng.standard_normal(len(starts_ids))  # ignored
            rows["terminated"][starts_ids] = rng.random(len(starts_ids)) < 0.5  # ignored
        perm = rng.permutation(n)
        prow = {k: v[perm] for k, v in rows.items()}
        starts = pending[perm]
        got = [b.write_step(prow, perm, starts) for b in buffers_ws]
        assert got == [int((~starts).sum())] * len(buffers_ws)
        appended += got[0]
        for b in buffers_two_calls:  # same env order: pieces commit in the same order
            if starts.any():
                b.reset_envs({k: prow[k][starts] for k in b.storage.layout.obs_names}, perm[starts])
            b.append_step({k: v[~starts] for k, v in prow.items()}, perm[~starts])
        ended = np.zeros(n, bool)
        ended[done] = True
        pending = ended & ~pending
    return appended


@pytest.mark.parametrize("goals", [False, True])
def test_write_step_equals_reset_plus_append_and_reference(goals):
    spec = goal_env_spec(k=2, goal_dim=2) if goals else plain_env_spec(obs_dim=5)
    kw = dict(capacity_steps=89, num_envs=3, max_trajectory_len=13, seed=5)
    native_ws, ref_ws = engine_pair(spec, **kw)
    native_two, ref_two = engine_pair(spec, **kw)
    appended = _write_step_streams(spec, [native_ws, ref_ws], [native_two, ref_two], 150, seed=3)
    bufs = [native_ws, ref_ws, native_two, ref_two]
    assert appended > 100 and all(b.total_steps_added == appended for b in bufs)
    for b in bufs[1:]:
        np.testing.assert_array_equal(b.storage.pieces(), native_ws.storage.pieces())
        np.testing.assert_array_equal(b.storage.open_lengths(), native_ws.storage.open_lengths())
        for k in b.storage.ring:
            np.testing.assert_array_equal(b.storage.ring[k], native_ws.storage.ring[k], err_msg=k)
    assert_same_batches(native_ws.sample_windows(8, 6), ref_ws.sample_windows(8, 6))


@pytest.mark.parametrize("engine", ["native", "reference"])
def test_write_step_rejects_bad_input_and_changes_nothing(engine):
    spec = plain_env_spec(obs_dim=3)
    cls = TrajectoryBuffer if engine == "native" else NUMPY
    buf = cls.from_env_spec(spec, capacity_steps=50, num_envs=3, seed=0)
    roll = GoalRollouts(spec, 3, seed=0, p_truncate=0.0)
    buf.reset_envs(roll.reset_rows(np.array([0, 1])), np.array([0, 1]))
    rows, _ = roll.step_rows()
    buf.write_step(rows, None, np.array([False, False, True]))  # env 2 starts here
    rows, _ = roll.step_rows()
    bad_cases = [
        (dict(starts=np.array([0, 0, 1])), "starts"),  # not bool
        (dict(starts=np.array([False, True])), "starts"),  # wrong length
        (dict(env_ids=np.array([0, 0, 1]), starts=np.zeros(3, bool)), "duplicates"),
    ]
    nan_rows = {k: v.copy() for k, v in rows.items()}
    nan_rows["reward"][1] = np.nan
    strided = np.zeros(6, bool)[::2]  # a non-contiguous mask is read correctly, not by raw bytes
    assert buf.write_step(dict(rows), None, strided) == 3
    rows, _ = roll.step_rows()
    snapshot = (buf.storage.open_lengths().copy(), buf.storage.pieces().copy(), len(buf))
    for kwargs, match in bad_cases:
        with pytest.raises((ValueError, TypeError), match=match):
            buf.write_step(rows, kwargs.get("env_ids"), kwargs["starts"])
    with pytest.raises(ValueError, match="reward"):
        buf.write_step(nan_rows, None, np.zeros(3, bool))
    np.testing.assert_array_equal(buf.storage.open_lengths(), snapshot[0])
    np.testing.assert_array_equal(buf.storage.pieces(), snapshot[1])
    assert len(buf) == snapshot[2]
    # env 1 ended nothing but env 2's trajectory is closed after a terminated row:
    closing = {k: v.copy() for k, v in rows.items()}
    closing["terminated"][:] = [False, False, True]
    buf.write_step(closing, None, np.zeros(3, bool))
    opened = buf.storage.open_lengths().copy()
    pieces = buf.storage.pieces().copy()
    with pytest.raises(ValueError, match="no open trajectory"):
        buf.write_step(rows, None, np.array([True, False, False]))  # env 2 appended: closed
    # all or nothing: env 0's start (listed first) did not happen either
    np.testing.assert_array_equal(buf.storage.open_lengths(), opened)
    np.testing.assert_array_equal(buf.storage.pieces(), pieces)
