"""The vectorized environment contract and the NumPy-batched base for built-in tasks.

Every env in amago_fast is a :class:`VectorEnv`: `num_envs` copies stepped together, observations
returned as a dict of arrays whose keys, shapes and dtypes match ``spec.observation`` exactly.

Autoreset is *next-step* everywhere (EnvPool's and gymnasium 1.x's ``NEXT_STEP`` mode): when env
``i`` reports ``terminated | truncated`` at step t, ``obs[i]`` is the final observation of that
episode; at step t+1 the action for env ``i`` is ignored and ``obs[i]`` is the first observation
of a new episode, with reward 0 and both done flags False.

:class:`BatchedTaskEnv` implements that contract once for the built-in NumPy tasks (T-Maze,
Key-To-Door, MazeRunner, bandit), together with the generic meta-RL *trial* mechanism (several
inner episodes of one sampled task form one rollout; see :mod:`amago_fast.envs.trials`) and
``state_dict()`` / ``load_state_dict()`` for exact resume.
"""

from __future__ import annotations

import abc
import copy
import math
import operator
from typing import Any

import numpy as np

from amago_fast.spaces import ActionSpec, EnvSpec, FieldSpec

EPISODE_START = "episode_start"


class EnvUnavailableError(ImportError, ValueError):
    """An env named by the user needs an optional package that is not installed (EnvPool,
    dm_control). An ImportError for code that catches those, and a ValueError so that the
    trainer, the profiles and the CLI report it as a config error in one line, like any other
    env name that cannot be built here."""


class VectorEnv(abc.ABC):
    """A batch of `num_envs` environments stepped together (see the module docstring).

    Subclasses set `spec` and `num_envs`. Async envs (only EnvPool with ``batch_size < num_envs``)
    set `is_async = True`, take ``step(actions, env_ids)`` and report ``info["env_id"]``.
    """

    spec: EnvSpec
    num_envs: int
    is_async: bool = False

    @property
    def batch_size(self) -> int:
        """How many envs one `step` returns (== num_envs unless async)."""
        return self.num_envs

    @abc.abstractmethod
    def reset(self, seed: int | None = None) -> dict[str, np.ndarray]:
        """Start new episodes in every env; returns the first observations (N, ...)."""

    @abc.abstractmethod
    def step(
        self, actions: np.ndarray, env_ids: np.ndarray | None = None
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step all envs (async: the envs `env_ids`); returns (obs, reward, term, trunc, info)."""

    def step_trusted(
        self, actions: np.ndarray, env_ids: np.ndarray | None = None
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """`step` for a caller that already validated its input: `actions` is what
        :func:`check_actions` returned for this env's action spec and `env_ids` (async) is the
        env's own last ``info["env_id"]``. The collector calls it (through
        :func:`trusted_step`) so a vector step validates once, not twice (~5 µs saved per step
        of a 64-env CartPole, whose whole step costs ~300 µs). Default: `step`."""
        return self.step(actions, env_ids)

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release resources (processes, threads). Idempotent."""

    def __enter__(self) -> VectorEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def split_step(env: VectorEnv):
    """``(env.send_trusted, env.recv_step)`` when the env steps in the background between the
    two (EnvPool's worker threads) and the pair belongs to the class that defines the
    ``step_trusted`` the collector would otherwise call (so a subclass overriding ``step`` or
    ``step_trusted`` is never bypassed); else None."""
    cls = type(env)
    if trusted_step(env) != env.step_trusted:
        return None
    for klass in cls.__mro__:
        if "step_trusted" in klass.__dict__:
            if "send_trusted" in klass.__dict__ and "recv_step" in klass.__dict__:
                return env.send_trusted, env.recv_step
            return None
    return None


def trusted_step(env: VectorEnv):
    """``env.step_trusted`` when it is paired with the env's ``step`` (defined by the same
    class, so ``step`` = validation + ``step_trusted``), else ``env.step``: a subclass that
    overrides ``step`` alone (a wrapper, a fault injector) is always called through it."""
    cls = type(env)
    for klass in cls.__mro__:
        if "step_trusted" in klass.__dict__:
            if klass is VectorEnv or cls.step is not klass.step:
                return env.step
            return env.step_trusted
    return env.step


