"""``amago_fast.train``: one call from a config (and optionally the user's own env) to a result.

    import amago_fast
    cfg = amago_fast.get_preset("tmaze")
    result = amago_fast.train(cfg, run_dir="runs/demo")             # env by name (cfg.env)
    result = amago_fast.train(cfg, env=lambda num_envs, seed: MyVectorEnv(num_envs, seed))

The env forms are those of :mod:`amago_fast.user_env` (a VectorEnv, a gymnasium vector env, an
EnvPool pool or a callable building one).
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["train"]


def train(
    config: Any = None,
    env: Any = None,
    *,
    eval_env: Any = None,
    run_dir: str | os.PathLike | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train and return the trainer's result (env steps, updates, run_dir, final evaluation).

    Args:
      config: a TrainConfig, a preset name (``amago_fast.presets``) or None (the default
        preset).
      env / eval_env: the user's own envs (see :mod:`amago_fast.user_env`); None: by name.
      run_dir: the run directory (default ``<log_dir>/<run_name or env-time>``).
      overrides: dotted-name overrides applied on top of `config` (``{"learner.lr": 3e-4}``).
    """
    from amago_fast.config import TrainConfig, apply_overrides
    from amago_fast.presets import DEFAULT_PRESET, get_preset
    from amago_fast.trainer import Trainer

    if config is None or isinstance(config, str):
        config = get_preset(config or DEFAULT_PRESET)
    elif not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig or a preset name, got "
                        f"{type(config).__name__}")
    if overrides:
        config = apply_overrides(config, overrides)
    trainer = Trainer(config, run_dir, env=env, eval_env=eval_env)
    finished = False
    try:
        result = trainer.train()
        finished = True
        return result
    finally:
        trainer.dist.shutdown(synchronize=finished)
