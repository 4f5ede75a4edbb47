"""Hindsight instruction relabeling: configuration and the NumPy rule (csrc/buffer/goals.h).

Everything here is the *reference* semantics: the native core (csrc/buffer/goals.h) implements
the same arithmetic and must agree bit-for-bit (tests/buffer/test_native_engine.py,
tests/buffer/test_relabel_tables.py). Random draws come from :mod:`amago_fast.buffer.rng`.

Relabeling semantics
--------------------
Let a stored trajectory piece have rows 0..T, instruction ``G = goal[row 0]`` (k goals; the
instruction is assumed constant along a trajectory) and a window of rows ``[s, s+L]``.

1. Replay the goal rule (:class:`amago_fast.spaces.GoalSpec`) over the whole piece with the
   original instruction, starting from the stored state of row 0 (``goal_active``,
   ``goal_completed``; zero/False for a fresh rollout, the carried state for a continuation
   piece after a ``max_trajectory_len`` cut). Let ``c`` be the number of goals completed by row T
   and ``r`` the row where goal ``c-1`` was completed inside the piece (0 if none was).
   Candidates are rows ``lo+1..T`` with ``lo = max(r, s)`` (achieved after the last original
   success and after the window start, ``n = T - lo`` of them); ``u = k - c`` goals are
   unreached.
2. If ``u == 0`` or ``n == 0`` nothing can be relabeled. Otherwise the window is relabeled with
   probability ``probability`` (draw 2), by strategy:

   - ``none``: never (the rule is still replayed: rewards equal the stored ones when the env
     follows the rule).
   - ``all``: ``m = min(u, n)`` distinct candidate rows, sorted; ``G[c+i] = achieved[row_i]``.
   - ``some``: like ``all`` with ``m`` uniform in ``1..min(u, n)`` (draw 3).
   - ``final``: ``G[c] = achieved[T]`` (classic HER "final").
   - ``future``: ``G[c] = achieved[t]`` with ``t`` uniform over the candidates (draw 3;
     classic HER "future", relative to the window start).

   Goals ``G[:c]`` (already completed) are never changed, so rows before ``r`` are unaffected.
3. The rule is replayed again with the new instruction from row 0 to the window's last row;
   ``goal``, ``goal_active``, ``goal_completed``, ``reward`` (``goal_reward`` on the row a goal is
   completed, else 0) and ``terminated`` (all k goals completed) are rewritten in every valid
   window row. Rows after the row on which the last goal is completed are cut: ``mask`` False
   and zero-filled, like padding. ``truncated`` and observations are untouched. Row 0 of a piece
   keeps its stored reward/terminated (they belong to the transition into the piece). If an
   achieved value repeats, the relabeled episode can end at or before the window start: the
   window then has no valid transition (rows after the end are masked as usual).

When ``relabel`` is passed to ``sample_windows`` every window goes through steps 1-3; without it
the stored rows are returned as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from amago_fast.buffer.rng import (
    DRAW_COIN,
    DRAW_COUNT,
    DRAW_ROWS,
    draw,
    uniform_float,
    uniform_int,
)
from amago_fast.spaces import REWARD, TERMINATED, GoalSpec

STRATEGIES = ("none", "some", "all", "final", "future")
STRATEGY_CODES = {name: i for i, name in enumerate(STRATEGIES)}

MatchFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class RelabelConfig:
    """How ``sample_windows`` relabels multi-goal instructions in hindsight.

    strategy: one of ``none``, ``some``, ``all`` (AMAGO's), ``final``, ``future`` (HER's); exact
        semantics in the :mod:`amago_fast.buffer.relabel` module docstring.
    probability: chance that a window with unreached goals is relabeled.
    match_fn: optional Python predicate replacing the GoalSpec's built-in exact / tolerance match
        (the slow path: called with the GIL held, once per window, gathers single-threaded). It
        receives ``achieved`` (n, k, goal_dim) and ``goals`` (n, k, goal_dim) arrays of the goal
        dtype and returns a bool array (n, k): whether ``achieved[i, j]`` reaches ``goals[i, j]``.
    """

    strategy: Literal["none", "some", "all", "final", "future"] = "all"
    probability: float = 1.0
    match_fn: MatchFn | None = None

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGY_CODES:
            raise ValueError(
                f"relabel strategy must be one of {STRATEGIES}, got {self.strategy!r}"
            )
        p = float(self.probability)
        if not (0.0 <= p <= 1.0):
            raise ValueError(f"relabel probability must be in [0, 1], got {self.probability!r}")
        object.__setattr__(self, "probability", p)
        if self.match_fn is not None and not callable(self.match_fn):
            raise TypeError("relabel match_fn must be callable or None")


def builtin_match(goals: GoalSpec, achieved: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """GoalSpec's match over the last axis: exact equality or L-inf distance <= eps (float64)."""
    if goals.match == "exact":
        return np.all(achieved == targets, axis=-1)
    diff = np.abs(achieved.astype(np.float64) - targets.astype(np.float64))
    return np.all(diff <= goals.eps, axis=-1)