class ObsConverter:
    """Batched backend observations -> our observation dict, one plan entry per field.

    Shared by the EnvPool and gymnasium adapters (the only per-step work between the backend's
    step and the collector). A plan entry is ``(key, name, dtype, shape, op)``: `key` is the
    backend's Dict key or Tuple index (None: the whole observation; ``(dict key, index)``: an
    element of a Dict's Tuple entry), `name` our field name, `dtype` / `shape`
    the per-env FieldSpec ones, and `op` None, ``"hwc"`` (channel-first uint8 frames -> HWC) or
    a callable taking and returning the batch (:class:`OneHot`, :class:`Shift`: see
    :func:`discrete_field`).
    Conversions happen only where needed: an array already in the right dtype and shape is
    passed through without a copy.
    """

    def __init__(self, plan: list[tuple[Any, str, np.dtype, tuple[int, ...], Any]]) -> None:
        self.plan = [(key, name, np.dtype(dtype), tuple(shape), op)
                     for key, name, dtype, shape, op in plan]

    def __call__(self, obs: Any) -> dict[str, np.ndarray]:
        out = {}
        for key, name, dtype, shape, op in self.plan:
            if key is None:
                arr = obs
            elif type(key) is tuple:  # a Tuple entry of a Dict: (dict key, element index)
                arr = obs[key[0]][key[1]]
            else:
                arr = obs[key]
            if type(arr) is not np.ndarray:
                arr = np.asarray(arr)
            if op is not None:
                if op == "hwc":
                    arr = np.ascontiguousarray(arr.transpose(0, 2, 3, 1))
                else:  # a callable: OneHot, Shift, the gymnasium adapter's MissionOneHot
                    arr = op(arr)
            if arr.dtype is not dtype and arr.dtype != dtype:  # `is`: the common case, ~60 ns
                arr = arr.astype(dtype)
            if arr.shape[1:] != shape:
                arr = arr.reshape(arr.shape[0], *shape)
            out[name] = arr
        return out


# Widest one-hot field the adapters build (uint8 bytes per step and env): a Discrete(500) Taxi
# state is 500 B a step; a space of 100k values would be 100 kB a step in the buffer and a
# 100k-wide first layer, which is not what anyone wants by default (discrete_obs="index").
MAX_ONE_HOT = 4096


class OneHot:
    """ObsConverter op: Discrete / MultiDiscrete index observations (B, k) as concatenated
    one-hot uint8 rows (B, sum(sizes)), after subtracting `start`. Values outside their space
    raise ValueError naming the field (an env bug would otherwise set a wrong bit or wrap)."""

    def __init__(self, name: str, sizes: tuple[int, ...], start: Any = 0,
                 where: str = "gymnasium env") -> None:
        self.name = name
        self.sizes = np.asarray(sizes, np.int64)
        self.start = np.broadcast_to(np.asarray(start, np.int64), self.sizes.shape)
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(np.int64)
        self.width = int(self.sizes.sum())
        if self.width > MAX_ONE_HOT:
            raise ValueError(
                f"{where}: observation {name!r} has {self.width} discrete values, more than "
                f"{MAX_ONE_HOT} for a one-hot field; pass discrete_obs='index' (on the command "
                "line --env.kwargs '{\"discrete_obs\": \"index\"}') to store indices")
        self._shift = bool(self.start.any())
        self._limit = self.sizes.astype(np.uint64)
        # One Discrete: rows of an identity table (with the single bounds check, measured
        # 6-7 us per batch of 8-64 envs x 16 values vs 12-20 us for two checks, zeros and a
        # scatter); a 1024-wide table is 1 MB, wider ones scatter.
        self._eye = (np.eye(self.width, dtype=np.uint8)
                     if len(self.sizes) == 1 and self.width <= 1024 else None)

    def __call__(self, arr: np.ndarray) -> np.ndarray:
        b = arr.shape[0]
        idx = np.asarray(arr).reshape(b, len(self.sizes))
        if self._shift:
            idx = idx.astype(np.int64) - self.start
        # One comparison for both bounds: negative values wrap to huge unsigned ones.
        bad = idx.astype(np.uint64) >= self._limit
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise ValueError(f"observation {self.name!r}: value {idx[row, col] + self.start[col]}"
                             f" is outside its space (sizes {self.sizes.tolist()}, start "
                             f"{self.start.tolist()})")
        if self._eye is not None:
            return self._eye[idx[:, 0]]
        out = np.zeros((b, self.width), np.uint8)
        out[np.arange(b)[:, None], idx + self.offsets] = 1
        return out


