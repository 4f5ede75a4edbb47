"""Checkpoint/resume of the real training loop (CPU, fixed seed, built-in T-Maze, tiny model).

- A run stopped by a real SIGTERM and resumed reaches exactly the state of an uninterrupted run:
  every model/optimizer/PopArt tensor, the counters and the buffer (contents and sampling RNG).
- A real `python -m amago_fast train` process SIGKILLed while writing its 2nd checkpoint (the
  checkpoint test hook pauses it there) resumes from the 1st with no committed transition lost,
  and then also reaches the uninterrupted run's final state.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from amago_fast import checkpoint as ckpt
from amago_fast.checkpoint import model_fingerprint
from amago_fast.config import overrides_to_args, save_config
from amago_fast.trainer import Trainer, evaluate_run
from tests._checkpoints import reseal
from tests._tiny_run import TINY_TMAZE_RUN, tiny_tmaze_config

# Schedule keys on top of TINY_TMAZE_RUN (the model and env sizes).
SCHEDULE = {
    "learning_starts": 16,
    "updates_per_env_step": 0.2,
    "eval_interval": 48,
    "checkpoint_interval": 32,
    "seed": 3,
}


TINY = {**TINY_TMAZE_RUN, **SCHEDULE}


def tiny_config(**extra):
    return tiny_tmaze_config(**{**SCHEDULE, **extra})


pytestmark = pytest.mark.usefixtures("keep_torch_threads")


def final_state(run_dir: Path) -> dict:
    """The newest checkpoint's learner state, counters and a fresh sample of its buffer."""
    from amago_fast.buffer import TrajectoryBuffer

    path = ckpt.latest_checkpoint(run_dir)
    assert path is not None
    learner = ckpt.load_object(path / "learner.pt")["learner"]
    state = ckpt.load_object(path / "rank0" / "state.pt")
    buf = TrajectoryBuffer.load(path / "rank0" / "buffer")
    return {
        "step": ckpt.verify_checkpoint(path)["step"],
        "learner": learner,
        "counters": state["counters"],
        "buffer_len": len(buf),
        "buffer_traj": buf.num_trajectories,
        "buffer_added": buf.total_steps_added,
        "sample": buf.sample_windows(4, 6),
        "collector": state["collector"],
    }


def assert_same_state(a: dict, b: dict) -> None:
    assert a["step"] == b["step"]
    for k in ("env_steps", "updates", "skipped_updates"):
        assert a["counters"][k] == b["counters"][k], k
    la, lb = a["learner"], b["learner"]
    assert la["updates"] == lb["updates"] and la["updates"] > 0
    assert set(la["loss_module"]) == set(lb["loss_module"])
    for k, v in la["loss_module"].items():
        assert torch.equal(v, lb["loss_module"][k]), f"model tensor {k} differs"
    sa, sb = la["optimizer"]["state"], lb["optimizer"]["state"]
    assert set(sa) == set(sb)
    for i in sa:
        for k, v in sa[i].items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(sb[i][k])), f"optim {i}.{k}"
    assert torch.equal(la["generator"], lb["generator"])
    assert (a["buffer_len"], a["buffer_traj"], a["buffer_added"]) == (
        b["buffer_len"], b["buffer_traj"], b["buffer_added"])
    for k, v in a["sample"].items():
        np.testing.assert_array_equal(v, b["sample"][k], err_msg=f"buffer sample {k}")
    ra, rb = a["collector"]["rollouts"], b["collector"]["rollouts"]
    for k in ("prev_action", "prev_reward", "time_index"):
        np.testing.assert_array_equal(ra[k], rb[k], err_msg=f"collector {k}")


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> dict:
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    result = Trainer(tiny_config(), run_dir).train()
    assert result["env_steps"] >= 96 and not result["interrupted"]
    assert (run_dir / "train.csv").is_file() and (run_dir / "eval.csv").is_file()
    return final_state(run_dir)


