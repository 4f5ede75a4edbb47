"""Atomic checkpoint directories: commit, pointer, fallback, and a real SIGKILL mid-write."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from amago_fast import checkpoint as ckpt


def _write(run_dir: Path, step: int, payload: bytes) -> Path:
    tmp = ckpt.begin_checkpoint(run_dir, step)
    (tmp / "rank0").mkdir()
    (tmp / "rank0" / "state.bin").write_bytes(payload)
    (tmp / "learner.pt").write_bytes(payload * 2)
    return ckpt.commit_checkpoint(run_dir, tmp, step)


def test_commit_points_latest_and_prunes(tmp_path):
    assert ckpt.latest_checkpoint(tmp_path) is None
    first = _write(tmp_path, 100, b"a")
    assert ckpt.latest_checkpoint(tmp_path) == first
    assert ckpt.verify_checkpoint(first)["step"] == 100
    second = _write(tmp_path, 200, b"bb")
    assert ckpt.latest_checkpoint(tmp_path) == second
    assert not first.exists()  # only the newest complete one is kept
    assert (second / "rank0" / "state.bin").read_bytes() == b"bb"
    assert not list(ckpt.checkpoint_root(tmp_path).glob(".tmp-*"))


def test_incomplete_or_corrupt_checkpoints_are_skipped(tmp_path):
    good = _write(tmp_path, 100, b"good")
    root = ckpt.checkpoint_root(tmp_path)
    # a newer directory without a manifest (as if renamed by hand) and a dangling pointer
    (root / "ckpt-000000000300").mkdir()
    (root / "latest").write_text("ckpt-000000000300\n")
    assert ckpt.latest_checkpoint(tmp_path) == good
    # a truncated payload file is detected by its size
    (good / "learner.pt").write_bytes(b"x")
    with pytest.raises(ckpt.CheckpointError, match="learner.pt"):
        ckpt.verify_checkpoint(good)
    assert ckpt.latest_checkpoint(tmp_path) is None


def test_stale_temp_dirs_are_cleaned_on_next_write(tmp_path):
    _write(tmp_path, 100, b"a")
    stale = ckpt.checkpoint_root(tmp_path) / ".tmp-000000000150"
    stale.mkdir()
    (stale / "junk").write_bytes(b"junk")
    _write(tmp_path, 200, b"b")
    assert not stale.exists()


def test_sigkill_during_commit_keeps_previous_checkpoint(tmp_path):
    """A real process pauses inside its 2nd commit (test hook) and is SIGKILLed there."""
    marker = tmp_path / "paused"
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from amago_fast import checkpoint as ckpt
        run = Path({str(tmp_path)!r})
        for step, payload in ((100, b"first"), (200, b"second")):
            tmp = ckpt.begin_checkpoint(run, step)
            (tmp / "data.bin").write_bytes(payload)
            ckpt.commit_checkpoint(run, tmp, step)
        """
    )
    env = dict(os.environ, **{ckpt.PAUSE_ENV: f"2:{marker}"})
    proc = subprocess.Popen([sys.executable, "-c", script], env=env)
    try:
        deadline = time.time() + 60
        while not marker.exists():
            assert proc.poll() is None, "writer exited before pausing"
            assert time.time() < deadline, "writer never reached the pause point"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    latest = ckpt.latest_checkpoint(tmp_path)
    assert latest is not None and latest.name == "ckpt-000000000100"
    assert (latest / "data.bin").read_bytes() == b"first"
    # the half-written one is still there as a temp dir, never as a complete checkpoint
    assert list(ckpt.checkpoint_root(tmp_path).glob(".tmp-*"))