class Shift:
    """ObsConverter op: Discrete / MultiDiscrete indices minus the space's (per-entry)
    ``start``."""

    def __init__(self, start: np.ndarray) -> None:
        self.start = start

    def __call__(self, arr: np.ndarray) -> np.ndarray:
        return np.asarray(arr).astype(np.int64) - self.start


DISCRETE_OBS = ("onehot", "index")


def check_discrete_obs(discrete_obs: Any, where: str) -> None:
    """The adapters' ``discrete_obs`` option must be one of :data:`DISCRETE_OBS`."""
    if discrete_obs not in DISCRETE_OBS:
        raise ValueError(f"{where}: discrete_obs must be 'onehot' or 'index', "
                         f"got {discrete_obs!r}")


def discrete_field(name: str, sizes: tuple[int, ...], start: Any, discrete_obs: str,
                   where: str) -> tuple[FieldSpec, Any]:
    """The FieldSpec and ObsConverter op of a Discrete (one size) or MultiDiscrete observation
    entry, shared by the EnvPool and gymnasium adapters: ``"onehot"`` a uint8 vector of
    ``sum(sizes)`` bits (:class:`OneHot`), ``"index"`` int32 indices (len(sizes),) with `start`
    subtracted. Why one-hot by default: a cell number or a card suit is a category, and fed as
    one number the network would read cell 7 as "more" than cell 6."""
    if discrete_obs == "onehot":
        op = OneHot(name, sizes, start, where)
        return FieldSpec(name, (op.width,), np.uint8), op
    start = np.broadcast_to(np.asarray(start, np.int64), (len(sizes),))
    return FieldSpec(name, (len(sizes),), np.int32), (Shift(start) if start.any() else None)


_F32 = np.dtype(np.float32)
_BOOL = np.dtype(np.bool_)


