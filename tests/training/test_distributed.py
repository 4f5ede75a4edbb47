"""Data-parallel training: real `torchrun --nproc_per_node 2` processes, gloo on CPU.

Each rank collects with its own envs into its own buffer; DDP all-reduces the gradients. After a
few updates every rank's model (parameters and buffers, PopArt included) must be bit-identical,
rank 0 alone logs, and `--resume` continues both ranks from the shared checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from amago_fast import checkpoint as ckpt
from amago_fast.checkpoint import model_fingerprint
from amago_fast.config import overrides_to_args
from tests._tiny_run import TINY_TMAZE_RUN

TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which(
    "torchrun"
)

# Schedule keys on top of TINY_TMAZE_RUN (the model and env sizes).
SCHEDULE = {
    "learning_starts": 8,
    "updates_per_env_step": 0.25,
    "eval_interval": 0,
    "checkpoint_interval": 48,
    "seed": 5,
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    cmd = [TORCHRUN, "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "amago_fast", "train", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    return out


def _rank_states(path: Path) -> list[dict]:
    return [ckpt.load_object(path / f"rank{r}" / "state.pt") for r in (0, 1)]


def _check_identical(path: Path) -> list[dict]:
    states = _rank_states(path)
    fps = [s["model_fingerprint"] for s in states]
    assert fps[0] == fps[1], "ranks' models differ"
    # ... and equal to the model rank 0 saved (recomputed from the tensors themselves)
    shared = ckpt.load_object(path / "learner.pt")["learner"]["loss_module"]
    assert model_fingerprint(shared) == fps[0]
    return states


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not found")
def test_torchrun_two_ranks_identical_params_and_resume(tmp_path):
    run_dir = tmp_path / "run"
    run = {**TINY_TMAZE_RUN, **SCHEDULE, "total_env_steps": 64}
    args = ["--run-dir", str(run_dir), *overrides_to_args(run)]
    out = _torchrun(args)
    result = json.loads(out.stdout[out.stdout.index("{"):])
    assert result["env_steps"] == 64 and result["updates"] >= 4
    path = ckpt.latest_checkpoint(run_dir)
    states = _check_identical(path)
    # each rank collected its own 32 transitions with its own envs (seeded by rank)
    assert [s["counters"]["env_steps"] for s in states] == [32, 32]
    bufs = [path / f"rank{r}" / "buffer" for r in (0, 1)]
    assert all(b.is_dir() for b in bufs)
    from amago_fast.buffer import TrajectoryBuffer

    samples = [TrajectoryBuffer.load(b).sample_windows(4, 6) for b in bufs]
    assert any(
        not (samples[0][k] == samples[1][k]).all() for k in ("observation", "action", "reward")
    ), "both ranks hold the same data: envs were not seeded per rank"
    # only rank 0 logs
    assert (run_dir / "train.csv").is_file()
    # resume across ranks and train further
    out = _torchrun(["--resume", str(run_dir), "--total_env_steps", "96"])
    path = ckpt.latest_checkpoint(run_dir)
    states = _check_identical(path)
    assert [s["counters"]["env_steps"] for s in states] == [48, 48]
    assert states[0]["counters"]["updates"] > result["updates"]
