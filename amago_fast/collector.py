"""The collector: steps a VectorEnv with a policy, applies exploration, streams rows to the buffer.

Per vector step (all NumPy-batched, no per-env Python loop on the hot path):

1. the policy sees the current *rows* of the envs — observation keys + ``action`` (previous
   action) + ``reward`` (previous reward) + ``time_index`` — exactly a training row;
2. exploration (training only) perturbs its actions; the env steps;
3. envs whose previous step ended their rollout were autoreset by the env (next-step rule): the
   returned observation opens a new rollout (policy memory and exploration multiplier reset) and
   no transition is stored for that step; every other env appends one full row, which commits
   its trajectory when it is terminated|truncated — one ``buffer.write_step(rows, ids, starts)``
   call for both kinds of row.

Cost (measured on 2 cores, CartPole N=64, per vector step; ``benchmarks/bench_collect.py``):
the policy's actions are validated once (``check_actions``; our RandomPolicy's are valid by
construction), then the env is stepped through ``step_trusted`` (no second validation; see
:func:`amago_fast.envs.base.trusted_step`). The step's bookkeeping — previous action/reward,
time index, episode return, pending resets, the async scatter into the per-env arrays, the
NaN/inf screen — is one C++ pass (``_core.absorb_step``, collector/absorb.h) instead of ~30
NumPy calls (the NumPy path, ``_Rollouts._absorb_numpy``, is the reference it is tested
against, the fallback without the compiled core, and the exact screening when a NaN appears).
With our native buffer that same pass also writes the step's rows into it (the *fused* write:
no rows dict, no ``write_step`` crossing, the same checks; ``AMAGO_FAST_FUSED_WRITE=0`` turns
it off), except for sync EnvPool, which is stepped as send → write the *previous* step's rows
→ recv so the write runs while EnvPool's worker threads step all envs
(:func:`amago_fast.envs.base.split_step`; rows owed to the buffer are written before
``collect`` returns, before ``state_dict`` and before a restart). Async batches go through a
``_core.AsyncAbsorber`` bound once to the per-env state arrays and the store: per step only
the batch crosses, and it hands back the policy's next rows dict and the finished rollouts'
returns as a list (framework CPU per 32-env CartPole batch with buffer writes ~22 → ~13 →
~9 µs, ``bench_collect.py --overhead`` minimum; while our thread works on one batch EnvPool's
workers step the other, so nothing is lost by writing after recv). Rows handed to the policy
are never written to afterwards (fresh arrays each step), so a policy may keep references to
them.

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
import dataclasses
import functools
import inspect
import math
import os
import time
import warnings
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from amago_fast._native import core
from amago_fast.buffer import NativeSink, TrajectoryBuffer
from amago_fast.envs.base import VectorEnv, check_actions, split_step, trusted_step
from amago_fast.exploration import EpsilonGreedy, GaussianNoise
from amago_fast.spaces import ACTION, REWARD, TERMINATED, TRUNCATED, ActionSpec, EnvSpec

_I64 = np.dtype(np.int64)
_F32 = np.dtype(np.float32)
_BOOL = np.dtype(np.bool_)

# Evaluation's step cap reads an env's time limit as at most this many steps per episode (and
# uses it for envs that declare none): see default_eval_step_cap.
EVAL_STEPS_PER_EPISODE_CEILING = 100_000


def _native_absorb():
    """``_core.absorb_step`` (the C++ bookkeeping of a step), or None: core not built, or
    ``AMAGO_FAST_NATIVE_COLLECTOR=0``. The NumPy path (``_Rollouts._absorb_numpy``) is the
    reference it is tested against."""
    if os.environ.get("AMAGO_FAST_NATIVE_COLLECTOR", "1") == "0":
        return None
    return core.absorb_step if core is not None else None


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


def random_actions(action: ActionSpec, n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` uniform random actions in the storage dtype (int32 / float32).

    Integers are drawn as floor(u * n) from one ``rng.random`` call: ``rng.integers`` costs
    ~15 µs for 32 values on this machine (its per-call set-up), ``random`` + scale ~2 µs; the
    bias of flooring a 53-bit uniform is < 2^-50. The benchmark's raw EnvPool loop draws its
    actions with this same function, so both sides of the overhead ratio pay the same.
    """
    if action.kind == "discrete":
        return (rng.random(n) * action.n).astype(np.int32)
    scale, low = _action_scale(action)
    if action.kind == "multidiscrete":
        return (rng.random((n, scale.size)) * scale).astype(np.int32)
    u = rng.random((n, *action.shape), dtype=np.float32)
    u *= scale
    u += low
    return u


@functools.lru_cache(maxsize=64)
def _action_scale(action: ActionSpec) -> tuple[np.ndarray, np.ndarray | None]:
    """(nvec as float64, None) or (high - low, low) as float32, built once per action spec
    (converting the spec's tuples each call cost ~5 µs of a ~2 µs draw)."""
    if action.kind == "multidiscrete":
        return np.asarray(action.nvec, np.float64), None
    low = np.asarray(action.low, np.float32)
    return np.asarray(action.high, np.float32) - low, low


