"""The collector: steps a VectorEnv with a policy, applies exploration, streams rows to the buffer.

Per vector step (all NumPy-batched, no per-env Python loop on the hot path):

1. the policy sees the current *rows* of the envs — observation keys + ``action`` (previous
   action) + ``reward`` (previous reward) + ``time_index`` — exactly a training row;
2. exploration (training only) perturbs its actions; the env steps;
3. envs whose previous step ended their rollout were autoreset by the env (next-step rule): the
   returned observation opens a new rollout (``buffer.reset_envs``; policy memory and exploration
   multiplier reset) and no transition is stored for that step; every other env appends one full
   row (``buffer.append_step``), which commits its trajectory when it is terminated|truncated.

Async EnvPool (``env.is_async``): each step holds only the envs of the batch (``info["env_id"]``);
the policy is then called with ``act(rows_of_batch, state, sample, env_ids=ids)`` — a policy must
accept that keyword to drive an async env (checked at construction; the Agent does, keeping one
rollout memory per env id).

Faults: a non-finite observation or reward raises ValueError before anything of that step reaches
the buffer (``nan_policy="raise"``, the default) or is replaced by 0 and counted
(``nan_policy="flag"``, ``stats["nonfinite_steps"]``); an env that raises mid-step is re-raised as
RuntimeError naming the env, with the buffer untouched by that step. After a fault the next
``collect`` restarts every env (the buffer commits or drops the open rollouts as on any reset).

Resume: ``state_dict()`` holds the open-rollout bookkeeping (current rows, previous
action/reward, time_index, pending resets), exploration, the policy's rollout state (deep-copied
as is) and, for built-in NumPy envs, the env's state. EnvPool / gymnasium envs cannot be
snapshotted: after ``load_state_dict`` their rollouts restart with ``env.reset()``.
"""

from __future__ import annotations

import copy
import inspect
import math
import time
from collections import defaultdict
from typing import Any, Protocol

import numpy as np

from amago_fast.envs.base import VectorEnv, check_actions
from amago_fast.spaces import ACTION, REWARD, TERMINATED, TRUNCATED, EnvSpec


class Policy(Protocol):
    """What the collector drives (the Agent implements it; see docs/DESIGN.md)."""

    def init_state(self, num_envs: int) -> Any: ...

    def reset_state(self, state: Any, env_ids: np.ndarray) -> Any: ...

    def act(
        self, rows: dict[str, np.ndarray], state: Any, sample: bool,
        env_ids: np.ndarray | None = None,
    ) -> tuple[Any, Any]:
        """Actions for the envs ``env_ids`` (None: all, in order). A policy that only drives sync
        envs may leave ``env_ids`` out of its signature (the collector checks)."""
        ...


class RandomPolicy:
    """Uniform random actions (the framework-overhead baseline and a smoke-test policy).

    Its state is its random generator, so a collector checkpoint restores it exactly.
    """

    def __init__(self, spec: EnvSpec, seed: int = 0) -> None:
        self.spec = spec
        self.seed = seed
        a = spec.action
        self._low = np.asarray(a.low, np.float32) if a.kind == "continuous" else None
        self._high = np.asarray(a.high, np.float32) if a.kind == "continuous" else None
        self._nvec = np.asarray(a.nvec, np.int64) if a.kind == "multidiscrete" else None

    def init_state(self, num_envs: int) -> np.random.Generator:
        return np.random.default_rng(self.seed)

    def reset_state(self, state: np.random.Generator, env_ids: np.ndarray) -> np.random.Generator:
        return state

    def act(self, rows, state, sample=True, env_ids=None):
        n = rows["time_index"].shape[0]
        a = self.spec.action
        if a.kind == "discrete":
            return state.integers(0, a.n, size=n, dtype=np.int32), state
        if a.kind == "multidiscrete":
            return (state.random((n, self._nvec.size)) * self._nvec).astype(np.int32), state
        u = state.random((n, a.shape[0]), dtype=np.float32)
        return self._low + u * (self._high - self._low), state


