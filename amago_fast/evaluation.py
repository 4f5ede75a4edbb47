"""Evaluation: greedy episodes of a run's newest checkpoint (:func:`evaluate_run`, behind
``amago-fast eval``) and the flat episode statistics the trainer logs to eval.csv."""

from __future__ import annotations

import importlib
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from amago_fast import checkpoint as ckpt
from amago_fast.components import build_agent, learner_config
from amago_fast.config import TrainConfig, load_config
from amago_fast.distributed import resolve_device
from amago_fast.intervals import interval_stats
from amago_fast.resume import fields_mismatch, saved_fields

__all__ = ["eval_env_kwargs", "evaluate_run", "evaluation_row", "flatten_episode_stats",
           "slot_group_returns"]


def flatten_episode_stats(stats: dict) -> dict[str, float]:
    """Numeric episode statistics of a collect/evaluate call, per-env ones as `<env>/<key>`."""
    out = {k: float(v) for k, v in stats.items() if _is_number(v)}
    if "stopped_early" in stats:  # a step cap or a stop signal cut the evaluation short
        out["stopped_early"] = 1.0
    out |= interval_stats(out)  # 95% intervals of the return and success means
    per_env = stats.get("per_env", {})
    if len(per_env) > 1:
        for name, sub in per_env.items():
            flat = {k: float(v) for k, v in sub.items() if _is_number(v)}
            for k, v in (flat | interval_stats(flat)).items():
                out[f"{name}/{k}"] = v
    return out


def slot_group_returns(env: Any, stats: dict) -> dict[str, float]:
    """Mean return of each group of env slots the env names (``env.slot_groups()``, e.g. AIB's
    sign-flip instances) as ``return/<group>``, from an exact-count evaluation's slot_returns."""
    groups = getattr(env, "slot_groups", None)
    slot_returns = stats.get("slot_returns")
    if not callable(groups) or not slot_returns:
        return {}
    out = {}
    for group, slots in groups().items():
        rets = [r for i in slots if i < len(slot_returns) for r in slot_returns[i]]
        if rets:
            out[f"return/{group}"] = float(np.mean(rets))
    return out


def evaluation_row(env: Any, stats: dict) -> dict[str, float]:
    """One evaluation's figures as logged and printed: the flattened episode statistics plus
    each slot group's mean return (a mixture's tasks, AIB's action signs)."""
    return flatten_episode_stats(stats) | slot_group_returns(env, stats)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def eval_env_kwargs(cfg: TrainConfig, extra: dict | None = None) -> dict:
    """The evaluation env's keyword arguments: ``env.kwargs``, then ``env.eval_kwargs``, then
    `extra` (e.g. ``amago-fast eval --env-kwargs``) on top."""
    return {**cfg.env.kwargs, **cfg.env.eval_kwargs, **(extra or {})}


def evaluate_run(
    run_dir: str | os.PathLike,
    *,
    episodes: int = 32,
    num_envs: int | None = None,
    device: str = "cpu",
    seed: int = 12345,
    env_kwargs: dict | None = None,
    sample: bool | None = None,
) -> dict[str, float]:
    """Load a run's newest checkpoint and run `episodes` episodes; return their stats.

    ``sample``: act with draws from the policy (True) or its greedy action (False); None: as
    the run evaluated during training (its ``eval_sample``). The stats' ``sampled`` says which.

    The env is the run's evaluation env (:func:`eval_env_kwargs`), with `env_kwargs` merged
    on top (e.g. ``{"split": "eval-out"}`` for actuator inversion's held-out contexts); it
    must have the training env's observation and action spaces."""
    from amago_fast.collector import Collector
    from amago_fast.envs import make_env
    from amago_fast.learner import Learner

    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise FileNotFoundError(f"{run_dir} has no config.json (not a run directory)")
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise ValueError(f"episodes must be an int >= 1, got {episodes!r}")
    if sample is not None and not isinstance(sample, bool):
        raise ValueError(f"sample must be True, False or None, got {sample!r}")
    if num_envs is not None and (isinstance(num_envs, bool) or not isinstance(num_envs, int)
                                 or num_envs < 1):
        raise ValueError(f"num_envs must be an int >= 1 (or None: the run's "
                         f"env.eval_num_envs), got {num_envs!r}")
    try:
        dev = resolve_device(device)
    except RuntimeError:
        raise ValueError(f"device {device!r} is not a torch device (cpu, cuda or cuda:N)"
                         ) from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r}: evaluation runs on cpu or cuda[:N]")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    path = ckpt.newest_intact_checkpoint(run_dir)  # CheckpointError when all are damaged
    if path is None:
        raise FileNotFoundError(f"{run_dir} has no complete checkpoint")
    cfg = load_config(run_dir / "config.json")
    for mod in cfg.env.import_modules:
        importlib.import_module(mod)
    if env_kwargs is not None and not isinstance(env_kwargs, dict):
        raise ValueError(f"env_kwargs must be a dict, got {env_kwargs!r}")
    kwargs = eval_env_kwargs(cfg, env_kwargs)
    try:
        env = make_env(cfg.env.name, cfg.env.eval_num_envs if num_envs is None else num_envs,
                       seed=seed, **kwargs)
    except TypeError as e:  # unknown keyword arguments
        raise ValueError(f"eval env {cfg.env.name!r} with kwargs {kwargs}: {e}") from e
    try:
        fields = saved_fields(path)
        mismatch = fields_mismatch(fields, env) if fields is not None else None
        if mismatch:
            raise ValueError(f"eval env {cfg.env.name!r} with kwargs {kwargs} does not fit the "
                             f"run's checkpoint {path.name}: {mismatch}")
        agent = build_agent(env.spec, cfg, dev)
        learner = Learner(agent, learner_config(cfg, dev))
        shared = ckpt.load_object(path / "learner.pt")
        if not isinstance(shared, dict) or not isinstance(shared.get("learner"), dict):
            raise ckpt.CheckpointError(f"{path}/learner.pt holds no learner state")
        with warnings.catch_warnings():  # evaluation never samples from the learner's generator
            warnings.filterwarnings("ignore", message=".*sampling generator", category=UserWarning)
            learner.load_state_dict(shared["learner"])
        if sample is None:
            sample = cfg.eval_sample
        out = evaluation_row(env, Collector(env, agent).evaluate(episodes, sample=sample))
        out["sampled"] = float(sample)
    finally:
        env.close()
    out["checkpoint_env_steps"] = float(ckpt.verify_checkpoint(path)["step"])
    return out