def step_arrays(
    reward: Any, terminated: Any, truncated: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A backend's reward / done flags as float32 / bool arrays (no copy when already so)."""
    # Arrays already in the native dtypes (EnvPool's, every step) pass on identity checks
    # (~0.2 µs) instead of three np.asarray(..., dtype) calls (~0.7 µs); anything else
    # (another object or dtype, a byte-swapped or subclassed array) takes np.asarray.
    if (type(reward) is np.ndarray and type(terminated) is np.ndarray
            and type(truncated) is np.ndarray and reward.dtype is _F32
            and terminated.dtype is _BOOL and truncated.dtype is _BOOL):
        return reward, terminated, truncated
    return (np.asarray(reward, dtype=np.float32), np.asarray(terminated, dtype=np.bool_),
            np.asarray(truncated, dtype=np.bool_))


def positive_int(value: Any, what: str = "num_envs") -> int:
    """`value` as a Python int >= 1: ints and NumPy integers (``operator.index``), not bools or
    floats; ValueError naming `what` otherwise."""
    if not isinstance(value, (bool, np.bool_)):
        try:
            n = operator.index(value)
        except TypeError:
            pass
        else:
            if n >= 1:
                return n
    raise ValueError(f"{what} must be a positive integer, got {value!r}")


def check_env_ids(env: VectorEnv, env_ids: Any, awaiting: Any = None) -> np.ndarray:
    """The env ids of one ``env.step(actions, env_ids)`` call, checked; int64, a copy.

    Sync env: None (or every id, in order) -> ``arange(num_envs)``. Async env (EnvPool with
    ``batch_size < num_envs``): `env_ids` is required and must name exactly the envs of the last
    batch (`awaiting`, default ``env.last_env_ids``), each once, in any order — EnvPool steps
    every id it is sent, so a duplicate steps that env twice and an env outside the last batch
    (not awaiting an action) is stepped out of turn while an env of the batch never returns.
    Raises ValueError naming the problem; nothing is sent.
    """
    name = env.spec.name
    if not env.is_async:
        all_ids = np.arange(env.num_envs, dtype=np.int64)
        if env_ids is not None and not np.array_equal(np.asarray(env_ids), all_ids):
            raise ValueError(f"{name} is synchronous: env_ids must be all envs")
        return all_ids
    m = env.batch_size
    if env_ids is None:
        raise ValueError(f"{name} is async (batch_size={m} < num_envs={env.num_envs}): "
                         "step(actions, env_ids) needs env_ids (the last batch's "
                         "info['env_id'] / env.last_env_ids)")
    ids = np.asarray(env_ids)
    if ids.dtype.kind not in "iu" or ids.shape != (m,) or (ids < 0).any() or (
        ids >= env.num_envs
    ).any():
        raise ValueError(f"{name}: env_ids must be {m} integer ids in [0, {env.num_envs}), "
                         f"got {ids!r}")
    ids = ids.astype(np.int64)  # a copy (callers may keep the caller's array otherwise)
    srt = np.sort(ids)
    dup = srt[1:][srt[1:] == srt[:-1]]
    if dup.size:
        raise ValueError(f"{name}: duplicate env_ids {np.unique(dup).tolist()} in {ids.tolist()}"
                         " (each env of the last batch takes exactly one action)")
    last = np.asarray(env.last_env_ids if awaiting is None else awaiting)
    if not np.array_equal(srt, np.sort(last)):
        stray = np.setdiff1d(ids, last).tolist()
        missing = np.setdiff1d(last, ids).tolist()
        raise ValueError(
            f"{name}: env_ids {ids.tolist()} are not the envs of the last batch "
            f"{last.tolist()} (env.last_env_ids): envs {stray} are not awaiting an action and "
            f"envs {missing} get none; pass the last info['env_id'] (any order)")
    return ids


def _tolerant_bounds(action: ActionSpec) -> tuple[np.ndarray, np.ndarray]:
    """`action`'s [low, high] widened by what check_actions allows: equality is in bounds
    (tanh-squashed actions rescaled to [low, high] reach them) and so is float32 rounding past
    them: 1e-6 relative (~8 float32 ulps), absolute near 0."""
    low = np.asarray(action.low, np.float64)
    high = np.asarray(action.high, np.float64)
    tol = 1e-6 * np.maximum(1.0, np.maximum(np.abs(low), np.abs(high)))
    return low - tol, high + tol


def check_actions(action: ActionSpec, actions: Any, n: int, env_name: str = "env",
                  check_bounds: bool = False) -> np.ndarray:
    """Validate a batch of `n` actions against `action` and return it in its storage dtype.

    Raises ValueError (naming the env, the expected and the received shape) on a bad shape,
    a non-finite continuous action or an out-of-range discrete action; with `check_bounds`
    (an env's checked ``step``) also on a continuous action outside ``[low, high]`` (equality
    and float32 rounding, 1e-6 relative, allowed; nothing is clipped). The collector validates
    its policy's actions without `check_bounds`: the backends clip continuous actions.
    """
    arr = actions if isinstance(actions, np.ndarray) else np.asarray(actions)
    kind = action.kind
    if kind == "discrete" and arr.dtype == np.int32 and arr.shape == (n,):
        # The common case (a policy's int32 batch), checked in ~1 µs instead of ~3.5 µs.
        # One reduction: negative int32 values become huge as uint32.
        if n and np.maximum.reduce(arr.view(np.uint32), axis=None) >= action.n:
            raise ValueError(f"{env_name}: discrete actions out of range [0, {action.n}): {arr}")
        return arr
    if kind == "discrete":
        expected: tuple[int, ...] = (n,)
    elif kind == "multidiscrete":
        expected = (n, len(action.nvec))
    else:
        expected = (n, *action.shape)
    if arr.shape != expected:
        raise ValueError(
            f"{env_name}: actions have shape {arr.shape}, expected {expected} "
            f"({kind} action space)"
        )
    if kind == "continuous":
        if arr.dtype.kind not in "fiu":
            raise ValueError(f"{env_name}: continuous actions must be numeric, got {arr.dtype}")
        arr = arr.astype(np.float32, copy=False)
        # One reduction screens the common all-finite batch (a sum is finite iff every element
        # is, barring overflow, which the exact check then rules in or out).
        if not math.isfinite(np.add.reduce(arr, axis=None)) and not np.isfinite(arr).all():
            raise ValueError(f"{env_name}: continuous actions contain NaN/inf")
        if check_bounds and n:
            lo, hi = _tolerant_bounds(action)
            if np.less(arr, lo).any() or np.greater(arr, hi).any():
                raise ValueError(
                    f"{env_name}: continuous actions out of bounds: low={list(action.low)}, "
                    f"high={list(action.high)}; got per-dimension min "
                    f"{arr.min(axis=0).tolist()}, max {arr.max(axis=0).tolist()}")
        return arr
    if arr.dtype.kind not in "iub":
        if arr.dtype.kind == "f" and np.array_equal(arr, np.round(arr)):
            pass  # integral floats are accepted (e.g. from a policy returning float tensors)
        else:
            raise ValueError(f"{env_name}: discrete actions must be integers, got {arr.dtype}")
    arr = arr.astype(np.int32, copy=False)
    if arr.size == 0:
        return arr
    if kind == "discrete":
        # One reduction: negative int32 values become huge as uint32.
        if np.maximum.reduce(arr.view(np.uint32), axis=None) >= action.n:
            raise ValueError(f"{env_name}: discrete actions out of range [0, {action.n}): {arr}")
    elif (arr.view(np.uint32) >= np.asarray(action.nvec, np.uint32)).any():
        raise ValueError(f"{env_name}: discrete actions out of range [0, {action.nvec}): {arr}")
    return arr


class BatchedTaskEnv(VectorEnv):
    """NumPy-batched base for built-in tasks: next-step autoreset, meta-RL trials, exact resume.

    A subclass describes one *inner episode* of a *task* through hooks that act on index arrays:

    - ``_sample_tasks(idx)``: draw a new task for envs `idx` (cue, layout, arm probabilities...).
    - ``_reset_episodes(idx)``: start a new inner episode of the current task in envs `idx`.
    - ``_transition(actions, active)``: advance envs where `active` is True by one step; return
      ``(reward f32 (N,), terminated bool (N,), success bool (N,))`` (values of inactive envs are
      ignored). ``self.ep_t`` already counts the step being taken.
    - ``_observe()``: the observation dict of the current state of all envs (without
      ``episode_start``, which this base adds in trial mode).
    - ``_state_fields``: names of the array attributes that hold the state (for state_dict).

    Trials: with ``episodes_per_trial`` k > 1 or a ``trial_max_steps`` limit, one rollout (what the
    agent and the buffer see) spans several inner episodes of the same task. Inner episodes reset
    immediately (the step that ends an inner episode returns the first observation of the next one,
    with the final reward of the ending one), ``episode_start`` = 1 marks those rows, and the trial
    ends (terminated after k episodes, truncated at ``trial_max_steps``) only then. At a trial end
    ``info["episode_returns"]`` (N, k_max) holds the return of each inner episode that finished
    (NaN past the last; an inner episode cut off by ``trial_max_steps`` is not one: it is
    neither a return nor a success), and ``info["success"]`` (float32, read at trial ends) the
    fraction of those finished inner episodes that succeeded (NaN if none finished) — so the
    collector's ``success`` statistic is the share of successful inner episodes, as it is the
    share of successful episodes outside trials. (Before a trial end the row's value is NaN.)
    """

    _state_fields: tuple[str, ...] = ()
    task_name: str = "task"

    def __init__(
        self,
        num_envs: int,
        seed: int = 0,
        episode_max_steps: int | None = None,
        episodes_per_trial: int | None = 1,
        trial_max_steps: int | None = None,
    ) -> None:
        num_envs = positive_int(num_envs)
        if episodes_per_trial is not None and episodes_per_trial < 1:
            raise ValueError(f"episodes_per_trial must be >= 1 or None, got {episodes_per_trial}")
        if trial_max_steps is not None and trial_max_steps < 1:
            raise ValueError(f"trial_max_steps must be >= 1 or None, got {trial_max_steps}")
        if episodes_per_trial is None and trial_max_steps is None:
            raise ValueError("a trial needs episodes_per_trial or trial_max_steps (or both)")
        if episode_max_steps is not None and episode_max_steps < 1:
            raise ValueError(f"episode_max_steps must be >= 1, got {episode_max_steps}")
        self.num_envs = int(num_envs)
        self.episode_max_steps = episode_max_steps
        self.episodes_per_trial = episodes_per_trial
        self.trial_max_steps = trial_max_steps
        self.trial_mode = trial_max_steps is not None or (episodes_per_trial or 1) > 1
        self._seed = seed
        self.rng = np.random.default_rng(seed)
        n = self.num_envs
        self.ep_t = np.zeros(n, np.int64)  # steps taken in the current inner episode
        self.trial_t = np.zeros(n, np.int64)  # steps taken in the current rollout
        self.episode_index = np.zeros(n, np.int64)  # inner episode number within the trial
        self.episode_start_flag = np.ones(n, np.float32)
        self.needs_reset = np.ones(n, np.bool_)
        self._k_max = self._max_episodes_per_trial()
        self.episode_returns = np.zeros((n, self._k_max), np.float32)
        self.episode_successes = np.zeros((n, self._k_max), np.bool_)
        self._closed = False

    # ------------------------------------------------------------------ subclass hooks
    @abc.abstractmethod
    def _sample_tasks(self, idx: np.ndarray) -> None: ...

    @abc.abstractmethod
    def _reset_episodes(self, idx: np.ndarray) -> None: ...

    @abc.abstractmethod
    def _transition(
        self, actions: np.ndarray, active: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...

    @abc.abstractmethod
    def _observe(self) -> dict[str, np.ndarray]: ...

    # ------------------------------------------------------------------ spec helpers
    def _max_episodes_per_trial(self) -> int:
        if self.episodes_per_trial is not None:
            return int(self.episodes_per_trial)
        # Bounded by the trial length: an inner episode takes at least one step.
        return int(self.trial_max_steps)

    def _make_spec(
        self,
        name: str,
        observation: list[FieldSpec],
        action: ActionSpec,
        goals: Any = None,
        extra: dict | None = None,
    ) -> EnvSpec:
        obs = list(observation)
        if self.trial_mode:
            obs.append(FieldSpec(EPISODE_START, (1,), np.float32))
        if self.trial_mode:
            if self.trial_max_steps is not None:
                max_steps = self.trial_max_steps
            else:
                max_steps = self.episodes_per_trial * self.episode_max_steps  # type: ignore[operator]
        else:
            max_steps = self.episode_max_steps
        info = {
            "episodes_per_trial": self.episodes_per_trial,
            "trial_max_steps": self.trial_max_steps,
            "episode_max_steps": self.episode_max_steps,
            **(extra or {}),
        }
        return EnvSpec(
            name, tuple(obs), action, goals=goals, max_episode_steps=max_steps, extra=info
        )

    def _full_obs(self) -> dict[str, np.ndarray]:
        obs = self._observe()
        if self.trial_mode:
            obs[EPISODE_START] = self.episode_start_flag[:, None].copy()
        return obs

    # ------------------------------------------------------------------ VectorEnv API
    def reset(self, seed: int | None = None) -> dict[str, np.ndarray]:
        self._check_open()
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        idx = np.arange(self.num_envs)
        self._start_rollouts(idx)
        return self._full_obs()

    def _start_rollouts(self, idx: np.ndarray) -> None:
        self._sample_tasks(idx)
        self._reset_episodes(idx)
        self.ep_t[idx] = 0
        self.trial_t[idx] = 0
        self.episode_index[idx] = 0
        self.episode_returns[idx] = 0.0
        self.episode_successes[idx] = False
        self.episode_start_flag[idx] = 1.0
        self.needs_reset[idx] = False

    def step(
        self, actions: np.ndarray, env_ids: np.ndarray | None = None
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        self._check_open()
        if env_ids is not None:
            raise ValueError(f"{self.spec.name} is a synchronous env: step() takes no env_ids")
        actions = check_actions(self.spec.action, actions, self.num_envs, self.spec.name,
                                check_bounds=True)
        return self.step_trusted(actions)

    def step_trusted(
        self, actions: np.ndarray, env_ids: np.ndarray | None = None
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        self._check_open()
        n = self.num_envs
        resetting = self.needs_reset.copy()
        active = ~resetting
        self.ep_t[active] += 1
        self.trial_t[active] += 1
        reward, inner_term, success = self._transition(actions, active)
        reward = np.where(active, reward, 0.0).astype(np.float32)
        inner_term = inner_term & active
        inner_trunc = np.zeros(n, np.bool_)
        if self.episode_max_steps is not None:
            inner_trunc = active & ~inner_term & (self.ep_t >= self.episode_max_steps)
        inner_done = inner_term | inner_trunc
        info: dict[str, Any] = {"success": success & inner_done}
        self.episode_start_flag[active] = 0.0
        if not self.trial_mode:
            terminated, truncated = inner_term, inner_trunc
        else:
            ep = self.episode_index
            rows = np.nonzero(active)[0]
            slot = np.minimum(ep, self._k_max - 1)
            self.episode_returns[rows, slot[rows]] += reward[rows]
            ended = np.nonzero(inner_done)[0]
            self.episode_successes[ended, slot[ended]] = success[ended]
            ep_after = ep + inner_done
            trial_term = np.zeros(n, np.bool_)
            if self.episodes_per_trial is not None:
                trial_term = inner_done & (ep_after >= self.episodes_per_trial)
            trial_trunc = np.zeros(n, np.bool_)
            if self.trial_max_steps is not None:
                trial_trunc = active & ~trial_term & (self.trial_t >= self.trial_max_steps)
            trial_done = trial_term | trial_trunc
            # Inner episodes that ended inside a trial restart at once, on the same task.
            inner_restart = np.nonzero(inner_done & ~trial_done)[0]
            if inner_restart.size:
                self._reset_episodes(inner_restart)
                self.ep_t[inner_restart] = 0
                self.episode_index[inner_restart] += 1
                self.episode_start_flag[inner_restart] = 1.0
            if trial_done.any():
                returns = np.full((n, self._k_max), np.nan, np.float32)
                trial_success = np.full(n, np.nan, np.float32)
                done_rows = np.nonzero(trial_done)[0]
                # Finished inner episodes: all up to the current one, which counts only if it
                # ended on this step (a trial_max_steps cut leaves it partial).
                counts = np.minimum(self.episode_index[done_rows] + inner_done[done_rows],
                                    self._k_max)
                for r, c in zip(done_rows, counts):  # only at trial ends: rare
                    returns[r, :c] = self.episode_returns[r, :c]
                    if c:
                        trial_success[r] = self.episode_successes[r, :c].mean()
                info["episode_returns"] = returns
                info["success"] = trial_success
            else:
                info["success"] = np.full(n, np.nan, np.float32)
            terminated, truncated = trial_term, trial_trunc
        reset_idx = np.nonzero(resetting)[0]
        if reset_idx.size:
            self._start_rollouts(reset_idx)
        self.needs_reset = terminated | truncated
        obs = self._full_obs()
        return obs, reward, terminated, truncated, info

    def close(self) -> None:
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{type(self).__name__} is closed")

    # ------------------------------------------------------------------ resume
    _base_state_fields = (
        "ep_t",
        "trial_t",
        "episode_index",
        "episode_start_flag",
        "needs_reset",
        "episode_returns",
        "episode_successes",
    )
    # Arrays added after checkpoints were first written: absent from an older state they start
    # at their initial value (no successes recorded yet in the open trials).
    _optional_state_fields = ("episode_successes",)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue identically: RNG state and every state array."""
        arrays = {
            name: np.array(getattr(self, name), copy=True)
            for name in (*self._base_state_fields, *self._state_fields)
        }
        return {
            "class": type(self).__name__,
            "num_envs": self.num_envs,
            "rng": copy.deepcopy(self.rng.bit_generator.state),
            "arrays": arrays,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict()`; checks class, num_envs and every array shape first."""
        if state.get("class") != type(self).__name__:
            raise ValueError(f"state is for {state.get('class')!r}, not {type(self).__name__}")
        if state.get("num_envs") != self.num_envs:
            raise ValueError(f"state has num_envs={state.get('num_envs')}, env has {self.num_envs}")
        arrays = dict(state["arrays"])
        names = (*self._base_state_fields, *self._state_fields)
        for k in self._optional_state_fields:
            if k not in arrays:
                arrays[k] = np.zeros_like(getattr(self, k))
        missing = [k for k in names if k not in arrays]
        if missing:
            raise ValueError(f"state is missing arrays {missing}")
        for k in names:
            cur = np.asarray(getattr(self, k))
            if np.asarray(arrays[k]).shape != cur.shape:
                raise ValueError(f"state array {k!r} has shape {np.shape(arrays[k])}, "
                                 f"expected {cur.shape}")
        rng = np.random.default_rng()
        rng.bit_generator.state = copy.deepcopy(state["rng"])
        for k in names:
            setattr(self, k, np.array(arrays[k], dtype=np.asarray(getattr(self, k)).dtype))
        self.rng = rng
