"""BilevelEpsilonGreedy's decision rollouts: rollouts that explore only at the steps where the
policy's own action changes from its previous step, simulated with the class itself."""

from __future__ import annotations

import numpy as np
import pytest

from amago_fast.collector import Collector
from amago_fast.envs import make_env
from amago_fast.exploration import BilevelEpsilonGreedy, make_exploration
from amago_fast.spaces import ActionSpec
from tests.collector.test_collector import RowRecorder  # the collector tests' row oracle

HORIZON = 51


def _bilevel(num_envs: int, q: float, seed: int = 0, action: ActionSpec | None = None,
             **kw) -> BilevelEpsilonGreedy:
    return BilevelEpsilonGreedy(action or ActionSpec("discrete", n=4), num_envs,
                                horizon=HORIZON, anneal_steps=25_000, late_start_prob=1.0,
                                late_start_draw="ends", decision_rollout_prob=q, seed=seed, **kw)


def _policy(t: int, n: int, turn_at: int = HORIZON - 1) -> np.ndarray:
    """Right (0) along the corridor, up (1) at step `turn_at`."""
    return np.full(n, 1 if t == turn_at else 0, np.int32)


def test_decision_rollouts_explore_only_where_the_policy_changes_its_action():
    n, turn_at = 20_000, 30
    e = _bilevel(n, 1.0, seed=1)
    replaced = np.zeros((HORIZON, n), bool)
    for t in range(HORIZON):
        a = _policy(t, n, turn_at)
        replaced[t] = e.apply(a) != a
    # Steps 30 (0 -> 1) and 31 (1 -> 0) are the decision points; nowhere else is touched.
    others = np.delete(replaced, [turn_at, turn_at + 1], axis=0)
    assert not others.any()
    # At 0 env steps the first-step ε is 1.0, times U(0, 1): replaced by a draw over 4 actions
    # that differs from the policy's in 3 of 4 cases, so 0.5 * 3/4 of the rollouts.
    assert replaced[turn_at].mean() == pytest.approx(0.375, abs=0.015)
    assert replaced[turn_at + 1].mean() == pytest.approx(0.375, abs=0.015)


def test_first_step_eps_is_annealed_at_decision_points():
    n = 20_000
    e = _bilevel(n, 1.0, seed=2)
    e.advance(25_000)  # fully annealed: eps_first_end 0.05
    e.reset_envs(np.arange(n))
    hits = 0.0
    for t in range(HORIZON):
        a = _policy(t, n)
        hits += np.mean(e.apply(a) != a)
    assert hits == pytest.approx(0.05 * 0.5 * 0.75, abs=0.004)


def test_decision_eps_end_sets_the_annealed_decision_point_eps():
    n = 40_000
    e = _bilevel(n, 1.0, seed=12, decision_eps_end=0.3)
    e.advance(25_000)
    e.reset_envs(np.arange(n))
    a = np.zeros(n, np.int32)
    e.apply(a)
    turn = np.ones(n, np.int32)
    assert np.mean(e.apply(turn) != turn) == pytest.approx(0.3 * 0.5 * 0.75, abs=0.01)
    # half-way through the annealing: 1.0 + (0.3 - 1.0) / 2
    h = _bilevel(n, 1.0, seed=13, decision_eps_end=0.3)
    h.advance(12_500)
    h.reset_envs(np.arange(n))
    h.apply(a)
    assert np.mean(h.apply(turn) != turn) == pytest.approx(0.65 * 0.5 * 0.75, abs=0.01)
    for value in (1.2, -0.5, False):
        with pytest.raises(ValueError, match="decision_eps_end"):
            _bilevel(2, 0.5, decision_eps_end=value)


def test_a_new_rollout_is_not_a_decision_point():
    n = 10_000
    e = _bilevel(n, 1.0, seed=3)
    e.apply(np.zeros(n, np.int32))
    e.reset_envs(np.arange(n))
    a = np.full(n, 2, np.int32)  # differs from the previous rollout's last action
    assert not (e.apply(a) != a).any()


def test_other_rollouts_keep_the_bilevel_schedule_and_the_share_is_q():
    n = 40_000
    q = 0.3
    e = _bilevel(n, q, seed=4)
    assert e.decision_rollout.mean() == pytest.approx(q, abs=0.01)
    # A constant policy has no decision point: only the non-decision rollouts ever explore.
    touched = np.zeros(n, bool)
    for _ in range(HORIZON):
        a = np.zeros(n, np.int32)
        touched |= e.apply(a) != a
    assert not touched[e.decision_rollout].any()
    assert touched[~e.decision_rollout].mean() > 0.5


def test_turning_policy_junction_is_explored_more_often_with_decision_rollouts():
    def share(q: float) -> float:
        n = 20_000
        e = _bilevel(n, q, seed=5)
        e.advance(8_000)
        e.reset_envs(np.arange(n))
        clean = np.ones(n, bool)
        for t in range(HORIZON - 1):
            clean &= e.apply(_policy(t, n)) == 0
        return float(np.mean(clean & (e.apply(_policy(HORIZON - 1, n)) != 1)))

    plain, decision = share(0.0), share(0.5)
    # Simulated at 8k of 25k annealing steps: 4.4% of rollouts without, 15% with q = 0.5.
    assert 0.025 < plain < 0.055
    assert decision > 3 * plain


def test_multidiscrete_decision_point_is_any_component_changing():
    n = 20_000
    e = _bilevel(n, 1.0, seed=6, action=ActionSpec("multidiscrete", nvec=(3, 5)))
    base = np.zeros((n, 2), np.int32)
    assert not (e.apply(base) != base).any()
    changed = base.copy()
    changed[:, 1] = 4
    out = e.apply(changed)
    assert (out != changed).any(axis=1).mean() > 0.3


