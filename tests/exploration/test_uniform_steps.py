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
