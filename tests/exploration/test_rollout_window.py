"""The rollout-time window of EpsilonGreedy (exploration only at chosen steps of each rollout),
used by the T-Maze preset and learning check."""

from __future__ import annotations

import numpy as np
import pytest

from amago_fast.exploration import EpsilonGreedy
from amago_fast.spaces import ActionSpec

ACT = ActionSpec("discrete", n=4)


def _replaced_steps(expl: EpsilonGreedy, steps: int, env_ids=None) -> np.ndarray:
    """(steps, n) bool: whether each env's action was replaced at each step. The policy action
    is -1 (never a valid random draw), so any replacement is visible."""
    n = expl.num_envs if env_ids is None else len(env_ids)
    out = []
    for _ in range(steps):
        a = expl.apply(np.full(n, -1, np.int32), env_ids)
        out.append(a != -1)
    return np.stack(out)


def test_window_explores_only_first_and_last_steps():
    expl = EpsilonGreedy(ACT, 16, eps_start=1.0, eps_end=1.0, anneal_steps=0, randomize=False,
                         horizon=10, explore_first=2, explore_last=3)
    rep = _replaced_steps(expl, 10)
    assert not rep[2:7].any()
    # eps = 1: every step in the window draws a random action (never the policy's -1)
    assert rep[:2].all() and rep[7:].all()


def test_window_restarts_per_env_on_reset_and_tracks_async_ids():
    expl = EpsilonGreedy(ACT, 4, eps_start=1.0, eps_end=1.0, anneal_steps=0, randomize=False,
                         horizon=5, explore_last=1)
    _replaced_steps(expl, 4)  # every env at rollout step 4 (the last one) now
    expl.reset_envs(np.array([1, 3]))
    rep = _replaced_steps(expl, 1)[0]
    np.testing.assert_array_equal(rep, [True, False, True, False])
    # async: only envs 0 and 2 act; their counts move, 1 and 3 stay at step 1
    _replaced_steps(expl, 1, np.array([0, 2]))
    np.testing.assert_array_equal(expl.rollout_t, [6, 1, 6, 1])


def test_no_window_is_plain_per_step_eps_greedy():
    """Without a window every step explores: replacements match a NumPy re-derivation of the
    same draws (multipliers, then per step a uniform draw and a random action)."""
    n, eps = 64, 0.3
    expl = EpsilonGreedy(ACT, n, eps_start=eps, eps_end=eps, anneal_steps=0, seed=5)
    rng = np.random.default_rng(5)
    scale = rng.random(n)
    for _ in range(30):
        want_replace = rng.random(n) < eps * scale
        want_rand = rng.integers(0, 4, size=n, dtype=np.int32)
        got = expl.apply(np.full(n, 7, np.int32))
        np.testing.assert_array_equal(got, np.where(want_replace, want_rand, 7))


def test_window_state_round_trip():
    a = EpsilonGreedy(ACT, 3, horizon=6, explore_last=2, seed=1)
    _replaced_steps(a, 3)
    b = EpsilonGreedy(ACT, 3, horizon=6, explore_last=2, seed=99)
    b.load_state_dict(a.state_dict())
    np.testing.assert_array_equal(b.rollout_t, [3, 3, 3])
    np.testing.assert_array_equal(_replaced_steps(a, 4), _replaced_steps(b, 4))


@pytest.mark.parametrize("kwargs, match", [
    ({"explore_last": 2}, "need the rollout horizon"),
    ({"horizon": 0, "explore_last": 1}, "horizon must be"),
    ({"horizon": 5}, "no step would ever explore"),
    ({"horizon": 5, "explore_first": -1}, "explore_first"),
    ({"horizon": 5, "explore_last": 1.5}, "explore_last"),
])
def test_window_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EpsilonGreedy(ACT, 2, **kwargs)


def test_window_bad_state_leaves_state_unchanged():
    a = EpsilonGreedy(ACT, 3, horizon=6, explore_last=2)
    _replaced_steps(a, 2)
    bad = {**a.state_dict(), "rollout_t": np.zeros(5)}
    before = a.state_dict()
    with pytest.raises(ValueError, match="rollout_t"):
        a.load_state_dict(bad)
    np.testing.assert_array_equal(a.rollout_t, before["rollout_t"])
    assert a.steps == before["steps"]
