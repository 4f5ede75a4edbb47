"""Hardware profiles: the sizes a run gets when the user names only the env.

`amago-fast train --env.name ID` (no ``--preset``, or a preset whose ``profile`` is not
``off``) sizes every field below that the user did not type, from two things:

- the **profile** (``--profile cpu|gpu|auto``; ``auto`` = ``gpu`` when the run's device is a
  CUDA device, else ``cpu``): the model width/depth, learning rate, budgets, evaluation cadence,
  exploration annealing and torch threads. ``cpu`` is sized to learn within minutes on a laptop
  CPU (the tiny Transformer that solves T-Maze, POPGym RepeatPrevious and MiniGrid Empty here);
  ``gpu`` is AMAGO-like (3 layers of width 128, exploration annealed over 1M steps).
- the **env's episode limit** T (its time limit, or a trial's step limit for meta-RL envs),
  read from the env itself (one copy is built and closed): context T + 1 and window T (one
  whole rollout per window; T-Maze corridor H: T = H + 1, so context H + 2, window H + 1), a
  critic horizon that reaches T (largest gamma ≥ 1 - 1/T), the bilevel ε schedule over T steps
  for discrete actions (half the rollouts exploring from a step drawn log-uniformly from
  either end, the other half only at decision points: where the policy's action or the
  observation changes),
  a batch that keeps the rows per update near ``rows_per_update`` (cpu: 24 windows at T = 51,
  4 at T = 500) and an update ratio that keeps the rows replayed per env step constant
  (``replay_rows / (batch_size * window)`` updates per env step: 0.29 at T = 51, 0.18 at
  T = 500), so an env step costs about the same compute whatever the episode length and long
  episodes still get many updates.

Discrete-action envs evaluate with draws from the policy, as they collect (``eval_sample``).
Envs without a limit get context / window 128 (cpu) or 256 (gpu) and per-step ε-greedy.
`size_config` returns a new config and records nothing else: the resolved values are saved in
config.json as any other, so a resumed run never re-sizes.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from amago_fast.config import ConfigError, TrainConfig, apply_overrides

__all__ = ["PROFILES", "PROFILE_CHOICES", "Profile", "resolve_profile", "size_config",
           "sized_overrides", "episode_limit", "default_torch_threads", "SIZED_FIELDS"]

PROFILE_CHOICES = ("auto", "cpu", "gpu", "off")


@dataclass(frozen=True)
class Profile:
    """What one kind of machine gets (see the module docstring for the rules)."""

    model: dict[str, Any]
    """AgentConfig overrides: widths, depth, heads."""
    lr: float
    """Learning rate."""
    warmup_steps: int
    """Learning-rate warmup updates."""
    adam_beta2: float
    """AdamW's second-moment decay. cpu 0.99: passive T-Maze 50, 8k env steps, seeds 0-31
    paired with torch's 0.999: 24 of 32 seeds solved against 20, four seeds gained and none
    lost (a network that has learned to ignore the cue leaves that plateau sooner when Adam's
    gradient scale forgets faster; docs/LEARNING.md, session 18). gpu: torch's 0.999 (not
    measured there)."""
    replay_rows: float
    """Rows replayed per env step: updates_per_env_step = replay_rows / (batch * window)."""
    rows_per_update: int
    """Rows an update aims to see: batch = rows_per_update / window, within [min_batch,
    max_batch]. Long episodes then get fewer windows per update and more updates, not the same
    few updates over ever larger batches (CartPole-v1, T = 500, 24 windows per update: 480
    updates in 20k env steps and a greedy return of 9, docs/LEARNING.md)."""
    min_batch: int
    """Fewest windows per update."""
    max_batch: int
    """Most windows per update."""
    max_updates_per_env_step: float
    """Ceiling of the update ratio (short episodes)."""
    min_updates_per_env_step: float
    """Floor of the update ratio (long episodes)."""
    max_window: int
    """Longest window (and context - 1) sized from an episode limit."""
    unlimited_window: int
    """Window for envs that declare no episode limit."""
    num_envs: int
    """Parallel training envs."""
    eval_num_envs: int
    """Parallel evaluation envs."""
    eval_episodes: int
    """Greedy episodes per evaluation: 64 puts a 95% interval of about ±0.12 on a success
    rate near 0.5 (±0.25 with 16)."""
    total_env_steps: int
    """Default budget."""
    anneal_steps: int
    """Env steps over which exploration anneals."""
    learning_starts_min: int
    """Fewest env steps before the first update."""
    learning_starts_max: int
    """Most env steps before the first update."""
    eval_interval_max: int
    """Longest gap between evaluations, in env steps."""
    checkpoint_interval: int
    """Env steps between checkpoints."""


# Width 32, 2 layers: the model every CPU learning figure in docs/LEARNING.md was measured with.
_CPU_MODEL = {
    "agent.d_model": 32, "agent.num_layers": 2, "agent.num_heads": 2,
    "agent.tstep_hidden": 32, "agent.tstep_out": 32,
    "agent.actor_hidden": 32, "agent.critic_hidden": 32,
}
_GPU_MODEL = {
    "agent.d_model": 128, "agent.num_layers": 3, "agent.num_heads": 8,
    "agent.tstep_hidden": 128, "agent.tstep_out": 128,
    "agent.actor_hidden": 256, "agent.critic_hidden": 256,
}

PROFILES: dict[str, Profile] = {
    # The T-Maze preset's tuned ratio (0.3 updates per env step at window 51, batch 24) is
    # 367 rows per env step and 1 224 rows per update; the cpu profile keeps both.
    "cpu": Profile(
        model=_CPU_MODEL, lr=1e-3, warmup_steps=50, adam_beta2=0.99, replay_rows=360.0,
        rows_per_update=24 * 51, min_batch=4, max_batch=24,
        max_updates_per_env_step=0.5, min_updates_per_env_step=0.01, max_window=1024,
        unlimited_window=128, num_envs=8, eval_num_envs=16, eval_episodes=64,
        total_env_steps=50_000, anneal_steps=25_000, learning_starts_min=500,
        learning_starts_max=5_000, eval_interval_max=5_000, checkpoint_interval=25_000,
    ),
    "gpu": Profile(
        model=_GPU_MODEL, lr=3e-4, warmup_steps=500, adam_beta2=0.999, replay_rows=720.0,
        rows_per_update=24 * 256, min_batch=8, max_batch=24,
        max_updates_per_env_step=1.0, min_updates_per_env_step=0.02, max_window=4096,
        unlimited_window=256, num_envs=16, eval_num_envs=32, eval_episodes=128,
        total_env_steps=2_000_000, anneal_steps=1_000_000, learning_starts_min=5_000,
        learning_starts_max=20_000, eval_interval_max=50_000, checkpoint_interval=100_000,
    ),
}

# Every config field the profiles size (a field the user typed is never changed).
SIZED_FIELDS = (
    *_CPU_MODEL,
    "agent.context_len", "agent.gammas", "learner.lr", "learner.warmup_steps",
    "learner.adam_beta2", "window_len", "batch_size", "env.num_envs", "env.eval_num_envs",
    "exploration",
    "total_env_steps", "learning_starts", "updates_per_env_step", "collect_steps_per_iter",
    "eval_interval", "eval_episodes", "eval_sample", "checkpoint_interval", "log_interval",
    "torch_threads", "buffer.capacity_steps",
)

def resolve_profile(profile: str, device: str) -> str:
    """``cpu`` or ``gpu`` for the profile name and the run's ``device`` setting."""
    if profile not in PROFILE_CHOICES or profile == "off":
        raise ConfigError(f"profile: must be one of auto, cpu, gpu (or off), got {profile!r}")
    if profile != "auto":
        return profile
    if device == "cpu":
        return "cpu"
    if device.startswith("cuda"):
        return "gpu"
    import torch

    return "gpu" if torch.cuda.is_available() else "cpu"


