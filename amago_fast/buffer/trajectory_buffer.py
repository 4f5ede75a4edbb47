"""The public trajectory buffer: :class:`TrajectoryBuffer`, holding a storage engine.

The buffer owns what both engines share — the validated layout (:mod:`.checks`), the ring
arrays, the sample call counter, re-entry refusal, persistence (:mod:`.persistence`) and
``.npz`` interop — and hands storage (staging, commits, eviction, window gathers) to its
engine: :class:`~amago_fast.buffer.native_engine.NativeEngine` on the compiled core, or
:class:`~amago_fast.buffer.numpy_engine.NumpyEngine`, the NumPy oracle the native one is tested
against and the fallback without the core. The two give the same windows, masks and relabeled
rewards for the same seed (the counter-based RNG of :mod:`.rng`).

Sampling (``sample_windows(B, L)``): ``mode="timesteps"`` (default) picks a piece with
probability proportional to its number of transitions, ``mode="trajectories"`` uniformly;
windows are full whenever the piece is long enough, rows past its end zero-filled with
``mask`` False (details in :mod:`.numpy_engine`). Sampling needs at least one committed piece
(ValueError otherwise); a window longer than the capacity is a ValueError. Draws are keyed by
``(seed, call counter, window, draw)``; the counter advances once per successful call and is
saved with the buffer, so a resumed run draws the same windows.

Threads: one collector thread may append while other threads sample; samples never see torn or
overwritten rows (NumPy engine: one lock; native: a reader/writer lock around commits vs
gathers).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from amago_fast._native import NATIVE_AVAILABLE
from amago_fast.buffer import persistence
from amago_fast.buffer.checks import Layout, check_time_offset
from amago_fast.buffer.native_engine import NativeEngine, NativeSink
from amago_fast.buffer.numpy_engine import NumpyEngine
from amago_fast.buffer.relabel import RelabelConfig
from amago_fast.spaces import EnvSpec, FieldSpec, GoalSpec

ENGINES = ("numpy", "native")
DEFAULT_ENGINE = "native" if NATIVE_AVAILABLE else "numpy"


class TrajectoryBuffer:
    """Circular store of whole trajectories with window sampling and hindsight relabeling.

    Args:
        fields: the row schema; must contain ``action``, ``reward`` (float32, ()),
            ``terminated`` and ``truncated`` (bool, ()), plus the GoalSpec fields when ``goals``.
        capacity_steps: ring capacity in rows (timesteps). Give this or ``capacity_bytes``.
        num_envs: number of parallel envs that stream rows with ``reset_envs``/``append_step``.
        max_trajectory_len: cut open trajectories at this many transitions (boundary row kept on
            both sides). Default: ``capacity_steps - 1``.
        goals: multi-goal instruction spec; enables ``relabel=`` in ``sample_windows``.
        allow_nonfinite_rewards: accept NaN/inf rewards (rejected by default).
        seed: RNG key for sampling, 0 <= seed < 2**63.
        capacity_bytes: alternative to ``capacity_steps``: as many rows as fit in this many bytes.
        num_threads: gather threads of the native engine (ignored by the NumPy engine);
            default ``min(4, os.cpu_count())``.
        engine: ``"native"`` (the compiled core; the default when it is built) or ``"numpy"``
            (the reference engine; the default without the core).
    """

    def __init__(
        self,
        fields: list[FieldSpec],
        capacity_steps: int | None = None,
        num_envs: int = 1,
        max_trajectory_len: int | None = None,
        goals: GoalSpec | None = None,
        allow_nonfinite_rewards: bool = False,
        seed: int = 0,
        *,
        capacity_bytes: int | None = None,
        num_threads: int | None = None,
        engine: str | None = None,
        _ring: dict[str, np.ndarray] | None = None,
    ) -> None:
        if engine is None:
            engine = DEFAULT_ENGINE
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
        if engine == "native" and not NATIVE_AVAILABLE:
            raise ValueError("engine='native' needs amago_fast._core, which is not available "
                             "(see the warning at import); use engine='numpy'")
        lay = Layout.build(fields, capacity_steps, num_envs, max_trajectory_len, goals,
                           allow_nonfinite_rewards, seed, capacity_bytes, num_threads)
        self._layout = lay
        self.fields: list[FieldSpec] = lay.fields
        self.goals = lay.goals
        self.capacity_steps = lay.capacity_steps
        self.num_envs = lay.num_envs
        self.max_trajectory_len = lay.max_trajectory_len
        self.allow_nonfinite_rewards = lay.allow_nonfinite_rewards
        self.seed = lay.seed
        self.num_threads = lay.num_threads
        self.row_bytes = lay.row_bytes
        C = lay.capacity_steps
        if _ring is None:
            try:
                _ring = {f.name: np.zeros((C, *f.shape), f.dtype) for f in lay.fields}
            except (MemoryError, ValueError) as e:
                raise MemoryError(
                    f"capacity_steps={C}: the buffer needs {C} rows x {lay.row_bytes} bytes = "
                    f"{C * lay.row_bytes / 2**30:.3g} GiB, which cannot be allocated ({e})"
                ) from None
        try:
            self._engine = (NativeEngine if engine == "native" else NumpyEngine)(lay, _ring)
        except MemoryError as e:
            raise MemoryError(
                f"num_envs={lay.num_envs} x max_trajectory_len={lay.max_trajectory_len}: the "
                f"per-env staging cannot be allocated ({e})") from None
        self._counter_lock = threading.Lock()
        # Set on the thread inside sample_windows: a relabel match_fn calling back into this
        # buffer (append, sample, save) is refused instead of deadlocking on the store's lock.
        self._sampling = threading.local()
        self._sample_counter = 0

    @classmethod
    def from_env_spec(cls, spec: EnvSpec, capacity_steps: int | None = None, num_envs: int = 1,
                      **kwargs: Any):
        """Buffer whose schema is ``spec.buffer_fields()`` (goals from ``spec.goals``)."""
        kwargs.setdefault("goals", spec.goals)
        return cls(spec.buffer_fields(), capacity_steps, num_envs, **kwargs)

    # ------------------------------------------------------------------ inspection

    @property
    def engine(self) -> str:
        """``"native"`` or ``"numpy"``: which engine stores the rows."""
        return self._engine.name

    @property
    def storage(self) -> NativeEngine | NumpyEngine:
        """The engine object (pieces table, open lengths, ring arrays; for tests and tools)."""
        return self._engine

    def __len__(self) -> int:
        """Committed rows currently stored."""
        return self._engine.used_rows()

    @property
    def num_trajectories(self) -> int:
        """Committed trajectory pieces currently stored."""
        return self._engine.num_pieces()

    @property
    def total_steps_added(self) -> int:
        """Transitions ever added (appended or imported), evicted ones included."""
        return self._engine.total_steps_added

    @property
    def sample_counter(self) -> int:
        """Successful ``sample_windows`` calls so far (the RNG's call counter)."""
        return self._sample_counter

    def native_sink(self) -> NativeSink | None:
        """The native store as the target of the collector's fused write (see
        :class:`~amago_fast.buffer.native_engine.NativeSink`), or None: the NumPy engine, or a
        subclass that overrides ``write_step`` / ``append_step`` (its writes must go through
        them)."""
        if (not isinstance(self._engine, NativeEngine)
                or type(self).write_step is not TrajectoryBuffer.write_step
                or type(self).append_step is not TrajectoryBuffer.append_step):
            return None
        return self._engine.sink()

    # ------------------------------------------------------------------ writes

    def _refuse_reentry(self, what: str) -> None:
        """RuntimeError when called on a thread that is inside this buffer's sample_windows (a
        relabel match_fn calling back into the buffer), which would deadlock on the store's
        lock (native engine) or change the pieces being sampled (NumPy engine)."""
        if getattr(self._sampling, "active", False):
            raise RuntimeError(
                f"{what}: called from inside this buffer's sample_windows (a relabel match_fn "
                "must not use the buffer it relabels for)")

    def reset_envs(self, rows: Mapping[str, np.ndarray], env_ids: np.ndarray | None = None) -> None:
        """Open new trajectories for ``env_ids`` with their first observation (row 0).

        ``rows`` holds the observation (and goal) fields only, each ``(len(env_ids), *shape)``;
        row 0's action/reward are zero and its flags False. An env's still-open trajectory is
        committed first if it has at least one transition (like a cut), else dropped.
        """
        self._refuse_reentry("reset_envs")
        self._engine.reset_envs(rows, env_ids)

    def append_step(
        self, rows: Mapping[str, np.ndarray], env_ids: np.ndarray | None = None
    ) -> None:
        """Append one full row per env (every field); commits on terminated | truncated."""
        self._refuse_reentry("append_step")
        self._engine.append_step(rows, env_ids)

    def write_step(
        self,
        rows: Mapping[str, np.ndarray],
        env_ids: np.ndarray | None = None,
        starts: np.ndarray | None = None,
    ) -> int:
        """One vector-env step as a collector sees it, in one call: ``rows`` holds every field
        for each env; a row with ``starts[i]`` True opens a new trajectory from its observation
        fields (exactly :meth:`reset_envs`; its action/reward/flags are ignored), every other
        row is appended (exactly :meth:`append_step`). Starts happen before appends. Nothing
        changes if any check fails (e.g. an appended env without an open trajectory).
        Returns the number of appended rows (transitions)."""
        self._refuse_reentry("write_step")
        return self._engine.write_step(rows, env_ids, starts)

    def add_trajectory(self, rows: Mapping[str, np.ndarray], time_offset: int = 0) -> None:
        """Commit a whole trajectory of T+1 >= 2 rows (offline data); cut like streamed ones.
        ``time_offset``: the time_index of its first row (a non-negative int; offset + rows
        must stay inside int64)."""
        self._refuse_reentry("add_trajectory")
        checked = self._layout.check_rows(rows, self._layout.names, None, "add_trajectory")
        n = next(iter(checked.values())).shape[0]
        if n < 2:
            raise ValueError(f"add_trajectory needs at least 2 rows (1 transition), got {n}")
        offset = check_time_offset(time_offset, n, "add_trajectory(time_offset=...)")
        with self._engine.lock:
            self._commit_split(checked, n, offset)

    def _commit_split(self, rows: dict, n: int, offset: int) -> None:
        """Commit n checked rows as one or more pieces of at most max_trajectory_len
        transitions (the boundary row on both sides of a cut). The caller holds the lock."""
        max_rows = self._layout.max_rows
        start = 0
        while True:
            end = min(start + max_rows, n)
            self._engine.commit({k: v[start:end] for k, v in rows.items()}, offset + start)
            if end == n:
                break
            start = end - 1
        self._engine.total_steps_added += n - 1

    # ------------------------------------------------------------------ sampling

    def sample_windows(
        self,
        batch_size: int,
        length: int,
        out: dict[str, np.ndarray] | None = None,
        relabel: RelabelConfig | None = None,
        mode: str = "timesteps",
    ) -> dict[str, np.ndarray]:
        """Sample ``batch_size`` windows of ``length`` steps (``length + 1`` rows).

        Returns (or fills ``out``, which must hold every key with the right shape/dtype, C
        contiguous and writeable) every field ``(B, L+1, *shape)``, ``mask`` (B, L+1) bool,
        ``time_index`` (B, L+1) int64, ``trajectory_id`` (B,) int64 and ``start`` (B,) int64
        (the window's first row inside the stored piece). See :mod:`amago_fast.buffer.relabel`.
        """
        self._refuse_reentry("sample_windows")
        B, L = self._layout.check_sample_args(batch_size, length, relabel, mode)
        if self.num_trajectories == 0:
            raise ValueError(
                "sample_windows: no committed trajectory yet (windows are drawn from finished or "
                "cut trajectories; partial windows are padded and masked)"
            )
        if out is None:
            out = self.allocate_batch(B, L)
        else:
            self._engine.check_out(out, B, L)
        with self._counter_lock:
            counter = self._sample_counter
            self._sample_counter += 1
        self._sampling.active = True
        try:
            self._engine.sample(B, L, mode, relabel, out, counter)
        except Exception:
            with self._counter_lock:
                if self._sample_counter == counter + 1:
                    self._sample_counter = counter
            raise
        finally:
            self._sampling.active = False
        return out

    def allocate_batch(self, batch_size: int, length: int, pin_memory: bool = False) -> dict:
        """Preallocated output arrays for ``sample_windows(batch_size, length, out=...)``.

        With ``pin_memory`` the arrays are NumPy views of pinned torch tensors (needs CUDA).
        """
        B, R = int(batch_size), int(length) + 1
        specs = [(f.name, (B, R, *f.shape), f.dtype) for f in self.fields]
        specs += [("mask", (B, R), np.bool_), ("time_index", (B, R), np.int64),
                  ("trajectory_id", (B,), np.int64), ("start", (B,), np.int64)]
        if not pin_memory:
            return {name: np.zeros(shape, dtype) for name, shape, dtype in specs}
        import torch

        out = {}
        for name, shape, dtype in specs:
            t = torch.zeros(shape, dtype=torch.from_numpy(np.zeros(0, dtype)).dtype,
                            pin_memory=True)
            out[name] = t.numpy()
        return out

    # ------------------------------------------------------------------ persistence

    def save(self, directory: str | os.PathLike) -> None:
        """Snapshot everything (rows, open trajectories, counters, RNG state) into ``directory``
        (format and atomicity in :mod:`amago_fast.buffer.persistence`): a crash at any point
        leaves the previous snapshot loadable."""
        self._refuse_reentry("save")
        eng = self._engine

        def gather():
            state = eng.get_state()
            arrays = persistence.snapshot_arrays(self._layout, eng.ring, state)
            meta = persistence.manifest_fields(self._layout, state, self._sample_counter,
                                               eng.total_steps_added)
            return arrays, meta

        persistence.write_snapshot(directory, eng.lock, gather)

    @classmethod
    def load(cls, directory: str | os.PathLike, mmap: bool = False, verify: bool = True,
             num_threads: int | None = None, engine: str | None = None):
        """Load a snapshot written by :meth:`save`.

        ``mmap=True`` maps the ring arrays copy-on-write (pages load lazily; the snapshot on disk
        is never modified). Hazard: the data file must then stay exactly as it is for the
        buffer's whole life — if it is truncated or replaced in place, the next sample touching
        a lost page kills the process with SIGBUS (the kernel has nothing to back the mapping
        with; no Python error is possible). The default copies the arrays into memory and is
        safe against any later change to the files. ``verify`` checks every array's sha256
        (reads the whole file). Raises :class:`SnapshotError` (a ValueError) on missing,
        corrupt, truncated or wrong-version files, and on a manifest whose ``data_file`` is not
        a plain ``data-<32 hex>.bin`` regular file inside `directory`.
        """
        snap = persistence.read_snapshot(directory, mmap, verify)
        try:
            buf = cls(snap.fields, snap.capacity_steps, snap.num_envs, num_threads=num_threads,
                      engine=engine, _ring=snap.ring, **snap.config)
        except (TypeError, ValueError) as e:
            raise persistence.SnapshotError(
                f"snapshot {directory}: invalid configuration: {e}") from e
        buf._layout.check_state(snap.state)
        buf._engine.set_state(snap.state)
        buf._sample_counter = snap.sample_counter
        buf._engine.total_steps_added = snap.total_steps_added
        return buf

    def export_npz(self, directory: str | os.PathLike) -> list[Path]:
        """Write every committed piece to ``directory/traj_<id>.npz`` (one field per key)."""
        with self._engine.lock:
            return persistence.export_npz(directory, self._iter_pieces())

    def _iter_pieces(self):
        ring = self._engine.ring
        for pid, pos, nrows, offset in self._engine.pieces().tolist():
            idx = (pos + np.arange(nrows)) % self.capacity_steps
            yield pid, {f.name: ring[f.name][idx] for f in self.fields}, offset

    def import_npz(self, paths: Iterable[str | os.PathLike]) -> int:
        """Add trajectories from ``.npz`` files (one per file, all schema fields as keys).

        Every file is read and validated before anything is added (each array's header against
        its stored size, no pickles; ``__time_offset__`` a non-negative integer scalar). Returns
        how many were added. ValueError/TypeError name the file and the problem.
        """
        self._refuse_reentry("import_npz")
        trajs = persistence.read_npz_trajectories(paths, self._layout)
        with self._engine.lock:
            for checked, n, offset in trajs:
                self._commit_split(checked, n, offset)
        return len(trajs)
