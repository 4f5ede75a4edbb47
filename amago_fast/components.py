"""A run's agent and learner built from its TrainConfig, the same way wherever a run is rebuilt:
the training loop, resume and ``evaluate_run``. The agent and learner modules are imported on
first use (they pull in the kernels and Triton), so importing this module stays cheap."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from amago_fast.agent import Agent
    from amago_fast.config import TrainConfig
    from amago_fast.learner import LearnerConfig

__all__ = ["build_agent", "learner_config"]


def build_agent(spec: Any, cfg: TrainConfig, device: torch.device) -> Agent:
    """The agent for `spec`, built with the model seed shared by every rank."""
    from amago_fast.agent import Agent

    torch.manual_seed(cfg.seed)
    return Agent(spec, cfg.agent).to(device)


def learner_config(cfg: TrainConfig, device: torch.device) -> LearnerConfig:
    """The learner config with the trainer's device (the learner places the agent there)."""
    lc = copy.deepcopy(cfg.learner)
    lc.device = str(device)
    return lc
