"""Runs shared by the tests/api/ files."""

from __future__ import annotations

from pathlib import Path

from amago_fast.config import TrainConfig, apply_overrides
from amago_fast.presets import get_preset

# Passive T-Maze, corridor 5, a 1-layer d=16 model: greedy success 1.0 from ~2 000-3 000 env
# steps for seeds 0-2 (4 000 steps: ~8 s on the quiet 2-core box, 1 thread); seed 2 is at 1.0
# from 2 016 steps on, so 3 000 leave a margin.
SOLVED_TMAZE = {
    "agent.d_model": 16, "agent.num_layers": 1, "agent.num_heads": 2, "agent.tstep_hidden": 16,
    "agent.tstep_out": 16, "agent.actor_hidden": 16, "agent.critic_hidden": 16,
    "env.kwargs": {"corridor_length": 5}, "agent.context_len": 7, "window_len": 6,
    "exploration": {"eps_start": 1.0, "eps_end": 0.3, "anneal_steps": 1500, "horizon": 6,
                    "explore_last": 1},
    "total_env_steps": 3000, "learning_starts": 200, "updates_per_env_step": 0.3,
    "batch_size": 16, "collect_steps_per_iter": 32, "seed": 2,
    "eval_interval": 0, "eval_episodes": 16, "checkpoint_interval": 0, "log_interval": 500,
    "progress_bar": False, "tensorboard": False, "torch_threads": 1,
}


def solved_tmaze_config(tmp_path: Path, **overrides) -> TrainConfig:
    """The tmaze preset with :data:`SOLVED_TMAZE` (and `overrides`) applied, logging under
    `tmp_path`."""
    return apply_overrides(get_preset("tmaze"), {**SOLVED_TMAZE, "log_dir": str(tmp_path),
                                                 **overrides})