def train_until_sigterm(cfg, run_dir: Path) -> dict:
    """Train `cfg` in `run_dir`, sending the process a real SIGTERM (handled by the trainer) as
    soon as the first checkpoint exists; the trainer's result."""
    pointer = ckpt.checkpoint_root(run_dir) / "latest"

    def stop_after_first_checkpoint():
        deadline = time.time() + 300
        while not pointer.exists() and time.time() < deadline:
            time.sleep(0.005)
        os.kill(os.getpid(), signal.SIGTERM)

    killer = threading.Thread(target=stop_after_first_checkpoint, daemon=True)
    killer.start()
    result = Trainer(cfg, run_dir).train()
    killer.join()
    return result


def test_sigterm_then_resume_matches_uninterrupted(reference_run, tmp_path):
    run_dir = tmp_path / "run"
    first = train_until_sigterm(tiny_config(), run_dir)
    assert first["interrupted"], "the run finished before the signal arrived"
    assert first["env_steps"] < 96
    stopped_at = final_state(run_dir)
    assert stopped_at["step"] == first["env_steps"]  # checkpoint written on the signal
    second = Trainer.resume(run_dir).train()
    assert not second["interrupted"]
    assert_same_state(final_state(run_dir), reference_run)


def test_sigkill_during_checkpoint_resumes_from_previous(reference_run, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cfg = tiny_config()
    cfg_path = tmp_path / "cfg.json"
    save_config(cfg, cfg_path)
    marker = tmp_path / "paused"
    overrides = overrides_to_args(TINY)
    cmd = [sys.executable, "-m", "amago_fast", "train", "--run-dir", str(run_dir), *overrides]
    env = dict(os.environ, **{ckpt.PAUSE_ENV: f"2:{marker}"})
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 300
        while not marker.exists():
            if proc.poll() is not None:
                pytest.fail(f"trainer exited early:\n{proc.stdout.read().decode()[-3000:]}")
            assert time.time() < deadline, "trainer never reached its 2nd checkpoint"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # The half-written 2nd checkpoint is a temp dir; `latest` still names the 1st, complete one.
    assert list(ckpt.checkpoint_root(run_dir).glob(".tmp-*"))
    first = final_state(run_dir)
    assert first["step"] == 32
    # No committed transition lost: every transition collected before the checkpoint is in the
    # snapshot (committed rollouts plus the open ones the collector will continue).
    assert first["buffer_added"] == first["counters"]["env_steps"] == 32
    assert first["buffer_len"] > 0
    # Resume the killed run with the CLI and finish it: same final state as uninterrupted.
    out = subprocess.run(
        [sys.executable, "-m", "amago_fast", "train", "--resume", str(run_dir)],
        capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert not list(ckpt.checkpoint_root(run_dir).glob(".tmp-*"))
    assert_same_state(final_state(run_dir), reference_run)


def test_checkpoint_from_before_popart_step_counter_resumes(tmp_path):
    """A checkpoint written before PopArt saved its step counter (``popart.updates``) resumes:
    the model hash recorded in state.pt is compared with learner.pt as saved, not as loaded
    (loading adds the counter)."""
    run_dir = tmp_path / "run"
    first = Trainer(tiny_config(total_env_steps=48, eval_interval=0), run_dir).train()
    path = ckpt.latest_checkpoint(run_dir)
    # Rewrite the checkpoint the way the older version wrote it.
    shared = ckpt.load_object(path / "learner.pt")
    model = shared["learner"]["loss_module"]
    key = next(k for k in model if k.endswith("popart.updates"))
    del model[key]
    ckpt.save_object(shared, path / "learner.pt")
    state = ckpt.load_object(path / "rank0" / "state.pt")
    state["model_fingerprint"] = model_fingerprint(model)
    ckpt.save_object(state, path / "rank0" / "state.pt")
    reseal(path)

    second = Trainer.resume(run_dir, {"total_env_steps": 64}).train()
    assert second["env_steps"] == 64 and second["updates"] > first["updates"]
    # The counter restarts from the learner's update count at the checkpoint.
    resumed = ckpt.load_object(ckpt.latest_checkpoint(run_dir) / "learner.pt")
    assert float(resumed["learner"]["loss_module"][key]) >= first["updates"]


def test_resume_with_other_observation_fields_names_them_and_keeps_the_run(tmp_path):
    """A FrozenLake run that stored Discrete observations as indices (discrete_obs="index"),
    resumed with the default one-hot layout: a CheckpointError names the field, both layouts
    and the env kwarg that restores the old one, and leaves the checkpoint and config.json as
    they were (the config used to be saved before the checkpoint loaded); resumed as saved, it
    trains on."""
    run_dir = tmp_path / "run"
    lake = {"env.name": "gym:FrozenLake-v1", "env.kwargs": {"discrete_obs": "index"},
            "total_env_steps": 48, "eval_interval": 0}
    first = Trainer(tiny_config(**lake), run_dir).train()
    path = ckpt.latest_checkpoint(run_dir)
    before = {p: p.read_bytes() for p in [*path.rglob("*"), run_dir / "config.json"]
              if p.is_file()}
    with pytest.raises(ckpt.CheckpointError) as err:
        Trainer.resume(run_dir, {"env.kwargs": {}}).train()
    msg = str(err.value)
    assert "'observation' is int32(1,)" in msg and "uint8(16,)" in msg, msg
    assert "discrete_obs" in msg, msg
    # The failed resume changed neither the checkpoint nor the run's config.
    assert {p: p.read_bytes() for p in before} == before
    assert ckpt.latest_checkpoint(run_dir) == path
    # Evaluation checks the same before loading weights; as saved, it runs.
    with pytest.raises(ValueError, match=r"does not fit the run's checkpoint.*discrete_obs"):
        evaluate_run(run_dir, episodes=2, env_kwargs={"discrete_obs": "onehot"})
    assert evaluate_run(run_dir, episodes=2)["episodes"] >= 2
    second = Trainer.resume(run_dir, {"total_env_steps": 64}).train()
    assert second["env_steps"] >= 64 and second["updates"] > first["updates"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_run_resumes_on_the_gpu_and_evaluates_on_the_cpu(tmp_path):
    """A GPU run's checkpoints load onto the CPU first (map_location="cpu": a CUDA RNG state
    broke the resume before); on resume the CUDA generator state and the rollout KV caches go
    back onto the GPU, so nothing is reseeded or restarted; `evaluate_run` on the CPU reads it."""
    import warnings

    from amago_fast.trainer import evaluate_run

    run_dir = tmp_path / "run"
    first = Trainer(tiny_config(device="cuda"), run_dir).train()
    steps = int(first["env_steps"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = Trainer(tiny_config(device="cuda", total_env_steps=steps + 64), run_dir,
                          resume=True)
        result = trainer.train()
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "sampling generator" in m or "rollouts restart" in m], \
        messages
    assert result["env_steps"] >= steps + 64
    assert trainer.learner.generator.device.type == "cuda"
    assert all(c.device.type == "cuda" for c in trainer.collector._train.pstate.memory)
    stats = evaluate_run(run_dir, episodes=2, device="cpu")
    assert stats["checkpoint_env_steps"] >= steps + 64


def test_resume_keeps_the_decision_rollout_exploration_state(tmp_path):
    # The profiles' bilevel schedule with decision rollouts keeps per-env state across steps
    # (previous action and observation, which rollouts explore only at decision points); a
    # SIGTERM and resume must give the uninterrupted run's data exactly.
    bilevel = {"kind": "bilevel", "horizon": 4, "anneal_steps": 200, "late_start_prob": 1.0,
               "late_start_draw": "ends", "decision_rollout_prob": 0.5}
    reference_dir = tmp_path / "reference"
    Trainer(tiny_config(exploration=bilevel), reference_dir).train()
    reference = final_state(reference_dir)
    assert reference["collector"]["exploration"]["prev_obs"] is not None

    run_dir = tmp_path / "run"
    first = train_until_sigterm(tiny_config(exploration=bilevel), run_dir)
    assert first["interrupted"] and first["env_steps"] < 96
    Trainer.resume(run_dir).train()
    resumed = final_state(run_dir)
    assert_same_state(resumed, reference)
    ea, eb = resumed["collector"]["exploration"], reference["collector"]["exploration"]
    for k in ("decision_rollout", "prev_action", "rollout_t", "explore_from", "scale"):
        np.testing.assert_array_equal(ea[k], eb[k], err_msg=k)
