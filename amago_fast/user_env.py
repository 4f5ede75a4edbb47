"""Bring your own env: train on env objects or builders from Python, and meta-RL trials for any
vector env.

``Trainer(cfg, env=..., eval_env=...)`` and ``amago_fast.train(cfg, env=...)`` accept, for each:

- an amago_fast :class:`~amago_fast.envs.base.VectorEnv` (used as it is),
- a ``gymnasium.vector.VectorEnv`` in next-step autoreset mode (wrapped by
  :class:`~amago_fast.envs.gym_adapter.GymVectorEnv`),
- an EnvPool pool from ``envpool.make(..., env_type="gymnasium")`` (wrapped by
  :class:`~amago_fast.envs.envpool_env.EnvPoolEnv`),
- or a callable building one of those. It is called with the keywords among ``num_envs`` and
  ``seed`` that its signature takes (``env.num_envs`` / ``env.eval_num_envs`` of the config and
  the rank's seed), so one builder serves training and evaluation and every rank of a
  distributed job.

No registration, no ``--env.import_modules``: the env's spec is read from the built env, the
config's ``env.name`` is only a label then, and the run stores the spec (``env_spec.json``) so
:func:`amago_fast.load_agent` rebuilds the agent without the env. Without an ``eval_env``,
evaluation builds a second env from a callable ``env``, and otherwise borrows the training env
(its open training rollouts restart after each evaluation).

:class:`TrialEnv` turns any sync VectorEnv into meta-RL trials (k episodes of one task per
rollout, the context kept across the episode resets), as the built-in tasks' trial mode does.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np

from amago_fast.envs.base import EPISODE_START, VectorEnv, positive_int
from amago_fast.spaces import EnvSpec, FieldSpec

__all__ = ["EnvSource", "as_vector_env", "TrialEnv", "BorrowedEval"]


def _is_gym_vector(obj: Any) -> bool:
    try:
        import gymnasium as gym
    except ImportError:
        return False
    return isinstance(obj, gym.vector.VectorEnv)


def as_vector_env(obj: Any, what: str = "env") -> VectorEnv:
    """`obj` (a VectorEnv, a gymnasium vector env or an EnvPool pool) as a VectorEnv; TypeError
    naming `what` for anything else."""
    from amago_fast.envs.envpool_env import EnvPoolEnv, is_envpool_pool
    from amago_fast.envs.gym_adapter import GymVectorEnv

    if isinstance(obj, VectorEnv):
        return obj
    if is_envpool_pool(obj):
        return EnvPoolEnv(obj)
    if _is_gym_vector(obj):
        return GymVectorEnv(obj)
    try:
        import gymnasium as gym

        single = isinstance(obj, gym.Env)
    except ImportError:
        single = False
    hint = (" (a single gymnasium env: give gymnasium.vector.SyncVectorEnv([lambda: env]) or a "
            "builder)" if single else "")
    raise TypeError(f"{what} must be an amago_fast VectorEnv, a gymnasium.vector.VectorEnv, an "
                    f"EnvPool pool or a callable building one, got {type(obj).__name__}{hint}")


def _call_builder(fn: Callable[..., Any], num_envs: int, seed: int, what: str) -> VectorEnv:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins without a signature: call them bare
        params = {}
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs = {k: v for k, v in (("num_envs", num_envs), ("seed", seed))
              if takes_all or k in params}
    env = as_vector_env(fn(**kwargs), f"{what} (what the builder returned)")
    if "num_envs" in kwargs and env.num_envs != num_envs:
        env.close()
        raise ValueError(f"{what}: the builder was asked for num_envs={num_envs} and built "
                         f"{env.num_envs} envs")
    return env


class EnvSource:
    """The training env and evaluation env a user gave (objects or builders).

    Args:
      env: the training env or a builder of it (see the module docstring).
      eval_env: the evaluation env or a builder; None: built from `env` when it is a builder,
        else evaluation borrows the training env.
    """

    def __init__(self, env: Any, eval_env: Any = None) -> None:
        for name, value in (("env", env), ("eval_env", eval_env)):
            if value is None and name == "eval_env":
                continue
            if not callable(value) or isinstance(value, VectorEnv) or _is_gym_vector(value):
                as_vector_env(value, name)  # objects: refused now, before anything is built
        self.env, self.eval_env = env, eval_env

    @staticmethod
    def _is_builder(value: Any) -> bool:
        return callable(value) and not isinstance(value, VectorEnv) and not _is_gym_vector(
            value) and not _is_pool(value)

    def build(self, num_envs: int, eval_num_envs: int, seed: int,
              eval_seed: int) -> tuple[VectorEnv, VectorEnv | None]:
        """(training env, evaluation env or None to borrow the training env). The training
        env's num_envs wins over the config's when an object is given (its own count)."""
        if self._is_builder(self.env):
            train = _call_builder(self.env, num_envs, seed, "env")
        else:
            train = as_vector_env(self.env, "env")
        try:
            if self.eval_env is not None:
                if self._is_builder(self.eval_env):
                    ev: VectorEnv | None = _call_builder(self.eval_env, eval_num_envs, eval_seed,
                                                         "eval_env")
                else:
                    ev = as_vector_env(self.eval_env, "eval_env")
            elif self._is_builder(self.env):
                ev = _call_builder(self.env, eval_num_envs, eval_seed, "env (for evaluation)")
            else:
                ev = None
            if ev is train:
                ev = None
            if ev is not None and (ev.spec.observation != train.spec.observation
                                   or ev.spec.action != train.spec.action):
                ev.close()
                raise ValueError(f"eval_env's observation/action spec differs from the training "
                                 f"env's ({ev.spec} vs {train.spec})")
        except BaseException:
            train.close()
            raise
        return train, ev


def _is_pool(value: Any) -> bool:
    from amago_fast.envs.envpool_env import is_envpool_pool

    return is_envpool_pool(value)


class TrialEnv(VectorEnv):
    """Meta-RL trials over any sync VectorEnv: `episodes_per_trial` episodes of one task form
    one rollout (one trajectory in the buffer, one context for the agent).

    At a trial's start (``reset`` and each trial end) ``resample_task(env_ids, rng)`` is called
    for those envs, before the inner env starts their next episode: it sets the task the
    trial keeps (e.g. ``vec.envs[i].unwrapped.goal = ...`` for a gymnasium SyncVectorEnv).
    Within a trial the inner env's episodes end and restart as usual, but the wrapper reports
    no done flag for them: the rollout, and so the agent's KV cache, continues. The inner env
    autoresets on the next step (next-step rule), so each inner boundary adds one transition
    whose action the inner env ignores and whose reward is 0; the observation it returns is
    the first of the next episode, marked ``episode_start`` = 1 (a float32 (1,) observation
    key, also 1 on a trial's first row). The last episode's done flags end the trial
    (terminated or truncated as the inner env said).

    At a trial end ``info["episode_returns"]`` (N, k) float32 holds each episode's return
    (NaN for envs whose trial did not end) and ``info["success"]`` the share of the trial's
    episodes whose last step reported ``info["success"]`` (when the inner env reports it),
    as the built-in trials do; :func:`amago_fast.envs.trials.first_vs_later` reads the former.
    """

    def __init__(self, env: Any, episodes_per_trial: int,
                 resample_task: Callable[[np.ndarray, np.random.Generator], None] | None = None,
                 seed: int = 0) -> None:
        env = as_vector_env(env, "TrialEnv env")
        if env.is_async:
            raise ValueError("TrialEnv needs a synchronous env (async EnvPool batches hold "
                             "some envs only)")
        if EPISODE_START in {f.name for f in env.spec.observation}:
            raise ValueError(f"{env.spec.name} already has an {EPISODE_START!r} observation "
                             "(it runs trials itself)")
        if resample_task is not None and not callable(resample_task):
            raise TypeError(f"resample_task must be callable, got {resample_task!r}")
        self.k = positive_int(episodes_per_trial, "episodes_per_trial")
        self.env = env
        self.num_envs = env.num_envs
        self.resample_task = resample_task
        self.rng = np.random.default_rng(seed)
        inner = env.spec
        steps = inner.max_episode_steps
        self.spec = EnvSpec(
            f"{inner.name}-trials{self.k}",
            (*inner.observation, FieldSpec(EPISODE_START, (1,), np.float32)),
            inner.action, goals=inner.goals,
            # k episodes plus the k - 1 inner autoreset steps between them
            max_episode_steps=None if steps is None else self.k * steps + self.k - 1,
            extra={**inner.extra, "episodes_per_trial": self.k},
        )
        n = self.num_envs
        self._episode = np.zeros(n, np.int64)       # inner episodes finished in this trial
        self._inner_reset = np.zeros(n, np.bool_)   # the next step is the inner autoreset
        self._trial_over = np.zeros(n, np.bool_)    # the next step starts a new trial
        self._returns = np.zeros((n, self.k), np.float32)
        self._success = np.zeros((n, self.k), np.float32)

    def _start(self, ids: np.ndarray) -> None:
        if self.resample_task is not None and ids.size:
            self.resample_task(ids, self.rng)
        self._episode[ids] = 0
        self._returns[ids] = 0.0
        self._success[ids] = np.nan

    def _with_start(self, obs: dict[str, np.ndarray], start: np.ndarray) -> dict[str, np.ndarray]:
        out = dict(obs)
        out[EPISODE_START] = start.astype(np.float32)[:, None]
        return out

    def reset(self, seed: int | None = None) -> dict[str, np.ndarray]:
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self._start(np.arange(self.num_envs))
        self._inner_reset[:] = False
        self._trial_over[:] = False
        obs = self.env.reset(seed)
        return self._with_start(obs, np.ones(self.num_envs, np.bool_))

    def step(self, actions: np.ndarray, env_ids: np.ndarray | None = None):
        if env_ids is not None:
            raise ValueError(f"{self.spec.name} is a synchronous env: step() takes no env_ids")
        obs, reward, term, trunc, info = self.env.step(actions)
        reward = np.asarray(reward, np.float32)
        term, trunc = np.asarray(term, np.bool_), np.asarray(trunc, np.bool_)
        fresh = self._inner_reset | self._trial_over  # the inner env autoreset these envs
        live = ~fresh
        ep = np.minimum(self._episode, self.k - 1)
        rows = np.nonzero(live)[0]
        self._returns[rows, ep[rows]] += reward[rows]
        inner_done = (term | trunc) & live
        success = info.get("success") if isinstance(info, dict) else None
        if success is not None:
            s = np.asarray(success, np.float32)
            d = np.nonzero(inner_done)[0]
            self._success[d, ep[d]] = s[d]
        self._episode += inner_done
        trial_done = inner_done & (self._episode >= self.k)
        out_info: dict[str, Any] = {}
        if trial_done.any():
            done_rows = np.nonzero(trial_done)[0]
            returns = np.full((self.num_envs, self.k), np.nan, np.float32)
            returns[done_rows] = self._returns[done_rows]
            out_info["episode_returns"] = returns
            if success is not None:
                trial_success = np.full(self.num_envs, np.nan, np.float32)
                with np.errstate(all="ignore"):
                    trial_success[done_rows] = np.nanmean(self._success[done_rows], axis=1)
                out_info["success"] = trial_success
        elif success is not None:
            out_info["success"] = np.full(self.num_envs, np.nan, np.float32)
        # The envs whose trial ended get their next task now: the inner env starts their next
        # episode on the coming step.
        self._start(np.nonzero(trial_done)[0])
        self._inner_reset = inner_done & ~trial_done
        self._trial_over = trial_done
        zero = np.zeros(self.num_envs, np.bool_)
        out_term = np.where(trial_done, term, zero)
        out_trunc = np.where(trial_done, trunc & ~term, zero)
        return (self._with_start(obs, fresh), reward, out_term, out_trunc, out_info)

    def close(self) -> None:
        self.env.close()


class BorrowedEval:
    """Evaluation on the training env, through the trainer's *current* training collector
    (``Collector.evaluate`` on its own env abandons the open training rollouts, which restart
    at the next ``collect``; a second collector on the same env would instead leave the
    training collector stepping an env it no longer knows the state of). Looked up at each
    call: a resume replaces the trainer's collector."""

    def __init__(self, trainer: Any) -> None:
        self._trainer = trainer

    @property
    def env(self) -> VectorEnv:
        return self._trainer.env

    def evaluate(self, num_episodes: int, **kwargs: Any) -> dict[str, Any]:
        return self._trainer.collector.evaluate(num_episodes, **kwargs)