def _accepts_env_ids(policy: Any) -> bool:
    try:
        params = inspect.signature(policy.act).parameters
    except (TypeError, ValueError):
        return False
    return "env_ids" in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


class _EpisodeLog:
    """Finished-rollout statistics of one collect/evaluate call."""

    def __init__(self) -> None:
        self.returns: list[float] = []
        self.lengths: list[int] = []
        self.successes: list[float] = []
        self.trial_episode_returns: list[np.ndarray] = []
        self.nonfinite = 0

    def summary(self) -> dict[str, Any]:
        n = len(self.returns)
        out: dict[str, Any] = {"episodes": n}
        if n:
            out["return"] = float(np.mean(self.returns))
            out["return_std"] = float(np.std(self.returns))
            out["length"] = float(np.mean(self.lengths))
            out["returns"] = list(self.returns)
        if self.successes:
            out["success"] = float(np.mean(self.successes))
        if self.trial_episode_returns:
            ter = np.concatenate(self.trial_episode_returns)
            out["trial_episode_returns"] = ter
            # The meta-RL check: is the first episode of a trial worse than the later ones?
            out["trial_first_episode_return"] = float(np.nanmean(ter[:, 0]))
            later = ter[:, 1:]
            if np.isfinite(later).any():
                out["trial_later_episode_return"] = float(np.nanmean(later))
        return out


