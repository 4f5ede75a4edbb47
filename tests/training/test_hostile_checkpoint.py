"""Hostile run directories: crafted, damaged and concurrently used checkpoints.

- A checkpoint whose pickles would run code is refused and runs nothing (eval, resume, CLI).
- A damaged newest checkpoint is never resumed silently, never deleted; an older intact one is
  used with a warning; a run with only damaged checkpoints is refused, its files untouched.
- One flipped byte anywhere in a checkpoint file fails its sha256 on resume and on eval.
- One trainer per run directory (flock); eval may run alongside.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from amago_fast import checkpoint as ckpt
from amago_fast.config import ConfigError
from amago_fast.trainer import Trainer, evaluate_run
from tests._checkpoints import reseal
from tests._tiny_run import tiny_tmaze_config

pytestmark = pytest.mark.usefixtures("keep_torch_threads")


def _config(**extra):
    return tiny_tmaze_config(**{"learning_starts": 16, "updates_per_env_step": 0.2,
                                "eval_interval": 0, "checkpoint_interval": 0, "seed": 3,
                                "total_env_steps": 48, **extra})


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished tiny run (one checkpoint at step 48) plus a copy of it continued to step 96
    whose step-48 checkpoint is put back next to its step-96 one."""
    base = tmp_path_factory.mktemp("hostile")
    run = base / "run48"
    Trainer(_config(), run).train()
    two = base / "run96"
    shutil.copytree(run, two)
    old = ckpt.latest_checkpoint(two)
    keep = base / "ckpt48"
    shutil.copytree(old, keep)
    Trainer.resume(two, {"total_env_steps": 96}).train()
    shutil.copytree(keep, ckpt.checkpoint_root(two) / old.name)
    return base


def _copy(trained: Path, name: str, dest: Path) -> Path:
    shutil.copytree(trained / name, dest)
    return dest


