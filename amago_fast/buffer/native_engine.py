"""The buffer's storage engine on the native core (``_core.TrajectoryStore``, csrc/buffer/).

Same semantics as :class:`amago_fast.buffer.numpy_engine.NumpyEngine` (its oracle; same seed,
same windows, bit for bit), different machinery: per-env staging of open trajectories, commits
and evictions under the write side of a reader/writer lock, window gathers (and native
hindsight relabeling) under the read side on a pool of ``num_threads`` threads, GIL released.
The C++ adapter (csrc/buffer/py_buffer.h) validates rows, env ids, finite rewards and the
goal_active range before anything changes, so the write methods here skip the Python checks.

The collector's fused write (collector/absorb.h: the step's bookkeeping and its buffer rows in
one C++ pass) writes into the same store; :class:`NativeSink` is what it gets for that (the
store handle, the field order, the writer lock and the step counter), so nothing outside this
package touches the buffer's internals.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from amago_fast._native import core
from amago_fast.buffer import relabel as rl
from amago_fast.buffer.checks import Layout
from amago_fast.spaces import REWARD, TERMINATED, TRUNCATED

_MODES = {"timesteps": 0, "trajectories": 1}


@dataclass(frozen=True)
class NativeSink:
    """A native buffer's store as the target of a fused write.

    ``store``: the ``_core.TrajectoryStore``; ``field_names``: its fields in store order;
    ``lock``: the buffer's writer lock (hold it around every write into ``store``);
    ``count_steps(n)``: add n appended transitions to the buffer's ``total_steps_added``
    (under ``lock``)."""

    store: Any
    field_names: list[str]
    lock: threading.RLock
    count_steps: Callable[[int], None]

    def plan(self, sources: dict[str, int]) -> list[int] | None:
        """The store's write plan: for each field in store order, its source index in
        ``sources`` (observation index >= 0, or the collector's negative codes for action,
        reward and flags). None when the two schemas differ."""
        if sorted(self.field_names) != sorted(sources):
            return None
        return [sources[k] for k in self.field_names]


class NativeEngine:
    """The storage engine on ``_core.TrajectoryStore``, writing into the ring arrays ``ring``
    (owned by the buffer: allocated, or mapped from a snapshot)."""

    name = "native"

    def __init__(self, layout: Layout, ring: dict[str, np.ndarray]) -> None:
        if core is None:
            raise RuntimeError("the native engine needs amago_fast._core (see amago_fast._native)")
        self.layout = layout
        self.ring = ring
        self.lock = threading.RLock()  # writes and save (one writer at a time)
        self.total_steps_added = 0
        names = layout.names
        g = layout.goals
        goal_cfg = None
        if g is not None:
            goal_cfg = (
                names.index(g.goal_field), names.index(g.achieved_field),
                names.index(g.active_field), names.index(g.completed_field),
                g.k, g.goal_dim, g.goal_dtype.char, g.match == "tolerance", float(g.eps),
                float(np.float32(g.goal_reward)),
            )
        self._names = names
        self.store = core.TrajectoryStore(
            names, [ring[n] for n in names], layout.capacity_steps, layout.num_envs,
            layout.max_rows, layout.seed, layout.num_threads, names.index(REWARD),
            names.index(TERMINATED), names.index(TRUNCATED),
            [names.index(n) for n in layout.obs_names], layout.allow_nonfinite_rewards,
            goal_cfg,
        )

    def sink(self) -> NativeSink:
        return NativeSink(self.store, list(self._names), self.lock, self._count_steps)

    def _count_steps(self, n: int) -> None:
        self.total_steps_added += n

    # ------------------------------------------------------------------ queries

    def used_rows(self) -> int:
        return self.store.used_rows()

    def num_pieces(self) -> int:
        return self.store.num_pieces()

    def open_lengths(self) -> np.ndarray:
        """Rows of each env's open trajectory (0: none open)."""
        return self.store.open_lengths()

    def pieces(self) -> np.ndarray:
        """(n, 4) int64 rows (trajectory id, ring position, rows, time offset), oldest first."""
        return self.store.pieces()

    def num_threads(self) -> int:
        """Gather threads of the store's pool."""
        return self.store.num_threads()

    def check_out(self, out, B: int, L: int) -> None:
        # Shapes, dtypes and layout are checked by the store before it writes.
        if not isinstance(out, dict):
            raise TypeError("out must be a dict of NumPy arrays (see allocate_batch)")

    # ------------------------------------------------------------------ streaming writes
    # Unsigned env ids are range-checked here: the int64 crossing would show 2**64-1 as -1.

    def _check_unsigned_ids(self, env_ids) -> None:
        if type(env_ids) is np.ndarray and env_ids.dtype.kind == "u":
            self.layout.check_env_ids(env_ids)

    def reset_envs(self, rows, env_ids) -> None:
        self._check_unsigned_ids(env_ids)
        with self.lock:
            self.store.reset(rows, env_ids)

    def append_step(self, rows, env_ids) -> int:
        self._check_unsigned_ids(env_ids)
        with self.lock:
            appended = self.store.append(rows, env_ids)
            self.total_steps_added += appended
        return appended

    def write_step(self, rows, env_ids, starts) -> int:
        self._check_unsigned_ids(env_ids)
        with self.lock:
            if starts is None:
                appended = self.store.append(rows, env_ids)
            else:
                appended = self.store.write_step(rows, env_ids, starts)
            self.total_steps_added += appended
        return appended

    def commit(self, rows: dict, offset: int) -> None:
        """Store checked ``rows`` (one piece); the caller holds ``lock``."""
        self.store.commit([rows[n] for n in self._names], offset)

    # ------------------------------------------------------------------ snapshot state

    def get_state(self) -> dict:
        pieces, open_len, open_offset, write_pos, next_id, open_rows = self.store.get_state()
        return {"pieces": pieces, "open_len": open_len, "open_offset": open_offset,
                "write_pos": write_pos, "next_id": next_id,
                "open_rows": dict(zip(self._names, open_rows))}

    def set_state(self, state: dict) -> None:
        self.store.set_state(
            np.ascontiguousarray(state["pieces"], dtype=np.int64),
            np.ascontiguousarray(state["open_len"], dtype=np.int64),
            np.ascontiguousarray(state["open_offset"], dtype=np.int64),
            int(state["write_pos"]), int(state["next_id"]),
            [np.ascontiguousarray(state["open_rows"][n]) for n in self._names],
        )

    # ------------------------------------------------------------------ sampling

    def sample(self, B: int, L: int, mode: str, relabel, out: dict, counter: int) -> None:
        relabel_cfg = None
        match_cb = None
        if relabel is not None:
            relabel_cfg = (rl.STRATEGY_CODES[relabel.strategy], relabel.probability)
            if relabel.match_fn is not None:
                goals, fn = self.layout.goals, relabel.match_fn

                def match_cb(achieved: np.ndarray, instruction: np.ndarray) -> np.ndarray:
                    return np.ascontiguousarray(
                        rl.match_matrix(goals, achieved, instruction, fn), dtype=np.bool_
                    )

        self.store.sample(B, L, _MODES[mode], counter, relabel_cfg, match_cb, out)