def match_matrix(
    goals: GoalSpec, achieved: np.ndarray, instruction: np.ndarray, match_fn: MatchFn | None
) -> np.ndarray:
    """(n, k) bool: does achieved row i reach goal j. achieved (n, d), instruction (k, d)."""
    n, k = achieved.shape[0], instruction.shape[0]
    a = np.broadcast_to(achieved[:, None, :], (n, k, achieved.shape[1]))
    g = np.broadcast_to(instruction[None, :, :], (n, k, instruction.shape[1]))
    if match_fn is None:
        return builtin_match(goals, a, g)
    res = np.asarray(match_fn(np.ascontiguousarray(a), np.ascontiguousarray(g)))
    if res.shape != (n, k):
        raise ValueError(f"relabel match_fn returned shape {res.shape}, expected {(n, k)}")
    return res.astype(bool)


def replay(matches: np.ndarray, active0: int, k: int, last_row: int) -> tuple[np.ndarray, int]:
    """Run the goal rule on rows 1..last_row from state ``active0`` at row 0.

    ``matches`` (>= last_row+1, k) bool. Returns ``reached`` (last_row+1,) int64 (the goal index
    completed on that row, or -1) and the final active index.
    """
    reached = np.full(last_row + 1, -1, dtype=np.int64)
    active = active0
    for t in range(1, last_row + 1):
        if active >= k:
            break
        if matches[t, active]:
            reached[t] = active
            active += 1
    return reached, active


def plan_relabel(
    config: RelabelConfig,
    seed: int,
    counter: int,
    window: int,
    matches: np.ndarray,
    active0: int,
    k: int,
    T: int,
    s: int,
) -> list[tuple[int, int]]:
    """Which goals to replace: a list of (goal index, achieved row). Empty = keep instruction.

    ``matches`` is the (T+1, k) match matrix of the piece under the original instruction.
    """
    reached, c = replay(matches, active0, k, T)
    if c == active0:
        r = 0
    else:
        r = int(np.nonzero(reached == c - 1)[0][0])
    lo = max(r, s)
    u, n = k - c, T - lo
    if u <= 0 or n <= 0 or config.strategy == "none":
        return []
    if not uniform_float(draw(seed, counter, window, DRAW_COIN)) < config.probability:
        return []
    if config.strategy == "final":
        return [(c, T)]
    if config.strategy == "future":
        return [(c, lo + 1 + uniform_int(draw(seed, counter, window, DRAW_COUNT), n))]
    cap = min(u, n)
    if config.strategy == "all":
        m = cap
    else:  # some
        m = 1 + uniform_int(draw(seed, counter, window, DRAW_COUNT), cap)
    chosen: set[int] = set()
    for i, j in enumerate(range(n - m, n)):
        t = uniform_int(draw(seed, counter, window, DRAW_ROWS + i), j + 1)
        chosen.add(j if t in chosen else t)
    rows = sorted(lo + 1 + x for x in chosen)
    return [(c + i, row) for i, row in enumerate(rows)]


def relabel_window(goals: GoalSpec, config: RelabelConfig, seed: int, counter: int, b: int,
                   ring: dict[str, np.ndarray], fields: list, pos: int, T: int, s: int,
                   valid: int, out: dict[str, np.ndarray]) -> None:
    """Steps 1-3 above for window ``b`` of ``out`` (NumPy engine): the piece of T+1 rows starts
    at ring row ``pos``; the window's rows ``s .. s+valid-1`` are already gathered into
    ``out[...][b]``. Rewrites the goal fields, reward and terminated, and cuts the rows after
    the last goal is completed (mask False, zero-filled)."""
    k = goals.k
    C = next(iter(ring.values())).shape[0]
    idx = (pos + np.arange(T + 1)) % C
    ach = ring[goals.achieved_field][idx]
    instr = ring[goals.goal_field][pos].copy()
    active0 = int(ring[goals.active_field][pos])
    completed0 = ring[goals.completed_field][pos].copy()
    M = match_matrix(goals, ach, instr, config.match_fn)
    plan = plan_relabel(config, seed, counter, b, M, active0, k, T, s)
    last = s + valid - 1
    if plan:
        for j, row in plan:
            instr[j] = ach[row]
        M = match_matrix(goals, ach[: last + 1], instr, config.match_fn)
    reached, _ = replay(M, active0, k, last)
    reward = np.float32(goals.goal_reward)
    # The state of row t is the state after replaying rows 1..t; first bring it to row s.
    active = active0
    completed = completed0.copy()
    for t in range(1, s + 1):
        j = reached[t]
        if j >= 0:
            completed[j] = True
            active += 1
    cut = None
    for t in range(s, last + 1):
        w = t - s
        if t > s:
            j = reached[t]
            if j >= 0:
                completed[j] = True
                active += 1
        out[goals.goal_field][b, w] = instr
        out[goals.active_field][b, w] = active
        out[goals.completed_field][b, w] = completed
        if t >= 1:
            out[REWARD][b, w] = reward if reached[t] >= 0 else np.float32(0)
            out[TERMINATED][b, w] = active == k
            if active == k:
                cut = w + 1
                break
    if cut is not None and cut < valid:
        for f in fields:
            out[f.name][b, cut:] = 0
        out["mask"][b, cut:] = False
        out["time_index"][b, cut:] = 0