class CreatesFile:
    """Unpickling this object opens (creates) `path`: arbitrary code run by the loader."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


# ----------------------------------------------------------------------------- crafted checkpoints
@pytest.mark.parametrize("which", ["learner.pt", "rank0/state.pt"])
def test_crafted_checkpoint_is_refused_and_runs_no_code(trained, tmp_path, which):
    run = _copy(trained, "run48", tmp_path / "run")
    path = ckpt.latest_checkpoint(run)
    marker = tmp_path / "pwned"
    original = ckpt.load_object(path / which)
    original["payload"] = CreatesFile(marker)
    torch.save(original, path / which)  # a plain pickle, as a crafted file would be
    reseal(path)
    with pytest.raises(ckpt.CheckpointError, match="refused.*could run code"):
        ckpt.load_object(path / which)
    if which == "learner.pt":
        with pytest.raises(ckpt.CheckpointError, match=r"learner\.pt: refused"):
            evaluate_run(run, episodes=1)
    with pytest.raises(ckpt.CheckpointError, match="refused"):
        Trainer.resume(run, {"total_env_steps": 64}).train()
    assert not marker.exists()
    # The CLI says so on one line and exits 2, still without creating the file.
    out = subprocess.run([sys.executable, "-m", "amago_fast", "eval", str(run), "--episodes", "1"]
                         if which == "learner.pt" else
                         [sys.executable, "-m", "amago_fast", "train", "--resume", str(run),
                          "--total_env_steps", "64"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "refused" in lines[0] and "Traceback" not in out.stderr
    assert not marker.exists()


def test_state_files_round_trip_without_pickled_objects(trained):
    """Every .pt file of a checkpoint loads with weights_only=True as it is."""
    path = ckpt.latest_checkpoint(trained / "run48")
    for name in ("learner.pt", "rank0/state.pt"):
        torch.load(path / name, weights_only=True)
    state = ckpt.load_object(path / "rank0" / "state.pt")
    rng = state["rng"]["numpy"]
    assert rng[1].dtype.name == "uint32" and rng[1].shape == (624,)
    pstate = state["collector"]["rollouts"]["policy_state"]
    assert type(pstate).__name__ == "AgentState"
    with pytest.raises(TypeError, match=r"state\['x'\] is a .*CreatesFile"):
        ckpt.save_object({"x": CreatesFile(Path("/nonexistent"))}, trained / "never.pt")
    assert not (trained / "never.pt").exists()


# ----------------------------------------------------------------------------- damaged checkpoints
def test_damaged_newest_checkpoint_falls_back_with_a_warning_and_is_kept(trained, tmp_path):
    run = _copy(trained, "run96", tmp_path / "run")
    root = ckpt.checkpoint_root(run)
    newest = root / "ckpt-000000000096"
    data = (newest / "learner.pt").read_bytes()
    (newest / "learner.pt").write_bytes(data[: len(data) // 2])  # truncated
    with pytest.warns(UserWarning, match=r"resuming from ckpt-000000000048.*ckpt-000000000096"):
        out = Trainer.resume(run, {"total_env_steps": 112}).train()
    assert out["env_steps"] == 112
    damaged = list(root.glob("damaged-ckpt-000000000096-*"))
    assert len(damaged) == 1  # kept for the user, out of the way
    assert (damaged[0] / "learner.pt").read_bytes() == data[: len(data) // 2]
    assert ckpt.latest_checkpoint(run).name == "ckpt-000000000112"


@pytest.mark.parametrize("damage", ["manifest missing", "file truncated", "byte flipped"])
def test_resume_with_only_damaged_checkpoints_is_refused_and_changes_nothing(trained, tmp_path,
                                                                             damage):
    run = _copy(trained, "run48", tmp_path / "run")
    path = ckpt.latest_checkpoint(run)
    if damage == "manifest missing":
        (path / ckpt.MANIFEST).unlink()
    elif damage == "file truncated":
        p = path / "rank0" / "state.pt"
        p.write_bytes(p.read_bytes()[:-10])
    else:
        p = path / "learner.pt"
        raw = bytearray(p.read_bytes())
        raw[len(raw) * 2 // 3] ^= 0x01
        p.write_bytes(bytes(raw))
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    what = {"manifest missing": "no manifest.json", "file truncated": r"rank0/state\.pt has",
            "byte flipped": r"learner\.pt fails its sha256"}[damage]
    with pytest.raises(ckpt.CheckpointError, match=rf"none verifies.*{path.name}.*{what}"):
        Trainer.resume(run, {"total_env_steps": 96}).train()
    after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == {p: b for p, b in before.items() if p.name != ".lock"}
    # Nor does a fresh start in that directory replace it.
    with pytest.raises(FileExistsError, match="already holds a run"):
        Trainer(_config(), run).train()
    assert path.exists()


def test_flipped_byte_in_optimizer_state_fails_eval_too(trained, tmp_path):
    run = _copy(trained, "run48", tmp_path / "run")
    path = ckpt.latest_checkpoint(run)
    learner = ckpt.load_object(path / "learner.pt")
    exp_avg = next(t for st in learner["learner"]["optimizer"]["state"].values()
                   for t in st.values() if torch.is_tensor(t) and t.numel() >= 16)
    p = path / "learner.pt"
    raw = bytearray(p.read_bytes())
    at = raw.find(exp_avg.numpy().tobytes())
    assert at > 0
    raw[at + 5] ^= 0x01  # one bit of one optimizer moment: the file still unpickles
    p.write_bytes(bytes(raw))
    ckpt.load_object(p)
    with pytest.raises(ckpt.CheckpointError, match=r"learner\.pt fails its sha256"):
        evaluate_run(run, episodes=1)
    with pytest.raises(ckpt.CheckpointError, match=r"learner\.pt fails its sha256"):
        Trainer.resume(run, {"total_env_steps": 64}).train()


def test_resume_without_any_checkpoint_says_it_starts_fresh(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with pytest.warns(UserWarning, match="no checkpoint yet; training starts from step 0"):
        out = Trainer(_config(total_env_steps=16), run, resume=True).train()
    assert out["env_steps"] == 16


def test_pruning_never_deletes_a_checkpoint_that_fails_verification(tmp_path):
    def write(step: int) -> Path:
        tmp = ckpt.begin_checkpoint(tmp_path, step)
        (tmp / "learner.pt").write_bytes(b"x" * step)
        return ckpt.commit_checkpoint(tmp_path, tmp, step)

    first = write(10)
    (first / "learner.pt").write_bytes(b"y")  # damaged
    second = write(20)
    assert first.exists() and second.exists()
    write(30)
    assert first.exists() and not second.exists()  # the intact one is pruned


# -------------------------------------------------------------------- run directory lock and access
def test_one_trainer_per_run_directory(trained, tmp_path):
    run = _copy(trained, "run48", tmp_path / "run")
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from amago_fast import checkpoint as ckpt
            lock = ckpt.lock_run_dir({str(run)!r})
            print("locked", flush=True)
            time.sleep(120)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ckpt.RunLockedError, match=rf"in use by another trainer \(pid "
                                                      rf"{holder.pid}\)"):
            Trainer.resume(run, {"total_env_steps": 64}).train()
        with pytest.raises(ckpt.RunLockedError):
            Trainer(_config(), tmp_path / "run").train()
        out = subprocess.run([sys.executable, "-m", "amago_fast", "train", "--resume", str(run)],
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 2
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and "in use by another trainer" in lines[0], out.stderr
        # Evaluation takes no lock.
        assert evaluate_run(run, episodes=2)["episodes"] == 2
        before = (run / "train.csv").read_bytes()
    finally:
        holder.kill()
        holder.wait()
    assert (run / "train.csv").read_bytes() == before
    # A killed holder leaves no stale lock behind.
    assert Trainer.resume(run, {"total_env_steps": 64}).train()["env_steps"] == 64


def test_run_dir_under_a_regular_file_is_named_before_anything_is_built(tmp_path):
    (tmp_path / "file").write_text("x")
    t = Trainer(_config(), tmp_path / "file" / "run")
    with pytest.raises(ckpt.RunDirError, match=r"file/run cannot be used"):
        t.train()
    assert not hasattr(t, "env")  # refused before the envs and the agent were built


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_run_dir_is_named(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(ckpt.RunDirError, match="cannot be used"):
            Trainer(_config(), ro / "run").train()
    finally:
        ro.chmod(0o755)


# ----------------------------------------------------------------------------- resume overrides
def test_resume_refuses_overrides_the_restored_state_fixes(trained, tmp_path):
    """`--resume --buffer.capacity_steps 300` used to write 300 into config.json while the
    restored buffer kept its capacity (buffer_fill > 1)."""
    run = _copy(trained, "run48", tmp_path / "run")
    config_before = (run / "config.json").read_text()
    for overrides, field in [({"buffer.capacity_steps": 300}, "buffer.capacity_steps"),
                             ({"env.num_envs": 3}, "env.num_envs"),
                             ({"agent.d_model": 32}, "agent.d_model"),
                             ({"seed": 4}, "seed"),
                             ({"env.name": "tmaze-active"}, "env.name")]:
        with pytest.raises(ConfigError, match=rf"--resume cannot change {field} "):
            Trainer.resume(run, {"total_env_steps": 64, **overrides}).train()
    assert (run / "config.json").read_text() == config_before
    # Fields the restored state does not fix are applied.
    t = Trainer.resume(run, {"total_env_steps": 64, "learner.lr": 5e-4,
                             "env.eval_num_envs": 3, "agent.dropout_ff": 0.0})
    assert t.train()["env_steps"] == 64
    saved = json.loads((run / "config.json").read_text())
    assert saved["learner"]["lr"] == 5e-4 and saved["env"]["eval_num_envs"] == 3
    assert t.learner.config.lr == 5e-4 and t.eval_env.num_envs == 3


@pytest.mark.parametrize("existing", ["none", "parent", "empty_run_dir"])
def test_config_refused_while_building_leaves_no_trace(tmp_path, existing):
    """A config error found while the trainer builds its parts (bad exploration kwargs) used
    to leave the run directory behind holding only `.lock`: the refused call changes nothing."""
    base = tmp_path / "runs"
    run = base / "a" / "run"
    if existing == "parent":
        base.mkdir()
    elif existing == "empty_run_dir":
        run.mkdir(parents=True)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    cfg = _config()
    cfg.exploration = {**cfg.exploration, "not_a_field": 1}
    with pytest.raises((ConfigError, TypeError, ValueError), match="not_a_field"):
        Trainer(cfg, run).train()
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_a_run_that_wrote_files_keeps_them_when_it_fails(tmp_path):
    """Only an unused directory is removed: one with the user's files in it keeps them."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    cfg = _config()
    cfg.exploration = {**cfg.exploration, "not_a_field": 1}
    with pytest.raises((ConfigError, TypeError, ValueError), match="not_a_field"):
        Trainer(cfg, run).train()
    assert (run / "notes.txt").read_text() == "mine"
