"""The training loop's modes and faults on the real stack (tiny T-Maze): overlapped collection,
non-finite updates skipped then a clear stop, a bad config rejected before any work."""

from __future__ import annotations

import math

import pytest
import torch

from amago_fast.config import ConfigError
from amago_fast.logger import read_csv
from amago_fast.trainer import Trainer, TrainingError
from tests.training.test_trainer_resume import tiny_config

pytestmark = pytest.mark.usefixtures("keep_torch_threads")


def test_overlapped_collection_keeps_the_update_ratio(tmp_path):
    cfg = tiny_config(overlap_collection=True, total_env_steps=128, checkpoint_interval=0)
    t = Trainer(cfg, tmp_path / "run")
    result = t.train()
    assert result["env_steps"] >= 128 and not result["interrupted"]
    owed = int((t.env_steps - cfg.learning_starts) * cfg.updates_per_env_step)
    # the learner catches up with what the thread collected before it stops
    assert result["updates"] == owed > 0
    assert t.buffer.total_steps_added == t.env_steps
    cols = read_csv(tmp_path / "run" / "train.csv")
    assert all(v > 0 for v in cols["env_steps_per_s"])
    assert not math.isnan(cols["updates_per_s"][-1])
    assert (tmp_path / "run" / "eval.csv").is_file()


class _PoisonedCritic(Trainer):
    """A trainer whose critic weights hold a NaN: every update's loss is non-finite."""

    def build(self) -> None:
        super().build()
        with torch.no_grad():
            next(self.agent.critics.parameters()).view(-1)[0] = float("nan")


def test_nonfinite_updates_are_skipped_then_training_stops(tmp_path):
    cfg = tiny_config(max_skipped_updates=3, checkpoint_interval=0)
    t = _PoisonedCritic(cfg, tmp_path / "run")
    with pytest.raises(TrainingError, match=r"4 updates were skipped .*max_skipped_updates=3"):
        t.train()
    assert t.skipped_updates == 4 and t.learner.updates == 0  # nothing was applied


def test_invalid_config_fails_before_any_work(tmp_path):
    cfg = tiny_config()
    cfg.batch_size = 0
    with pytest.raises(ConfigError, match="batch_size"):
        Trainer(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    cfg = tiny_config()
    cfg.env.name = "no-such-env"
    with pytest.raises(ConfigError, match="env.name"):
        Trainer(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_existing_run_is_not_overwritten(tmp_path):
    cfg = tiny_config(total_env_steps=16, learning_starts=8, eval_episodes=0)
    Trainer(cfg, tmp_path / "run").train()
    with pytest.raises(FileExistsError, match="--resume"):
        Trainer(cfg, tmp_path / "run").train()
