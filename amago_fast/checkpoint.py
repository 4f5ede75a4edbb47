"""Atomic, multi-rank checkpoint directories.

Layout under `<run_dir>/checkpoints/`:

    ckpt-000000012000/        one complete checkpoint (name = env steps, zero-padded)
        manifest.json         written last inside the temp dir: every file with its size and
                              sha256 (a buffer snapshot's data file: its own manifest's
                              per-array sha256, which TrajectoryBuffer.load checks)
        learner.pt            model, target nets, optimizer, PopArt (rank 0)
        rank0/state.pt        RNG states, counters, collector/env/exploration state of rank 0
        rank0/buffer/         rank 0's buffer snapshot
        rank1/...
    latest                    text file naming the newest complete checkpoint
    .tmp-000000013000/        a checkpoint being written (ignored and removed on the next write)

A write goes to `.tmp-<step>`; every file and directory is fsynced, the manifest is written, the
temp dir is renamed to `ckpt-<step>` and only then is `latest` replaced (temp file + fsync +
rename) and older checkpoints that verify are removed (a damaged one is never deleted: it is
left for the user to inspect). A crash at any point leaves the previous checkpoint complete and
named by `latest`.

Nothing read from a checkpoint runs code: ``.pt`` files are written by :func:`save_object` and
read by :func:`load_object` with ``torch.load(weights_only=True)``. NumPy arrays and scalars and
the few rollout-state classes a checkpoint needs (:data:`OBJECT_TYPES`) are stored as tagged
dicts of tensors and plain values; a file holding any other pickled object is refused with a
:class:`CheckpointError` before that object is built.

One trainer per run directory: :func:`lock_run_dir` holds an exclusive ``flock`` on
``<run_dir>/.lock`` for the trainer's life (evaluation takes no lock).

Test hook: with `AMAGO_FAST_TEST_CHECKPOINT_PAUSE="N:PATH"` in the environment, the N-th commit
made by this process pauses inside the write (after all payload files are written, before the
rename) after creating the file PATH, and sleeps until killed. The kill-during-checkpoint test
uses it to SIGKILL a real training process at that exact point.
"""

from __future__ import annotations

import collections
import errno
import hashlib
import importlib
import io
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "CheckpointError",
    "RunLockedError",
    "RunDirError",
    "checkpoint_root",
    "begin_checkpoint",
    "commit_checkpoint",
    "latest_checkpoint",
    "newest_intact_checkpoint",
    "checkpoint_candidates",
    "verify_checkpoint",
    "fsync_tree",
    "save_object",
    "load_object",
    "lock_run_dir",
    "model_fingerprint",
    "OBJECT_TYPES",
]

PAUSE_ENV = "AMAGO_FAST_TEST_CHECKPOINT_PAUSE"
MANIFEST = "manifest.json"
FORMAT_VERSION = 2
"""Manifest format: 2 = per-file sha256 and code-free ``.pt`` files (1 had sizes only and
pickled NumPy/rollout objects, which :func:`load_object` refuses)."""
_commits_made = 0
_TAG = "__amago_fast_object__"
# NumPy dtype kinds a checkpoint may hold (bool, ints, floats, complex, bytes, str): never
# object or structured dtypes.
_ARRAY_KINDS = frozenset("biufcSU")

OBJECT_TYPES: dict[str, tuple[str, str]] = {
    "AgentState": ("amago_fast.agent", "AgentState"),
    "RingKVCache": ("amago_fast.kernels.decode", "RingKVCache"),
}
"""The only classes (besides tensors, NumPy arrays and plain containers) a checkpoint may hold:
the policy's rollout memory. Stored as ``{tag: name, "state": obj.__getstate__()}`` and rebuilt
with ``__setstate__`` (or the attribute dict); a name read from a file is only looked up here."""


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, corrupt or holds something that is not data."""


class RunLockedError(RuntimeError):
    """Another trainer holds the run directory's lock."""


class RunDirError(RuntimeError):
    """The run directory cannot be created or written (read-only, under a regular file, ...)."""