def default_torch_threads(cores: int | None = None) -> int:
    """Intra-op threads for the tiny CPU updates: 1 up to 4 cores (on the 2 loaded cores of
    the development box 1 thread beat 2 for every update size measured), then a quarter of the
    cores, at most 4 (collection and the env step need the others)."""
    n = cores if cores is not None else (len(os.sched_getaffinity(0))
                                         if hasattr(os, "sched_getaffinity") else os.cpu_count())
    n = int(n or 1)
    return 1 if n <= 4 else min(4, n // 4)


def episode_limit(cfg: TrainConfig) -> tuple[int | None, bool]:
    """(the env's episode limit or None, whether its actions are discrete), read from one copy
    of the env (built with the run's env kwargs, then closed; with `env.num_envs` copies when
    the kwargs need them, e.g. an async EnvPool ``batch_size``)."""
    from amago_fast.envs import make_env

    for mod in cfg.env.import_modules:
        importlib.import_module(mod)
    try:
        env = make_env(cfg.env.name, 1, seed=cfg.seed, **cfg.env.kwargs)
    except (ValueError, TypeError):
        try:
            env = make_env(cfg.env.name, cfg.env.num_envs, seed=cfg.seed, **cfg.env.kwargs)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"env.name={cfg.env.name!r} / env.kwargs={cfg.env.kwargs}: "
                              f"{e}") from e
    try:
        spec = env.spec
        limit = spec.max_episode_steps
        return (int(limit) if limit else None), bool(spec.action.is_discrete)
    finally:
        env.close()


def _gammas(limit: int | None) -> list[float]:
    """0.9 and a long gamma whose horizon 1 / (1 - gamma) covers the episode (at least 0.99)."""
    if limit is None or limit <= 100:
        return [0.9, 0.99]
    long = 1.0 - 1.0 / limit
    return [0.9, 0.99, round(min(long, 0.9999), 4)] if long > 0.99 else [0.9, 0.99]


