"""The smallest end-to-end training run (tmaze preset, corridor 3, a 1-layer d=16 model, 96 env
steps), shared by the trainer, resume, CLI and torchrun tests; each adds its own schedule keys."""

from __future__ import annotations

from amago_fast.config import TrainConfig, apply_overrides
from amago_fast.presets import get_preset

TINY_TMAZE_RUN = {
    "env.kwargs": {"corridor_length": 3},
    "env.num_envs": 2,
    "env.eval_num_envs": 2,
    "agent.d_model": 16,
    "agent.num_layers": 1,
    "agent.num_heads": 2,
    "agent.tstep_hidden": 16,
    "agent.tstep_out": 16,
    "agent.actor_hidden": 16,
    "agent.critic_hidden": 16,
    "agent.context_len": 8,
    "agent.gammas": [0.9, 0.99],
    "window_len": 6,
    "batch_size": 4,
    "buffer.capacity_steps": 400,
    "total_env_steps": 96,
    "collect_steps_per_iter": 8,
    "eval_episodes": 2,
    "log_interval": 16,
    "progress_bar": False,
    "tensorboard": False,
    "torch_threads": 1,
}


def tiny_tmaze_config(**overrides) -> TrainConfig:
    """The `tmaze` preset with :data:`TINY_TMAZE_RUN` and then ``overrides`` applied."""
    return apply_overrides(get_preset("tmaze"), {**TINY_TMAZE_RUN, **overrides})