class _Rollouts:
    """Per-env bookkeeping of open rollouts and the vectorized step (shared by collect/evaluate)."""

    def __init__(self, env: VectorEnv, policy: Any, buffer: Any, exploration: Any,
                 nan_policy: str) -> None:
        self.env = env
        self.spec = env.spec
        self.policy = policy
        self.buffer = buffer
        self.exploration = exploration
        self.nan_policy = nan_policy
        n = env.num_envs
        self.n = n
        self.obs_names = [f.name for f in self.spec.observation]
        self.float_obs = [f.name for f in self.spec.observation if f.dtype.kind == "f"]
        act = self.spec.action.field
        self.rows: dict[str, np.ndarray] = {
            f.name: np.zeros((n, *f.shape), f.dtype) for f in self.spec.observation
        }
        self.prev_action = np.zeros((n, *act.shape), act.dtype)
        self.sent_action = np.zeros((n, *act.shape), act.dtype)  # async: last action sent
        self.prev_reward = np.zeros(n, np.float32)
        self.time_index = np.zeros(n, np.int64)
        self.pending_reset = np.ones(n, np.bool_)
        self.ep_return = np.zeros(n, np.float64)
        self.batch_ids: np.ndarray | None = None  # async: the envs whose rows are current
        self.pstate = policy.init_state(n)
        self.started = False
        self.checked_obs = False
        self.all_ids = np.arange(n)

    # -------------------------------------------------------------- start / restart
    def start(self, seed: int | None = None) -> None:
        obs = self.env.reset(seed)
        self.pending_reset[:] = True
        ids = np.asarray(self.env.last_env_ids) if self.env.is_async else self.all_ids
        self.batch_ids = ids if self.env.is_async else None
        self._absorb(obs, np.zeros(len(ids), np.float32), np.zeros(len(ids), np.bool_),
                     np.zeros(len(ids), np.bool_), {}, ids, None, None)
        self.started = True

    # -------------------------------------------------------------- the step
    def step(self, explore: bool, sample: bool, log: _EpisodeLog) -> int:
        env = self.env
        if env.is_async:
            ids = self.batch_ids
            rows = {k: v[ids] for k, v in self.rows.items()}
            rows[ACTION] = self.prev_action[ids]
            rows[REWARD] = self.prev_reward[ids]
            rows["time_index"] = self.time_index[ids]
            actions, self.pstate = self.policy.act(rows, self.pstate, sample, env_ids=ids)
        else:
            ids = None
            rows = dict(self.rows)
            rows[ACTION] = self.prev_action
            rows[REWARD] = self.prev_reward
            rows["time_index"] = self.time_index
            actions, self.pstate = self.policy.act(rows, self.pstate, sample)
        actions = np.asarray(actions.detach().cpu() if hasattr(actions, "detach") else actions)
        m = self.n if ids is None else len(ids)
        # Validate and convert to the stored dtype (e.g. int64 -> int32) before anything moves.
        actions = check_actions(self.spec.action, actions, m, f"policy for {self.spec.name}")
        if explore and self.exploration is not None:
            actions = self.exploration.apply(actions, ids)
        try:
            obs, reward, term, trunc, info = env.step(actions, ids) if env.is_async else \
                env.step(actions)
        except Exception as e:
            self.started = False  # the env's state is unknown: restart on the next collect
            raise RuntimeError(
                f"env {self.spec.name!r} raised during step: {type(e).__name__}: {e}; "
                "committed trajectories are intact, the open rollouts will restart"
            ) from e
        if env.is_async:
            out_ids = np.asarray(info["env_id"], dtype=np.int64)
            # The returned batch need not be the envs that just acted: each env's transition
            # carries the action last *sent* to it.
            self.sent_action[ids] = actions
            actions = self.sent_action[out_ids]
        else:
            out_ids = self.all_ids
        stored = self._absorb(obs, reward, term, trunc, info, out_ids, actions, log)
        if env.is_async:
            self.batch_ids = out_ids
        if explore and self.exploration is not None:
            self.exploration.advance(stored)
        return stored

    def _check_obs(self, obs: dict[str, np.ndarray], m: int) -> None:
        if not isinstance(obs, dict) or set(obs) != set(self.obs_names):
            got = sorted(obs) if isinstance(obs, dict) else type(obs).__name__
            raise ValueError(f"env {self.spec.name!r} returned observation keys {got}, "
                             f"spec says {self.obs_names}")
        for f in self.spec.observation:
            a = obs[f.name]
            if a.dtype != f.dtype or a.shape != (m, *f.shape):
                raise ValueError(f"env {self.spec.name!r}: observation {f.name!r} is "
                                 f"{a.dtype}{a.shape}, spec says {f.dtype}{(m, *f.shape)}")

    def _absorb(self, obs, reward, term, trunc, info, out_ids, actions, log) -> int:
        m = len(out_ids)
        if not self.checked_obs:
            self._check_obs(obs, m)
            self.checked_obs = True
        # Non-finite values: decide before anything reaches the buffer. Fast screen first: a
        # sum is finite iff every element is (barring overflow, which the exact per-key check
        # then rules in or out), so the common all-finite step costs one reduction per key.
        total = float(reward.sum())
        for k in self.float_obs:
            total += float(obs[k].sum())
        if not math.isfinite(total):
            obs, reward = self._screen_nonfinite(obs, reward, out_ids, m, log)
        if self.env.is_async:
            return self._absorb_subset(obs, reward, term, trunc, info, out_ids, actions, log)
        return self._absorb_all(obs, reward, term, trunc, info, actions, log)

    def _screen_nonfinite(self, obs, reward, out_ids, m, log):
        """Exact non-finite check: raise (nan_policy='raise') or zero and count ('flag')."""
        bad = None
        for k in self.float_obs:
            bad_k = ~np.isfinite(obs[k]).reshape(m, -1).all(axis=1)
            if bad_k.any():
                bad = bad_k if bad is None else bad | bad_k
        bad_r = ~np.isfinite(reward)
        if bad_r.any():
            bad = bad_r if bad is None else bad | bad_r
        if bad is not None:
            if self.nan_policy == "raise":
                self.started = False
                raise ValueError(
                    f"env {self.spec.name!r} returned non-finite observation/reward for envs "
                    f"{out_ids[bad].tolist()}; nothing of this step was stored "
                    "(nan_policy='flag' replaces them by 0 instead)"
                )
            obs = {k: (np.nan_to_num(v, nan=0.0, posinf=0.0, neginf=0.0)
                       if k in self.float_obs else v) for k, v in obs.items()}
            reward = np.nan_to_num(reward, nan=0.0, posinf=0.0, neginf=0.0)
            if log is not None:
                log.nonfinite += int(bad.sum())
        return obs, reward

    def _absorb_all(self, obs, reward, term, trunc, info, actions, log) -> int:
        """Sync envs: masked whole-array updates (no per-env indexing on the common path)."""
        new = self.pending_reset
        new_ids = np.nonzero(new)[0]
        n_new = new_ids.size
        if actions is None:  # the reset observation of every env
            cont_ids = new_ids[:0]
        elif n_new:
            cont_ids = np.nonzero(~new)[0]
        else:
            cont_ids = None  # all envs continue
        if self.buffer is not None:
            if n_new:
                self.buffer.reset_envs({k: obs[k][new_ids] for k in self.obs_names}, new_ids)
            if cont_ids is None:
                rows = dict(obs)
                rows[ACTION] = actions
                rows[REWARD] = reward
                rows[TERMINATED] = term
                rows[TRUNCATED] = trunc
                self.buffer.append_step(rows, None)
            elif cont_ids.size:
                rows = {k: obs[k][cont_ids] for k in self.obs_names}
                rows[ACTION] = actions[cont_ids]
                rows[REWARD] = reward[cont_ids]
                rows[TERMINATED] = term[cont_ids]
                rows[TRUNCATED] = trunc[cont_ids]
                self.buffer.append_step(rows, cont_ids)
        # Whole-array bookkeeping: a new rollout's row is its first observation with zero
        # previous action/reward and time_index 0; a continuing one takes this step's values.
        # No copy: rows are read by the next act() before the env steps again, the buffer
        # copies what it stores and state_dict() copies.
        self.rows = {k: obs[k] for k in self.obs_names}
        if actions is None:
            self.prev_action[:] = 0
            self.prev_reward[:] = 0.0
            self.time_index[:] = 0
            self.ep_return[:] = 0.0
            self.pending_reset[:] = False
        else:
            if n_new:
                keep = ~new
                act_mask = keep.reshape(-1, *([1] * (actions.ndim - 1)))
                self.prev_action = np.where(act_mask, actions, 0).astype(self.prev_action.dtype)
                self.prev_reward = np.where(keep, reward, np.float32(0.0)).astype(np.float32)
                self.time_index = np.where(keep, self.time_index + 1, 0)
                self.ep_return = np.where(keep, self.ep_return + reward, 0.0)
            else:
                self.prev_action = np.array(actions, dtype=self.prev_action.dtype, copy=True)
                self.prev_reward = np.array(reward, dtype=np.float32, copy=True)
                self.time_index += 1
                self.ep_return += reward
        if n_new:
            self.pstate = self.policy.reset_state(self.pstate, new_ids)
            if self.exploration is not None:
                self.exploration.reset_envs(new_ids)
        if actions is None:
            return 0
        done = term | trunc  # False for envs that were just reset (next-step rule)
        self.pending_reset = done
        if log is not None and done.any():
            d_ids = np.nonzero(done)[0]
            self._log_done(log, d_ids, d_ids, info)
        return self.n - n_new

    def _log_done(self, log, d_ids, d_pos, info) -> None:
        """Record finished rollouts of envs `d_ids` (at positions `d_pos` of this step's batch)."""
        log.returns.extend(self.ep_return[d_ids].tolist())
        log.lengths.extend(self.time_index[d_ids].tolist())  # transitions in the rollout
        succ = info.get("success")
        if succ is not None:
            log.successes.extend(np.asarray(succ)[d_pos].astype(np.float64).tolist())
        ep_ret = info.get("episode_returns")
        if ep_ret is not None:
            log.trial_episode_returns.append(np.asarray(ep_ret)[d_pos])

    def _absorb_subset(self, obs, reward, term, trunc, info, out_ids, actions, log) -> int:
        """Async envs: the batch holds the envs `out_ids` only."""
        new = self.pending_reset[out_ids]
        new_pos = np.nonzero(new)[0]
        r_ids = out_ids[new_pos]
        if r_ids.size:
            first_rows = {k: obs[k][new_pos] for k in self.obs_names}
            if self.buffer is not None:
                self.buffer.reset_envs(first_rows, r_ids)
            self.prev_action[r_ids] = 0
            self.prev_reward[r_ids] = 0.0
            self.time_index[r_ids] = 0
            self.ep_return[r_ids] = 0.0
            self.pending_reset[r_ids] = False
            for k in self.obs_names:
                self.rows[k][r_ids] = first_rows[k]
            self.pstate = self.policy.reset_state(self.pstate, r_ids)
            if self.exploration is not None:
                self.exploration.reset_envs(r_ids)
        if actions is None:
            return 0
        c_pos = np.nonzero(~new)[0]
        if c_pos.size == 0:
            return 0
        c_ids = out_ids[c_pos]
        c_obs = {k: obs[k][c_pos] for k in self.obs_names}
        c_act, c_rew = actions[c_pos], reward[c_pos]
        c_term, c_trunc = term[c_pos], trunc[c_pos]
        if self.buffer is not None:
            rows = dict(c_obs)
            rows[ACTION] = c_act
            rows[REWARD] = c_rew
            rows[TERMINATED] = c_term
            rows[TRUNCATED] = c_trunc
            self.buffer.append_step(rows, c_ids)
        for k in self.obs_names:
            self.rows[k][c_ids] = c_obs[k]
        self.prev_action[c_ids] = c_act
        self.prev_reward[c_ids] = c_rew
        self.time_index[c_ids] += 1
        self.ep_return[c_ids] += c_rew
        done = c_term | c_trunc
        if done.any():
            self.pending_reset[c_ids[done]] = True
            if log is not None:
                self._log_done(log, c_ids[done], c_pos[done], info)
        return int(c_ids.size)
    # -------------------------------------------------------------- resume
    def state_dict(self) -> dict[str, Any]:
        return {
            "rows": {k: v.copy() for k, v in self.rows.items()},
            "prev_action": self.prev_action.copy(),
            "prev_reward": self.prev_reward.copy(),
            "time_index": self.time_index.copy(),
            "pending_reset": self.pending_reset.copy(),
            "ep_return": self.ep_return.copy(),
            "batch_ids": None if self.batch_ids is None else self.batch_ids.copy(),
            "policy_state": copy.deepcopy(self.pstate),
            "started": self.started,
        }

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        for k, v in sd["rows"].items():
            if k not in self.rows or self.rows[k].shape != v.shape:
                raise ValueError(f"collector state row {k!r} does not match the env spec")
        if sd["prev_action"].shape != self.prev_action.shape:
            raise ValueError("collector state prev_action does not match the env's action spec")
        self.rows = {k: v.copy() for k, v in sd["rows"].items()}
        self.prev_action = sd["prev_action"].copy()
        self.prev_reward = sd["prev_reward"].copy()
        self.time_index = sd["time_index"].copy()
        self.pending_reset = sd["pending_reset"].copy()
        self.ep_return = sd["ep_return"].copy()
        self.batch_ids = None if sd["batch_ids"] is None else sd["batch_ids"].copy()
        self.pstate = copy.deepcopy(sd["policy_state"])
        self.started = bool(sd["started"])


