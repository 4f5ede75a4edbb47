"""The :class:`Collector`: drives a VectorEnv with a policy and streams its rows to the buffer
(the step and its costs are described in the :mod:`amago_fast.collector` package docstring)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from amago_fast.collector.native_absorb import NativeAbsorb, fused_write_plan, native_absorb_step
from amago_fast.collector.numpy_absorb import NumpyAbsorb
from amago_fast.collector.policy import accepts_env_ids
from amago_fast.collector.state import RolloutState
from amago_fast.collector.stats import (
    EpisodeLog,
    QuotaLog,
    default_eval_step_cap,
    eval_quotas,
)
from amago_fast.envs.base import VectorEnv
from amago_fast.spaces import EnvSpec


def make_rollouts(env: VectorEnv, policy: Any, buffer: Any, exploration: Any,
                  nan_policy: str) -> RolloutState:
    """A :class:`RolloutState` for `env` with its absorb paths wired: the native one (falling
    back to the NumPy reference per step where needed), the fused buffer write when `buffer` is
    our native buffer, and the AsyncAbsorber for async batches whose rows it would write (fused)
    or not at all (no buffer); a separate write needs the full absorb_step result."""
    st = RolloutState(env, policy, buffer, exploration, nan_policy, native_absorb_step())
    st.fused = fused_write_plan(st, buffer)
    st.async_absorber_ok = (st.is_async and st.absorb_step is not None
                            and (st.fused is not None or buffer is None))
    native = NativeAbsorb(st, NumpyAbsorb(st))
    st.absorb = native.absorb
    st.absorb_async = native.absorb_async
    return st


class Collector:
    """Drives `env` with `policy`, writes every transition to `buffer` (see the module docstring).

    Args:
      env: the training VectorEnv.
      policy: implements :class:`Policy` (e.g. the Agent, :class:`RandomPolicy`).
      buffer: a TrajectoryBuffer (``write_step``, else ``reset_envs`` / ``append_step``), or None
        to only step.
      exploration: an :mod:`amago_fast.exploration` object, or None for none.
      eval_env: the env `evaluate` uses by default (if None, evaluation borrows `env`, after which
        the training rollouts restart).
      nan_policy: "raise" (default) or "flag" for non-finite observations/rewards.
      seed: passed to ``env.reset`` the first time (built-in and gymnasium envs).
    """

    def __init__(
        self,
        env: VectorEnv,
        policy: Any,
        buffer: Any = None,
        exploration: Any = None,
        eval_env: VectorEnv | None = None,
        nan_policy: str = "raise",
        seed: int | None = None,
    ) -> None:
        if not isinstance(env, VectorEnv):
            raise TypeError(f"env must be an amago_fast VectorEnv, got {type(env).__name__}")
        if nan_policy not in ("raise", "flag"):
            raise ValueError(f"nan_policy must be 'raise' or 'flag', got {nan_policy!r}")
        for name in ("init_state", "reset_state", "act"):
            if not callable(getattr(policy, name, None)):
                raise TypeError(f"policy {type(policy).__name__} has no {name}() (Policy protocol)")
        if buffer is not None and not all(
            callable(getattr(buffer, m, None)) for m in ("reset_envs", "append_step")
        ):
            raise TypeError("buffer must provide reset_envs() and append_step()")
        if buffer is not None:
            check_buffer_matches(buffer, env)
        for e in (env, eval_env):
            if e is not None and e.is_async and not accepts_env_ids(policy):
                raise ValueError(f"env {e.spec.name!r} is async: policy.act must accept an "
                                 "env_ids keyword (the envs whose rows it receives)")
        if exploration is not None and getattr(exploration, "num_envs", env.num_envs) != \
                env.num_envs:
            raise ValueError(f"exploration is for {exploration.num_envs} envs, env has "
                             f"{env.num_envs}")
        self.env = env
        self.eval_env = eval_env
        self.policy = policy
        self.buffer = buffer
        self.exploration = exploration
        self.nan_policy = nan_policy
        self.seed = seed
        self._train = make_rollouts(env, policy, buffer, exploration, nan_policy)
        self.total_env_steps = 0
        self.total_episodes = 0

    @property
    def spec(self) -> EnvSpec:
        return self.env.spec

    @property
    def rollouts(self) -> RolloutState:
        """The training env's rollout state (per-env bookkeeping and absorb paths; read by the
        collector benchmark's time split)."""
        return self._train

    def collect(self, num_steps: int, explore: bool = True,
                sample: bool = True) -> dict[str, Any]:
        """Step until at least `num_steps` transitions are stored; returns statistics.

        ``sample``: act with a draw from the policy's distribution (True) or its greedy action
        (False: the exploration scheme alone explores, as in DPG/TD3-style training).

        Stats: env_steps (transitions stored), vector_steps, seconds, steps_per_second,
        episodes and, if any ended, return / length / success means (per env name under
        ``per_env[name]``), ``trial_episode_returns`` for trial envs, nonfinite_steps.
        """
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        r = self._train
        log = EpisodeLog()
        t0 = time.perf_counter()
        if not r.started:
            r.start(self.seed)
            self.seed = None
        stored = vec = 0
        step = r.step
        while stored < num_steps:
            stored += step(explore, sample, log)  # positional: ~0.1 µs less than keywords
            vec += 1
        r.flush()  # every transition counted here is in the buffer when collect returns
        dt = time.perf_counter() - t0
        self.total_env_steps += stored
        self.total_episodes += log.count
        return self._stats(log, stored, vec, dt)

    def evaluate(self, num_episodes: int, env: VectorEnv | None = None,
                 sample: bool = False, max_steps: int | None = None,
                 should_stop: Callable[[], bool] | None = None) -> dict[str, Any]:
        """Run exactly `num_episodes` whole rollouts without exploration or buffer writes.

        The episodes are spread over the env slots as evenly as possible (slot i gets
        ``num_episodes // N``, plus one for ``i < num_episodes % N``); a slot's rollouts past
        its quota are discarded (it keeps stepping, its results ignored), so envs with short
        episodes are not over-weighted. Async envs count per env id the same way. The run stops
        when every slot met its quota, or early — ``stats["stopped_early"]`` then says why and
        the stats cover the rollouts that finished — after `max_steps` env steps (summed over
        slots; None: :func:`default_eval_step_cap`, from the env's time limit) or when
        `should_stop()` returns True (checked every vector step: a stop signal ends a long
        evaluation within one step).

        Uses `env`, else the collector's `eval_env`, else the training env (its open training
        rollouts are then abandoned and restart at the next `collect`). Policy memory is separate
        from the training rollouts'. ``sample=False`` takes the policy's greedy action.

        Stats as :meth:`collect`'s, plus ``slot_returns`` (per env slot, the kept rollouts'
        returns in the order they finished) and, for envs whose info carries
        ``episode_returns`` (trial envs), ``slot_episode_returns`` (per slot, per kept
        rollout, the inner-episode returns).
        """
        if isinstance(num_episodes, bool) or not isinstance(num_episodes, (int, np.integer)):
            raise TypeError(f"num_episodes must be an int, got {type(num_episodes).__name__}")
        if num_episodes < 1:
            raise ValueError(f"num_episodes must be >= 1, got {num_episodes}")
        if max_steps is not None and (isinstance(max_steps, bool)
                                      or not isinstance(max_steps, (int, np.integer))
                                      or max_steps < 1):
            raise ValueError(f"max_steps must be a positive int or None, got {max_steps!r}")
        env = env or self.eval_env or self.env
        if env.is_async and not accepts_env_ids(self.policy):
            raise ValueError(f"eval env {env.spec.name!r} is async: policy.act needs env_ids")
        if env is self.env:
            self._train.flush()
            self._train.started = False
        quotas = eval_quotas(int(num_episodes), env.num_envs)
        cap = default_eval_step_cap(env.spec, quotas) if max_steps is None else int(max_steps)
        r = make_rollouts(env, self.policy, None, None, self.nan_policy)
        log = QuotaLog(quotas, r)
        t0 = time.perf_counter()
        r.start(None)
        stored = vec = 0
        stopped: str | None = None
        while log.remaining:
            if stored >= cap:
                stopped = f"step cap ({cap} env steps)"
                break
            if should_stop is not None and should_stop():
                stopped = "stop requested"
                break
            stored += r.step(False, sample, log)
            vec += 1
        out = self._stats(log, stored, vec, time.perf_counter() - t0, name=env.spec.name)
        if stopped is not None:
            out["stopped_early"] = stopped
        return out

    def _stats(self, log: EpisodeLog | QuotaLog, stored: int, vec: int, dt: float,
               name: str | None = None) -> dict[str, Any]:
        summary, extra = log.summary()
        out: dict[str, Any] = {
            "env_steps": stored,
            "vector_steps": vec,
            "seconds": dt,
            "steps_per_second": stored / dt if dt > 0 else float("inf"),
            **summary,
            **extra,
            "per_env": {name or self.env.spec.name: summary},
            "nonfinite_steps": log.nonfinite,
        }
        if self.exploration is not None:
            out["exploration_value"] = float(self.exploration.current())
        return out

    # -------------------------------------------------------------- resume
    def state_dict(self) -> dict[str, Any]:
        """Open-rollout bookkeeping, exploration, policy rollout state, built-in env state."""
        env_state = self.env.state_dict() if _is_snapshot_env(self.env) else None
        # Envs that cannot be snapshot but draw per-episode randomness of their own (actuator
        # inversion's contexts) keep that stream across a resume.
        rng_state = getattr(self.env, "rng_state_dict", None)
        return {
            "rollouts": self._train.state_dict(),
            "exploration": None if self.exploration is None else self.exploration.state_dict(),
            "env": env_state,
            "env_rng": rng_state() if env_state is None and callable(rng_state) else None,
            "env_restorable": _is_snapshot_env(self.env),
            "total_env_steps": self.total_env_steps,
            "total_episodes": self.total_episodes,
            "seed": self.seed,
        }

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        """Restore `state_dict()`. Non-snapshottable envs (EnvPool, gymnasium) restart; their
        own RNG streams (``env_rng``, e.g. actuator-inversion contexts) continue."""
        env_rng = sd.get("env_rng")  # absent in checkpoints written before it was saved
        if env_rng is not None:
            load_rng = getattr(self.env, "load_rng_state_dict", None)
            if not callable(load_rng):
                raise ValueError(f"checkpoint holds an env RNG state but env "
                                 f"{self.env.spec.name!r} cannot load one")
            load_rng(env_rng)  # validated before it changes anything
        self._train.load_state_dict(sd["rollouts"])
        if self.exploration is not None:
            if sd["exploration"] is None:
                raise ValueError("checkpoint has no exploration state but the collector has one")
            self.exploration.load_state_dict(sd["exploration"])
        if _is_snapshot_env(self.env) and sd.get("env") is not None:
            self.env.load_state_dict(sd["env"])
        else:
            self._train.started = False  # restart the env's rollouts on the next collect
        self.total_env_steps = int(sd["total_env_steps"])
        self.total_episodes = int(sd["total_episodes"])
        self.seed = sd.get("seed")


