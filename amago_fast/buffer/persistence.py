"""The buffer on disk: snapshots (``save`` / ``load``) and ``.npz`` interop.

A snapshot is one ``data-<nonce>.bin`` holding every array raw and 64-byte aligned, and a
``manifest.json`` with each array's offset, shape, dtype and sha256 plus the configuration and
counters. Writes are atomic: the data file is new and fsynced once (one fsync per array file
cost ~17 ms each on the dev machine), the manifest is replaced by temp file + fsync + rename,
and only then is the previous data file removed, so a crash at any point leaves the previous
snapshot loadable. Reading trusts nothing: the manifest may only name a plain
``data-<32 hex>.bin`` regular file inside the snapshot, every array is bounds- and
shape-checked (and its sha256 verified by default), ``.npz`` members are header-checked
against their stored size before anything is allocated, and no pickle is ever loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from threading import RLock
from typing import Any

import numpy as np

from amago_fast.buffer.checks import Layout, SnapshotError, check_time_offset
from amago_fast.spaces import FieldSpec, GoalSpec

FORMAT_NAME = "amago_fast.TrajectoryBuffer"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
NPZ_TIME_OFFSET = "__time_offset__"
NPZ_TRAJECTORY_ID = "__trajectory_id__"
DATA_FILE_PATTERN = re.compile(r"data-[0-9a-f]{32}\.bin")
"""The only data file name a snapshot manifest may give: a plain name inside the snapshot."""


@dataclass
class Snapshot:
    """What :func:`read_snapshot` hands the buffer: its configuration, the ring arrays (copied
    or copy-on-write mapped), the engine state (pieces, open trajectories) and the counters."""

    fields: list[FieldSpec]
    capacity_steps: int
    num_envs: int
    config: dict[str, Any]
    ring: dict[str, np.ndarray]
    state: dict[str, Any]
    sample_counter: int
    total_steps_added: int


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


def snapshot_arrays(layout: Layout, ring: dict[str, np.ndarray],
                    state: dict) -> list[tuple[str, np.ndarray]]:
    """The arrays of a snapshot, in file order: each field's ring and open rows, then the
    pieces table and the open trajectories' lengths and offsets."""
    arrays: list[tuple[str, np.ndarray]] = []
    for i, f in enumerate(layout.fields):
        arrays.append((f"ring_{i}", ring[f.name]))
        arrays.append((f"open_{i}", state["open_rows"][f.name]))
    arrays += [("pieces", state["pieces"]), ("open_len", state["open_len"]),
               ("open_offset", state["open_offset"])]
    return arrays


def manifest_fields(layout: Layout, state: dict, sample_counter: int,
                    total_steps_added: int) -> dict:
    """The manifest's configuration and counters (everything but the array entries)."""
    return {
        "schema": [{"name": f.name, "shape": list(f.shape), "dtype": str(f.dtype)}
                   for f in layout.fields],
        "goals": _goal_to_json(layout.goals),
        "capacity_steps": layout.capacity_steps,
        "num_envs": layout.num_envs,
        "max_trajectory_len": layout.max_trajectory_len,
        "allow_nonfinite_rewards": layout.allow_nonfinite_rewards,
        "seed": layout.seed,
        "sample_counter": sample_counter,
        "total_steps_added": total_steps_added,
        "write_pos": int(state["write_pos"]),
        "next_id": int(state["next_id"]),
    }


def write_snapshot(directory: str | os.PathLike, lock: RLock,
                   gather: Callable[[], tuple[list[tuple[str, np.ndarray]], dict]]) -> None:
    """Write a snapshot into ``directory``: ``gather()`` (called under ``lock``, which is held
    while the arrays are written, so no writer changes them meanwhile) returns the arrays and
    the manifest fields (:func:`snapshot_arrays`, :func:`manifest_fields`)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    data_name = f"data-{uuid.uuid4().hex}.bin"
    data_path = directory / data_name
    try:
        with lock:
            arrays, meta = gather()
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
            manifest = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION,
                        "data_file": data_name, "data_bytes": offset, **meta,
                        "arrays": entries}
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


def read_snapshot(directory: str | os.PathLike, mmap: bool, verify: bool) -> Snapshot:
    """Read and check a snapshot written by :func:`write_snapshot` (semantics of ``mmap`` and
    ``verify`` in :meth:`TrajectoryBuffer.load`). SnapshotError for anything missing, corrupt,
    truncated, of another version, or naming a data file outside the snapshot."""
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
    state: dict[str, Any] = {
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
    return Snapshot(fields=fields, capacity_steps=capacity, num_envs=num_envs, config=config,
                    ring=ring, state=state, sample_counter=sample_counter,
                    total_steps_added=total_steps)


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
    SnapshotError as :meth:`TrajectoryBuffer.load` for a missing or corrupt one."""
    mpath, manifest = _read_manifest(Path(directory))
    try:
        return _manifest_fields(manifest)
    except (KeyError, TypeError, ValueError) as e:
        raise SnapshotError(f"corrupt buffer manifest {mpath}: {e!r}") from e


def export_npz(directory: str | os.PathLike,
               pieces: Iterable[tuple[int, dict[str, np.ndarray], int]]) -> list[Path]:
    """Write each ``(trajectory id, rows, time offset)`` to ``directory/traj_<id>.npz`` (one
    field per key, plus the offset and id), each through a temporary file and a rename."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for pid, rows, offset in pieces:
        path = directory / f"traj_{pid:012d}.npz"
        tmp = directory / f".traj_{pid:012d}.{uuid.uuid4().hex}.tmp.npz"
        np.savez(tmp, **rows, **{NPZ_TIME_OFFSET: np.int64(offset),
                                  NPZ_TRAJECTORY_ID: np.int64(pid)})
        os.replace(tmp, path)
        paths.append(path)
    return paths


def read_npz_trajectories(paths: Iterable[str | os.PathLike],
                          layout: Layout) -> list[tuple[dict, int, int]]:
    """Every file of ``paths`` read and checked against ``layout``: a list of (rows, number of
    rows, time offset). ValueError / TypeError naming the file and the problem."""
    if isinstance(paths, (str, bytes, os.PathLike)):
        raise TypeError(f"import_npz: paths must be a list of file paths, got one "
                        f"{type(paths).__name__} ({paths!r}); wrap it in a list")
    trajs = []
    names = layout.names
    for p in paths:
        data = _read_npz(p)
        raw_offset = data.pop(NPZ_TIME_OFFSET, np.int64(0))
        data.pop(NPZ_TRAJECTORY_ID, None)
        try:
            checked = layout.check_rows(data, names, None, f"import_npz({p})")
        except (TypeError, ValueError) as e:
            raise type(e)(f"import_npz: {p}: {e}") from e
        n = next(iter(checked.values())).shape[0]
        if n < 2:
            raise ValueError(f"import_npz: {p} has {n} rows, need at least 2")
        offset = check_time_offset(raw_offset, n, f"import_npz: {p}: {NPZ_TIME_OFFSET}")
        trajs.append((checked, n, offset))
    return trajs


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
