"""The collector's rollout state: per-env bookkeeping of open rollouts and the vectorized step.

One :class:`RolloutState` per driven env (the training env; a fresh one per evaluation). It
holds what the policy reads (the current rows, previous action and reward, time index), what
the buffer is owed, the policy's rollout memory and the checks of what the env returns; the
step's bookkeeping itself is one of the absorb paths (:mod:`.native_absorb`,
:mod:`.numpy_absorb`).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from amago_fast.collector.policy import RandomPolicy, copy_into, same_layout
from amago_fast.collector.stats import EpisodeLog
from amago_fast.envs.base import VectorEnv, check_actions, split_step, trusted_step
from amago_fast.exploration import EpsilonGreedy, GaussianNoise
from amago_fast.spaces import ACTION, REWARD, TERMINATED, TRUNCATED

_I64 = np.dtype(np.int64)
_F32 = np.dtype(np.float32)
_BOOL = np.dtype(np.bool_)


class RolloutState:
    """Per-env bookkeeping of open rollouts and the vectorized step (shared by collect/evaluate).

    Per-step cost is a fixed number of whole-array NumPy operations (no per-env Python loop;
    the envs that start a rollout take a few extra index operations). Sync: the per-env arrays
    (``rows``, ``prev_action``, ...) are what the policy reads and are replaced by fresh arrays
    every step, never written in place, so a policy may keep a reference to what it was given.
    Async: the policy reads ``batch_rows``, built fresh from the step's output in batch order
    (no gathers on the way in); the per-env arrays are scattered into in place.

    A step's bookkeeping and buffer write (its *absorb*) is done by ``absorb`` /
    ``absorb_async``, the native path (:mod:`.native_absorb`) over the NumPy reference
    (:mod:`.numpy_absorb`); :func:`amago_fast.collector.collector.make_rollouts` builds a state
    and wires them (and ``fused``, the native buffer's sink when the write is fused into the
    absorb pass). Every attribute here is read and written by those paths.
    """

    def __init__(self, env: VectorEnv, policy: Any, buffer: Any, exploration: Any,
                 nan_policy: str, absorb_step: Callable | None) -> None:
        self.env = env
        self.spec = env.spec
        self.policy = policy
        self.buffer = buffer
        self.exploration = exploration
        self.nan_policy = nan_policy
        self.is_async = bool(env.is_async)
        # The collector validates the policy's actions itself (and converts their dtype before
        # they are stored), so the env is stepped without validating them a second time.
        self.env_step = trusted_step(env)
        # EnvPool steps in its worker threads between send and recv: the previous step's rows
        # are written to the buffer in that gap (pending_write) instead of before the send.
        self.split = split_step(env) if buffer is not None else None
        self.pending_write: tuple | None = None
        self.buffer_write_step = getattr(buffer, "write_step", None)
        # Our own exploration keeps actions valid by construction; anything else is re-checked.
        self.exploration_trusted = exploration is None or type(exploration) in (
            EpsilonGreedy, GaussianNoise)
        # Likewise RandomPolicy drawing for this very action spec (random_actions: in range,
        # storage dtype, right shape); any other policy's actions are checked every step.
        self.policy_trusted = (type(policy) is RandomPolicy
                               and policy.spec.action == self.spec.action)
        self.policy_name = f"policy for {self.spec.name}"
        n = env.num_envs
        self.n = n
        self.obs_names = [f.name for f in self.spec.observation]
        self.float_obs = [f.name for f in self.spec.observation if f.dtype.kind == "f"]
        # The native bookkeeping (``_core.absorb_step``, or None) checks float32 observations
        # for NaN/inf itself; any other float dtype keeps the NumPy path.
        self.absorb_step = absorb_step if all(
            f.dtype == np.float32 for f in self.spec.observation if f.dtype.kind == "f") else None
        self.float_obs_idx = [i for i, f in enumerate(self.spec.observation)
                              if f.dtype.kind == "f"]
        # Wired by make_rollouts: the fused write's (sink, plan) or None, whether async batches
        # take the AsyncAbsorber, and the absorb paths.
        self.fused: tuple | None = None
        self.async_absorber_ok = False
        self.absorb: Callable[..., int] = self._unwired
        self.absorb_async: Callable[..., int] = self._unwired
        self.absorber = None  # the AsyncAbsorber of the current state arrays
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

    def _unwired(self, *args: Any) -> int:
        raise RuntimeError("RolloutState: absorb paths not wired (build it with make_rollouts)")

    # -------------------------------------------------------------- start / restart
    def start(self, seed: int | None = None) -> None:
        self.flush()  # rows still owed to the buffer belong to the rollouts being cut here
        obs = self.env.reset(seed)
        ids = np.asarray(self.env.last_env_ids, np.int64) if self.is_async else self.all_ids
        m = len(ids)
        obs, _ = self.validate(obs, np.zeros(m, np.float32), ids, None)
        names = self.obs_names
        if self.buffer is not None:
            self.buffer.reset_envs({k: obs[k] for k in names}, ids)
        # Fresh arrays: the policy may still hold the previous ones (see the class docstring).
        self.absorber = None  # bound to the arrays replaced here
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
            self.batch_rows = self.batch_rows_of(obs, self.prev_action[ids], self.prev_reward[ids],
                                               self.time_index[ids])
        else:
            self.batch_ids = self.batch_rows = None
        self.new_rollouts(ids)
        self.started = True

    def batch_rows_of(self, obs, prev_action, prev_reward, time_index) -> dict[str, np.ndarray]:
        rows = {k: obs[k] for k in self.obs_names}
        rows[ACTION] = prev_action
        rows[REWARD] = prev_reward
        rows["time_index"] = time_index
        return rows

    # -------------------------------------------------------------- the step
    def step(self, explore: bool, sample: bool, log: EpisodeLog) -> int:
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
                rows = self.batch_rows_of({k: v[ids] for k, v in self.rows.items()},
                                        self.prev_action[ids], self.prev_reward[ids],
                                        self.time_index[ids])
            actions, self.pstate = self.policy.act(rows, self.pstate, sample, env_ids=ids)
            m = len(ids)
        if type(actions) is not np.ndarray:
            actions = np.asarray(actions.detach().cpu() if hasattr(actions, "detach") else
                                 actions)
        # Validate and convert to the stored dtype (e.g. int64 -> int32) before anything moves.
        if not self.policy_trusted:
            actions = check_actions(self.spec.action, actions, m, self.policy_name)
        if explore and self.exploration is not None:
            if getattr(self.exploration, "uses_observations", False):
                actions = self.exploration.apply(
                    actions, ids, observations={k: rows[k] for k in self.obs_names})
            else:
                actions = self.exploration.apply(actions, ids)
            if not self.exploration_trusted:
                actions = check_actions(self.spec.action, actions, m,
                                        f"exploration for {self.spec.name}")
        if self.split is None:
            try:
                obs, reward, term, trunc, info = (self.env_step(actions) if ids is None else
                                                  self.env_step(actions, ids))
            except Exception as e:
                raise self.env_failed(e) from e
        else:
            send, recv = self.split
            try:
                send(actions, ids)
            except Exception as e:
                raise self.env_failed(e) from e
            if self.pending_write is not None:
                self.flush()
            try:
                obs, reward, term, trunc, info = recv()
            except Exception as e:
                raise self.env_failed(e) from e
        if ids is None:
            out_ids = None
            # A fresh copy in the stored dtype: it becomes prev_action (see the class docstring).
            actions = actions.astype(self.act_dtype)
        else:
            out_ids = info["env_id"]
            if type(out_ids) is not np.ndarray or out_ids.dtype is not _I64:
                out_ids = np.asarray(out_ids, dtype=np.int64)
            if self.async_absorber_ok and self.absorb_step is not None:
                # The absorber records the sent actions and gathers each row's itself.
                try:
                    stored = self.absorb_async(obs, reward, term, trunc, info, out_ids, ids,
                                                actions, log)
                except (ValueError, TypeError, KeyError, IndexError) as e:
                    self.explain_bad_step(e, obs, reward, term, trunc, len(out_ids))
                    raise
                if explore and self.exploration is not None:
                    self.exploration.advance(stored)
                return stored
            # The returned batch need not be the envs that just acted: each env's transition
            # carries the action last *sent* to it (the gather is a fresh array).
            self.sent_action[ids] = actions
            actions = self.sent_action[out_ids]
        try:
            stored = self.absorb(obs, reward, term, trunc, info, out_ids, actions, log)
        except (ValueError, TypeError, KeyError, IndexError) as e:
            self.explain_bad_step(e, obs, reward, term, trunc,
                                   self.n if out_ids is None else len(out_ids))
            raise
        if explore and self.exploration is not None:
            self.exploration.advance(stored)
        return stored

    def env_failed(self, e: Exception) -> RuntimeError:
        self.started = False  # the env's state is unknown: restart on the next collect
        self.flush()
        return RuntimeError(
            f"env {self.spec.name!r} raised during step: {type(e).__name__}: {e}; "
            "committed trajectories are intact, the open rollouts will restart"
        )

    def flush(self) -> None:
        """Write the rows still owed to the buffer (see ``_split``); a no-op otherwise."""
        pending = self.pending_write
        if pending is not None:
            self.pending_write = None
            try:
                self.write(*pending)
            except Exception:
                self.started = False
                raise

    def store(self, obs, actions, reward, term, trunc, idx, starts) -> None:
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
        if self.split is not None:
            self.pending_write = (rows, idx, starts)
        else:
            self.write(rows, idx, starts)

    def new_rollouts(self, env_ids: np.ndarray) -> None:
        """Policy memory and exploration scale start afresh for these envs."""
        self.pstate = self.policy.reset_state(self.pstate, env_ids)
        if self.exploration is not None:
            self.exploration.reset_envs(env_ids)

    def write(self, rows: dict[str, np.ndarray], idx: np.ndarray | None,
               starts: np.ndarray | None) -> None:
        """One step's rows into the buffer: rows flagged in `starts` open a new rollout (their
        observation only), the others are appended. `idx`: env ids (async), None = all envs."""
        if self.buffer_write_step is not None:
            self.buffer_write_step(rows, idx, starts)
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

    def check_obs_once(self, obs: dict[str, np.ndarray], m: int) -> None:
        if not self.checked_obs:
            self.check_obs(obs, m)
            self.checked_obs = True

    def check_obs(self, obs: dict[str, np.ndarray], m: int) -> None:
        if not isinstance(obs, dict) or set(obs) != set(self.obs_names):
            got = sorted(obs) if isinstance(obs, dict) else type(obs).__name__
            raise ValueError(f"env {self.spec.name!r} returned observation keys {got}, "
                             f"spec says {self.obs_names}")
        for f in self.spec.observation:
            a = obs[f.name]
            if a.dtype != f.dtype or a.shape != (m, *f.shape):
                raise ValueError(f"env {self.spec.name!r}: observation {f.name!r} is "
                                 f"{a.dtype}{a.shape}, spec says {f.dtype}{(m, *f.shape)}")

    def explain_bad_step(self, err: Exception, obs, reward, term, trunc, m: int) -> None:
        """After a step's outputs were rejected (`err`, e.g. from the native absorber, which
        names its own arguments): raise a ValueError naming the env and what it returned
        against its spec, when that is the cause; else return (the caller re-raises `err`).
        Only runs on failure, so the per-step path keeps its single first-step check."""
        name = self.spec.name
        problem = None
        try:
            self.check_obs(obs, m)
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

    def validate(self, obs, reward, out_ids, log):
        """Keys/shapes once; non-finite values every step, before anything reaches the buffer.

        Fast screen: a sum is finite iff every element is (barring overflow, which the exact
        per-key check then rules in or out), so the common all-finite step costs one reduction
        per float key."""
        m = self.n if out_ids is None else len(out_ids)
        self.check_obs_once(obs, m)
        total = float(np.add.reduce(reward, axis=None))
        for k in self.float_obs:
            total += float(np.add.reduce(obs[k], axis=None))
        if not math.isfinite(total):
            obs, reward = self.screen_nonfinite(obs, reward, out_ids, m, log)
        return obs, reward

    def screen_nonfinite(self, obs, reward, out_ids, m, log):
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
        self.absorber = None  # bound to the arrays replaced here
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
        if same_layout(self.pstate, fresh):
            pass
        elif same_layout(self.pstate, fresh, compare_devices=False):
            # Checkpoints load onto the CPU (map_location="cpu"): a GPU run's rollout memory
            # comes back on the CPU and is copied onto the policy's device; the rollouts go on.
            copy_into(fresh, self.pstate)
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
        self.pending_write = None


