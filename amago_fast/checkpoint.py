"""Atomic, multi-rank checkpoint directories.

Layout under `<run_dir>/checkpoints/`:

    ckpt-000000012000/        one complete checkpoint (name = env steps, zero-padded)
        manifest.json         written last inside the temp dir: every file with its size
        learner.pt            model, target nets, optimizer, PopArt (rank 0)
        rank0/state.pt        RNG states, counters, collector/env/exploration state of rank 0
        rank0/buffer/         rank 0's buffer snapshot
        rank1/...
    latest                    text file naming the newest complete checkpoint
    .tmp-000000013000/        a checkpoint being written (ignored and removed on the next write)

A write goes to `.tmp-<step>`; every file and directory is fsynced, the manifest is written, the
temp dir is renamed to `ckpt-<step>` and only then is `latest` replaced (temp file + fsync +
rename) and older checkpoints removed. A crash at any point leaves the previous checkpoint
complete and named by `latest`.

Test hook: with `AMAGO_FAST_TEST_CHECKPOINT_PAUSE="N:PATH"` in the environment, the N-th commit
made by this process pauses inside the write (after all payload files are written, before the
rename) after creating the file PATH, and sleeps until killed. The kill-during-checkpoint test
uses it to SIGKILL a real training process at that exact point.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

__all__ = [
    "CheckpointError",
    "checkpoint_root",
    "begin_checkpoint",
    "commit_checkpoint",
    "latest_checkpoint",
    "verify_checkpoint",
    "fsync_tree",
]

PAUSE_ENV = "AMAGO_FAST_TEST_CHECKPOINT_PAUSE"
MANIFEST = "manifest.json"
_commits_made = 0


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or corrupt."""


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


def commit_checkpoint(run_dir: str | os.PathLike, tmp: Path, step: int, keep: int = 1) -> Path:
    """Seal the temp dir `tmp` as the checkpoint for `step`, point `latest` at it, prune old ones.

    `keep` complete checkpoints are kept (the new one included).
    """
    global _commits_made
    _commits_made += 1
    root = checkpoint_root(run_dir)
    tmp = Path(tmp)
    files = {}
    for dirpath, _d, filenames in os.walk(tmp):
        for fn in filenames:
            p = Path(dirpath) / fn
            files[str(p.relative_to(tmp))] = p.stat().st_size
    fsync_tree(tmp)
    _maybe_pause()
    manifest = {"step": int(step), "files": files, "time": time.time()}
    with open(tmp / MANIFEST, "w") as fh:
        json.dump(manifest, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    _fsync_path(tmp)
    final = root / _name(step)
    if final.exists():  # re-checkpointing the same step (e.g. signal right after an interval)
        shutil.rmtree(final)
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
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def verify_checkpoint(path: str | os.PathLike) -> dict:
    """Check that every file in the manifest exists with its recorded size; return the manifest."""
    path = Path(path)
    mf = path / MANIFEST
    if not mf.is_file():
        raise CheckpointError(f"{path}: no {MANIFEST} (incomplete checkpoint)")
    try:
        manifest = json.loads(mf.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: corrupt {MANIFEST}: {e}") from None
    for rel, size in manifest.get("files", {}).items():
        p = path / rel
        if not p.is_file():
            raise CheckpointError(f"{path}: missing file {rel}")
        if p.stat().st_size != size:
            raise CheckpointError(
                f"{path}: file {rel} has {p.stat().st_size} bytes, manifest says {size}"
            )
    return manifest


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint of a run, or None when it has none.

    Follows `latest`; if that is missing or names an incomplete checkpoint, falls back to the
    newest complete `ckpt-*` directory.
    """
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return None
    pointer = root / "latest"
    if pointer.is_file():
        cand = root / pointer.read_text().strip()
        try:
            verify_checkpoint(cand)
            return cand
        except CheckpointError:
            pass
    for cand in sorted((p for p in root.glob("ckpt-*") if p.is_dir()), reverse=True):
        try:
            verify_checkpoint(cand)
            return cand
        except CheckpointError:
            continue
    return None
