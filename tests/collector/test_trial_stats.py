"""Meta-RL trial envs: every trial task builds through make_trial_env, and the collector's
trial statistics count finished inner episodes (success share, per-episode returns)."""

from __future__ import annotations

import numpy as np
import pytest

from amago_fast.collector import Collector
from amago_fast.envs import make_env
from amago_fast.envs.trials import TRIAL_TASKS, make_trial_env


@pytest.mark.parametrize("task", sorted(TRIAL_TASKS))
@pytest.mark.parametrize("limits", [dict(episodes_per_trial=3),
                                    dict(episodes_per_trial=3, trial_max_steps=40),
                                    dict(episodes_per_trial=None, trial_max_steps=40)])
def test_every_trial_task_builds_and_steps(task, limits):
    if task == "bandit" and limits["episodes_per_trial"] is None:
        with pytest.raises(ValueError, match="episodes_per_trial >= 2"):
            make_trial_env(task, 4, **limits)
        return
    env = make_trial_env(task, 4, seed=1, **limits)
    assert env.trial_mode
    env.reset()
    rng = np.random.default_rng(0)
    ends = 0
    for _ in range(400):
        a = rng.integers(0, env.spec.action.n, 4).astype(np.int32)
        obs, r, te, tr, info = env.step(a)
        assert obs["episode_start"].shape == (4, 1)
        if (te | tr).any():
            ends += int((te | tr).sum())
            done = te | tr
            s = info["success"][done]
            assert ((s >= 0) & (s <= 1) | np.isnan(s)).all()
    assert ends > 0


class _KeyDoorOracle:
    """Reads the hidden key and door: every inner episode it finishes is a success (return 2)."""

    def __init__(self, env):
        self.env = env

    def init_state(self, n):
        return None

    def reset_state(self, state, ids):
        return state

    def act(self, rows, state, sample=True, env_ids=None):
        e = self.env
        target = np.where(e.has_key[:, None], e.door, e.key)
        d = target - e.pos
        a = np.where(d[:, 1] > 0, 0, np.where(d[:, 0] > 0, 1, np.where(
            d[:, 1] < 0, 2, np.where(d[:, 0] < 0, 3, 4))))
        return a.astype(np.int32), state


def test_trial_success_is_the_share_of_successful_inner_episodes():
    """Dark Key-To-Door trials are cut at 500 steps; an oracle succeeds in every inner episode
    it finishes. The success statistic is the share of successful inner episodes (1.0, not
    "the trial's last step ended a success"), and the per-episode returns hold finished inner
    episodes only (the one cut off by the trial limit would show a partial return)."""
    env = make_env("key-to-door", 4, seed=0)
    stats = Collector(env, _KeyDoorOracle(env)).collect(4 * 1100)
    assert stats["episodes"] >= 8
    assert stats["success"] == 1.0
    ter = stats["trial_episode_returns"]
    finished = ter[np.isfinite(ter)]
    assert finished.size >= 8 * 10
    np.testing.assert_array_equal(finished, 2.0)
    assert stats["trial_first_episode_return"] == 2.0
    assert stats["trial_later_episode_return"] == 2.0


def test_trial_success_share_with_a_mixed_policy():
    """Bandit trials of 4 one-pull episodes, arm 0 pulled in episodes 0-1 and arm 1 after: a
    trial's success value is the share of its pulls on a best arm, checked against the arm
    probabilities the env drew."""
    env = make_trial_env("bandit", 3, episodes_per_trial=4, seed=2, num_arms=2)
    env.reset()
    for _ in range(6):
        best = env.probs.argmax(axis=1)
        expect = np.zeros(3)
        for k in range(4):
            arm = 0 if k < 2 else 1
            expect += best == arm
            obs, r, te, tr, info = env.step(np.full(3, arm, np.int32))
        assert te.all()
        np.testing.assert_allclose(info["success"], expect / 4)
        assert np.isfinite(info["episode_returns"]).sum(1).tolist() == [4, 4, 4]
        env.step(np.zeros(3, np.int32))  # the next-step autoreset row


def test_trial_state_without_success_arrays_still_loads():
    """Checkpoints written before per-episode successes were tracked restore (no successes yet
    in the open trials); a state missing any other array is still rejected."""
    env = make_env("key-to-door", 2, seed=0)
    env.reset()
    for _ in range(30):
        env.step(np.zeros(2, np.int32))
    state = env.state_dict()
    old = dict(state, arrays={k: v for k, v in state["arrays"].items()
                              if k != "episode_successes"})
    twin = make_env("key-to-door", 2, seed=5)
    twin.load_state_dict(old)
    np.testing.assert_array_equal(twin.pos, env.pos)
    assert not twin.episode_successes.any()
    broken = dict(state, arrays={k: v for k, v in state["arrays"].items() if k != "pos"})
    with pytest.raises(ValueError, match="missing arrays"):
        twin.load_state_dict(broken)
