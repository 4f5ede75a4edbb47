"""The public trajectory buffer: :class:`TrajectoryBuffer`, backed by the native core.

Semantics (rows layout, cuts, eviction, sampling, relabeling, persistence) are documented in
:mod:`amago_fast.buffer_reference` and :mod:`amago_fast.relabel`; this class shares validation,
persistence and interop with the NumPy reference and replaces its storage engine with the C++
core (``amago_fast._core.TrajectoryStore``): per-env staging of open trajectories, commits and
evictions under the write side of a reader/writer lock, window gathers (and native hindsight
relabeling) under the read side on a pool of ``num_threads`` threads, GIL released.

If the extension is missing (see :mod:`amago_fast._native`, the one loader), ``TrajectoryBuffer``
is the NumPy engine (same results, slower).
"""

from __future__ import annotations

import numpy as np

from amago_fast import _native
from amago_fast import relabel as rl
from amago_fast.buffer_reference import (
    ReferenceTrajectoryBuffer,
    SnapshotError,
)
from amago_fast.relabel import RelabelConfig
from amago_fast.spaces import REWARD, TERMINATED, TRUNCATED

__all__ = ["TrajectoryBuffer", "RelabelConfig", "SnapshotError", "NATIVE_AVAILABLE"]

_core = _native.core
NATIVE_AVAILABLE = _native.NATIVE_AVAILABLE

_MODES = {"timesteps": 0, "trajectories": 1}


class _NativeEngineBuffer(ReferenceTrajectoryBuffer):
    """ReferenceTrajectoryBuffer with the storage engine replaced by the C++ core."""

    engine = "native"

    def _store_init(self) -> None:
        names = [f.name for f in self.fields]
        g = self.goals
        goal_cfg = None
        if g is not None:
            goal_cfg = (
                names.index(g.goal_field), names.index(g.achieved_field),
                names.index(g.active_field), names.index(g.completed_field),
                g.k, g.goal_dim, g.goal_dtype.char, g.match == "tolerance", float(g.eps),
                float(np.float32(g.goal_reward)),
            )
        self._names = names
        self._obs_idx = [names.index(n) for n in self._obs_names]
        self._core = _core.TrajectoryStore(
            names, [self._ring[n] for n in names], self.capacity_steps, self.num_envs,
            self._max_rows, self.seed, self.num_threads, names.index(REWARD),
            names.index(TERMINATED), names.index(TRUNCATED), self._obs_idx,
            self.allow_nonfinite_rewards, goal_cfg,
        )

    # The adapter validates rows (dtype, shape, env ids, finite rewards, goal_active range) in
    # C++ before anything changes, so the hot path skips the Python checks.
    # Re-entry from a relabel match_fn is refused (the store's lock would deadlock), and
    # unsigned env ids are range-checked here (the int64 crossing would show 2**64-1 as -1).
    def reset_envs(self, rows, env_ids=None) -> None:
        self._refuse_reentry("reset_envs")
        if type(env_ids) is np.ndarray and env_ids.dtype.kind == "u":
            self._check_env_ids(env_ids)
        with self._lock:
            self._core.reset(rows, env_ids)

    def append_step(self, rows, env_ids=None) -> None:
        self._refuse_reentry("append_step")
        if type(env_ids) is np.ndarray and env_ids.dtype.kind == "u":
            self._check_env_ids(env_ids)
        with self._lock:
            self._total_steps_added += self._core.append(rows, env_ids)

    def write_step(self, rows, env_ids=None, starts=None) -> int:
        self._refuse_reentry("write_step")
        if type(env_ids) is np.ndarray and env_ids.dtype.kind == "u":
            self._check_env_ids(env_ids)
        with self._lock:
            if starts is None:
                appended = self._core.append(rows, env_ids)
            else:
                appended = self._core.write_step(rows, env_ids, starts)
            self._total_steps_added += appended
        return appended

    reset_envs.__doc__ = ReferenceTrajectoryBuffer.reset_envs.__doc__
    append_step.__doc__ = ReferenceTrajectoryBuffer.append_step.__doc__
    write_step.__doc__ = ReferenceTrajectoryBuffer.write_step.__doc__

    def _check_out(self, out, B: int, L: int) -> None:
        if not isinstance(out, dict):
            raise TypeError("out must be a dict of NumPy arrays (see allocate_batch)")

    def _store_used_rows(self) -> int:
        return self._core.used_rows()

    def _store_num_pieces(self) -> int:
        return self._core.num_pieces()

    def _store_open_lengths(self) -> np.ndarray:
        return self._core.open_lengths()

    def _store_pieces(self) -> np.ndarray:
        return self._core.pieces()

    def _store_commit(self, rows: dict, offset: int) -> None:
        self._core.commit([rows[n] for n in self._names], offset)

    def _store_get_state(self) -> dict:
        pieces, open_len, open_offset, write_pos, next_id, open_rows = self._core.get_state()
        return {"pieces": pieces, "open_len": open_len, "open_offset": open_offset,
                "write_pos": write_pos, "next_id": next_id,
                "open_rows": dict(zip(self._names, open_rows))}

    def _store_set_state(self, state: dict) -> None:
        self._core.set_state(
            np.ascontiguousarray(state["pieces"], dtype=np.int64),
            np.ascontiguousarray(state["open_len"], dtype=np.int64),
            np.ascontiguousarray(state["open_offset"], dtype=np.int64),
            int(state["write_pos"]), int(state["next_id"]),
            [np.ascontiguousarray(state["open_rows"][n]) for n in self._names],
        )

    def _store_sample(self, B: int, L: int, mode: str, relabel, out: dict, counter: int) -> None:
        relabel_cfg = None
        match_cb = None
        if relabel is not None:
            relabel_cfg = (rl.STRATEGY_CODES[relabel.strategy], relabel.probability)
            if relabel.match_fn is not None:
                goals, fn = self.goals, relabel.match_fn

                def match_cb(achieved: np.ndarray, instruction: np.ndarray) -> np.ndarray:
                    return np.ascontiguousarray(
                        rl.match_matrix(goals, achieved, instruction, fn), dtype=np.bool_
                    )

        self._core.sample(B, L, _MODES[mode], counter, relabel_cfg, match_cb, out)


_Engine: type[ReferenceTrajectoryBuffer] = (
    _NativeEngineBuffer if NATIVE_AVAILABLE else ReferenceTrajectoryBuffer
)


class TrajectoryBuffer(_Engine):  # type: ignore[valid-type,misc]
    __doc__ = ReferenceTrajectoryBuffer.__doc__
