"""GaussianNoise's start steps: uniform random actions over the action box for the first
`uniform_steps` env steps, the policy's action plus annealed noise after."""

from __future__ import annotations

import numpy as np
import pytest

from amago_fast.exploration import GaussianNoise, make_exploration
from amago_fast.spaces import ActionSpec

BOX = ActionSpec("continuous", shape=(2,), low=(-1.0, 0.0), high=(1.0, 4.0))


def test_uniform_until_the_step_count_then_policy_plus_noise():
    e = make_exploration(BOX, 4000, seed=1, kind="gaussian", std_start=0.1, std_end=0.1,
                         randomize=False, uniform_steps=8000)
    policy = np.tile(np.array([[0.5, 3.0]], np.float32), (4000, 1))
    a = e.apply(policy)
    assert a.min(0) == pytest.approx([-1.0, 0.0], abs=0.01)
    assert a.max(0) == pytest.approx([1.0, 4.0], abs=0.01)
    assert a.mean(0) == pytest.approx([0.0, 2.0], abs=0.05)  # the box's centre, not the policy
    e.advance(4000)
    assert e.apply(policy).mean(0) == pytest.approx([-0.0, 2.0], abs=0.05)  # still < 8000
    e.advance(4000)
    after = e.apply(policy)
    assert after.mean(0) == pytest.approx([0.5, 3.0], abs=0.02)
    assert after.std(0) == pytest.approx([0.1, 0.2], rel=0.1)  # std x half-range
    # resumed from its state, it continues with the same phase and draws
    twin = GaussianNoise(BOX, 4000, std_start=0.1, std_end=0.1, randomize=False,
                         uniform_steps=8000, seed=9)
    twin.load_state_dict(e.state_dict())
    np.testing.assert_array_equal(twin.apply(policy), e.apply(policy))


@pytest.mark.parametrize("bad", [-1, 2.5, True, "100"])
def test_bad_uniform_steps_is_named(bad):
    with pytest.raises(ValueError, match="uniform_steps"):
        GaussianNoise(BOX, 2, uniform_steps=bad)


def test_uniform_rollouts_are_drawn_per_rollout_and_act_uniformly_throughout():
    n = 4000
    e = make_exploration(BOX, n, seed=3, kind="gaussian", std_start=0.0, std_end=0.0,
                         randomize=False, uniform_rollout_prob=0.25)
    e.advance(10_000_000)  # long after any start steps: the option holds for the whole run
    policy = np.tile(np.array([[0.5, 3.0]], np.float32), (n, 1))
    flags = e.uniform_rollout.copy()
    assert flags.mean() == pytest.approx(0.25, abs=0.03)
    a = e.apply(policy)
    np.testing.assert_array_equal(a[~flags], policy[~flags])  # std 0: the policy's own action
    assert a[flags].mean(0) == pytest.approx([0.0, 2.0], abs=0.1)  # the box's centre
    assert a[flags].min(0) == pytest.approx([-1.0, 0.0], abs=0.02)
    assert a[flags].max(0) == pytest.approx([1.0, 4.0], abs=0.02)
    # the flag lasts the rollout: the same envs act uniformly at the next step
    again = e.apply(policy)
    np.testing.assert_array_equal(again[~flags], policy[~flags])
    # a subset of env ids sees its own flags
    ids = np.arange(0, n, 7)
    sub = e.apply(policy[ids], ids)
    np.testing.assert_array_equal(sub[~flags[ids]], policy[ids][~flags[ids]])
    # new rollouts redraw their flags; the others keep theirs
    e.reset_envs(np.arange(n // 2))
    np.testing.assert_array_equal(e.uniform_rollout[n // 2:], flags[n // 2:])
    assert (e.uniform_rollout[: n // 2] != flags[: n // 2]).mean() == pytest.approx(
        2 * 0.25 * 0.75, abs=0.05)
    # resumed from its state: the same flags and the same draws
    twin = GaussianNoise(BOX, n, std_start=0.0, std_end=0.0, randomize=False,
                         uniform_rollout_prob=0.25, seed=99)
    twin.load_state_dict(e.state_dict())
    np.testing.assert_array_equal(twin.uniform_rollout, e.uniform_rollout)
    np.testing.assert_array_equal(twin.apply(policy), e.apply(policy))


def test_without_uniform_rollouts_the_draws_are_unchanged():
    """p = 0 draws nothing extra: a run without the option acts as it did before it existed."""
    kw = dict(std_start=0.3, std_end=0.1, anneal_steps=100, seed=5)
    a, b = GaussianNoise(BOX, 16, **kw), GaussianNoise(BOX, 16, uniform_rollout_prob=0.0, **kw)
    policy = np.zeros((16, 2), np.float32)
    for _ in range(3):
        a.reset_envs(np.arange(8))
        b.reset_envs(np.arange(8))
        np.testing.assert_array_equal(a.apply(policy), b.apply(policy))
    state = a.state_dict()
    del state["uniform_rollout"]  # a state saved before the option existed
    b.load_state_dict(state)
    assert not b.uniform_rollout.any()


@pytest.mark.parametrize("bad", [-0.1, 1.5, True, "0.1", float("nan")])
def test_bad_uniform_rollout_prob_is_named(bad):
    with pytest.raises(ValueError, match="uniform_rollout_prob"):
        GaussianNoise(BOX, 2, uniform_rollout_prob=bad)