class Collector:
    """Drives `env` with `policy`, writes every transition to `buffer` (see the module docstring).

    Args:
      env: the training VectorEnv.
      policy: implements :class:`Policy` (e.g. the Agent, :class:`RandomPolicy`).
      buffer: a TrajectoryBuffer (``reset_envs`` / ``append_step``), or None to only step.
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
        for e in (env, eval_env):
            if e is not None and e.is_async and not _accepts_env_ids(policy):
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
        self._train = _Rollouts(env, policy, buffer, exploration, nan_policy)
        self.total_env_steps = 0
        self.total_episodes = 0

    @property
    def spec(self) -> EnvSpec:
        return self.env.spec

    def collect(self, num_steps: int, explore: bool = True) -> dict[str, Any]:
        """Step until at least `num_steps` transitions are stored; returns statistics.

        Stats: env_steps (transitions stored), vector_steps, seconds, steps_per_second,
        episodes and, if any ended, return / length / success means (per env name under
        ``per_env[name]``), ``trial_episode_returns`` for trial envs, nonfinite_steps.
        """
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        r = self._train
        log = _EpisodeLog()
        t0 = time.perf_counter()
        if not r.started:
            r.start(self.seed)
            self.seed = None
        stored = vec = 0
        while stored < num_steps:
            stored += r.step(explore=explore, sample=True, log=log)
            vec += 1
        dt = time.perf_counter() - t0
        self.total_env_steps += stored
        self.total_episodes += len(log.returns)
        return self._stats(log, stored, vec, dt)

    def evaluate(self, num_episodes: int, env: VectorEnv | None = None,
                 sample: bool = False) -> dict[str, Any]:
        """Run `num_episodes` whole rollouts without exploration or buffer writes.

        Uses `env`, else the collector's `eval_env`, else the training env (its open training
        rollouts are then abandoned and restart at the next `collect`). Policy memory is separate
        from the training rollouts'. ``sample=False`` takes the policy's greedy action.
        """
        if num_episodes < 1:
            raise ValueError(f"num_episodes must be >= 1, got {num_episodes}")
        env = env or self.eval_env or self.env
        if env is self.env:
            self._train.started = False
        if env.is_async and not _accepts_env_ids(self.policy):
            raise ValueError(f"eval env {env.spec.name!r} is async: policy.act needs env_ids")
        r = _Rollouts(env, self.policy, None, None, self.nan_policy)
        log = _EpisodeLog()
        t0 = time.perf_counter()
        r.start(None)
        stored = vec = 0
        while len(log.returns) < num_episodes:
            stored += r.step(explore=False, sample=sample, log=log)
            vec += 1
        return self._stats(log, stored, vec, time.perf_counter() - t0, name=env.spec.name)

    def _stats(self, log: _EpisodeLog, stored: int, vec: int, dt: float,
               name: str | None = None) -> dict[str, Any]:
        summary = log.summary()
        per_env = defaultdict(dict)
        per_env[name or self.env.spec.name] = {k: v for k, v in summary.items() if k not in
                                               ("returns", "trial_episode_returns")}
        out: dict[str, Any] = {
            "env_steps": stored,
            "vector_steps": vec,
            "seconds": dt,
            "steps_per_second": stored / dt if dt > 0 else float("inf"),
            **summary,
            "per_env": dict(per_env),
            "nonfinite_steps": log.nonfinite,
        }
        if self.exploration is not None:
            out["exploration_value"] = float(self.exploration.current())
        return out

    # -------------------------------------------------------------- resume
    def state_dict(self) -> dict[str, Any]:
        """Open-rollout bookkeeping, exploration, policy rollout state, built-in env state."""
        env_state = self.env.state_dict() if _is_snapshot_env(self.env) else None
        return {
            "rollouts": self._train.state_dict(),
            "exploration": None if self.exploration is None else self.exploration.state_dict(),
            "env": env_state,
            "env_restorable": _is_snapshot_env(self.env),
            "total_env_steps": self.total_env_steps,
            "total_episodes": self.total_episodes,
            "seed": self.seed,
        }

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        """Restore `state_dict()`. Non-snapshottable envs (EnvPool, gymnasium) restart."""
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


def _is_snapshot_env(env: VectorEnv) -> bool:
    from amago_fast.envs.base import BatchedTaskEnv

    return isinstance(env, BatchedTaskEnv)
