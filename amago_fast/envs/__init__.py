"""Environments: the VectorEnv contract, EnvPool and gymnasium adapters, built-in tasks, registry.

``make_env(name, num_envs, seed=0, **kwargs)`` builds any of ``list_envs()`` plus
``envpool:<TaskId>`` (e.g. ``envpool:CartPole-v1``, ``envpool:BallInCupCatch-v1``; kwarg
``batch_size`` for async) and ``gym:<gymnasium id>`` (kwarg ``vectorization`` = "sync"/"async").
A pool already built with ``envpool.make(..., env_type="gymnasium")`` is wrapped with
``EnvPoolEnv(pool)``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from amago_fast.envs.actuator_inversion import ACTINV_TASKS, ActuatorInversionEnv, make_actinv_env
from amago_fast.envs.aib import AIBEnv, ComplexODE, DoubleIntegrator
from amago_fast.envs.aib_mujoco import MUJOCO_TASKS, AIBMujocoEnv
from amago_fast.envs.bandit import BanditTrials
from amago_fast.envs.base import (
    EPISODE_START,
    BatchedTaskEnv,
    VectorEnv,
    check_actions,
    check_env_ids,
    positive_int,
)
from amago_fast.envs.envpool_env import EnvPoolEnv
from amago_fast.envs.gym_adapter import GymVectorEnv
from amago_fast.envs.key_door import DarkKeyToDoor
from amago_fast.envs.maze_runner import MazeRunner
from amago_fast.envs.mixture import (
    MIXTURE_NAME,
    MixtureEnv,
    mixture_spec,
    normalize_tasks,
    task_slots,
)
from amago_fast.envs.tmaze import TMaze

__all__ = [
    "VectorEnv",
    "BatchedTaskEnv",
    "EPISODE_START",
    "EnvPoolEnv",
    "GymVectorEnv",
    "TMaze",
    "DarkKeyToDoor",
    "MazeRunner",
    "BanditTrials",
    "ActuatorInversionEnv",
    "AIBEnv",
    "AIBMujocoEnv",
    "MixtureEnv",
    "check_actions",
    "check_env_ids",
    "make_env",
    "list_envs",
]


def _tmaze_passive(num_envs: int, seed: int = 0, corridor_length: int = 50,
                   episodes_per_trial: int | None = 1, trial_max_steps: int | None = None):
    return TMaze(num_envs, corridor_length=corridor_length, active=False, seed=seed,
                 episodes_per_trial=episodes_per_trial, trial_max_steps=trial_max_steps)


def _tmaze_active(num_envs: int, seed: int = 0, corridor_length: int = 50,
                  episodes_per_trial: int | None = 1, trial_max_steps: int | None = None):
    return TMaze(num_envs, corridor_length=corridor_length, active=True, seed=seed,
                 episodes_per_trial=episodes_per_trial, trial_max_steps=trial_max_steps)


def _key_to_door(num_envs: int, seed: int = 0, room_size: int = 9, episode_max_steps: int = 50,
                 trial_max_steps: int | None = 500, episodes_per_trial: int | None = None):
    return DarkKeyToDoor(num_envs, room_size=room_size, episode_max_steps=episode_max_steps,
                         trial_max_steps=trial_max_steps, episodes_per_trial=episodes_per_trial,
                         seed=seed)


def _maze_runner(num_envs: int, seed: int = 0, k: int | None = None, num_goals: int | None = None,
                 maze_size: int = 15, episode_max_steps: int | None = None,
                 num_layouts: int = 64, loop_prob: float = 0.1):
    if k is not None and num_goals is not None and k != num_goals:
        raise ValueError(f"maze-runner: k={k} and num_goals={num_goals} disagree (same thing)")
    goals = k if k is not None else (num_goals if num_goals is not None else 3)
    return MazeRunner(num_envs, num_goals=goals, maze_size=maze_size,
                      episode_max_steps=episode_max_steps, num_layouts=num_layouts,
                      loop_prob=loop_prob, seed=seed)


def _bandit(num_envs: int, seed: int = 0, num_arms: int = 5, pulls_per_episode: int = 1,
            episodes_per_trial: int = 10):
    return BanditTrials(num_envs, num_arms=num_arms, pulls_per_episode=pulls_per_episode,
                        episodes_per_trial=episodes_per_trial, seed=seed)


def _actinv(name: str) -> Callable[..., VectorEnv]:
    def build(num_envs: int, seed: int = 0, split: str = "train", batch_size: int | None = None,
              invert_prob: float = 0.5, subsets: str = "split"):
        return make_actinv_env(name, num_envs, seed=seed, split=split, batch_size=batch_size,
                            invert_prob=invert_prob, subsets=subsets)

    def build_hopper(num_envs: int, seed: int = 0, split: str = "train",
                     batch_size: int | None = None, invert_prob: float = 0.5,
                     subsets: str = "split", version: str = "v5"):
        return make_actinv_env(name, num_envs, seed=seed, split=split, batch_size=batch_size,
                            invert_prob=invert_prob, subsets=subsets, version=version)

    return build_hopper if name == "actinv-hopper" else build


def _aib_di(num_envs: int, seed: int = 0, split: str = "train", instances: Any = None,
            warmup_steps: int | None = None, episodes_per_trial: int = 1):
    return DoubleIntegrator(num_envs, seed=seed, split=split, instances=instances,
                            warmup_steps=warmup_steps, episodes_per_trial=episodes_per_trial)


def _aib_di_friction(num_envs: int, seed: int = 0, split: str = "train", instances: Any = None,
                     warmup_steps: int | None = None, episodes_per_trial: int = 1):
    return DoubleIntegrator(num_envs, seed=seed, friction=True, split=split,
                            instances=instances, warmup_steps=warmup_steps,
                            episodes_per_trial=episodes_per_trial)


def _aib_ode(num_envs: int, seed: int = 0, split: str = "train", instances: Any = None,
             warmup_steps: int | None = None, episodes_per_trial: int = 1):
    return ComplexODE(num_envs, seed=seed, split=split, instances=instances,
                      warmup_steps=warmup_steps, episodes_per_trial=episodes_per_trial)


def _aib_mujoco(name: str) -> Callable[..., VectorEnv]:
    def build(num_envs: int, seed: int = 0, split: str = "train", instances: Any = None,
              warmup_steps: int | None = None, episodes_per_trial: int = 1,
              num_workers: int | None = None):
        return AIBMujocoEnv(name, num_envs, seed=seed, split=split, instances=instances,
                            warmup_steps=warmup_steps, episodes_per_trial=episodes_per_trial,
                            num_workers=num_workers)

    return build


_REGISTRY: dict[str, Callable[..., VectorEnv]] = {
    "tmaze-passive": _tmaze_passive,
    "tmaze-active": _tmaze_active,
    "key-to-door": _key_to_door,
    "maze-runner": _maze_runner,
    "bandit": _bandit,
    **{name: _actinv(name) for name in ACTINV_TASKS},
    "aib-di": _aib_di,
    "aib-di-friction": _aib_di_friction,
    "aib-ode": _aib_ode,
    **{name: _aib_mujoco(name) for name in MUJOCO_TASKS},
}


def list_envs() -> list[str]:
    """Registered names (plus the prefixes ``envpool:<TaskId>`` and ``gym:<id>``)."""
    return [*_REGISTRY, "envpool:<TaskId>", "gym:<gymnasium id>"]


def _check_kwargs(name: str, fn: Callable[..., Any], kwargs: dict[str, Any]) -> None:
    params = inspect.signature(fn).parameters
    allowed = [p for p in params if p not in ("num_envs", "seed")]
    bad = sorted(k for k in kwargs if k not in allowed)
    if bad:
        raise TypeError(f"make_env({name!r}): unknown keyword arguments {bad}; "
                        f"valid: {allowed}")


def _mixture(num_envs: int, seed: int = 0, tasks: Any = None, only: str | None = None):
    """Several envs across the slots (amago_fast/envs/mixture.py); ``only=<label>``: every slot
    on that task, with the whole mixture's joined spec (its evaluation set)."""
    entries = normalize_tasks(tasks)
    labels = [t["label"] for t in entries]
    if only is not None and only not in labels:
        raise ValueError(f"mixture: only={only!r} is not a task label; labels: {labels}")
    counts = ([num_envs if t["label"] == only else 0 for t in entries] if only is not None
              else task_slots(num_envs, len(entries)))
    built: list[tuple[str, VectorEnv]] = []
    specs = []
    try:
        for k, (t, n) in enumerate(zip(entries, counts)):
            try:
                env = make_env(t["name"], max(n, 1), seed=seed + 7919 * k, **t["kwargs"])
            except (ValueError, TypeError) as e:
                kind = ValueError if isinstance(e, ValueError) else TypeError
                raise kind(f"mixture task {t['label']!r} ({t['name']!r}): {e}") from e
            specs.append((t["label"], env.spec))
            if n:
                built.append((t["label"], env))
            else:  # (only=...) built for its spec alone
                env.close()
        return MixtureEnv(built, spec=mixture_spec(specs))
    except BaseException:
        for _, env in built:
            env.close()
        raise


_REGISTRY[MIXTURE_NAME] = _mixture


def make_env(name: str, num_envs: int, seed: int = 0, **kwargs: Any) -> VectorEnv:
    """Build a registered env (see `list_envs()`), ``envpool:<TaskId>`` or ``gym:<id>``."""
    if not isinstance(name, str):
        raise TypeError(f"env name must be a string, got {name!r}")
    num_envs = positive_int(num_envs)  # ints and NumPy integers; not bools or floats
    if name.startswith("envpool:"):
        task = name[len("envpool:"):]
        extra = {k: kwargs.pop(k) for k in list(kwargs) if k in ("batch_size",)}
        return EnvPoolEnv(task, num_envs, seed=seed, name=name, **extra, **kwargs)
    if name.startswith("gym:"):
        return GymVectorEnv(name[len("gym:"):], num_envs, seed=seed, name=name, **kwargs)
    if name not in _REGISTRY:
        raise ValueError(f"unknown env {name!r}; valid names: {list_envs()}")
    fn = _REGISTRY[name]
    _check_kwargs(name, fn, kwargs)
    return fn(num_envs, seed=seed, **kwargs)