def check_buffer_matches(buffer: Any, env: VectorEnv) -> None:
    """A buffer with per-env slots and a row schema (TrajectoryBuffer) must have one slot per
    env and hold every field the env's transitions carry, with the same shape and dtype; found
    at construction rather than as an index error mid-collect. Duck-typed buffers without
    those attributes are taken as they are."""
    nb = getattr(buffer, "num_envs", None)
    if nb is not None and nb != env.num_envs:
        raise ValueError(f"buffer has num_envs={nb} slots, env {env.spec.name!r} has "
                         f"{env.num_envs} envs (TrajectoryBuffer.from_env_spec(spec, capacity, "
                         f"{env.num_envs}))")
    fields = getattr(buffer, "fields", None)
    if fields is not None:
        check_fields_match(fields, env)


def check_fields_match(fields: list, env: VectorEnv) -> None:
    """`fields` (a buffer's row schema) hold every field `env`'s transitions carry, with the
    same shape and dtype; ValueError naming the first that does not."""
    have = {f.name: f for f in fields}
    for f in env.spec.buffer_fields():
        g = have.get(f.name)
        if g is None or tuple(g.shape) != tuple(f.shape) or np.dtype(g.dtype) != np.dtype(f.dtype):
            got = "missing" if g is None else f"{np.dtype(g.dtype)}{tuple(g.shape)}"
            raise ValueError(f"buffer field {f.name!r} is {got}, env {env.spec.name!r} stores "
                             f"{np.dtype(f.dtype)}{tuple(f.shape)} (a buffer built for another "
                             "env spec?)")


def _is_snapshot_env(env: VectorEnv) -> bool:
    from amago_fast.envs.base import BatchedTaskEnv

    return isinstance(env, BatchedTaskEnv)
