"""The per-env ε / std multiplier: U(0, 1) by default (AMAGO), log-uniform in [floor, 1] with
``multiplier_floor`` (Ape-X's spread of ε over actors), for all three exploration classes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from amago_fast.exploration import make_exploration
from amago_fast.spaces import ActionSpec

DISCRETE = ActionSpec("discrete", n=4)
CONTINUOUS = ActionSpec("continuous", shape=(2,), low=(-1.0, -1.0), high=(1.0, 1.0))


def _scales(kind: str, floor: float, n: int = 100_000, seed: int = 0) -> np.ndarray:
    action = CONTINUOUS if kind == "gaussian" else DISCRETE
    extra = {"horizon": 51} if kind == "bilevel" else {}
    e = make_exploration(action, n, seed=seed, kind=kind, multiplier_floor=floor, **extra)
    return e.scale


@pytest.mark.parametrize("kind", ["epsilon_greedy", "bilevel", "gaussian"])
def test_floor_draws_log_uniform_multipliers(kind):
    floor = 0.01
    s = _scales(kind, floor)
    assert s.min() >= floor and s.max() <= 1.0
    # log10(u) is uniform on [-2, 0]: each decade holds half the rollouts
    frac_low_decade = np.mean(s < 0.1)
    assert frac_low_decade == pytest.approx(0.5, abs=0.01)
    assert np.mean(np.log(s)) == pytest.approx(math.log(floor) / 2, abs=0.02)
    # a quarter of the rollouts explore at most 3% of the annealed value
    assert np.mean(s <= floor ** 0.75) == pytest.approx(0.25, abs=0.01)


@pytest.mark.parametrize("kind", ["epsilon_greedy", "bilevel", "gaussian"])
def test_zero_floor_keeps_amagos_uniform_multiplier(kind):
    s = _scales(kind, 0.0)
    assert np.mean(s < 0.1) == pytest.approx(0.1, abs=0.01)
    assert np.mean(s) == pytest.approx(0.5, abs=0.01)


def test_floor_applies_to_redrawn_rollouts_and_round_trips():
    e = make_exploration(DISCRETE, 1000, seed=3, kind="bilevel", horizon=51,
                         multiplier_floor=0.001)
    e.reset_envs(np.arange(500))
    assert e.scale.min() >= 0.001
    state = e.state_dict()
    twin = make_exploration(DISCRETE, 1000, seed=9, kind="bilevel", horizon=51,
                            multiplier_floor=0.001)
    twin.load_state_dict(state)
    ids = np.arange(0, 1000, 3)
    e.reset_envs(ids)
    twin.reset_envs(ids)
    np.testing.assert_array_equal(e.scale, twin.scale)
    assert np.mean(e.scale < 0.01) == pytest.approx(1 / 3, abs=0.05)  # one decade of three


@pytest.mark.parametrize("floor", [-0.1, 1.0, 1.5, True, "0.1", float("nan")])
def test_bad_floor_is_named(floor):
    with pytest.raises(ValueError, match="multiplier_floor"):
        make_exploration(DISCRETE, 4, kind="epsilon_greedy", multiplier_floor=floor)