def checkpoint_root(run_dir: str | os.PathLike) -> Path:
    """`<run_dir>/checkpoints`."""
    return Path(run_dir) / "checkpoints"


def _name(step: int) -> str:
    return f"ckpt-{int(step):012d}"


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under `root` (and `root` itself)."""
    for dirpath, _dirnames, filenames in os.walk(root):
        for fn in filenames:
            _fsync_path(Path(dirpath) / fn)
        _fsync_path(Path(dirpath))


# ----------------------------------------------------------------------------- code-free .pt
def _encode(obj: Any, where: str) -> Any:
    if obj is None or isinstance(obj, (bool, int, float, str, bytes, torch.Tensor,
                                       torch.dtype, torch.device)):
        return obj
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in _ARRAY_KINDS:
            raise TypeError(f"checkpoint: {where} is a NumPy array of dtype {obj.dtype}, which a "
                            "checkpoint cannot hold")
        raw = np.ascontiguousarray(obj).reshape(-1).view(np.uint8)
        return {_TAG: "ndarray", "dtype": obj.dtype.str, "shape": list(obj.shape),
                "data": torch.from_numpy(raw.copy())}
    if isinstance(obj, np.generic):
        return {_TAG: "npscalar", "dtype": obj.dtype.str, "data": obj.tobytes()}
    if isinstance(obj, np.dtype):
        return {_TAG: "npdtype", "dtype": obj.str}
    if type(obj) in (dict, collections.OrderedDict):
        if _TAG in obj:
            raise TypeError(f"checkpoint: {where} has the reserved key {_TAG!r}")
        return type(obj)((k, _encode(v, f"{where}[{k!r}]")) for k, v in obj.items())
    if type(obj) in (list, tuple):
        return type(obj)(_encode(v, f"{where}[{i}]") for i, v in enumerate(obj))
    for name, (module, qualname) in OBJECT_TYPES.items():
        if type(obj).__module__ == module and type(obj).__qualname__ == qualname:
            return {_TAG: name, "state": _encode(obj.__getstate__(), f"{where}.{qualname}")}
    raise TypeError(f"checkpoint: {where} is a {type(obj).__module__}.{type(obj).__qualname__}, "
                    "which a checkpoint cannot hold (tensors, NumPy arrays, plain containers and "
                    f"{', '.join(OBJECT_TYPES)} only)")


def _decode(obj: Any, where: str) -> Any:
    if type(obj) in (dict, collections.OrderedDict):
        tag = obj.get(_TAG)
        if tag is None:
            return type(obj)((k, _decode(v, where)) for k, v in obj.items())
        if tag == "ndarray":
            dtype = np.dtype(obj["dtype"])
            if dtype.kind not in _ARRAY_KINDS:
                raise ValueError(f"array of dtype {dtype}")
            data = obj["data"]
            if not isinstance(data, torch.Tensor) or data.dtype != torch.uint8:
                raise ValueError("array data is not a uint8 tensor")
            shape = tuple(int(d) for d in obj["shape"])
            return data.numpy().view(dtype).reshape(shape).copy()
        if tag == "npscalar":
            return np.frombuffer(bytes(obj["data"]), np.dtype(obj["dtype"]), count=1)[0]
        if tag == "npdtype":
            return np.dtype(obj["dtype"])
        if tag in OBJECT_TYPES:
            module, qualname = OBJECT_TYPES[tag]
            cls = getattr(importlib.import_module(module), qualname)
            state = _decode(obj["state"], where)
            out = cls.__new__(cls)
            setstate = getattr(out, "__setstate__", None)
            if setstate is not None:
                setstate(state)
            elif isinstance(state, dict):
                out.__dict__.update(state)
            else:
                raise ValueError(f"{tag} state is a {type(state).__name__}")
            return out
        raise ValueError(f"unknown object tag {tag!r}")
    if type(obj) in (list, tuple):
        return type(obj)(_decode(v, where) for v in obj)
    return obj


def save_object(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` of `obj` in the code-free form :func:`load_object` reads: tensors, plain
    containers and values, NumPy arrays/scalars/dtypes and :data:`OBJECT_TYPES`. Anything else
    raises TypeError naming where it sits, before the file is written. The bytes are written
    with a plain file write, so a full disk is an OSError (ENOSPC) naming the file rather than
    torch's "file write failed" RuntimeError."""
    data = io.BytesIO()
    torch.save(_encode(obj, "state"), data)
    with open(path, "wb") as fh:
        fh.write(data.getbuffer())


