"""Property-based stateful test: random append/reset/add/evict/sample/save/load sequences drive
the native buffer and the NumPy oracle side by side; every observable must agree exactly."""

from __future__ import annotations

import shutil
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from amago_fast.buffer import NATIVE_AVAILABLE, RelabelConfig, TrajectoryBuffer
from amago_fast.buffer.synthetic import goal_env_spec
from tests._buffers import NUMPY

pytestmark = pytest.mark.skipif(not NATIVE_AVAILABLE, reason="amago_fast._core not built")

K, NUM_ENVS = 2, 3
SPEC = goal_env_spec(k=K, goal_dim=2, obs_dim=3)


def random_rows(rng: np.random.Generator, n: int, full: bool) -> dict[str, np.ndarray]:
    """Arbitrary rows (goal fields do not follow the rule: relabeling must still agree)."""
    g = SPEC.goals
    rows = {
        "obs": rng.standard_normal((n, 3)).astype(np.float32),
        g.goal_field: rng.integers(0, 2, (n, K, 2)).astype(np.float32),
        g.achieved_field: rng.integers(0, 2, (n, 2)).astype(np.float32),
        g.active_field: rng.integers(0, K + 1, n).astype(np.int32),
        g.completed_field: rng.random((n, K)) < 0.5,
    }
    if full:
        rows["action"] = rng.integers(0, 4, n).astype(np.int32)
        rows["reward"] = rng.standard_normal(n).astype(np.float32)
        rows["terminated"] = rng.random(n) < 0.15
        rows["truncated"] = rng.random(n) < 0.05
    return rows


class BufferMachine(RuleBasedStateMachine):
    @initialize(capacity=st.integers(8, 48), max_len=st.integers(1, 12),
                seed=st.integers(0, 2**63 - 1), threads=st.sampled_from([1, 3]))
    def setup(self, capacity, max_len, seed, threads):
        max_len = min(max_len, capacity - 1)
        kw = dict(capacity_steps=capacity, num_envs=NUM_ENVS, max_trajectory_len=max_len,
                  seed=seed)
        self.native = TrajectoryBuffer.from_env_spec(SPEC, num_threads=threads, **kw)
        self.ref = NUMPY.from_env_spec(SPEC, **kw)
        self.capacity = capacity
        self.dirs: list[str] = []

    def teardown(self):
        for d in getattr(self, "dirs", []):
            shutil.rmtree(d, ignore_errors=True)

    @rule(data_seed=st.integers(0, 2**32 - 1), mask=st.integers(1, 2**NUM_ENVS - 1))
    def reset_envs(self, data_seed, mask):
        ids = np.array([e for e in range(NUM_ENVS) if mask >> e & 1])
        rows = random_rows(np.random.default_rng(data_seed), len(ids), full=False)
        for b in (self.native, self.ref):
            b.reset_envs(rows, ids)

    @rule(data_seed=st.integers(0, 2**32 - 1), steps=st.integers(1, 6))
    def append(self, data_seed, steps):
        rng = np.random.default_rng(data_seed)
        for _ in range(steps):
            open_ids = np.nonzero(self.ref.storage.open_lengths())[0]
            if len(open_ids) == 0:
                return
            rows = random_rows(rng, len(open_ids), full=True)
            for b in (self.native, self.ref):
                b.append_step(rows, open_ids)

    @rule(data_seed=st.integers(0, 2**32 - 1), n=st.integers(2, 30),
          offset=st.integers(0, 5))
    def add_trajectory(self, data_seed, n, offset):
        rows = random_rows(np.random.default_rng(data_seed), n, full=True)
        for b in (self.native, self.ref):
            b.add_trajectory(rows, time_offset=offset)

    @precondition(lambda self: self.ref.num_trajectories > 0)
    @rule(batch=st.integers(1, 6), length=st.integers(1, 20),
          strategy=st.sampled_from([None, "none", "all", "some", "final", "future"]),
          probability=st.sampled_from([0.0, 0.5, 1.0]),
          mode=st.sampled_from(["timesteps", "trajectories"]))
    def sample(self, batch, length, strategy, probability, mode):
        length = min(length, self.capacity - 1)
        rel = None if strategy is None else RelabelConfig(strategy, probability)
        x = self.native.sample_windows(batch, length, relabel=rel, mode=mode)
        y = self.ref.sample_windows(batch, length, relabel=rel, mode=mode)
        for k in y:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)

    @precondition(lambda self: self.ref.num_trajectories == 0)
    @rule()
    def sample_empty_fails(self):
        for b in (self.native, self.ref):
            with pytest.raises(ValueError, match="no committed"):
                b.sample_windows(2, 1)

    @rule(mmap=st.booleans(), swap=st.booleans())
    def save_load(self, mmap, swap):
        d = tempfile.mkdtemp(prefix="amago_buf_")
        self.dirs.append(d)
        self.native.save(f"{d}/n")
        self.ref.save(f"{d}/r")
        # snapshots are engine-independent: load each engine's file into the other engine
        n_src, r_src = (f"{d}/r", f"{d}/n") if swap else (f"{d}/n", f"{d}/r")
        self.native = TrajectoryBuffer.load(n_src, mmap=mmap, num_threads=2)
        self.ref = NUMPY.load(r_src, mmap=mmap)

    @invariant()
    def same_state(self):
        if not hasattr(self, "native"):
            return
        n, r = self.native, self.ref
        assert (len(n), n.num_trajectories, n.total_steps_added, n.sample_counter) == (
            len(r), r.num_trajectories, r.total_steps_added, r.sample_counter)
        np.testing.assert_array_equal(n.storage.pieces(), r.storage.pieces())
        np.testing.assert_array_equal(n.storage.open_lengths(), r.storage.open_lengths())
        assert len(r) <= self.capacity


BufferMachine.TestCase.settings = settings(
    max_examples=30, stateful_step_count=20, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestBufferMachine = BufferMachine.TestCase