def sized_overrides(profile: str, limit: int | None, discrete: bool,
                    cores: int | None = None, num_envs: int | None = None) -> dict[str, Any]:
    """The dotted-name values profile `profile` (cpu or gpu) gives an env with episode limit
    `limit` (None: none declared) and discrete (else continuous) actions; `num_envs`: the
    training envs when the user chose them (learning start, evaluation and collection cadence
    follow them)."""
    p = PROFILES[profile]
    envs = num_envs or p.num_envs
    window = min(limit, p.max_window) if limit else p.unlimited_window
    batch = int(min(p.max_batch, max(p.min_batch, round(p.rows_per_update / window))))
    ups = p.replay_rows / (batch * window)
    ups = round(min(p.max_updates_per_env_step, max(p.min_updates_per_env_step, ups)), 4)
    ep = limit or window
    learning_starts = min(p.learning_starts_max, max(p.learning_starts_min, envs * ep))
    # An evaluation every ~4 rounds of episodes (all training envs), at most eval_interval_max:
    # T-Maze 50 every ~1.6k env steps (~20 s here), CartPole every 5k.
    eval_interval = min(p.eval_interval_max, max(1_000, 4 * envs * ep))
    total = p.total_env_steps
    if discrete and limit:
        exploration: dict[str, Any] = {
            "kind": "bilevel", "horizon": int(limit), "anneal_steps": p.anneal_steps,
            "eps_first_start": 1.0, "eps_first_end": 0.05,
            "eps_last_start": 0.8, "eps_last_end": 0.01,
            # every rollout explores from a step drawn log-uniformly from either end (the
            # policy alone before it): a decision after a long stretch that any random action
            # spoils (T-Maze's junction) is reached in a share that falls with log T, not 1/T.
            # Passive T-Maze 50, 8k env steps, seeds 0-3: greedy success 0.48/0.48/0.58/0.56 vs
            # 0.52/0.52/0.00/0.00 from a uniform step, 0.00 from step 0 (docs/LEARNING.md)
            "late_start_prob": 1.0,
            "late_start_draw": "ends",
            # half the rollouts explore only where the policy's action or the observation
            # changes (decision points), so a learned corridor is walked clean and the choice
            # at its end is explored: passive T-Maze 50, 8k env steps, seeds 0-7, 6 of 8 solved
            # vs 0 of 8 without (docs/LEARNING.md)
            "decision_rollout_prob": 0.5,
        }
    elif discrete:
        exploration = {"kind": "epsilon_greedy", "eps_start": 1.0, "eps_end": 0.05,
                       "anneal_steps": p.anneal_steps}
    else:
        exploration = {"kind": "gaussian", "std_start": 0.5, "std_end": 0.05,
                       "anneal_steps": p.anneal_steps}
    return {
        **p.model,
        "agent.context_len": window + 1,
        "agent.gammas": _gammas(limit),
        "learner.lr": p.lr,
        "learner.warmup_steps": p.warmup_steps,
        "learner.adam_beta2": p.adam_beta2,
        "window_len": window,
        "batch_size": batch,
        "env.num_envs": p.num_envs,
        "env.eval_num_envs": p.eval_num_envs,
        "exploration": exploration,
        "total_env_steps": total,
        "learning_starts": learning_starts,
        "updates_per_env_step": ups,
        "collect_steps_per_iter": 8 * envs,
        "eval_interval": eval_interval,
        "eval_episodes": p.eval_episodes,
        # Discrete actions evaluate as they collect, with draws from the policy (AMAGO's
        # default): MiniGrid MemoryS7's argmax policy looped to the time limit in 64 of 64
        # episodes (0.00) where its samples scored 0.43 [0.32, 0.54] (docs/LEARNING.md).
        "eval_sample": bool(discrete),
        "checkpoint_interval": p.checkpoint_interval,
        "log_interval": max(500, eval_interval // 4),
        "torch_threads": default_torch_threads(cores),
        "buffer.capacity_steps": max(200_000, 4 * (window + 1) * envs),
    }


def size_config(cfg: TrainConfig, explicit: Iterable[str] = ()) -> TrainConfig:
    """`cfg` with every field of :data:`SIZED_FIELDS` not named in `explicit` (the dotted names
    the user typed) set by the config's profile for its env; `cfg` itself is unchanged. A
    config whose ``profile`` is ``off`` is returned as a copy, unsized."""
    if cfg.profile == "off":
        return apply_overrides(cfg, {})
    profile = resolve_profile(cfg.profile, cfg.device)
    limit, discrete = episode_limit(cfg)
    typed = set(explicit)
    values = sized_overrides(profile, limit, discrete,
                             num_envs=cfg.env.num_envs if "env.num_envs" in typed else None)
    # A typed context or window bounds the other: a window holds window + 1 rows of context.
    if "agent.context_len" in typed and "window_len" not in typed:
        values["window_len"] = max(1, min(values["window_len"], cfg.agent.context_len - 1))
    if "window_len" in typed and "agent.context_len" not in typed:
        values["agent.context_len"] = max(values["agent.context_len"], cfg.window_len + 1)
    return apply_overrides(cfg, {k: v for k, v in values.items() if k not in typed})