class RandomPolicy:
    """Uniform random actions (the framework-overhead baseline and a smoke-test policy).

    Its state is its random generator, so a collector checkpoint restores it exactly.
    """

    def __init__(self, spec: EnvSpec, seed: int = 0) -> None:
        self.spec = spec
        self.seed = seed
        self._action = spec.action

    def init_state(self, num_envs: int) -> np.random.Generator:
        return np.random.default_rng(self.seed)

    def reset_state(self, state: np.random.Generator, env_ids: np.ndarray) -> np.random.Generator:
        return state

    def act(self, rows, state, sample=True, env_ids=None):
        return random_actions(self._action, rows["time_index"].shape[0], state), state


def _accepts_env_ids(policy: Any) -> bool:
    try:
        params = inspect.signature(policy.act).parameters
    except (TypeError, ValueError):
        return False
    return "env_ids" in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


class _EpisodeLog:
    """Finished-rollout statistics of one collect/evaluate call, kept incrementally.

    A step extends a list of returns and adds to a sum of lengths (the absorber hands both over
    as a list and an int); :meth:`summary` only takes the means. Appending one array per field
    and step and concatenating them in `summary` cost ~4 µs more per collect call (~7 finished
    CartPole rollouts a call) plus ~1 µs per step for the arrays and the length gather.
    """

    def __init__(self) -> None:
        self.count = 0
        self.returns: list[float] = []
        self._length_sum = 0
        self._successes: list[np.ndarray] = []
        self.trial_episode_returns: list[np.ndarray] = []
        self.nonfinite = 0

    def add(self, returns: list[float], length_sum: int, info: dict[str, Any],
            pos: Any) -> None:
        """Rollouts that ended this step: their returns (a list of floats), the sum of their
        lengths (transitions), and the env's per-rollout info at positions `pos` of the step's
        batch (a list or an index array)."""
        self.count += len(returns)
        self.returns += returns
        self._length_sum += length_sum
        if "success" in info:
            succ = info["success"]
            if succ is not None:
                self._successes.append(np.asarray(succ)[pos])
        if "episode_returns" in info:
            ep_ret = info["episode_returns"]
            if ep_ret is not None:
                self.trial_episode_returns.append(np.asarray(ep_ret)[pos])

    def add_arrays(self, returns: np.ndarray, lengths: np.ndarray, info: dict[str, Any],
                   pos: np.ndarray) -> None:
        """:meth:`add` from arrays of the returns and lengths (the NumPy and sync paths)."""
        self.add(returns.tolist(), sum(lengths.tolist()), info, pos)

    def summary(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(the per-env-name statistics, the extra entries of the top-level stats only)."""
        n = self.count
        out: dict[str, Any] = {"episodes": n}
        extra: dict[str, Any] = {}
        if n:
            # Plain Python over the (few) finished rollouts of one call: np.mean / np.std on a
            # short list cost ~15 µs per collect call, i.e. ~3 µs per vector step when a
            # collect call is a few vector steps.
            returns = self.returns
            mean = math.fsum(returns) / n
            out["return"] = mean
            out["return_std"] = math.sqrt(math.fsum([(x - mean) ** 2 for x in returns]) / n)
            out["length"] = self._length_sum / n
            extra["returns"] = returns
        if self._successes:
            # bool per episode, or (trial envs) the float share of a trial's successful inner
            # episodes, NaN where none finished: those trials carry no success information.
            succ = np.concatenate(self._successes).astype(np.float64)
            succ = succ[~np.isnan(succ)]
            if succ.size:
                out["success"] = float(succ.mean())
        if self.trial_episode_returns:
            ter = np.concatenate(self.trial_episode_returns)
            extra["trial_episode_returns"] = ter
            # The meta-RL check: is the first episode of a trial worse than the later ones?
            first = ter[:, 0]
            if np.isfinite(first).any():  # (a trial cut before its first episode ended: NaN)
                out["trial_first_episode_return"] = float(np.nanmean(first))
            later = ter[:, 1:]
            if np.isfinite(later).any():
                out["trial_later_episode_return"] = float(np.nanmean(later))
        return out, extra


class _QuotaLog:
    """The episode log of an evaluation: each env slot counts toward its own quota.

    Slot i keeps its first ``quotas[i]`` finished rollouts; later ones in that slot are
    discarded (the slot keeps stepping, its results ignored), so envs whose episodes are short
    do not outweigh the others and the run reports exactly ``sum(quotas)`` episodes. Accepted
    rollouts go to an :class:`_EpisodeLog` (the same summary as collect's); the per-slot
    returns, and the inner-episode returns of trial envs, are kept in finishing order. Env ids
    and lengths come from `rollouts`' state after the step (a done env keeps its time index,
    the rollout's length, until its autoreset step): sync batches are every env in order, async
    ones ``rollouts.batch_ids``.
    """

    def __init__(self, quotas: list[int], rollouts: _Rollouts) -> None:
        self.inner = _EpisodeLog()
        self.left = list(quotas)
        self.remaining = sum(quotas)
        self.slot_returns: list[list[float]] = [[] for _ in quotas]
        self.slot_episode_returns: list[list[list[float]]] = [[] for _ in quotas]
        self.has_trials = False
        self._rollouts = rollouts

    @property
    def count(self) -> int:
        return self.inner.count

    @property
    def nonfinite(self) -> int:
        return self.inner.nonfinite

    @nonfinite.setter
    def nonfinite(self, value: int) -> None:
        self.inner.nonfinite = value

    def add(self, returns: list[float], length_sum: int, info: dict[str, Any], pos: Any,
            lengths: np.ndarray | None = None) -> None:
        """As :meth:`_EpisodeLog.add`; rollouts past their slot's quota are dropped."""
        pos_arr = np.asarray(pos, np.int64).reshape(-1)
        batch_ids = self._rollouts.batch_ids
        ids = pos_arr if batch_ids is None else np.asarray(batch_ids)[pos_arr]
        if lengths is None:
            lengths = self._rollouts.time_index[ids]
        ep_ret = info.get("episode_returns")
        ep_ret = None if ep_ret is None else np.asarray(ep_ret)
        keep: list[int] = []
        for j, slot in enumerate(ids.tolist()):
            if self.left[slot] <= 0:
                continue
            self.left[slot] -= 1
            self.remaining -= 1
            keep.append(j)
            self.slot_returns[slot].append(float(returns[j]))
            if ep_ret is not None:
                self.has_trials = True
                self.slot_episode_returns[slot].append(
                    np.asarray(ep_ret[pos_arr[j]], np.float64).reshape(-1).tolist())
        if keep:
            self.inner.add([float(returns[j]) for j in keep],
                           int(np.asarray(lengths)[keep].sum()), info, pos_arr[keep])

    def add_arrays(self, returns: np.ndarray, lengths: np.ndarray, info: dict[str, Any],
                   pos: np.ndarray) -> None:
        self.add(returns.tolist(), 0, info, pos, lengths)

    def summary(self) -> tuple[dict[str, Any], dict[str, Any]]:
        out, extra = self.inner.summary()
        extra["slot_returns"] = self.slot_returns
        if self.has_trials:
            extra["slot_episode_returns"] = self.slot_episode_returns
        return out, extra


def eval_quotas(num_episodes: int, num_envs: int) -> list[int]:
    """Episodes per env slot: ``num_episodes`` spread as evenly as possible (slot i gets
    ``num_episodes // num_envs``, plus one for ``i < num_episodes % num_envs``)."""
    base, extra = divmod(num_episodes, num_envs)
    return [base + (1 if i < extra else 0) for i in range(num_envs)]


def default_eval_step_cap(spec: EnvSpec, quotas: list[int]) -> int:
    """Env steps (summed over slots) an evaluation may take before it stops unfinished: per slot
    its quota × (the env's time limit + 1 for the autoreset step), the time limit read as at
    most :data:`EVAL_STEPS_PER_EPISODE_CEILING` (also the value for envs that declare none), so
    an env whose episodes never end stops after a bounded, reported number of steps."""
    t = spec.max_episode_steps
    t = EVAL_STEPS_PER_EPISODE_CEILING if t is None else min(int(t),
                                                             EVAL_STEPS_PER_EPISODE_CEILING)
    return max(1, len(quotas) * max(quotas) * (t + 1))


class _Rollouts:
    """Per-env bookkeeping of open rollouts and the vectorized step (shared by collect/evaluate).

    Per-step cost is a fixed number of whole-array NumPy operations (no per-env Python loop;
    the envs that start a rollout take a few extra index operations). Sync: the per-env arrays
    (``rows``, ``prev_action``, ...) are what the policy reads and are replaced by fresh arrays
    every step, never written in place, so a policy may keep a reference to what it was given.
    Async: the policy reads ``batch_rows``, built fresh from the step's output in batch order
    (no gathers on the way in); the per-env arrays are scattered into in place.
    """

    def __init__(self, env: VectorEnv, policy: Any, buffer: Any, exploration: Any,
                 nan_policy: str) -> None:
        self.env = env
        self.spec = env.spec
        self.policy = policy
        self.buffer = buffer
        self.exploration = exploration
        self.nan_policy = nan_policy
        self.is_async = bool(env.is_async)
        # The collector validates the policy's actions itself (and converts their dtype before
        # they are stored), so the env is stepped without validating them a second time.
        self._env_step = trusted_step(env)
        # EnvPool steps in its worker threads between send and recv: the previous step's rows
        # are written to the buffer in that gap (_pending_write) instead of before the send.
        self._split = split_step(env) if buffer is not None else None
        self._pending_write: tuple | None = None
        self._write_step = getattr(buffer, "write_step", None)
        # Our own exploration keeps actions valid by construction; anything else is re-checked.
        self._exploration_trusted = exploration is None or type(exploration) in (
            EpsilonGreedy, GaussianNoise)
        # Likewise RandomPolicy drawing for this very action spec (random_actions: in range,
        # storage dtype, right shape); any other policy's actions are checked every step.
        self._policy_trusted = (type(policy) is RandomPolicy
                                and policy._action == self.spec.action)
        self._policy_name = f"policy for {self.spec.name}"
        n = env.num_envs
        self.n = n
        self.obs_names = [f.name for f in self.spec.observation]
        self.float_obs = [f.name for f in self.spec.observation if f.dtype.kind == "f"]
        # The native bookkeeping checks float32 observations for NaN/inf itself; any other
        # float dtype keeps the NumPy path.
        self._absorb_step = _native_absorb() if all(
            f.dtype == np.float32 for f in self.spec.observation if f.dtype.kind == "f") else None
        self._float_obs_idx = [i for i, f in enumerate(self.spec.observation)
                               if f.dtype.kind == "f"]
        self._fused = self._fused_write_plan(buffer)
        # Async batches go through a _core.AsyncAbsorber (see _absorb_async) when its rows
        # would be written by it (fused) or not at all (no buffer); a separate write needs the
        # full absorb_step result.
        self._async_absorber_ok = (self.is_async and self._absorb_step is not None
                                   and (self._fused is not None or buffer is None))
        self._absorber = None  # the AsyncAbsorber of the current state arrays
        act = self.spec.action.field
        self.act_dtype = np.dtype(act.dtype)
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
        self.batch_rows: dict[str, np.ndarray] | None = None  # async: their rows, batch order
        self.pstate = policy.init_state(n)
        self.started = False
        self.checked_obs = False
        self.all_ids = np.arange(n)

    def _fused_write_plan(self, buffer: Any) -> tuple[NativeSink, list[int]] | None:
        """(sink, store_plan) when ``_core.absorb_step`` can write each step's rows straight
        into the native buffer (see ``_absorb``), else None.

        Only for our own native buffer (:meth:`TrajectoryBuffer.native_sink`: its
        ``write_step`` / ``append_step`` not overridden) with exactly the spec's row schema,
        and only where the write is not deferred to the send/recv gap: async EnvPool (while our
        thread works on one batch the workers step the other, so writing before the next send
        overlaps as well) and envs stepped in one call. Sync EnvPool keeps the deferred write,
        which runs while the workers step all envs. ``AMAGO_FAST_FUSED_WRITE=0`` turns it off
        (the separate ``write_step`` call).
        """
        if (self._absorb_step is None or buffer is None
                or os.environ.get("AMAGO_FAST_FUSED_WRITE", "1") == "0"
                or (self._split is not None and not self.is_async)
                or not isinstance(buffer, TrajectoryBuffer)):
            return None
        sink = buffer.native_sink()
        if sink is None:
            return None
        sources = {f.name: i for i, f in enumerate(self.spec.observation)}
        sources.update({ACTION: -1, REWARD: -2, TERMINATED: -3, TRUNCATED: -4})
        plan = sink.plan(sources)
        return None if plan is None else (sink, plan)

    # -------------------------------------------------------------- start / restart
    def start(self, seed: int | None = None) -> None:
        self.flush()  # rows still owed to the buffer belong to the rollouts being cut here
        obs = self.env.reset(seed)
        ids = np.asarray(self.env.last_env_ids, np.int64) if self.is_async else self.all_ids
        m = len(ids)
        obs, _ = self._validate(obs, np.zeros(m, np.float32), ids, None)
        names = self.obs_names
        if self.buffer is not None:
            self.buffer.reset_envs({k: obs[k] for k in names}, ids)
        # Fresh arrays: the policy may still hold the previous ones (see the class docstring).
        self._absorber = None  # bound to the arrays replaced here
        self.pending_reset = np.ones(self.n, np.bool_)  # async: the other envs start later
        self.pending_reset[ids] = False
        self.rows = {k: v.copy() for k, v in self.rows.items()}
        self.prev_action = np.zeros_like(self.prev_action)
        self.prev_reward = np.zeros_like(self.prev_reward)
        self.time_index = np.zeros_like(self.time_index)
        self.ep_return = np.zeros_like(self.ep_return)
        for k in names:
            self.rows[k][ids] = obs[k]
        if self.is_async:
            self.batch_ids = ids
            self.batch_rows = self._batch_rows(obs, self.prev_action[ids], self.prev_reward[ids],
                                               self.time_index[ids])
        else:
            self.batch_ids = self.batch_rows = None
        self._new_rollouts(ids)
        self.started = True

    def _batch_rows(self, obs, prev_action, prev_reward, time_index) -> dict[str, np.ndarray]:
        rows = {k: obs[k] for k in self.obs_names}
        rows[ACTION] = prev_action
        rows[REWARD] = prev_reward
        rows["time_index"] = time_index
        return rows

    # -------------------------------------------------------------- the step
    def step(self, explore: bool, sample: bool, log: _EpisodeLog) -> int:
        ids = self.batch_ids
        if ids is None:
            rows = dict(self.rows)
            rows[ACTION] = self.prev_action
            rows[REWARD] = self.prev_reward
            rows["time_index"] = self.time_index
            actions, self.pstate = self.policy.act(rows, self.pstate, sample)
            m = self.n
        else:
            rows = self.batch_rows
            if rows is None:  # after load_state_dict: gather the batch's rows once
                rows = self._batch_rows({k: v[ids] for k, v in self.rows.items()},
                                        self.prev_action[ids], self.prev_reward[ids],
                                        self.time_index[ids])
            actions, self.pstate = self.policy.act(rows, self.pstate, sample, env_ids=ids)
            m = len(ids)
        if type(actions) is not np.ndarray:
            actions = np.asarray(actions.detach().cpu() if hasattr(actions, "detach") else
                                 actions)
        # Validate and convert to the stored dtype (e.g. int64 -> int32) before anything moves.
        if not self._policy_trusted:
            actions = check_actions(self.spec.action, actions, m, self._policy_name)
        if explore and self.exploration is not None:
            actions = self.exploration.apply(actions, ids)
            if not self._exploration_trusted:
                actions = check_actions(self.spec.action, actions, m,
                                        f"exploration for {self.spec.name}")
        if self._split is None:
            try:
                obs, reward, term, trunc, info = (self._env_step(actions) if ids is None else
                                                  self._env_step(actions, ids))
            except Exception as e:
                raise self._env_failed(e) from e
        else:
            send, recv = self._split
            try:
                send(actions, ids)
            except Exception as e:
                raise self._env_failed(e) from e
            if self._pending_write is not None:
                self.flush()
            try:
                obs, reward, term, trunc, info = recv()
            except Exception as e:
                raise self._env_failed(e) from e
        if ids is None:
            out_ids = None
            # A fresh copy in the stored dtype: it becomes prev_action (see the class docstring).
            actions = actions.astype(self.act_dtype)
        else:
            out_ids = info["env_id"]
            if type(out_ids) is not np.ndarray or out_ids.dtype is not _I64:
                out_ids = np.asarray(out_ids, dtype=np.int64)
            if self._async_absorber_ok and self._absorb_step is not None:
                # The absorber records the sent actions and gathers each row's itself.
                try:
                    stored = self._absorb_async(obs, reward, term, trunc, info, out_ids, ids,
                                                actions, log)
                except (ValueError, TypeError, KeyError, IndexError) as e:
                    self._explain_bad_step(e, obs, reward, term, trunc, len(out_ids))
                    raise
                if explore and self.exploration is not None:
                    self.exploration.advance(stored)
                return stored
            # The returned batch need not be the envs that just acted: each env's transition
            # carries the action last *sent* to it (the gather is a fresh array).
            self.sent_action[ids] = actions
            actions = self.sent_action[out_ids]
        try:
            stored = self._absorb(obs, reward, term, trunc, info, out_ids, actions, log)
        except (ValueError, TypeError, KeyError, IndexError) as e:
            self._explain_bad_step(e, obs, reward, term, trunc,
                                   self.n if out_ids is None else len(out_ids))
            raise
        if explore and self.exploration is not None:
            self.exploration.advance(stored)
        return stored

    def _env_failed(self, e: Exception) -> RuntimeError:
        self.started = False  # the env's state is unknown: restart on the next collect
        self.flush()
        return RuntimeError(
            f"env {self.spec.name!r} raised during step: {type(e).__name__}: {e}; "
            "committed trajectories are intact, the open rollouts will restart"
        )

    def flush(self) -> None:
        """Write the rows still owed to the buffer (see ``_split``); a no-op otherwise."""
        pending = self._pending_write
        if pending is not None:
            self._pending_write = None
            try:
                self._write(*pending)
            except Exception:
                self.started = False
                raise

    def _store(self, obs, actions, reward, term, trunc, idx, starts) -> None:
        """Hand one step's rows to the buffer: written now, or — for an env stepped as
        send/recv (``_split``) — after the next send (``_pending_write``). The arrays are never
        written to afterwards."""
        if self.buffer is None:
            return
        rows = {k: obs[k] for k in self.obs_names}
        rows[ACTION] = actions
        rows[REWARD] = reward
        rows[TERMINATED] = term
        rows[TRUNCATED] = trunc
        if self._split is not None:
            self._pending_write = (rows, idx, starts)
        else:
            self._write(rows, idx, starts)

    def _new_rollouts(self, env_ids: np.ndarray) -> None:
        """Policy memory and exploration scale start afresh for these envs."""
        self.pstate = self.policy.reset_state(self.pstate, env_ids)
        if self.exploration is not None:
            self.exploration.reset_envs(env_ids)

    def _write(self, rows: dict[str, np.ndarray], idx: np.ndarray | None,
               starts: np.ndarray | None) -> None:
        """One step's rows into the buffer: rows flagged in `starts` open a new rollout (their
        observation only), the others are appended. `idx`: env ids (async), None = all envs."""
        if self._write_step is not None:
            self._write_step(rows, idx, starts)
            return
        if starts is None:  # a buffer without write_step: the two calls it does have
            self.buffer.append_step(rows, idx)
            return
        new_pos = starts.nonzero()[0]
        cont_pos = (~starts).nonzero()[0]
        self.buffer.reset_envs({k: rows[k][new_pos] for k in self.obs_names},
                               new_pos if idx is None else idx[new_pos])
        if cont_pos.size:
            self.buffer.append_step({k: v[cont_pos] for k, v in rows.items()},
                                    cont_pos if idx is None else idx[cont_pos])

    def _check_obs_once(self, obs: dict[str, np.ndarray], m: int) -> None:
        if not self.checked_obs:
            self._check_obs(obs, m)
            self.checked_obs = True

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

    def _explain_bad_step(self, err: Exception, obs, reward, term, trunc, m: int) -> None:
        """After a step's outputs were rejected (`err`, e.g. from the native absorber, which
        names its own arguments): raise a ValueError naming the env and what it returned
        against its spec, when that is the cause; else return (the caller re-raises `err`).
        Only runs on failure, so the per-step path keeps its single first-step check."""
        name = self.spec.name
        problem = None
        try:
            self._check_obs(obs, m)
        except ValueError as e:
            problem = str(e)
        except Exception as e:  # noqa: BLE001 - e.g. a non-array value: describe it
            problem = f"env {name!r} returned observations the spec cannot describe ({e!r})"
        if problem is None:
            for what, arr, dtype in (("reward", reward, _F32), ("terminated", term, _BOOL),
                                     ("truncated", trunc, _BOOL)):
                if not isinstance(arr, np.ndarray) or arr.dtype != dtype or arr.shape != (m,):
                    got = (f"{arr.dtype}{arr.shape}" if isinstance(arr, np.ndarray)
                           else type(arr).__name__)
                    problem = (f"env {name!r} returned {what} {got}, expected a {dtype} array "
                               f"of shape {(m,)} (VectorEnv.step's contract)")
                    break
        if problem is not None:
            raise ValueError(f"{problem}; nothing of this step was stored, committed "
                             "trajectories are intact") from err

    def _validate(self, obs, reward, out_ids, log):
        """Keys/shapes once; non-finite values every step, before anything reaches the buffer.

        Fast screen: a sum is finite iff every element is (barring overflow, which the exact
        per-key check then rules in or out), so the common all-finite step costs one reduction
        per float key."""
        m = self.n if out_ids is None else len(out_ids)
        self._check_obs_once(obs, m)
        total = float(np.add.reduce(reward, axis=None))
        for k in self.float_obs:
            total += float(np.add.reduce(obs[k], axis=None))
        if not math.isfinite(total):
            obs, reward = self._screen_nonfinite(obs, reward, out_ids, m, log)
        return obs, reward

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
                ids = np.flatnonzero(bad) if out_ids is None else out_ids[bad]
                raise ValueError(
                    f"env {self.spec.name!r} returned non-finite observation/reward for envs "
                    f"{ids.tolist()}; nothing of this step was stored "
                    "(nan_policy='flag' replaces them by 0 instead)"
                )
            obs = {k: (np.nan_to_num(v, nan=0.0, posinf=0.0, neginf=0.0)
                       if k in self.float_obs else v) for k, v in obs.items()}
            reward = np.nan_to_num(reward, nan=0.0, posinf=0.0, neginf=0.0)
            if log is not None:
                log.nonfinite += int(bad.sum())
        return obs, reward

    def _absorb(self, obs, reward, term, trunc, info, idx, actions, log) -> int:
        """Store one step's transitions and advance the bookkeeping (see :meth:`_absorb_numpy`,
        the reference); returns how many were stored. One C++ pass when the core is built:
        ~30 NumPy calls fewer per step. With our native buffer (``_fused``) that pass also
        writes the step's rows into it (no rows dict, no ``write_step`` crossing); a failed
        write changes nothing and, like a failed deferred write, restarts the rollouts on the
        next collect."""
        absorb_step = self._absorb_step
        if absorb_step is None:
            return self._absorb_numpy(obs, reward, term, trunc, info, idx, actions, log)
        names = self.obs_names
        self._check_obs_once(obs, self.n if idx is None else len(idx))
        obs_batch = [obs[k] for k in names]
        fused = self._fused
        if fused is None:
            res = absorb_step(
                self.pending_reset, self.time_index, self.ep_return, self.prev_reward,
                self.prev_action, [] if idx is None else [self.rows[k] for k in names], idx,
                reward, term, trunc, actions, obs_batch, self._float_obs_idx, True)
        else:  # sync (async batches take _absorb_async)
            sink, plan = fused
            try:
                with sink.lock:
                    res = absorb_step(
                        self.pending_reset, self.time_index, self.ep_return,
                        self.prev_reward, self.prev_action, [], None, reward, term, trunc,
                        actions, obs_batch, self._float_obs_idx, True, sink.store, plan)
                    if res is not None:
                        sink.count_steps(res[0].size - res[7].size)
            except Exception:
                self.started = False
                raise
        if res is None:  # a NaN/inf: nothing changed; the exact screening lives in NumPy
            return self._absorb_numpy(obs, reward, term, trunc, info, idx, actions, log)
        (reward, prev_reward, time_index, ep_return, done, prev_action, starts, start_rows,
         done_rows) = res
        any_new = start_rows.size > 0
        if fused is None:
            self._store(obs, actions, reward, term, trunc, idx, starts if any_new else None)
        if any_new:
            self._new_rollouts(start_rows if idx is None else idx[start_rows])
        if idx is None:
            self.rows = dict(zip(names, obs_batch))
            self.prev_action = prev_action
            self.prev_reward = prev_reward
            self.time_index = time_index
            self.ep_return = ep_return
            self.pending_reset = done
        else:  # the per-env state arrays were updated in place
            self.batch_ids = idx
            self.batch_rows = self._batch_rows(obs, prev_action, prev_reward, time_index)
        if log is not None and done_rows.size:
            log.add_arrays(ep_return[done_rows], time_index[done_rows], info, done_rows)
        return reward.size - start_rows.size

    def _absorb_async(self, obs, reward, term, trunc, info, idx, sent_ids, sent_actions,
                      log) -> int:
        """:meth:`_absorb` of an async batch (env ids `idx`; `sent_ids` / `sent_actions`: the
        envs that just acted and their actions) through a ``_core.AsyncAbsorber``: the per-env
        state arrays (and the fused buffer's store) are bound once — rebuilt when start /
        load_state_dict replace the arrays — so a step passes only the batch (~3 µs less than
        absorb_step's 17 arguments and state checks, 32-env CartPole), it records the sent
        actions and gathers each row's itself, and only what is kept of an async step comes
        back (see collector_adapter.h)."""
        if not self.checked_obs:
            self._check_obs_once(obs, len(idx))
        fused = self._fused
        try:
            absorber = self._absorber
            if absorber is None:
                absorber = self._absorber = self._make_absorber()
            if fused is None:
                res = absorber.step(idx, reward, term, trunc, sent_ids, sent_actions, obs, True)
            else:
                sink = fused[0]
                with sink.lock:
                    res = absorber.step(idx, reward, term, trunc, sent_ids, sent_actions, obs,
                                        True)
                    if res is not None:
                        sink.count_steps(res[1])
        except Exception:
            if fused is not None:
                self.started = False
            raise
        if res is None:  # a NaN/inf: nothing changed; the exact screening lives in NumPy
            self.sent_action[sent_ids] = sent_actions
            return self._absorb_numpy(obs, reward, term, trunc, info, idx,
                                      self.sent_action[idx], log)
        # The per-env state arrays were updated in place; `rows` is the policy's next input.
        rows, stored, start_ids, done_pos, done_returns, done_length_sum = res
        if start_ids is not None:
            self._new_rollouts(start_ids)
        self.batch_ids = idx
        self.batch_rows = rows
        if log is not None and done_pos is not None:
            log.add(done_returns, done_length_sum, info, done_pos)
        return stored

    def _make_absorber(self):
        """The AsyncAbsorber bound to the current per-env state arrays (and the fused store)."""
        store, plan = (None, []) if self._fused is None else (self._fused[0].store,
                                                              self._fused[1])
        names = self.obs_names
        return core.AsyncAbsorber(
            self.pending_reset, self.time_index, self.ep_return, self.prev_reward,
            self.prev_action, self.sent_action, [self.rows[k] for k in names],
            self._float_obs_idx, store, plan, [*names, ACTION, REWARD, "time_index"])

    def _absorb_numpy(self, obs, reward, term, trunc, info, idx, actions, log) -> int:
        """Store one step's transitions and advance the bookkeeping; returns how many were
        stored. `idx`: the env ids of the batch (async), None for all envs in order (sync).
        `actions`: fresh (owned) array of the actions that produced this step's transitions;
        it is stored as is and never written to afterwards.

        Envs whose previous step ended their rollout (``pending_reset``) were autoreset by the
        env: their observation opens a new rollout and nothing is stored for them (their reward
        is the env's placeholder: zeroed before the non-finite check, since EnvPool's async
        dm_control pools leave it uninitialised); every other env appends one full row — one
        ``buffer.write_step`` call for both.
        """
        names = self.obs_names
        new = self.pending_reset if idx is None else self.pending_reset[idx]
        any_new = bool(np.count_nonzero(new))  # count_nonzero: 0.3 µs, .any(): 1.3 µs
        if any_new:
            reward = reward.copy()  # the env's array is not ours to write
            reward[new] = 0.0
        obs, reward = self._validate(obs, reward, idx, log)
        if idx is None:
            m = self.n
            time_index = self.time_index + 1
            ep_return = self.ep_return + reward
        else:
            m = len(idx)
            time_index = self.time_index[idx] + 1
            ep_return = self.ep_return[idx] + reward
        prev_reward = reward.astype(np.float32)  # a fresh copy (see the class docstring)
        done = term | trunc
        stored = m
        # `new` is never written to later (sync: pending_reset is replaced, not updated;
        # async: it is a gather), so it can wait in _pending_write as is.
        self._store(obs, actions, reward, term, trunc, idx, new if any_new else None)
        prev_action = actions
        if any_new:
            new_pos = new.nonzero()[0]
            new_ids = new_pos if idx is None else idx[new_pos]
            stored = m - new_pos.size
            # A new rollout's row is its first observation with zero previous action/reward
            # and time_index 0; its done flags are False by the next-step rule (masked anyway).
            prev_action = actions.copy()  # `actions` itself may still be owed to the buffer
            prev_action[new_pos] = 0
            prev_reward[new_pos] = 0.0
            time_index[new_pos] = 0
            ep_return[new_pos] = 0.0
            done[new_pos] = False
            self._new_rollouts(new_ids)
        if idx is None:
            # No copy of the observations: rows are read by the next act() before the env
            # steps again, the buffer copies what it stores and state_dict() copies.
            self.rows = {k: obs[k] for k in names}
            self.prev_action = prev_action
            self.prev_reward = prev_reward
            self.time_index = time_index
            self.ep_return = ep_return
            self.pending_reset = done
        else:
            rows = self.rows
            for k in names:
                rows[k][idx] = obs[k]
            self.prev_action[idx] = prev_action
            self.prev_reward[idx] = prev_reward
            self.time_index[idx] = time_index
            self.ep_return[idx] = ep_return
            self.pending_reset[idx] = done
            self.batch_ids = idx
            self.batch_rows = self._batch_rows(obs, prev_action, prev_reward, time_index)
        if log is not None and np.count_nonzero(done):
            d_pos = done.nonzero()[0]
            log.add_arrays(ep_return[d_pos], time_index[d_pos], info, d_pos)
        return stored

    # -------------------------------------------------------------- resume
    def state_dict(self) -> dict[str, Any]:
        self.flush()
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
        self._absorber = None  # bound to the arrays replaced here
        self.rows = {k: v.copy() for k, v in sd["rows"].items()}
        self.prev_action = sd["prev_action"].copy()
        self.prev_reward = sd["prev_reward"].copy()
        self.time_index = sd["time_index"].copy()
        self.pending_reset = sd["pending_reset"].copy()
        self.ep_return = sd["ep_return"].copy()
        self.batch_ids = None if sd["batch_ids"] is None else sd["batch_ids"].copy()
        self.batch_rows = None
        self.pstate = copy.deepcopy(sd["policy_state"])
        self.started = bool(sd["started"])
        fresh = self.policy.init_state(self.n)
        if _same_layout(self.pstate, fresh):
            pass
        elif _same_layout(self.pstate, fresh, compare_devices=False):
            # Checkpoints load onto the CPU (map_location="cpu"): a GPU run's rollout memory
            # comes back on the CPU and is copied onto the policy's device; the rollouts go on.
            _copy_into(fresh, self.pstate)
            self.pstate = fresh
        else:
            # Another KV-cache dtype or shape (a GPU run resumed on a CPU box, where the native
            # step keeps float16 caches): restart the rollouts (the env is reset on the next
            # collect) rather than mix layouts in the policy step.
            warnings.warn("collector state: the saved policy memory does not match this "
                          "policy's cache dtype/shape; the rollouts restart", stacklevel=2)
            self.pstate = fresh
            self.started = False
        # collect() flushes before returning: rows can only be owed here after a failed write,
        # and they belong to the rollouts this load replaces.
        self._pending_write = None


def _same_layout(a: Any, b: Any, compare_devices: bool = True) -> bool:
    """Whether two policy memories (nested lists/tuples/dicts/dataclasses of tensors and
    RingKVCaches) have the same structure, shapes and dtypes (and devices, if asked)."""
    if a is None or b is None:
        return a is None and b is None
    import torch  # only policies with tensor memory get here

    from amago_fast.kernels.decode import RingKVCache

    same_dev = (lambda x, y: x.device == y.device) if compare_devices else (lambda x, y: True)
    if isinstance(a, RingKVCache) or isinstance(b, RingKVCache):
        return (isinstance(a, RingKVCache) and isinstance(b, RingKVCache)
                and a.kv.shape == b.kv.shape and a.dtype == b.dtype and same_dev(a, b))
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
                and a.shape == b.shape and a.dtype == b.dtype and same_dev(a, b))
    if isinstance(a, dict) or isinstance(b, dict):
        return (isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys()
                and all(_same_layout(a[k], b[k], compare_devices) for k in a))
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple))
                and len(a) == len(b)
                and all(_same_layout(x, y, compare_devices) for x, y in zip(a, b)))
    if dataclasses.is_dataclass(a) and dataclasses.is_dataclass(b) and type(a) is type(b):
        return all(_same_layout(getattr(a, f.name), getattr(b, f.name), compare_devices)
                   for f in dataclasses.fields(a))
    return a == b if isinstance(a, (int, float, str, bool)) else type(a) is type(b)


