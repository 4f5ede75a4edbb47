"""Shared descriptions of data: buffer fields, action spaces and multi-goal instructions.

Every part of amago_fast (envs, buffer, agent, collector, trainer) speaks in these types, so an
environment's spec is enough to build a buffer schema and an agent.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

SUPPORTED_DTYPES = (
    np.dtype(np.float32),
    np.dtype(np.float16),
    np.dtype(np.uint8),
    np.dtype(np.int32),
    np.dtype(np.int64),
    np.dtype(np.bool_),
)

# Names the buffer gives a meaning to. Observation keys may not use them.
ACTION, REWARD, TERMINATED, TRUNCATED = "action", "reward", "terminated", "truncated"
RESERVED_FIELDS = frozenset({ACTION, REWARD, TERMINATED, TRUNCATED, "mask", "time_index"})


@dataclass(frozen=True)
class FieldSpec:
    """One named per-timestep field: its per-step shape (no batch/time dims) and dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"field name must be a non-empty string, got {self.name!r}")
        shape = tuple(int(s) for s in self.shape)
        if any(s <= 0 for s in shape):
            raise ValueError(f"field {self.name!r}: shape {shape} has a non-positive dimension")
        dtype = np.dtype(self.dtype)
        if dtype not in SUPPORTED_DTYPES:
            raise TypeError(
                f"field {self.name!r}: dtype {dtype} is not supported "
                f"(supported: {', '.join(str(d) for d in SUPPORTED_DTYPES)})"
            )
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "dtype", dtype)

    @property
    def nbytes(self) -> int:
        """Bytes of one timestep of this field."""
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


@dataclass(frozen=True)
class ActionSpec:
    """The action space of an environment.

    kind:
      - "discrete": one integer in [0, n); stored as int32 with shape ().
      - "multidiscrete": integers, one per entry of `nvec`; stored as int32 with shape (len(nvec),).
      - "continuous": float32 vector of shape `shape` inside [low, high].
    """

    kind: Literal["discrete", "multidiscrete", "continuous"]
    n: int = 0
    nvec: tuple[int, ...] = ()
    shape: tuple[int, ...] = ()
    low: tuple[float, ...] = ()
    high: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.kind == "discrete":
            if self.n < 2:
                raise ValueError(f"discrete action space needs n >= 2, got {self.n}")
        elif self.kind == "multidiscrete":
            if not self.nvec or min(self.nvec) < 2:
                raise ValueError(f"multidiscrete action space needs nvec >= 2, got {self.nvec}")
        elif self.kind == "continuous":
            if len(self.shape) != 1 or self.shape[0] < 1:
                raise ValueError(f"continuous actions must be a 1-d vector, got shape {self.shape}")
            d = self.shape[0]
            low = self.low or (-1.0,) * d
            high = self.high or (1.0,) * d
            if len(low) != d or len(high) != d:
                raise ValueError("continuous action bounds must match the action shape")
            bounds_ok = (np.isfinite(a) and np.isfinite(b) and a < b for a, b in zip(low, high))
            if not all(bounds_ok):
                raise ValueError(
                    f"continuous action bounds must be finite with low < high: {low}, {high}"
                )
            object.__setattr__(self, "low", tuple(float(x) for x in low))
            object.__setattr__(self, "high", tuple(float(x) for x in high))
        else:
            raise ValueError(f"unknown action kind {self.kind!r}")

    @property
    def field(self) -> FieldSpec:
        """How the buffer stores one action."""
        if self.kind == "discrete":
            return FieldSpec(ACTION, (), np.int32)
        if self.kind == "multidiscrete":
            return FieldSpec(ACTION, (len(self.nvec),), np.int32)
        return FieldSpec(ACTION, self.shape, np.float32)

    @property
    def is_discrete(self) -> bool:
        return self.kind != "continuous"


@dataclass(frozen=True)
class GoalSpec:
    """Multi-goal instructions (AMAGO's hindsight instruction relabeling).

    Each timestep row carries the instruction `goal_field` (k, goal_dim), the goal achieved at
    that step `achieved_field` (goal_dim,), the index of the goal being pursued `active_field` ()
    int32 and the completed marks `completed_field` (k,) bool.

    The rule every env and the buffer share, along a trajectory with rows 0..T:
      row 0: active = 0, nothing completed, reward 0 (no action has been taken yet).
      row t >= 1: if active < k and match(achieved_t, goal[active]):
                      completed[active] = True; reward_t = goal_reward; active += 1
                  else reward_t = 0.
                  terminated_t = (active == k)   (the episode ends after the last goal)
    match is exact equality, or L-infinity distance <= eps when `match == "tolerance"`.
    """

    k: int
    goal_dim: int
    goal_dtype: np.dtype = np.dtype(np.float32)
    match: Literal["exact", "tolerance"] = "exact"
    eps: float = 0.0
    goal_reward: float = 1.0
    goal_field: str = "goal"
    achieved_field: str = "achieved"
    active_field: str = "goal_active"
    completed_field: str = "goal_completed"

    def __post_init__(self) -> None:
        if self.k < 1 or self.goal_dim < 1:
            raise ValueError(
                f"GoalSpec needs k >= 1 and goal_dim >= 1, got {self.k}, {self.goal_dim}"
            )
        if self.match not in ("exact", "tolerance"):
            raise ValueError(f"unknown goal match {self.match!r}")
        if self.match == "tolerance" and not self.eps >= 0:
            raise ValueError(f"tolerance match needs eps >= 0, got {self.eps}")
        object.__setattr__(self, "goal_dtype", np.dtype(self.goal_dtype))

    def fields(self) -> list[FieldSpec]:
        return [
            FieldSpec(self.goal_field, (self.k, self.goal_dim), self.goal_dtype),
            FieldSpec(self.achieved_field, (self.goal_dim,), self.goal_dtype),
            FieldSpec(self.active_field, (), np.int32),
            FieldSpec(self.completed_field, (self.k,), np.bool_),
        ]


@dataclass(frozen=True)
class EnvSpec:
    """What an environment emits: observation fields (a dict), its action space, optional goals.

    `observation` lists every key of the observation dict, goal fields included when `goals` is
    set. `name` identifies the env in logs (returns are reported per env name).
    """

    name: str
    observation: tuple[FieldSpec, ...]
    action: ActionSpec
    goals: GoalSpec | None = None
    max_episode_steps: int | None = None
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        names = [f.name for f in self.observation]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate observation keys in {names}")
        clash = RESERVED_FIELDS.intersection(names)
        if clash:
            raise ValueError(f"observation keys {sorted(clash)} are reserved by the buffer")

    def buffer_fields(self) -> list[FieldSpec]:
        """The full row schema: observation keys, then action, reward, terminated, truncated."""
        return [
            *self.observation,
            self.action.field,
            FieldSpec(REWARD, (), np.float32),
            FieldSpec(TERMINATED, (), np.bool_),
            FieldSpec(TRUNCATED, (), np.bool_),
        ]


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
