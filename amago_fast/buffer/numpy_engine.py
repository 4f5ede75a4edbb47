"""Pure NumPy trajectory buffer: the test oracle for the native core, and its fallback.

:class:`ReferenceTrajectoryBuffer` is the whole buffer in NumPy: input validation, per-env open
trajectories, commits, max-length cuts, the ring with oldest-first eviction, window sampling with
the counter-based RNG, hindsight relabeling, persistence and ``.npz`` interop.
:class:`amago_fast.buffer.TrajectoryBuffer` subclasses it and replaces only the storage engine
(the ``_store_*`` methods) with the C++ core, so validation, persistence and interop are shared
and the engines can be compared exactly (same seed → same windows, masks, relabeled rewards).

Layout (docs/DESIGN.md "Data layout: rows"): a trajectory of T transitions is T+1 rows; row t
holds o_t, a_{t-1}, r_{t-1}, terminated/truncated on arriving at row t, and the goal fields.

Storage: one preallocated ring per field, ``capacity_steps`` rows. Committed trajectory pieces
are contiguous modulo the capacity; committing a piece evicts the oldest whole pieces until it
fits. Open (not yet ended) trajectories live in per-env staging and are copied into the ring
when they end (terminated | truncated) or reach ``max_trajectory_len`` transitions. A cut keeps
the boundary row on both sides: the continuation's row 0 is a copy of the cut piece's last row
(flags untouched), and its ``time_index`` keeps counting. Without ``max_trajectory_len`` a
trajectory is cut at ``capacity_steps - 1`` transitions, the most one piece can hold.

Sampling (``sample_windows(B, L)``): ``mode="timesteps"`` (default) picks a piece with
probability proportional to its number of transitions, ``mode="trajectories"`` uniformly; the
start row is uniform in ``[0, max(T - L, 0)]`` so windows are full whenever the piece is long
enough. Rows past the piece's end are zero-filled with ``mask`` False. Sampling needs at least
one committed piece (ValueError otherwise); a window longer than the capacity is a ValueError.
Every draw comes from the counter-based RNG in :mod:`amago_fast.relabel`, keyed by
``(seed, call counter, window, draw)``; the counter advances once per successful call and is
saved with the buffer, so a resumed run draws the same windows.

Threads: one collector thread may append while other threads sample; samples never see torn or
overwritten rows (here: one lock; natively: a reader/writer lock around commits vs gathers).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import re
import threading
import uuid
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from amago_fast import relabel as rl
from amago_fast.spaces import (
    ACTION,
    REWARD,
    TERMINATED,
    TRUNCATED,
    EnvSpec,
    FieldSpec,
    GoalSpec,
)

FORMAT_NAME = "amago_fast.TrajectoryBuffer"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
META_KEYS = ("mask", "time_index", "trajectory_id", "start")
SAMPLE_MODES = ("timesteps", "trajectories")
NPZ_TIME_OFFSET = "__time_offset__"
NPZ_TRAJECTORY_ID = "__trajectory_id__"
DATA_FILE_PATTERN = re.compile(r"data-[0-9a-f]{32}\.bin")
"""The only data file name a snapshot manifest may give: a plain name inside the snapshot."""
MAX_TIME_INDEX = 2**63 - 1
MAX_NUM_ENVS = 2**31 - 1


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


def _read_npz(path: Any) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` file, each member's header checked against its stored size
    before anything is allocated (a header may declare terabytes) and no pickles. ValueError
    naming the file for anything that is not a well-formed npz."""
    where = f"import_npz: {path}"
    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile, ValueError, EOFError) as e:
        raise ValueError(f"{where}: cannot read it as an .npz file ({e})") from None
    out: dict[str, np.ndarray] = {}
    with zf:
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                raise ValueError(f"{where}: member {info.filename!r} is not a .npy array")
            key = info.filename[:-4]
            try:
                with zf.open(info) as fh:
                    version = np.lib.format.read_magic(fh)
                    if version == (1, 0):
                        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
                    elif version == (2, 0):
                        shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
                    else:
                        raise ValueError(f"unsupported .npy version {version}")
                    if dtype.hasobject:
                        raise ValueError("object (pickled) arrays are refused")
                    count = 1
                    for d in shape:
                        count *= int(d)
                    need = count * dtype.itemsize
                    have = info.file_size - fh.tell()
                    if need != have:
                        raise ValueError(f"its header declares shape {shape} {dtype} "
                                         f"({need} bytes) but it holds {have} bytes")
                    raw = fh.read(need)
                arr = np.frombuffer(raw, dtype=dtype, count=count)
                arr = arr.reshape(shape, order="F" if fortran else "C")
                out[key] = arr if arr.flags.c_contiguous else arr.copy(order="C")
            except (OSError, ValueError, EOFError, zipfile.BadZipFile, RuntimeError) as e:
                raise ValueError(f"{where}: array {key!r}: {e}") from None
    return out


