"""BilevelEpsilonGreedy's late-start draws: the distribution of the step a rollout starts
exploring from, and the share of rollouts that explore a last-step decision after a stretch
that any random action spoils (a T-Maze junction), simulated with the class itself."""

from __future__ import annotations

import math

import numpy as np
import pytest

from amago_fast.exploration import BilevelEpsilonGreedy, make_exploration
from amago_fast.spaces import ActionSpec

HORIZON = 51


def _bilevel(num_envs: int, draw: str, seed: int = 0) -> BilevelEpsilonGreedy:
    return BilevelEpsilonGreedy(ActionSpec("discrete", n=4), num_envs, horizon=HORIZON,
                                anneal_steps=25_000, late_start_prob=1.0,
                                late_start_draw=draw, seed=seed)


def test_ends_draw_is_log_uniform_distance_from_either_end():
    n = 200_000
    start = _bilevel(n, "ends", seed=1).explore_from
    assert start.min() >= 0 and start.max() <= HORIZON - 1
    # P(distance d from a given end) = log((d + 1) / d) / log(H) for d < H; half the rollouts
    # count from each end, so step 0 gets half of P(d = 1) from the first-step side and (only
    # for d = H, which a U < 1 never draws) nothing from the other.
    expect_d1 = math.log(2.0) / math.log(HORIZON)
    assert np.mean(start == 0) == pytest.approx(expect_d1 / 2, abs=0.004)
    assert np.mean(start == HORIZON - 1) == pytest.approx(expect_d1 / 2, abs=0.004)
    d3 = math.log(4.0 / 3.0) / math.log(HORIZON)  # distance 3: step 2, or step H - 3
    assert np.mean(start == 2) == pytest.approx(d3 / 2, abs=0.003)
    assert np.mean(start == HORIZON - 3) == pytest.approx(d3 / 2, abs=0.003)
    # The middle third gets the log-share of distances in [H/3, 2H/3) from both ends.
    mid = np.mean((start >= HORIZON // 3) & (start < 2 * HORIZON // 3))
    assert 0.08 < mid < 0.25


def test_uniform_draw_is_uniform():
    start = _bilevel(100_000, "uniform", seed=2).explore_from
    counts = np.bincount(start, minlength=HORIZON)
    assert counts.size == HORIZON
    np.testing.assert_allclose(counts / start.size, 1.0 / HORIZON, atol=0.003)


def _junction_explored(draw: str, n: int = 20_000, seed: int = 3) -> float:
    """Share of rollouts of a policy that always goes right (action 0) whose H first actions
    are all the policy's and whose last one is an exploratory turn (1 or 3)."""
    e = _bilevel(n, draw, seed=seed)
    policy = np.zeros(n, np.int32)
    clean = np.ones(n, bool)
    for _ in range(HORIZON - 1):
        clean &= e.apply(policy) == 0
    last = e.apply(policy)
    return float(np.mean(clean & ((last == 1) | (last == 3))))


def test_ends_draw_reaches_a_last_step_decision_more_often_than_uniform():
    uniform, ends = _junction_explored("uniform"), _junction_explored("ends")
    # Simulated in the module docstring: 1.3% vs 3.2% at T = 51.
    assert 0.007 < uniform < 0.02
    assert 0.025 < ends < 0.045
    assert ends > 2 * uniform


def test_ends_draw_round_trips_and_rejects_unknown_names():
    a = _bilevel(8, "ends", seed=4)
    b = _bilevel(8, "ends", seed=9)
    b.load_state_dict(a.state_dict())
    for _ in range(3):
        a.reset_envs(np.arange(8))
        b.reset_envs(np.arange(8))
        np.testing.assert_array_equal(a.explore_from, b.explore_from)
    with pytest.raises(ValueError, match="late_start_draw"):
        _bilevel(2, "late")
    with pytest.raises(ValueError, match="late_start_draw"):
        make_exploration(ActionSpec("discrete", n=4), 2, kind="bilevel", horizon=10,
                         late_start_draw=["ends"])