def test_env_ids_subsets_track_their_own_previous_actions():
    e = _bilevel(4, 1.0, seed=7)
    e.scale[:] = 1.0  # ε = 1 at decision points: replaced unless the draw repeats the action
    ids = np.array([1, 3])
    e.apply(np.zeros(2, np.int32), ids)
    # only envs 1 and 3 have a previous step in their rollout
    np.testing.assert_array_equal(e.rollout_t > 0, [False, True, False, True])
    e.apply(np.zeros(4, np.int32))  # envs 0 and 2 start here; 1 and 3 repeat: no decision
    np.testing.assert_array_equal(e.prev_action, [0, 0, 0, 0])
    n_replaced = 0
    for _ in range(200):
        e.apply(np.zeros(2, np.int32), ids)
        out = e.apply(np.full(2, 3, np.int32), ids)  # 0 -> 3: a decision point each time
        n_replaced += int(np.sum(out != 3))
    assert 250 < n_replaced < 350  # 400 decision points, a uniform draw differs in 3 of 4


def test_state_round_trip_and_bad_values():
    a = _bilevel(6, 0.5, seed=8)
    for t in range(5):
        a.apply(_policy(t, 6, turn_at=3))
    b = _bilevel(6, 0.5, seed=9)
    b.load_state_dict(a.state_dict())
    np.testing.assert_array_equal(a.decision_rollout, b.decision_rollout)
    np.testing.assert_array_equal(a.prev_action, b.prev_action)
    np.testing.assert_array_equal(a.rollout_t, b.rollout_t)
    for t in range(5, 20):
        np.testing.assert_array_equal(a.apply(_policy(t, 6, 12)), b.apply(_policy(t, 6, 12)))
    bad = a.state_dict()
    bad["decision_rollout"] = np.zeros(3, bool)
    before = b.state_dict()
    with pytest.raises(ValueError, match="decision_rollout has shape"):
        b.load_state_dict(bad)
    np.testing.assert_array_equal(b.decision_rollout, before["decision_rollout"])
    for value in (1.5, -0.1, True, "0.5"):
        with pytest.raises(ValueError, match="decision_rollout_prob"):
            make_exploration(ActionSpec("discrete", n=4), 2, kind="bilevel", horizon=10,
                             decision_rollout_prob=value)


def test_option_off_ignores_decision_points():
    # q = 0: a policy that changes its action at every step is explored exactly where a
    # constant one is (same seed, same random stream), so the default schedule is unchanged.
    n = 64
    a, b = _bilevel(n, 0.0, seed=10), _bilevel(n, 0.0, seed=10)
    for t in range(3 * HORIZON):
        if t % HORIZON == 0:
            a.reset_envs(np.arange(n))
            b.reset_envs(np.arange(n))
        const = np.zeros(n, np.int32)
        switching = np.full(n, t % 4, np.int32)
        out_a, out_b = a.apply(const), b.apply(switching)
        # a replaced action is the same draw in both; a kept one is each policy's own
        replaced = (out_a != const) | (out_b != switching)
        np.testing.assert_array_equal(out_a[replaced], out_b[replaced])


def test_an_observation_change_is_a_decision_point():
    n, k = 20_000, 7
    e = _bilevel(n, 1.0, seed=11)
    replaced = np.zeros((HORIZON, n), bool)
    for t in range(HORIZON):
        obs = {"observation": np.full((n, 2), 1.0 if t >= k else 0.0, np.float32)}
        a = np.zeros(n, np.int32)  # the policy never changes its action
        replaced[t] = e.apply(a, None, obs) != a
    assert not np.delete(replaced, k, axis=0).any()
    assert replaced[k].mean() == pytest.approx(0.375, abs=0.015)
    # observations that do not match the first ones: one line, nothing recorded
    before = {key: v.copy() for key, v in e.prev_obs.items()}
    with pytest.raises(ValueError, match="observation 'observation' of shape"):
        e.apply(np.zeros(n, np.int32), None, {"observation": np.zeros((n, 3), np.float32)})
    np.testing.assert_array_equal(e.prev_obs["observation"], before["observation"])


class _AlwaysRight:
    """The policy that walks the T-Maze corridor and walks on at the junction."""

    def init_state(self, num_envs):
        return None

    def reset_state(self, state, env_ids):
        return state

    def act(self, rows, state, sample=True, env_ids=None):
        n = len(rows["time_index"])
        return np.zeros(n, np.int32), state


def test_collector_explores_decision_rollouts_where_the_tmaze_observation_changes():
    # Real collector, real passive T-Maze (corridor 10): the observation changes after the cue
    # (step 1) and at the junction (step 10); a policy that always goes right is replaced
    # only there, and at the junction often enough to find the arms.
    n, corridor = 16, 10
    env = make_env("tmaze-passive", n, seed=0, corridor_length=corridor)
    expl = BilevelEpsilonGreedy(env.spec.action, n, horizon=corridor + 1, anneal_steps=0,
                                eps_first_end=1.0, decision_rollout_prob=1.0, seed=3)
    rec = RowRecorder(n)
    Collector(env, _AlwaysRight(), rec, expl, seed=0).collect(n * 400)
    explored_at: dict[int, int] = {}
    for _, rows in rec.trajectories:
        actions = [int(r["action"]) for r in rows[1:]]
        for t, a in enumerate(actions):
            if a != 0:
                explored_at[t] = explored_at.get(t, 0) + 1
                break  # a spoiled corridor: later steps are not the policy's walk any more
    assert set(explored_at) <= {1, corridor}
    assert explored_at.get(corridor, 0) > 20 and explored_at.get(1, 0) > 20