class SnapshotError(ValueError):
    """A saved buffer is missing, corrupt, truncated or of another format version."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _goal_to_json(goals: GoalSpec | None) -> dict | None:
    if goals is None:
        return None
    return {
        "k": goals.k,
        "goal_dim": goals.goal_dim,
        "goal_dtype": str(goals.goal_dtype),
        "match": goals.match,
        "eps": goals.eps,
        "goal_reward": goals.goal_reward,
        "goal_field": goals.goal_field,
        "achieved_field": goals.achieved_field,
        "active_field": goals.active_field,
        "completed_field": goals.completed_field,
    }


class ReferenceTrajectoryBuffer:
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
    """

    engine = "numpy"

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
        _ring: dict[str, np.ndarray] | None = None,
    ) -> None:
        fields = list(fields)
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

        self.fields: list[FieldSpec] = fields
        self.goals = goals
        self.capacity_steps = capacity_steps
        self.num_envs = int(num_envs)
        self.max_trajectory_len = int(max_trajectory_len)
        self.allow_nonfinite_rewards = bool(allow_nonfinite_rewards)
        self.seed = int(seed)
        self.num_threads = int(num_threads)
        self.row_bytes = row_bytes
        self._by_name = by_name
        self._obs_names = [
            f.name for f in fields if f.name not in (ACTION, REWARD, TERMINATED, TRUNCATED)
        ]
        self._max_rows = self.max_trajectory_len + 1
        if _ring is None:
            try:
                _ring = {f.name: np.zeros((capacity_steps, *f.shape), f.dtype) for f in fields}
            except (MemoryError, ValueError) as e:
                raise MemoryError(
                    f"capacity_steps={capacity_steps}: the buffer needs {capacity_steps} rows x "
                    f"{row_bytes} bytes = {capacity_steps * row_bytes / 2**30:.3g} GiB, which "
                    f"cannot be allocated ({e})") from None
        self._ring = _ring
        self._lock = threading.RLock()  # mutations and save (one writer at a time)
        self._counter_lock = threading.Lock()
        # Set on the thread inside sample_windows: a relabel match_fn calling back into this
        # buffer (append, sample, save) is refused instead of deadlocking on the store's lock.
        self._sampling = threading.local()
        self._sample_counter = 0
        self._total_steps_added = 0
        try:
            self._store_init()
        except MemoryError as e:
            raise MemoryError(
                f"num_envs={self.num_envs} x max_trajectory_len={self.max_trajectory_len}: the "
                f"per-env staging cannot be allocated ({e})") from None

    @classmethod
    def from_env_spec(cls, spec: EnvSpec, capacity_steps: int | None = None, num_envs: int = 1,
                      **kwargs: Any):
        """Buffer whose schema is ``spec.buffer_fields()`` (goals from ``spec.goals``)."""
        kwargs.setdefault("goals", spec.goals)
        return cls(spec.buffer_fields(), capacity_steps, num_envs, **kwargs)

    # ------------------------------------------------------------------ public API

    def __len__(self) -> int:
        """Committed rows currently stored."""
        return self._store_used_rows()

    @property
    def num_trajectories(self) -> int:
        """Committed trajectory pieces currently stored."""
        return self._store_num_pieces()

    @property
    def total_steps_added(self) -> int:
        """Transitions ever added (appended or imported), evicted ones included."""
        return self._total_steps_added

    @property
    def sample_counter(self) -> int:
        """Successful ``sample_windows`` calls so far (the RNG's call counter)."""
        return self._sample_counter

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
        ids = self._check_env_ids(env_ids)
        checked = self._check_rows(rows, self._obs_names, len(ids), "reset_envs")
        with self._lock:
            self._store_reset(ids, checked)

    def append_step(
        self, rows: Mapping[str, np.ndarray], env_ids: np.ndarray | None = None
    ) -> None:
        """Append one full row per env (every field); commits on terminated | truncated."""
        self._refuse_reentry("append_step")
        ids = self._check_env_ids(env_ids)
        checked = self._check_rows(rows, [f.name for f in self.fields], len(ids), "append_step")
        with self._lock:
            open_len = self._store_open_lengths()
            closed = [int(e) for e in ids if open_len[e] == 0]
            if closed:
                raise ValueError(
                    f"append_step: envs {closed[:8]} have no open trajectory (call reset_envs)"
                )
            self._store_append(ids, checked)
            self._total_steps_added += len(ids)

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
        ids = self._check_env_ids(env_ids)
        checked = self._check_rows(rows, [f.name for f in self.fields], len(ids), "write_step")
        if starts is None:
            starts = np.zeros(len(ids), np.bool_)
        elif not (isinstance(starts, np.ndarray) and starts.dtype == np.bool_
                  and starts.shape == (len(ids),)):
            got = (f"{starts.dtype} {starts.shape}" if isinstance(starts, np.ndarray)
                   else type(starts).__name__)
            raise ValueError(f"write_step: starts must be a bool array of shape "
                             f"({len(ids)},), got {got}")
        cont = ~starts
        with self._lock:
            open_len = self._store_open_lengths()
            closed = [int(e) for e in ids[cont] if open_len[e] == 0]
            if closed:
                raise ValueError(
                    f"write_step: envs {closed[:8]} have no open trajectory (call reset_envs)"
                )
            if starts.any():
                self._store_reset(ids[starts], {k: checked[k][starts] for k in self._obs_names})
            appended = int(cont.sum())
            if appended:
                self._store_append(ids[cont], {k: v[cont] for k, v in checked.items()})
            self._total_steps_added += appended
        return appended

    def add_trajectory(self, rows: Mapping[str, np.ndarray], time_offset: int = 0) -> None:
        """Commit a whole trajectory of T+1 >= 2 rows (offline data); cut like streamed ones.
        ``time_offset``: the time_index of its first row (a non-negative int; offset + rows
        must stay inside int64)."""
        self._refuse_reentry("add_trajectory")
        checked = self._check_rows(rows, [f.name for f in self.fields], None, "add_trajectory")
        n = next(iter(checked.values())).shape[0]
        if n < 2:
            raise ValueError(f"add_trajectory needs at least 2 rows (1 transition), got {n}")
        offset = check_time_offset(time_offset, n, "add_trajectory(time_offset=...)")
        with self._lock:
            self._commit_split(checked, n, offset)
            self._total_steps_added += n - 1

    def sample_windows(
        self,
        batch_size: int,
        length: int,
        out: dict[str, np.ndarray] | None = None,
        relabel: rl.RelabelConfig | None = None,
        mode: str = "timesteps",
    ) -> dict[str, np.ndarray]:
        """Sample ``batch_size`` windows of ``length`` steps (``length + 1`` rows).

        Returns (or fills ``out``, which must hold every key with the right shape/dtype, C
        contiguous and writeable) every field ``(B, L+1, *shape)``, ``mask`` (B, L+1) bool,
        ``time_index`` (B, L+1) int64, ``trajectory_id`` (B,) int64 and ``start`` (B,) int64
        (the window's first row inside the stored piece). See :mod:`amago_fast.relabel`.
        """
        self._refuse_reentry("sample_windows")
        B, L = self._check_sample_args(batch_size, length, relabel, mode)
        if out is None:
            out = self.allocate_batch(B, L)
        else:
            self._check_out(out, B, L)
        with self._counter_lock:
            counter = self._sample_counter
            self._sample_counter += 1
        self._sampling.active = True
        try:
            self._store_sample(B, L, mode, relabel, out, counter)
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
        """Snapshot everything (rows, open trajectories, counters, RNG state) into ``directory``.

        All arrays go, raw and 64-byte aligned, into one fresh ``data-<nonce>.bin`` (fsynced
        once: one fsync per array file cost ~17 ms each on the dev machine), with offset, shape,
        dtype and sha256 of each array in ``manifest.json``. The manifest is replaced atomically
        (temp file + fsync + rename) and only then is the previous data file removed, so a crash
        at any point leaves the previous snapshot loadable.
        """
        self._refuse_reentry("save")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        data_name = f"data-{uuid.uuid4().hex}.bin"
        data_path = directory / data_name
        try:
            with self._lock:
                state = self._store_get_state()
                arrays: list[tuple[str, np.ndarray]] = []
                for i, f in enumerate(self.fields):
                    arrays.append((f"ring_{i}", self._ring[f.name]))
                    arrays.append((f"open_{i}", state["open_rows"][f.name]))
                arrays += [("pieces", state["pieces"]), ("open_len", state["open_len"]),
                           ("open_offset", state["open_offset"])]
                entries: dict[str, dict] = {}
                with open(data_path, "wb") as fh:
                    offset = 0
                    for key, arr in arrays:
                        arr = np.ascontiguousarray(arr)
                        pad = (-offset) % 64
                        fh.write(b"\0" * pad)
                        offset += pad
                        raw = memoryview(arr).cast("B") if arr.size else b""
                        fh.write(raw)
                        entries[key] = {"offset": offset, "bytes": arr.nbytes,
                                        "shape": list(arr.shape), "dtype": arr.dtype.str,
                                        "sha256": hashlib.sha256(raw).hexdigest()}
                        offset += arr.nbytes
                    fh.flush()
                    os.fsync(fh.fileno())
                manifest = {
                    "format": FORMAT_NAME,
                    "format_version": FORMAT_VERSION,
                    "data_file": data_name,
                    "data_bytes": offset,
                    "schema": [
                        {"name": f.name, "shape": list(f.shape), "dtype": str(f.dtype)}
                        for f in self.fields
                    ],
                    "goals": _goal_to_json(self.goals),
                    "capacity_steps": self.capacity_steps,
                    "num_envs": self.num_envs,
                    "max_trajectory_len": self.max_trajectory_len,
                    "allow_nonfinite_rewards": self.allow_nonfinite_rewards,
                    "seed": self.seed,
                    "sample_counter": self._sample_counter,
                    "total_steps_added": self._total_steps_added,
                    "write_pos": int(state["write_pos"]),
                    "next_id": int(state["next_id"]),
                    "arrays": entries,
                }
            tmp = directory / f".{MANIFEST}.{uuid.uuid4().hex}.tmp"
            with open(tmp, "w") as fh:
                json.dump(manifest, fh, indent=1)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, directory / MANIFEST)
            _fsync_dir(directory)
        except BaseException:
            data_path.unlink(missing_ok=True)
            raise
        for old in directory.glob("data-*.bin"):
            if old.name != data_name:
                old.unlink(missing_ok=True)
        for stale in directory.glob(f".{MANIFEST}.*.tmp"):
            stale.unlink(missing_ok=True)

    @classmethod
    def load(cls, directory: str | os.PathLike, mmap: bool = False, verify: bool = True,
             num_threads: int | None = None):
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
        directory = Path(directory)
        mpath, manifest = _read_manifest(directory)
        try:
            fields = _manifest_fields(manifest)
            g = manifest["goals"]
            goals = (None if g is None
                     else GoalSpec(**{**g, "goal_dtype": np.dtype(g["goal_dtype"])}))
            data_name = manifest["data_file"]
            if not isinstance(data_name, str) or not DATA_FILE_PATTERN.fullmatch(data_name):
                raise SnapshotError(
                    f"snapshot {directory}: data_file {data_name!r} is not a plain "
                    "data-<32 hex digits>.bin name inside the snapshot folder")
            data_path = directory / data_name
            data_bytes = int(manifest["data_bytes"])
            entries = dict(manifest["arrays"])
            capacity = int(manifest["capacity_steps"])
            num_envs = int(manifest["num_envs"])
        except (KeyError, TypeError, ValueError) as e:
            raise SnapshotError(f"corrupt buffer manifest {mpath}: {e!r}") from e
        if data_path.is_symlink() or (data_path.exists() and not data_path.is_file()):
            raise SnapshotError(f"snapshot {directory}: data file {data_path.name} is not a "
                                "regular file")
        if not data_path.is_file():
            raise SnapshotError(f"snapshot {directory}: data file {data_path.name} is missing")
        if data_path.stat().st_size != data_bytes:
            raise SnapshotError(
                f"snapshot {directory}: {data_path.name} is truncated or has the wrong size "
                f"({data_path.stat().st_size} bytes, manifest says {data_bytes})"
            )

        def get(key: str, shape: tuple | None, dtype: np.dtype, use_mmap: bool = False):
            info = entries.get(key)
            try:
                off, nbytes = int(info["offset"]), int(info["bytes"])
                have_shape, have_dtype = tuple(info["shape"]), np.dtype(info["dtype"])
            except (KeyError, TypeError, ValueError) as e:
                raise SnapshotError(f"snapshot {directory}: bad manifest entry {key!r}") from e
            if have_dtype != dtype or (shape is not None and have_shape != shape):
                raise SnapshotError(
                    f"snapshot {directory}: array {key!r} is {have_shape} {have_dtype}, "
                    f"expected {shape} {dtype}"
                )
            count = int(np.prod(have_shape, dtype=np.int64))
            if count * dtype.itemsize != nbytes or off < 0 or off + nbytes > data_bytes:
                raise SnapshotError(f"snapshot {directory}: array {key!r} is out of bounds")
            if count == 0:
                return np.zeros(have_shape, dtype)
            if verify:
                with open(data_path, "rb") as fh:
                    fh.seek(off)
                    h = hashlib.sha256()
                    left = nbytes
                    while left:
                        chunk = fh.read(min(left, 1 << 22))
                        if not chunk:
                            break
                        h.update(chunk)
                        left -= len(chunk)
                if h.hexdigest() != info.get("sha256"):
                    raise SnapshotError(f"snapshot {directory}: checksum mismatch in {key!r}")
            if use_mmap:
                return np.memmap(data_path, dtype=dtype, mode="c", offset=off, shape=have_shape)
            return np.fromfile(data_path, dtype=dtype, count=count, offset=off).reshape(have_shape)

        ring = {f.name: get(f"ring_{i}", (capacity, *f.shape), f.dtype, mmap)
                for i, f in enumerate(fields)}
        i64 = np.dtype(np.int64)
        state = {
            "pieces": get("pieces", None, i64),
            "open_len": get("open_len", (num_envs,), i64),
            "open_offset": get("open_offset", (num_envs,), i64),
        }
        try:
            state["write_pos"] = int(manifest["write_pos"])
            state["next_id"] = int(manifest["next_id"])
            sample_counter = int(manifest["sample_counter"])
            total_steps = int(manifest["total_steps_added"])
            config = dict(max_trajectory_len=int(manifest["max_trajectory_len"]), goals=goals,
                          allow_nonfinite_rewards=bool(manifest["allow_nonfinite_rewards"]),
                          seed=int(manifest["seed"]))
        except (KeyError, TypeError, ValueError) as e:
            raise SnapshotError(f"corrupt buffer manifest {mpath}: {e!r}") from e
        total_open = int(state["open_len"].sum())
        state["open_rows"] = {f.name: get(f"open_{i}", (total_open, *f.shape), f.dtype)
                              for i, f in enumerate(fields)}
        try:
            buf = cls(fields, capacity, num_envs, num_threads=num_threads, _ring=ring, **config)
        except (TypeError, ValueError) as e:
            raise SnapshotError(f"snapshot {directory}: invalid configuration: {e}") from e
        buf._check_state(state)
        buf._store_set_state(state)
        buf._sample_counter = sample_counter
        buf._total_steps_added = total_steps
        return buf

    def export_npz(self, directory: str | os.PathLike) -> list[Path]:
        """Write every committed piece to ``directory/traj_<id>.npz`` (one field per key)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        paths = []
        with self._lock:
            for pid, rows, offset in self._iter_pieces():
                path = directory / f"traj_{pid:012d}.npz"
                tmp = directory / f".traj_{pid:012d}.{uuid.uuid4().hex}.tmp.npz"
                np.savez(tmp, **rows, **{NPZ_TIME_OFFSET: np.int64(offset),
                                          NPZ_TRAJECTORY_ID: np.int64(pid)})
                os.replace(tmp, path)
                paths.append(path)
        return paths

    def import_npz(self, paths: Iterable[str | os.PathLike]) -> int:
        """Add trajectories from ``.npz`` files (one per file, all schema fields as keys).

        Every file is read and validated before anything is added (each array's header against
        its stored size, no pickles; ``__time_offset__`` a non-negative integer scalar). Returns
        how many were added. ValueError/TypeError name the file and the problem.
        """
        self._refuse_reentry("import_npz")
        if isinstance(paths, (str, bytes, os.PathLike)):
            raise TypeError(f"import_npz: paths must be a list of file paths, got one "
                            f"{type(paths).__name__} ({paths!r}); wrap it in a list")
        trajs = []
        names = [f.name for f in self.fields]
        for p in paths:
            data = _read_npz(p)
            raw_offset = data.pop(NPZ_TIME_OFFSET, np.int64(0))
            data.pop(NPZ_TRAJECTORY_ID, None)
            try:
                checked = self._check_rows(data, names, None, f"import_npz({p})")
            except (TypeError, ValueError) as e:
                raise type(e)(f"import_npz: {p}: {e}") from e
            n = next(iter(checked.values())).shape[0]
            if n < 2:
                raise ValueError(f"import_npz: {p} has {n} rows, need at least 2")
            offset = check_time_offset(raw_offset, n, f"import_npz: {p}: {NPZ_TIME_OFFSET}")
            trajs.append((checked, n, offset))
        with self._lock:
            for checked, n, offset in trajs:
                self._commit_split(checked, n, offset)
                self._total_steps_added += n - 1
        return len(trajs)

    # ------------------------------------------------------------------ validation

    def _check_env_ids(self, env_ids) -> np.ndarray:
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

    def _check_rows(self, rows, names: list[str], n: int | None, what: str) -> dict:
        if not isinstance(rows, Mapping):
            raise TypeError(f"{what}: rows must be a dict of arrays, got {type(rows).__name__}")
        allowed = set(names)
        for key in rows:
            if key not in allowed:
                if key in self._by_name:
                    raise ValueError(f"{what}: field {key!r} is not accepted here")
                raise ValueError(f"{what}: unknown field {key!r}")
        missing = [name for name in names if name not in rows]
        if missing:
            raise ValueError(f"{what}: missing fields {missing}")
        out = {}
        for name in names:
            spec = self._by_name[name]
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

    def _check_sample_args(self, batch_size, length, relabel, mode) -> tuple[int, int]:
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
            if not isinstance(relabel, rl.RelabelConfig):
                raise TypeError("relabel must be a RelabelConfig or None")
            if self.goals is None:
                raise ValueError("relabel needs a buffer built with goals=GoalSpec(...)")
        if self.num_trajectories == 0:
            raise ValueError(
                "sample_windows: no committed trajectory yet (windows are drawn from finished or "
                "cut trajectories; partial windows are padded and masked)"
            )
        return int(batch_size), int(length)

    def _check_out(self, out, B: int, L: int) -> None:
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

    def _check_state(self, state: dict) -> None:
        """Consistency checks of a loaded state (a corrupt manifest must not crash the engine)."""
        C = self.capacity_steps
        p = state["pieces"]
        if p.ndim != 2 or p.shape[1] != 4:
            raise SnapshotError(f"snapshot pieces table has shape {p.shape}, expected (n, 4)")
        ol, oo = state["open_len"], state["open_offset"]
        ok = (
            0 <= state["write_pos"] < C
            and np.all((p[:, 1] >= 0) & (p[:, 1] < C) & (p[:, 2] >= 2)
                       & (p[:, 2] <= self._max_rows) & (p[:, 3] >= 0))
            and int(p[:, 2].sum()) <= C
            and np.all((ol >= 0) & (ol <= self._max_rows))
            and np.all(oo >= 0)
            # time offsets leave every row's time_index inside int64 (no wrap to negative)
            and np.all(p[:, 3] <= MAX_TIME_INDEX - p[:, 2])
            and np.all(oo <= MAX_TIME_INDEX - self._max_rows)
            and state["next_id"] >= (int(p[:, 0].max()) + 1 if len(p) else 0)
        )
        if len(p):
            ends = (p[:, 1] + p[:, 2]) % C
            ok = ok and bool(np.all(ends[:-1] == p[1:, 1])) and int(ends[-1]) == state["write_pos"]
        if not ok:
            raise SnapshotError("snapshot state is inconsistent (pieces/open trajectories)")

    # ------------------------------------------------------------------ shared engine helpers

    def _commit_split(self, rows: dict, n: int, offset: int) -> None:
        """Commit n rows as one or more pieces of at most max_trajectory_len transitions."""
        start = 0
        while True:
            end = min(start + self._max_rows, n)
            self._store_commit({k: v[start:end] for k, v in rows.items()}, offset + start)
            if end == n:
                break
            start = end - 1

    def _iter_pieces(self):
        for pid, pos, nrows, offset in self._store_pieces().tolist():
            idx = (pos + np.arange(nrows)) % self.capacity_steps
            yield pid, {f.name: self._ring[f.name][idx] for f in self.fields}, offset

    # ------------------------------------------------------------------ NumPy engine

    def _store_init(self) -> None:
        E = self.num_envs
        self._pieces: list[list[int]] = []  # [id, pos, rows, time_offset], oldest first
        self._cum: list[int] = []  # cumulative transitions up to and including each piece
        self._write_pos = 0
        self._used = 0
        self._next_id = 0
        self._open_len = np.zeros(E, np.int64)
        self._open_offset = np.zeros(E, np.int64)
        self._staging = {f.name: np.zeros((E, self._max_rows, *f.shape), f.dtype)
                         for f in self.fields} if E * self._max_rows * self.row_bytes <= 1 << 28 \
            else None
        self._staging_lists: list[dict] | None = (
            None if self._staging is not None else [dict() for _ in range(E)]
        )

    def _stage_rows(self, e: int) -> dict:
        """Per-env staging arrays (preallocated when small, grown on demand otherwise)."""
        if self._staging is not None:
            return {k: v[e] for k, v in self._staging.items()}
        return self._staging_lists[e]

    def _stage_write(self, e: int, t: int, row: dict) -> None:
        if self._staging is not None:
            for k, v in row.items():
                self._staging[k][e, t] = v
            return
        st = self._staging_lists[e]
        for f in self.fields:
            arr = st.get(f.name)
            if arr is None or arr.shape[0] <= t:
                new = np.zeros((max(8, 2 * (t + 1)) if arr is None else min(
                    self._max_rows, 2 * arr.shape[0]), *f.shape), f.dtype)
                if arr is not None:
                    new[: arr.shape[0]] = arr
                st[f.name] = arr = new
            arr[t] = row.get(f.name, 0)

    def _store_used_rows(self) -> int:
        return self._used

    def _store_num_pieces(self) -> int:
        return len(self._pieces)

    def _store_open_lengths(self) -> np.ndarray:
        return self._open_len

    def _store_pieces(self) -> np.ndarray:
        return np.array(self._pieces, dtype=np.int64).reshape(-1, 4)

    def _store_commit(self, rows: dict, offset: int) -> None:
        n = next(iter(rows.values())).shape[0]
        C = self.capacity_steps
        while self._used + n > C:
            old = self._pieces.pop(0)
            self._cum.pop(0)
            self._used -= old[2]
        idx = (self._write_pos + np.arange(n)) % C
        for f in self.fields:
            self._ring[f.name][idx] = rows[f.name]
        self._pieces.append([self._next_id, self._write_pos, n, offset])
        self._cum.append((self._cum[-1] if self._cum else 0) + n - 1)
        self._next_id += 1
        self._used += n
        self._write_pos = (self._write_pos + n) % C

    def _commit_open(self, e: int) -> None:
        n = int(self._open_len[e])
        st = self._stage_rows(e)
        self._store_commit({f.name: st[f.name][:n] for f in self.fields}, int(self._open_offset[e]))

    def _store_reset(self, ids: np.ndarray, rows: dict) -> None:
        for i, e in enumerate(ids.tolist()):
            if self._open_len[e] >= 2:
                self._commit_open(e)
            row = {f.name: np.zeros(f.shape, f.dtype) for f in self.fields}
            for k in self._obs_names:
                row[k] = rows[k][i]
            self._stage_write(e, 0, row)
            self._open_len[e] = 1
            self._open_offset[e] = 0

    def _store_append(self, ids: np.ndarray, rows: dict) -> None:
        term, trunc = rows[TERMINATED], rows[TRUNCATED]
        for i, e in enumerate(ids.tolist()):
            t = int(self._open_len[e])
            self._stage_write(e, t, {k: v[i] for k, v in rows.items()})
            self._open_len[e] = t + 1
            if term[i] or trunc[i]:
                self._commit_open(e)
                self._open_len[e] = 0
            elif t + 1 == self._max_rows:
                self._commit_open(e)
                st = self._stage_rows(e)
                self._stage_write(e, 0, {f.name: st[f.name][t].copy() for f in self.fields})
                self._open_len[e] = 1
                self._open_offset[e] += t

    def _store_get_state(self) -> dict:
        ol = self._open_len.copy()
        open_rows = {}
        for f in self.fields:
            parts = [self._stage_rows(e)[f.name][: ol[e]] for e in range(self.num_envs) if ol[e]]
            open_rows[f.name] = (np.concatenate(parts) if parts
                                 else np.zeros((0, *f.shape), f.dtype))
        return {"pieces": self._store_pieces(), "open_len": ol,
                "open_offset": self._open_offset.copy(), "open_rows": open_rows,
                "write_pos": self._write_pos, "next_id": self._next_id}

    def _store_set_state(self, state: dict) -> None:
        self._store_init()
        self._pieces = [list(map(int, r)) for r in state["pieces"]]
        cum = 0
        self._cum = []
        for p in self._pieces:
            cum += p[2] - 1
            self._cum.append(cum)
        self._used = sum(p[2] for p in self._pieces)
        self._write_pos = int(state["write_pos"])
        self._next_id = int(state["next_id"])
        at = 0
        for e in range(self.num_envs):
            n = int(state["open_len"][e])
            for t in range(n):
                self._stage_write(e, t, {k: v[at + t] for k, v in state["open_rows"].items()})
            at += n
            self._open_len[e] = n
            self._open_offset[e] = int(state["open_offset"][e])

    def _store_sample(self, B: int, L: int, mode: str, relabel, out: dict, counter: int) -> None:
        with self._lock:
            if not self._pieces:
                raise ValueError("sample_windows: no committed trajectory yet")
            C = self.capacity_steps
            base = self._cum[0] - (self._pieces[0][2] - 1)
            total = self._cum[-1] - base
            for b in range(B):
                x0 = rl.draw(self.seed, counter, b, rl.DRAW_TRAJECTORY)
                if mode == "timesteps":
                    i = bisect.bisect_right(self._cum, base + rl.uniform_int(x0, total))
                else:
                    i = rl.uniform_int(x0, len(self._pieces))
                pid, pos, nrows, offset = self._pieces[i]
                T = nrows - 1
                s = rl.uniform_int(rl.draw(self.seed, counter, b, rl.DRAW_START),
                                   max(T - L, 0) + 1)
                valid = min(L, T - s) + 1
                idx = (pos + s + np.arange(valid)) % C
                for f in self.fields:
                    dst = out[f.name][b]
                    dst[:valid] = self._ring[f.name][idx]
                    dst[valid:] = 0
                out["mask"][b, :valid] = True
                out["mask"][b, valid:] = False
                out["time_index"][b, :valid] = offset + s + np.arange(valid)
                out["time_index"][b, valid:] = 0
                out["trajectory_id"][b] = pid
                out["start"][b] = s
                if relabel is not None:
                    self._relabel_window(relabel, counter, b, pos, T, s, valid, out)

    def _relabel_window(self, cfg, counter, b, pos, T, s, valid, out) -> None:
        g = self.goals
        k = g.k
        C = self.capacity_steps
        idx = (pos + np.arange(T + 1)) % C
        ach = self._ring[g.achieved_field][idx]
        instr = self._ring[g.goal_field][pos].copy()
        active0 = int(self._ring[g.active_field][pos])
        completed0 = self._ring[g.completed_field][pos].copy()
        M = rl.match_matrix(g, ach, instr, cfg.match_fn)
        plan = rl.plan_relabel(cfg, self.seed, counter, b, M, active0, k, T, s)
        last = s + valid - 1
        if plan:
            for j, row in plan:
                instr[j] = ach[row]
            M = rl.match_matrix(g, ach[: last + 1], instr, cfg.match_fn)
        reached, _ = rl.replay(M, active0, k, last)
        reward = np.float32(g.goal_reward)
        # The state of row t is the state after replaying rows 1..t; first bring it to row s.
        active = active0
        completed = completed0.copy()
        for t in range(1, s + 1):
            j = reached[t]
            if j >= 0:
                completed[j] = True
                active += 1
        cut = None
        for t in range(s, last + 1):
            w = t - s
            if t > s:
                j = reached[t]
                if j >= 0:
                    completed[j] = True
                    active += 1
            o = out
            o[g.goal_field][b, w] = instr
            o[g.active_field][b, w] = active
            o[g.completed_field][b, w] = completed
            if t >= 1:
                o[REWARD][b, w] = reward if reached[t] >= 0 else np.float32(0)
                o[TERMINATED][b, w] = active == k
                if active == k:
                    cut = w + 1
                    break
        if cut is not None and cut < valid:
            for f in self.fields:
                out[f.name][b, cut:] = 0
            out["mask"][b, cut:] = False
            out["time_index"][b, cut:] = 0


def _read_manifest(directory: Path) -> tuple[Path, dict]:
    """A snapshot's manifest path and contents, checked to be this format and version."""
    mpath = directory / MANIFEST
    if not mpath.is_file():
        raise SnapshotError(f"no buffer snapshot at {directory} ({MANIFEST} missing)")
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SnapshotError(f"corrupt buffer manifest {mpath}: {e}") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise SnapshotError(f"{mpath} is not a {FORMAT_NAME} snapshot")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise SnapshotError(
            f"{mpath}: format version {manifest.get('format_version')!r} is not supported "
            f"(this build reads version {FORMAT_VERSION})"
        )
    return mpath, manifest


def _manifest_fields(manifest: dict) -> list[FieldSpec]:
    return [FieldSpec(d["name"], tuple(d["shape"]), np.dtype(d["dtype"]))
            for d in manifest["schema"]]


def snapshot_fields(directory: str | os.PathLike) -> list[FieldSpec]:
    """The row schema of the snapshot in `directory`, from its manifest alone (no data read);
    SnapshotError as :meth:`ReferenceTrajectoryBuffer.load` for a missing or corrupt one."""
    mpath, manifest = _read_manifest(Path(directory))
    try:
        return _manifest_fields(manifest)
    except (KeyError, TypeError, ValueError) as e:
        raise SnapshotError(f"corrupt buffer manifest {mpath}: {e!r}") from e