def _copy_into(dst: Any, src: Any) -> None:
    """Copy the policy memory ``src`` into ``dst`` of the same layout (see :func:`_same_layout`
    with ``compare_devices=False``), across devices."""
    import torch

    from amago_fast.kernels.decode import RingKVCache

    if isinstance(dst, RingKVCache):
        dst.kv.copy_(src.kv)
        dst.counts.copy_(src.counts)  # on the CPU also the NumPy bookkeeping (shared memory)
        if dst.scales is not None:
            dst.scales.copy_(src.scales)
    elif isinstance(dst, torch.Tensor):
        dst.copy_(src)
    elif isinstance(dst, dict):
        for k in dst:
            _copy_into(dst[k], src[k])
    elif isinstance(dst, (list, tuple)):
        for x, y in zip(dst, src):
            _copy_into(x, y)
    elif dataclasses.is_dataclass(dst):
        for f in dataclasses.fields(dst):
            _copy_into(getattr(dst, f.name), getattr(src, f.name))


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
        log = _EpisodeLog()
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
        if env.is_async and not _accepts_env_ids(self.policy):
            raise ValueError(f"eval env {env.spec.name!r} is async: policy.act needs env_ids")
        if env is self.env:
            self._train.flush()
            self._train.started = False
        quotas = eval_quotas(int(num_episodes), env.num_envs)
        cap = default_eval_step_cap(env.spec, quotas) if max_steps is None else int(max_steps)
        r = _Rollouts(env, self.policy, None, None, self.nan_policy)
        log = _QuotaLog(quotas, r)
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

    def _stats(self, log: _EpisodeLog | _QuotaLog, stored: int, vec: int, dt: float,
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
