"""BilevelEpsilonGreedy: ε annealed over training and over each rollout's steps, per-env
multipliers, late exploration starts, save/restore, bad arguments; make_exploration's kinds."""

from __future__ import annotations

import numpy as np
import pytest

from amago_fast.exploration import (
    BilevelEpsilonGreedy,
    EpsilonGreedy,
    GaussianNoise,
    make_exploration,
)
from amago_fast.spaces import ActionSpec


def _discrete(n: int = 4) -> ActionSpec:
    return ActionSpec("discrete", n=n)


def _fixed(**kw) -> BilevelEpsilonGreedy:
    args = dict(horizon=10, eps_first_start=1.0, eps_first_end=0.2, eps_last_start=0.6,
                eps_last_end=0.0, anneal_steps=100, randomize=False, seed=0)
    args.update(kw)
    return BilevelEpsilonGreedy(_discrete(), 3, **args)


def test_eps_is_linear_in_rollout_step_and_training_steps():
    e = _fixed()
    np.testing.assert_allclose(e.per_env(), [1.0, 1.0, 1.0])  # t = 0, no training yet
    acts = np.zeros(3, np.int32)
    for _ in range(5):
        e.apply(acts)
    np.testing.assert_allclose(e.per_env(), [0.8, 0.8, 0.8])  # halfway: (1.0 + 0.6) / 2
    for _ in range(20):  # past the horizon: the last value
        e.apply(acts)
    np.testing.assert_allclose(e.per_env(), [0.6, 0.6, 0.6])
    e.advance(50)  # half annealed: first 0.6, last 0.3
    e.reset_envs(np.array([0]))
    np.testing.assert_allclose(e.per_env(), [0.6, 0.3, 0.3])
    e.advance(1000)  # fully annealed
    np.testing.assert_allclose(e.per_env(np.array([0, 2])), [0.2, 0.0])
    assert e.current() == pytest.approx(0.2)


def test_randomized_multiplier_scales_every_step():
    e = _fixed(randomize=True, seed=3)
    u = e.scale.copy()
    assert (u > 0).all() and (u < 1).all()
    np.testing.assert_allclose(e.per_env(), u)


def test_replacement_rate_follows_the_schedule():
    """Envs at ε = 1 replace ~3/4 of actions with another one of 4; at ε = 0 none."""
    e = BilevelEpsilonGreedy(_discrete(), 2000, horizon=4, eps_first_start=1.0,
                             eps_first_end=1.0, eps_last_start=0.0, eps_last_end=0.0,
                             anneal_steps=10, randomize=False, seed=1)
    policy = np.zeros(2000, np.int32)
    first = e.apply(policy)  # t = 0: ε 1.0
    assert 0.7 < np.mean(first != 0) < 0.8
    for _ in range(3):
        e.apply(policy)
    last = e.apply(policy)  # t = 4 = horizon: ε 0
    assert (last == 0).all()


def test_late_start_explores_only_from_the_drawn_step():
    e = _fixed(late_start_prob=1.0, seed=5, horizon=50)
    start = e.explore_from.copy()
    assert ((start >= 0) & (start < 50)).all()
    acts = np.zeros(3, np.int32)
    for t in range(50):
        eps = e.per_env()
        assert ((eps == 0) == (t < start)).all()
        e.apply(acts)
    e.reset_envs(np.array([0, 1, 2]))
    assert (e.rollout_t == 0).all()


def test_state_round_trip_continues_identically():
    a = _fixed(randomize=True, late_start_prob=0.5, seed=7)
    acts = np.zeros(3, np.int32)
    for _ in range(4):
        a.apply(acts)
    a.advance(30)
    state = a.state_dict()
    b = _fixed(randomize=True, late_start_prob=0.5, seed=99)
    b.load_state_dict(state)
    for _ in range(20):
        np.testing.assert_array_equal(a.apply(acts), b.apply(acts))
        a.reset_envs(np.array([1]))
        b.reset_envs(np.array([1]))
    with pytest.raises(ValueError, match="epsilon_greedy"):
        b.load_state_dict({**state, "kind": "gaussian"})


@pytest.mark.parametrize("kwargs,match", [
    ({"horizon": 0}, "horizon"),
    ({"horizon": True}, "horizon"),
    ({"eps_last_start": 1.5}, "eps_last_start"),
    ({"eps_first_end": "0.1"}, "eps_first_end"),
    ({"late_start_prob": -0.1}, "late_start_prob"),
])
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _fixed(**kwargs)


def test_make_exploration_kinds():
    disc = _discrete()
    cont = ActionSpec("continuous", shape=(1,))
    assert isinstance(make_exploration(disc, 2, horizon=5, kind="bilevel"), BilevelEpsilonGreedy)
    assert type(make_exploration(disc, 2)) is EpsilonGreedy
    assert type(make_exploration(disc, 2, kind="epsilon_greedy")) is EpsilonGreedy
    with pytest.raises(ValueError, match="kind must be one of"):
        make_exploration(disc, 2, kind="boltzmann")
    assert isinstance(make_exploration(cont, 2), GaussianNoise)
    with pytest.raises(ValueError, match="discrete action space"):
        make_exploration(cont, 2, kind="bilevel", horizon=5)
