"""Input checks of the trajectory buffer: the row schema and configuration (:class:`Layout`),
env ids, rows, sample arguments, output arrays and loaded state.

Every user-caused error is one ValueError / TypeError naming the argument and the problem,
raised before anything changes. The native engine repeats the row checks in C++ (it validates
before it writes), so its hot path does not call :meth:`Layout.check_rows`; both engines share
everything else here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from amago_fast.buffer.relabel import RelabelConfig
from amago_fast.spaces import ACTION, REWARD, TERMINATED, TRUNCATED, FieldSpec, GoalSpec

META_KEYS = ("mask", "time_index", "trajectory_id", "start")
SAMPLE_MODES = ("timesteps", "trajectories")
MAX_TIME_INDEX = 2**63 - 1
MAX_NUM_ENVS = 2**31 - 1


class SnapshotError(ValueError):
    """A saved buffer is missing, corrupt, truncated or of another format version."""


def check_time_offset(value: Any, rows: int, where: str) -> int:
    """A trajectory's time offset (the time_index of its first row): a non-negative integer
    scalar with ``offset + rows - 1`` inside int64, so no stored time_index can wrap
    negative. ValueError naming `where` (the argument or file) otherwise."""
    if isinstance(value, np.ndarray):
        if value.ndim != 0:
            raise ValueError(f"{where}: time offset must be an integer scalar, got an array of "
                             f"shape {value.shape}")
        value = value[()]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{where}: time offset must be a non-negative integer, got "
                         f"{value!r} ({type(value).__name__})")
    v = int(value)
    if v < 0:
        raise ValueError(f"{where}: time offset must be >= 0, got {v}")
    if v > MAX_TIME_INDEX - (rows - 1):
        raise ValueError(f"{where}: time offset {v} + {rows} rows exceeds the int64 time_index "
                         f"(at most {MAX_TIME_INDEX - (rows - 1)})")
    return v


def _check_fields(fields: list[FieldSpec], goals: GoalSpec | None) -> dict[str, FieldSpec]:
    if not fields or not all(isinstance(f, FieldSpec) for f in fields):
        raise TypeError("fields must be a non-empty list of FieldSpec")
    names = [f.name for f in fields]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate field names in {names}")
    for f in META_KEYS:
        if f in names:
            raise ValueError(f"field name {f!r} is reserved for sample metadata")
    by_name = {f.name: f for f in fields}
    for name, shape, dtype in (
        (REWARD, (), np.float32),
        (TERMINATED, (), np.bool_),
        (TRUNCATED, (), np.bool_),
    ):
        if name not in by_name:
            raise ValueError(f"fields must include {name!r}")
        if by_name[name].shape != shape or by_name[name].dtype != np.dtype(dtype):
            raise ValueError(
                f"field {name!r} must have shape {shape} and dtype {np.dtype(dtype)}, got "
                f"{by_name[name].shape} {by_name[name].dtype}"
            )
    if ACTION not in by_name:
        raise ValueError("fields must include 'action'")
    if goals is not None:
        if not isinstance(goals, GoalSpec):
            raise TypeError("goals must be a GoalSpec or None")
        for gf in goals.fields():
            have = by_name.get(gf.name)
            if have is None:
                raise ValueError(f"goals need field {gf.name!r} in the schema")
            if have.shape != gf.shape or have.dtype != gf.dtype:
                raise ValueError(
                    f"goal field {gf.name!r} must be {gf.shape} {gf.dtype}, "
                    f"got {have.shape} {have.dtype}"
                )
    return by_name


@dataclass(frozen=True)
class Layout:
    """A buffer's validated schema and configuration (see :class:`TrajectoryBuffer`'s Args);
    built by :meth:`build`, shared by the buffer, its engine and its persistence."""

    fields: list[FieldSpec]
    goals: GoalSpec | None
    capacity_steps: int
    num_envs: int
    max_trajectory_len: int
    allow_nonfinite_rewards: bool
    seed: int
    num_threads: int
    row_bytes: int
    by_name: dict[str, FieldSpec]
    obs_names: list[str]

    @property
    def max_rows(self) -> int:
        """Rows of the longest piece (max_trajectory_len transitions)."""
        return self.max_trajectory_len + 1

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.fields]

    @classmethod
    def build(cls, fields, capacity_steps, num_envs, max_trajectory_len, goals,
              allow_nonfinite_rewards, seed, capacity_bytes, num_threads) -> Layout:
        fields = list(fields)
        by_name = _check_fields(fields, goals)
        row_bytes = sum(f.nbytes for f in fields)
        if (capacity_steps is None) == (capacity_bytes is None):
            raise ValueError("give exactly one of capacity_steps or capacity_bytes")
        if capacity_steps is None:
            if int(capacity_bytes) != capacity_bytes or capacity_bytes <= 0:
                raise ValueError(f"capacity_bytes must be a positive int, got {capacity_bytes!r}")
            capacity_steps = int(capacity_bytes) // row_bytes
        if int(capacity_steps) != capacity_steps or capacity_steps < 2:
            raise ValueError(
                f"capacity must hold at least 2 rows (one transition), got {capacity_steps!r} rows"
            )
        capacity_steps = int(capacity_steps)
        if int(num_envs) != num_envs or not 1 <= num_envs <= MAX_NUM_ENVS:
            raise ValueError(f"num_envs must be an int in [1, {MAX_NUM_ENVS}], got {num_envs!r}")
        if max_trajectory_len is None:
            max_trajectory_len = capacity_steps - 1
        if int(max_trajectory_len) != max_trajectory_len or max_trajectory_len < 1:
            raise ValueError(f"max_trajectory_len must be >= 1, got {max_trajectory_len!r}")
        if max_trajectory_len + 1 > capacity_steps:
            raise ValueError(
                f"max_trajectory_len={max_trajectory_len} needs {max_trajectory_len + 1} rows, "
                f"more than capacity_steps={capacity_steps}"
            )
        if int(seed) != seed or not (0 <= seed < 2**63):
            raise ValueError(f"seed must be an int in [0, 2**63), got {seed!r}")
        if num_threads is None:
            num_threads = min(4, os.cpu_count() or 1)
        if int(num_threads) != num_threads or num_threads < 1:
            raise ValueError(f"num_threads must be a positive int, got {num_threads!r}")
        flags = (ACTION, REWARD, TERMINATED, TRUNCATED)
        obs_names = [f.name for f in fields if f.name not in flags]
        return cls(fields=fields, goals=goals, capacity_steps=capacity_steps,
                   num_envs=int(num_envs), max_trajectory_len=int(max_trajectory_len),
                   allow_nonfinite_rewards=bool(allow_nonfinite_rewards), seed=int(seed),
                   num_threads=int(num_threads), row_bytes=row_bytes, by_name=by_name,
                   obs_names=obs_names)

    def check_env_ids(self, env_ids) -> np.ndarray:
        """int64 env ids (None: all envs in order): 1-d integer, in range, no duplicates."""
        if env_ids is None:
            return np.arange(self.num_envs, dtype=np.int64)
        ids = np.asarray(env_ids)
        if ids.ndim != 1 or not (np.issubdtype(ids.dtype, np.integer) or ids.size == 0):
            raise TypeError(f"env_ids must be a 1-d integer array, got {ids.dtype} {ids.shape}")
        if ids.dtype.kind == "u" and ids.size and int(ids.max()) >= self.num_envs:
            # (before the int64 cast, which shows 2**64-1 as -1)
            raise ValueError(f"env_ids out of range [0, {self.num_envs}): "
                             f"{[int(i) for i in ids[ids >= self.num_envs][:8]]}")
        ids = ids.astype(np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.num_envs):
            raise ValueError(f"env_ids out of range [0, {self.num_envs}): {ids.tolist()[:8]}")
        if len(np.unique(ids)) != len(ids):
            raise ValueError("env_ids contains duplicates")
        return ids

    def check_rows(self, rows, names: list[str], n: int | None, what: str) -> dict:
        """``rows`` holding exactly the fields `names`, each (n, *shape) of the field's dtype
        (n None: any common length), C-contiguous copies where needed; finite rewards unless
        allowed; goal_active in [0, k]."""
        if not isinstance(rows, Mapping):
            raise TypeError(f"{what}: rows must be a dict of arrays, got {type(rows).__name__}")
        allowed = set(names)
        for key in rows:
            if key not in allowed:
                if key in self.by_name:
                    raise ValueError(f"{what}: field {key!r} is not accepted here")
                raise ValueError(f"{what}: unknown field {key!r}")
        missing = [name for name in names if name not in rows]
        if missing:
            raise ValueError(f"{what}: missing fields {missing}")
        out = {}
        for name in names:
            spec = self.by_name[name]
            arr = rows[name]
            if not isinstance(arr, np.ndarray):
                if hasattr(arr, "__array__") or isinstance(arr, (list, tuple)):
                    arr = np.asarray(arr)
                else:
                    raise TypeError(f"{what}: field {name!r} must be a NumPy array")
            if arr.dtype != spec.dtype:
                raise TypeError(
                    f"{what}: field {name!r} has dtype {arr.dtype}, expected {spec.dtype}"
                )
            if arr.ndim != 1 + len(spec.shape) or arr.shape[1:] != spec.shape:
                lead = "N" if n is None else n
                raise ValueError(
                    f"{what}: field {name!r} has shape {arr.shape}, expected ({lead}, "
                    f"{', '.join(map(str, spec.shape))})"
                )
            if n is None:
                n = arr.shape[0]
            elif arr.shape[0] != n:
                raise ValueError(
                    f"{what}: field {name!r} has {arr.shape[0]} rows, expected {n} (one per env)"
                )
            out[name] = np.ascontiguousarray(arr)
        if REWARD in out and not self.allow_nonfinite_rewards:
            if not np.all(np.isfinite(out[REWARD])):
                raise ValueError(
                    f"{what}: field 'reward' contains NaN/inf (allow_nonfinite_rewards=False)"
                )
        if self.goals is not None and self.goals.active_field in out:
            a = out[self.goals.active_field]
            if a.size and (a.min() < 0 or a.max() > self.goals.k):
                raise ValueError(
                    f"{what}: field {self.goals.active_field!r} must be in [0, {self.goals.k}]"
                )
        return out

    def check_sample_args(self, batch_size, length, relabel, mode) -> tuple[int, int]:
        """(B, L) of a ``sample_windows`` call."""
        if int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if int(length) != length or length < 1:
            raise ValueError(f"length must be a positive int, got {length!r}")
        if length + 1 > self.capacity_steps:
            raise ValueError(
                f"a window of {length} steps needs {length + 1} rows, more than the buffer's "
                f"capacity of {self.capacity_steps} rows"
            )
        if mode not in SAMPLE_MODES:
            raise ValueError(f"mode must be one of {SAMPLE_MODES}, got {mode!r}")
        if relabel is not None:
            if not isinstance(relabel, RelabelConfig):
                raise TypeError("relabel must be a RelabelConfig or None")
            if self.goals is None:
                raise ValueError("relabel needs a buffer built with goals=GoalSpec(...)")
        return int(batch_size), int(length)

    def check_out(self, out, B: int, L: int) -> None:
        """``out`` of ``sample_windows``: every key of :meth:`allocate_batch`, right shape and
        dtype, C-contiguous and writeable (the NumPy engine's check; the native engine checks
        the same in C++)."""
        if not isinstance(out, dict):
            raise TypeError("out must be a dict of NumPy arrays (see allocate_batch)")
        want = {f.name: ((B, L + 1, *f.shape), f.dtype) for f in self.fields}
        want.update({"mask": ((B, L + 1), np.dtype(np.bool_)),
                     "time_index": ((B, L + 1), np.dtype(np.int64)),
                     "trajectory_id": ((B,), np.dtype(np.int64)),
                     "start": ((B,), np.dtype(np.int64))})
        for key in out:
            if key not in want:
                raise ValueError(f"out: unknown key {key!r}")
        for key, (shape, dtype) in want.items():
            arr = out.get(key)
            if arr is None:
                raise ValueError(f"out: missing key {key!r}")
            if not isinstance(arr, np.ndarray):
                raise TypeError(f"out[{key!r}] must be a NumPy array")
            if arr.dtype != dtype:
                raise TypeError(f"out[{key!r}] has dtype {arr.dtype}, expected {dtype}")
            if arr.shape != shape:
                raise ValueError(f"out[{key!r}] has shape {arr.shape}, expected {shape}")
            if not arr.flags.c_contiguous or not arr.flags.writeable:
                raise ValueError(f"out[{key!r}] must be C-contiguous and writeable")

    def check_state(self, state: dict) -> None:
        """Consistency checks of a loaded state (a corrupt manifest must not crash the engine)."""
        C = self.capacity_steps
        p = state["pieces"]
        if p.ndim != 2 or p.shape[1] != 4:
            raise SnapshotError(f"snapshot pieces table has shape {p.shape}, expected (n, 4)")
        ol, oo = state["open_len"], state["open_offset"]
        ok = (
            0 <= state["write_pos"] < C
            and np.all((p[:, 1] >= 0) & (p[:, 1] < C) & (p[:, 2] >= 2)
                       & (p[:, 2] <= self.max_rows) & (p[:, 3] >= 0))
            and int(p[:, 2].sum()) <= C
            and np.all((ol >= 0) & (ol <= self.max_rows))
            and np.all(oo >= 0)
            # time offsets leave every row's time_index inside int64 (no wrap to negative)
            and np.all(p[:, 3] <= MAX_TIME_INDEX - p[:, 2])
            and np.all(oo <= MAX_TIME_INDEX - self.max_rows)
            and state["next_id"] >= (int(p[:, 0].max()) + 1 if len(p) else 0)
        )
        if len(p):
            ends = (p[:, 1] + p[:, 2]) % C
            ok = ok and bool(np.all(ends[:-1] == p[1:, 1])) and int(ends[-1]) == state["write_pos"]
        if not ok:
            raise SnapshotError("snapshot state is inconsistent (pieces/open trajectories)")
