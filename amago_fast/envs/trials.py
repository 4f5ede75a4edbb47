"""Meta-RL trials: several inner episodes of one sampled task form one rollout.

The mechanism lives in :class:`amago_fast.envs.base.BatchedTaskEnv` (every built-in task
supports it); this module is its front door and documents the contract:

- A *trial* is one rollout for the agent and one trajectory in the buffer. The task (T-Maze cue,
  key/door layout, arm probabilities, ...) is drawn once per trial and kept for all its episodes.
- Inner episodes reset immediately: the step that ends an inner episode returns, with that
  episode's final reward, the first observation of the next inner episode. The policy's context
  (KV cache) persists, since for the collector the rollout has not ended.
- The observation key ``episode_start`` float32 (1,) is 1 on the first row of every inner
  episode (row 0 of the trial included) and 0 elsewhere.
- The trial ends — terminated after `episodes_per_trial` inner episodes, truncated when
  `trial_max_steps` is reached — and only then are done flags raised; the next step autoresets
  (next-step rule) with a new task.
- At a trial end ``info["episode_returns"]`` (N, k_max) float32 holds each inner episode's
  return for the envs whose trial ended (NaN past the last episode and for other envs);
  :func:`first_vs_later` turns a list of those into the meta-RL learning check.

EnvPool and gymnasium envs cannot hold a task fixed across resets, so trials are built-in only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from amago_fast.envs.bandit import BanditTrials
from amago_fast.envs.base import EPISODE_START, BatchedTaskEnv
from amago_fast.envs.key_door import DarkKeyToDoor
from amago_fast.envs.maze_runner import MazeRunner
from amago_fast.envs.tmaze import TMaze

__all__ = ["EPISODE_START", "make_trial_env", "first_vs_later", "TRIAL_TASKS"]

TRIAL_TASKS: dict[str, type[BatchedTaskEnv]] = {
    "tmaze": TMaze,
    "key-to-door": DarkKeyToDoor,
    "bandit": BanditTrials,
}


def make_trial_env(
    task: str | type[BatchedTaskEnv],
    num_envs: int,
    episodes_per_trial: int | None = 2,
    trial_max_steps: int | None = None,
    seed: int = 0,
    **task_kwargs: Any,
) -> BatchedTaskEnv:
    """A built-in task run as trials of `episodes_per_trial` episodes (and/or a step limit).

    `task` is a key of :data:`TRIAL_TASKS` or a :class:`BatchedTaskEnv` subclass accepting
    ``episodes_per_trial`` / ``trial_max_steps``.
    """
    if isinstance(task, str):
        if task not in TRIAL_TASKS:
            raise ValueError(f"unknown trial task {task!r}; valid: {sorted(TRIAL_TASKS)}")
        cls = TRIAL_TASKS[task]
    elif isinstance(task, type) and issubclass(task, BatchedTaskEnv):
        cls = task
    else:
        raise TypeError(f"task must be a name or a BatchedTaskEnv subclass, got {task!r}")
    if cls is MazeRunner:
        raise ValueError("maze-runner episodes end on goal completion; it has no trial mode")
    env = cls(
        num_envs,
        seed=seed,
        episodes_per_trial=episodes_per_trial,
        trial_max_steps=trial_max_steps,
        **task_kwargs,
    )
    if not env.trial_mode:
        raise ValueError(
            "a trial needs episodes_per_trial > 1 or a trial_max_steps limit "
            f"(got episodes_per_trial={episodes_per_trial}, trial_max_steps={trial_max_steps})"
        )
    return env


def first_vs_later(episode_returns: list[np.ndarray] | np.ndarray) -> dict[str, float]:
    """Mean return of the first inner episode vs the later ones, over finished trials.

    `episode_returns`: rows of per-episode returns (NaN-padded, as in ``info["episode_returns"]``).
    """
    arr = np.asarray(
        np.concatenate([np.atleast_2d(r) for r in episode_returns])
        if isinstance(episode_returns, list)
        else np.atleast_2d(episode_returns),
        dtype=np.float64,
    )
    arr = arr[~np.isnan(arr[:, 0])]
    if arr.size == 0 or arr.shape[1] < 2:
        raise ValueError("need at least one finished trial with >= 2 episode slots")
    later = arr[:, 1:]
    later = later[~np.isnan(later)]
    return {
        "first_episode_return": float(arr[:, 0].mean()),
        "later_episode_return": float(later.mean()) if later.size else float("nan"),
        "num_trials": int(arr.shape[0]),
    }
