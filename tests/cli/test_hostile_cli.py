"""`amago-fast` turns every user-caused error into one stderr line and exit code 2 (the
traceback only with --debug or AMAGO_FAST_DEBUG=1), including errors found after config
validation: bad eval arguments, a damaged checkpoint, a full disk."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from amago_fast import checkpoint as ckpt
from amago_fast.cli import main
from amago_fast.config import overrides_to_args
from amago_fast.trainer import Trainer
from tests._tiny_run import TINY_TMAZE_RUN, tiny_tmaze_config

pytestmark = pytest.mark.usefixtures("keep_torch_threads")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    Trainer(tiny_tmaze_config(total_env_steps=32, eval_interval=0, learning_starts=16,
                              updates_per_env_step=0.1), run_dir).train()
    return run_dir


def one_line(capsys, argv: list[str], expect: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    # (notes such as the trainer's "run directory ..." line are not errors)
    lines = [ln for ln in err.splitlines()
             if not ln.startswith(("amago-fast: warning:", "amago-fast: run directory "))]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert expect in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("argv,expect", [
    (["--device", "bogus"], "device 'bogus' is not a torch device"),
    (["--num-envs", "0"], "num_envs must be an int >= 1"),
    (["--episodes", "0"], "episodes must be an int >= 1"),
])
def test_bad_eval_arguments_are_one_line(run, capsys, argv, expect):
    one_line(capsys, ["eval", str(run), *argv], expect)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_eval_on_cuda_without_cuda_is_one_line(run, capsys):
    one_line(capsys, ["eval", str(run), "--device", "cuda"], "CUDA is not available")


def test_debug_flag_and_env_var_keep_the_traceback(run, capsys, monkeypatch):
    with pytest.raises(ValueError, match="not a torch device"):
        main(["--debug", "eval", str(run), "--device", "bogus"])
    monkeypatch.setenv("AMAGO_FAST_DEBUG", "1")
    with pytest.raises(ValueError, match="not a torch device"):
        main(["eval", str(run), "--device", "bogus"])


@pytest.mark.parametrize("extra,expect", [
    (["--seed", "1e23"], "seed: 99999999999999991611392 is out of range"),
    (["--seed", "4294967296"], "seed: must be in [0,"),
    (["--buffer.capacity_steps", "300", "--buffer.max_trajectory_len", "500"],
     "buffer.max_trajectory_len: must be <= buffer.capacity_steps = 300"),
])
def test_bad_train_values_are_one_line_before_anything_runs(tmp_path, capsys, extra, expect):
    run_dir = tmp_path / "r"
    one_line(capsys, ["train", "--run-dir", str(run_dir),
                      *overrides_to_args({**TINY_TMAZE_RUN, "total_env_steps": 16}), *extra],
             expect)
    assert not (run_dir / "checkpoints").exists()


def test_damaged_checkpoint_on_resume_and_eval_is_one_line(run, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    state = ckpt.latest_checkpoint(copy) / "rank0" / "state.pt"
    state.write_bytes(state.read_bytes()[:100])
    line = one_line(capsys, ["train", "--resume", str(copy)], "none verifies")
    assert "rank0/state.pt has 100 bytes" in line
    learner = ckpt.latest_checkpoint(run)  # intact original; damage the copy's learner too
    (copy / "checkpoints" / learner.name / "learner.pt").write_bytes(b"junk")
    one_line(capsys, ["eval", str(copy)], "none verifies")


def test_architecture_mismatch_on_resume_is_one_line(run, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    one_line(capsys, ["train", "--resume", str(copy), "--agent.d_model", "32"],
             "--resume cannot change agent.d_model (16 in the run, 32 given)")


def _mount_tmpfs(path: Path, size: int) -> bool:
    path.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                         capture_output=True)
    return out.returncode == 0


def test_disk_full_is_one_line_and_keeps_the_previous_checkpoint(run, tmp_path, capsys):
    """A real full file system (a small tmpfs): the checkpoint that does not fit fails with
    'no space left on device', its temp dir is removed and the previous one stays intact."""
    one_ckpt = sum(p.stat().st_size for p in ckpt.latest_checkpoint(run).rglob("*")
                   if p.is_file())
    mnt = tmp_path / "small"
    # Room for the run's logs and one checkpoint, not for a second one beside it.
    size = (one_ckpt * 3 // 2 + 64 * 1024) // 4096 * 4096
    if not _mount_tmpfs(mnt, size):
        pytest.skip("cannot mount a tmpfs here (needs root and mount)")
    try:
        run_dir = mnt / "run"
        args = overrides_to_args({**TINY_TMAZE_RUN, "total_env_steps": 96,
                                  "checkpoint_interval": 32, "eval_interval": 0,
                                  "learning_starts": 16, "updates_per_env_step": 0.1})
        line = one_line(capsys, ["train", "--run-dir", str(run_dir), *args],
                        "no space left on device")
        assert "the previous checkpoint is intact" in line
        kept = ckpt.latest_checkpoint(run_dir)
        assert kept is not None and kept.name == "ckpt-000000000032"
        ckpt.verify_checkpoint(kept)
        assert not list(ckpt.checkpoint_root(run_dir).glob(".tmp-*"))
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_no_space_error_text_names_the_file():
    from amago_fast.cli import _user_error_message

    msg = _user_error_message(OSError(errno.ENOSPC, "No space left on device", "/x/learner.pt"))
    assert msg.startswith("no space left on device writing /x/learner.pt")