def _refusal(e: BaseException) -> str:
    """The one informative line of torch's weights_only refusal (it spans a dozen lines)."""
    text = str(e)
    for line in text.splitlines():
        line = line.strip()
        if "Unsupported global" in line or "Unsupported operand" in line:
            line = line.split(" was not an allowed global")[0].split(" Please use")[0]
            return line.replace("WeightsUnpickler error: ", "").strip()
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(e).__name__)
    return first[:300]


def load_object(path: str | os.PathLike) -> Any:
    """Read a file written by :func:`save_object` onto the CPU, executing nothing from it.

    ``torch.load(weights_only=True)`` refuses any pickled global outside tensors and plain
    containers (a crafted ``__reduce__`` never runs); the tagged arrays and rollout objects are
    then rebuilt. Raises :class:`CheckpointError` naming the file for a refused, unreadable or
    malformed file."""
    path = Path(path)
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except Exception as e:  # noqa: BLE001 - every unpickling failure is one refusal
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise CheckpointError(
                f"{path}: refused: it holds pickled objects other than tensors and plain data, "
                f"which could run code when loaded ({_refusal(e)}); a crafted file, or one "
                "written by an amago_fast older than checkpoint format 2") from None
        raise CheckpointError(f"{path}: unreadable ({_refusal(e)})") from None
    try:
        return _decode(raw, str(path))
    except Exception as e:  # noqa: BLE001 - a malformed tagged entry
        raise CheckpointError(f"{path}: malformed entry: {type(e).__name__}: {e}") from None


# ----------------------------------------------------------------------------- writing
def begin_checkpoint(run_dir: str | os.PathLike, step: int, *, clean: bool = True) -> Path:
    """Create (fresh) and return the temp directory a checkpoint at `step` is written into.

    With several ranks, rank 0 calls this with clean=True before a barrier; other ranks call it
    with clean=False after the barrier to get the same path.
    """
    root = checkpoint_root(run_dir)
    tmp = root / f".tmp-{int(step):012d}"
    if clean:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".tmp-*"):  # leftovers of a killed write
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
    return tmp


def _maybe_pause() -> None:
    spec = os.environ.get(PAUSE_ENV)
    if not spec:
        return
    n, _, marker = spec.partition(":")
    if int(n) != _commits_made:
        return
    Path(marker).write_text(str(os.getpid()))
    while True:  # the test SIGKILLs us here
        time.sleep(0.1)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _snapshot_data_files(tmp: Path) -> dict[str, str]:
    """{data file: its snapshot manifest} (relative paths) for every buffer snapshot under
    `tmp`: their arrays' sha256 are in that manifest, so the file is not hashed a second time
    (the manifest itself is)."""
    from amago_fast.buffer import FORMAT_NAME

    out = {}
    for mf in tmp.rglob("manifest.json"):
        try:
            m = json.loads(mf.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(m, dict) and m.get("format") == FORMAT_NAME and isinstance(
                m.get("data_file"), str):
            data = mf.parent / m["data_file"]
            if data.parent == mf.parent:
                out[str(data.relative_to(tmp))] = str(mf.relative_to(tmp))
    return out


def commit_checkpoint(run_dir: str | os.PathLike, tmp: Path, step: int, keep: int = 1) -> Path:
    """Seal the temp dir `tmp` as the checkpoint for `step`, point `latest` at it, prune old ones.

    `keep` complete checkpoints are kept (the new one included); older ones are removed only
    if they verify (sizes; a damaged checkpoint is left in place for the user).
    """
    global _commits_made
    _commits_made += 1
    root = checkpoint_root(run_dir)
    tmp = Path(tmp)
    covered = _snapshot_data_files(tmp)
    files: dict[str, dict] = {}
    for dirpath, _d, filenames in os.walk(tmp):
        for fn in filenames:
            p = Path(dirpath) / fn
            rel = str(p.relative_to(tmp))
            entry: dict[str, Any] = {"size": p.stat().st_size}
            if rel in covered:
                entry["verified_by"] = covered[rel]
            else:
                entry["sha256"] = _sha256_file(p)
            files[rel] = entry
    fsync_tree(tmp)
    _maybe_pause()
    manifest = {"format_version": FORMAT_VERSION, "step": int(step), "files": files,
                "time": time.time()}
    with open(tmp / MANIFEST, "w") as fh:
        json.dump(manifest, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    _fsync_path(tmp)
    final = root / _name(step)
    if final.exists():  # re-checkpointing the same step (e.g. signal right after an interval)
        try:
            verify_checkpoint(final, hashes=False)
            shutil.rmtree(final)
        except CheckpointError:  # damaged: moved aside, never deleted
            os.replace(final, root / f"damaged-{final.name}-{uuid.uuid4().hex[:8]}")
    os.replace(tmp, final)
    _fsync_path(root)
    pointer_tmp = root / "latest.tmp"
    with open(pointer_tmp, "w") as fh:
        fh.write(final.name + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(pointer_tmp, root / "latest")
    _fsync_path(root)
    complete = sorted(p for p in root.glob("ckpt-*") if p.is_dir())
    for old in complete[: max(0, len(complete) - keep)]:
        if old == final:
            continue
        try:
            verify_checkpoint(old, hashes=False)
        except CheckpointError:
            continue
        shutil.rmtree(old, ignore_errors=True)
    return final


# ----------------------------------------------------------------------------- reading
def verify_checkpoint(path: str | os.PathLike, hashes: bool = True) -> dict:
    """Check that every file in the manifest exists with its recorded size and (``hashes``)
    sha256; return the manifest. Buffer data files are vouched for by their snapshot's manifest
    (checked by ``TrajectoryBuffer.load``). Raises :class:`CheckpointError` naming the checkpoint
    and what failed."""
    path = Path(path)
    mf = path / MANIFEST
    if not mf.is_file():
        raise CheckpointError(f"{path}: no {MANIFEST} (incomplete checkpoint)")
    try:
        manifest = json.loads(mf.read_text())
        files = manifest["files"]
        int(manifest["step"])
        if not isinstance(files, dict):
            raise TypeError("'files' is not an object")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: corrupt {MANIFEST}: {e}") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {manifest.get('format_version', 1)}, this amago_fast "
            f"reads format {FORMAT_VERSION} (files with sha256 and no pickled objects)")
    base = path.resolve()
    for rel, entry in files.items():
        p = path / rel
        if not isinstance(entry, dict) or not isinstance(entry.get("size"), int) or (
                base not in p.resolve().parents):
            raise CheckpointError(f"{path}: corrupt {MANIFEST} entry for {rel!r}")
        if not p.is_file():
            raise CheckpointError(f"{path}: missing file {rel}")
        size = p.stat().st_size
        if size != entry["size"]:
            raise CheckpointError(
                f"{path}: file {rel} has {size} bytes, manifest says {entry['size']}"
            )
        if "sha256" not in entry and entry.get("verified_by") not in files:
            raise CheckpointError(f"{path}: manifest entry for {rel} has no sha256")
        if hashes and "sha256" in entry and _sha256_file(p) != entry["sha256"]:
            raise CheckpointError(f"{path}: file {rel} fails its sha256 check (corrupted)")
    return manifest


def checkpoint_candidates(run_dir: str | os.PathLike) -> list[Path]:
    """Every ``ckpt-*`` directory of a run, newest first (`latest` first if it names one)."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    dirs = sorted((p for p in root.glob("ckpt-*") if p.is_dir()), reverse=True)
    pointer = root / "latest"
    if pointer.is_file():
        try:
            named = root / pointer.read_text().strip()
        except (OSError, UnicodeDecodeError):
            named = None
        if named in dirs:
            dirs.remove(named)
            dirs.insert(0, named)
    return dirs


def latest_checkpoint(run_dir: str | os.PathLike, hashes: bool = True) -> Path | None:
    """The newest complete checkpoint of a run that verifies, or None when it has none.

    Follows `latest`; if that is missing or names a checkpoint that does not verify, falls
    back to the newest ``ckpt-*`` directory that does.
    """
    for cand in checkpoint_candidates(run_dir):
        try:
            verify_checkpoint(cand, hashes=hashes)
            return cand
        except CheckpointError:
            continue
    return None


def newest_intact_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """:func:`latest_checkpoint` for readers that must not silently pass over damage: None
    when the run has no checkpoint directory at all, else the newest that verifies (sha256
    included), else CheckpointError naming each checkpoint and what failed."""
    failed = []
    for cand in checkpoint_candidates(run_dir):
        try:
            verify_checkpoint(cand)
            return cand
        except CheckpointError as e:
            failed.append(str(e))
    if failed:
        raise CheckpointError(f"{run_dir} has checkpoints but none verifies: {'; '.join(failed)}")
    return None


# ----------------------------------------------------------------------------- run lock
class _RunLock:
    """An exclusive ``flock`` on ``<run_dir>/.lock``, released by :meth:`release` (or when the
    process dies: the kernel drops flocks with their last descriptor)."""

    def __init__(self, fd: int, path: Path, created: tuple[Path, ...] = (),
                 created_file: bool = False) -> None:
        self.fd: int | None = fd
        self.path = path
        # What taking the lock added to the file system (directories deepest first, and whether
        # the lock file itself is new), so that a run refused before it wrote anything can
        # leave the file system as it found it.
        self.created = created
        self.created_file = created_file

    def release(self, undo_if_unused: bool = False) -> None:
        """Drop the lock. With `undo_if_unused`, also remove the lock file and the directories
        taking the lock created, where nothing else was written into them (a run refused while
        its parts were built leaves no trace; one that wrote anything keeps it all)."""
        if self.fd is None:
            return
        import fcntl

        if undo_if_unused and self.created_file:
            run_dir = self.path.parent
            try:
                unused = [p.name for p in run_dir.iterdir()] == [self.path.name]
                if unused:  # unlink while still holding the flock: no other trainer sees it
                    self.path.unlink()
                    for d in self.created:
                        d.rmdir()  # deepest first; stops at the first that is not empty
            except OSError:
                pass
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None


def lock_run_dir(run_dir: str | os.PathLike) -> _RunLock:
    """Take the run directory's trainer lock (creating the directory), or raise
    :class:`RunLockedError` when another process holds it. The lock file names the holder's
    pid for the message; the lock itself is the flock, so a stale file from a killed trainer
    never blocks."""
    import fcntl

    run_dir = Path(run_dir)
    path = run_dir / ".lock"
    created: list[Path] = []
    for d in (run_dir, *run_dir.parents):
        if os.path.lexists(d):
            break
        created.append(d)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not os.access(run_dir, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "not writable")
        created_file = not os.path.lexists(path)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise RunDirError(f"run directory {run_dir} cannot be used: "
                          f"{e.strerror or e}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        holder = ""
        try:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
        except OSError:
            pass
        os.close(fd)
        if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            who = f" (pid {holder})" if holder else ""
            raise RunLockedError(f"{run_dir} is in use by another trainer{who}; one trainer per "
                                 "run directory (amago-fast eval may run alongside)") from None
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return _RunLock(fd, path, tuple(created), created_file)


def model_fingerprint(module: torch.nn.Module | dict[str, torch.Tensor]) -> str:
    """sha256 over every parameter and buffer of `module` (or of a state dict): names, dtypes,
    shapes and bytes. Every rank records its model's in a checkpoint: equal digests across ranks
    show DDP kept them identical, and resume compares the saved model with the recorded one."""
    h = hashlib.sha256()
    sd = module if isinstance(module, dict) else module.state_dict()
    for name, t in sd.items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
