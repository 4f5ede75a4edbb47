"""Collector: every stored trajectory is the env's real episode, async ids, faults, resume."""

from __future__ import annotations

import numpy as np
import pytest

from amago_fast.buffer import TrajectoryBuffer
from amago_fast.collector import Collector, RandomPolicy
from amago_fast.envs import EnvPoolEnv, VectorEnv, make_env
from amago_fast.exploration import EpsilonGreedy, GaussianNoise, make_exploration
from amago_fast.spaces import ActionSpec

pytestmark = pytest.mark.filterwarnings("ignore:.*precision lowered.*")


class RowRecorder:
    """Test oracle for the buffer calls: rebuilds trajectories per the DESIGN row layout."""

    def __init__(self, num_envs: int) -> None:
        self.n = num_envs
        self.open: dict[int, list[dict] | None] = {i: None for i in range(num_envs)}
        self.trajectories: list[tuple[int, list[dict]]] = []
        self.calls: list[tuple[str, list[int], dict]] = []

    def _ids(self, env_ids):
        return list(range(self.n)) if env_ids is None else [int(i) for i in env_ids]

    def reset_envs(self, rows, env_ids=None):
        ids = self._ids(env_ids)
        self.calls.append(("reset", ids, {k: v.copy() for k, v in rows.items()}))
        for j, i in enumerate(ids):
            if self.open[i] is not None and len(self.open[i]) > 1:
                self.trajectories.append((i, self.open[i]))  # cut, like the buffer
            self.open[i] = [{k: np.array(v[j]) for k, v in rows.items()}]

    def append_step(self, rows, env_ids=None):
        ids = self._ids(env_ids)
        self.calls.append(("append", ids, {k: np.array(v, copy=True) for k, v in rows.items()}))
        for j, i in enumerate(ids):
            assert self.open[i] is not None, f"append to env {i} without an open rollout"
            row = {k: np.array(v[j]) for k, v in rows.items()}
            self.open[i].append(row)
            if row["terminated"] or row["truncated"]:
                self.trajectories.append((i, self.open[i]))
                self.open[i] = None


class Tee:
    """Sends the collector's calls to the real buffer and to the recorder."""

    def __init__(self, *sinks):
        self.sinks = sinks

    def reset_envs(self, rows, env_ids=None):
        for s in self.sinks:
            s.reset_envs(rows, env_ids)

    def append_step(self, rows, env_ids=None):
        for s in self.sinks:
            s.append_step(rows, env_ids)


class LoggingPolicy(RandomPolicy):
    """RandomPolicy that remembers what it was asked and what it answered."""

    def __init__(self, spec, seed=0):
        super().__init__(spec, seed)
        self.log: list[tuple[np.ndarray | None, dict, np.ndarray]] = []

    def act(self, rows, state, sample=True, env_ids=None):
        actions, state = super().act(rows, state, sample, env_ids)
        self.log.append((None if env_ids is None else np.array(env_ids),
                         {k: np.array(v, copy=True) for k, v in rows.items()}, actions.copy()))
        return actions, state


def hand_episodes(env: VectorEnv, actions: list[np.ndarray]):
    """Step `env` by hand with `actions`; return the complete episodes per env as row lists."""
    obs = env.reset()
    n = env.num_envs
    cur = [[{k: v[i] for k, v in obs.items()}] for i in range(n)]
    done_eps = []
    pending = np.zeros(n, bool)
    for a in actions:
        obs, r, te, tr, _ = env.step(a)
        for i in range(n):
            if pending[i]:
                cur[i] = [{k: v[i] for k, v in obs.items()}]
                continue
            row = {k: v[i] for k, v in obs.items()}
            row.update(action=a[i], reward=r[i], terminated=te[i], truncated=tr[i])
            cur[i].append(row)
            if te[i] or tr[i]:
                done_eps.append((i, cur[i]))
        pending = te | tr
    return done_eps


def assert_same_trajectory(got, want, keys):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        for k in keys:
            if k in w:
                np.testing.assert_array_equal(g[k], w[k], err_msg=k)


def test_sync_trajectories_equal_hand_stepped_episodes():
    n = 4
    env = EnvPoolEnv("CartPole-v1", n, seed=11)
    real = TrajectoryBuffer.from_env_spec(env.spec, 20_000, n)
    rec = RowRecorder(n)
    policy = LoggingPolicy(env.spec, seed=2)
    col = Collector(env, policy, Tee(real, rec))
    stats = col.collect(600)
    actions = [a for _, _, a in policy.log]
    want = hand_episodes(EnvPoolEnv("CartPole-v1", n, seed=11), actions)
    assert len(want) == len(rec.trajectories) == stats["episodes"] > 10
    key = lambda e: (e[0], len(e[1]), float(e[1][0]["observation"][0]))  # noqa: E731
    got_sorted = sorted(rec.trajectories, key=key)
    for (gi, g), (wi, w) in zip(got_sorted, sorted(want, key=key)):
        assert gi == wi
        assert_same_trajectory(g, w, ["observation", "action", "reward", "terminated",
                                      "truncated"])
        assert not any(r["terminated"] or r["truncated"] for r in g[1:-1])
    # stats agree with the trajectories
    lengths = sorted(len(t) - 1 for _, t in rec.trajectories)
    assert sorted(stats["returns"]) == sorted(float(sum(r["reward"] for r in t[1:]))
                                              for _, t in rec.trajectories)
    assert stats["length"] == pytest.approx(np.mean(lengths))
    # the real buffer holds exactly the committed rows
    assert real.num_trajectories == len(rec.trajectories)
    assert len(real) == sum(len(t) for _, t in rec.trajectories)
    # the rows the policy saw are training rows: previous action/reward, time_index
    _, rows0, a0 = policy.log[0]
    assert (rows0["time_index"] == 0).all() and (rows0["action"] == 0).all()
    _, rows1, _ = policy.log[1]
    np.testing.assert_array_equal(rows1["action"], a0)
    assert (rows1["time_index"] == 1).all() and (rows1["reward"] == 1).all()


def test_async_envpool_trajectories_match_per_env_replay():
    n, b = 6, 3
    env = EnvPoolEnv("CartPole-v1", n, seed=5, batch_size=b)
    rec = RowRecorder(n)
    policy = LoggingPolicy(env.spec, seed=1)
    col = Collector(env, policy, rec)
    col.collect(500)
    per_env_actions = {i: [] for i in range(n)}
    for ids, _, acts in policy.log:
        assert ids.shape == (b,)
        for i, a in zip(ids, acts):
            per_env_actions[int(i)].append(a)
    # Envs are independent: replay each env's own action sequence in a sync pool.
    steps = max(len(v) for v in per_env_actions.values())
    seq = [np.array([per_env_actions[i][t] if t < len(per_env_actions[i]) else 0
                     for i in range(n)], np.int32) for t in range(steps)]
    want = hand_episodes(EnvPoolEnv("CartPole-v1", n, seed=5), seq)
    want_by_env = {i: [e for j, e in want if j == i] for i in range(n)}
    got_by_env = {i: [t for j, t in rec.trajectories if j == i] for i in range(n)}
    total = 0
    for i in range(n):
        got = got_by_env[i]
        assert len(got) >= 1
        for g, w in zip(got, want_by_env[i][: len(got)]):
            assert_same_trajectory(g, w, ["observation", "action", "reward", "terminated"])
        total += len(got)
    assert total > 10


def test_policy_without_env_ids_rejected_for_async():
    class PlainPolicy:
        def init_state(self, n):
            return None

        def reset_state(self, s, ids):
            return s

        def act(self, rows, state, sample):
            return np.zeros(len(rows["time_index"]), np.int32), state

    env = EnvPoolEnv("CartPole-v1", 4, seed=0, batch_size=2)
    with pytest.raises(ValueError, match="env_ids"):
        Collector(env, PlainPolicy())
    Collector(EnvPoolEnv("CartPole-v1", 2, seed=0), PlainPolicy()).collect(10)


def test_trial_env_is_one_trajectory_with_episode_starts():
    env = make_env("bandit", 4, seed=0, episodes_per_trial=5)
    buf = TrajectoryBuffer.from_env_spec(env.spec, 10_000, 4)
    rec = RowRecorder(4)
    col = Collector(env, RandomPolicy(env.spec), Tee(buf, rec))
    stats = col.collect(60)
    for _, t in rec.trajectories:
        assert len(t) == 6  # 5 one-pull episodes -> 5 transitions, 6 rows
        flags = [float(r["episode_start"][0]) for r in t]
        assert flags == [1, 1, 1, 1, 1, 0]
    ter = stats["trial_episode_returns"]
    assert ter.shape == (stats["episodes"], 5)
    np.testing.assert_allclose(ter.sum(axis=1), stats["returns"])
    assert stats["trial_first_episode_return"] == pytest.approx(ter[:, 0].mean())
    assert stats["trial_later_episode_return"] == pytest.approx(ter[:, 1:].mean())


class FaultyEnv(VectorEnv):
    """A real TMaze whose step `fault_at` returns NaN observations or raises."""

    def __init__(self, mode, fault_at, num_envs=3):
        self.inner = make_env("tmaze-passive", num_envs, seed=0, corridor_length=3)
        self.spec, self.num_envs = self.inner.spec, num_envs
        self.mode, self.fault_at, self.t = mode, fault_at, 0

    def reset(self, seed=None):
        return self.inner.reset(seed)

    def step(self, actions, env_ids=None):
        out = self.inner.step(actions)
        self.t += 1
        if self.t == self.fault_at:
            if self.mode == "raise":
                raise OSError("simulator crashed")
            out[0]["observation"][1, 0] = np.nan
        return out


def test_nan_observation_rejected_buffer_untouched():
    env = FaultyEnv("nan", fault_at=14)
    buf = TrajectoryBuffer.from_env_spec(env.spec, 10_000, 3)
    col = Collector(env, RandomPolicy(env.spec), buf)
    col.collect(15)  # < 14 vector steps: no fault yet
    assert env.t < 14
    with pytest.raises(ValueError, match="non-finite"):
        col.collect(30)
    assert env.t == 14
    # A twin without the fault, stopped after step 13: exactly the same data was stored.
    twin_env = FaultyEnv("none", fault_at=-1)
    twin_buf = TrajectoryBuffer.from_env_spec(env.spec, 10_000, 3)
    twin = Collector(twin_env, RandomPolicy(env.spec), twin_buf)
    while twin_env.t < 13:
        twin.collect(1)
    assert twin_env.t == 13
    assert buf.total_steps_added == twin_buf.total_steps_added
    assert (len(buf), buf.num_trajectories) == (len(twin_buf), twin_buf.num_trajectories)
    committed = len(buf)
    col.collect(30)  # restarts the rollouts and goes on
    assert len(buf) >= committed


def test_nan_observation_flagged():
    env = FaultyEnv("nan", fault_at=3)
    rec = RowRecorder(3)
    col = Collector(env, RandomPolicy(env.spec), rec, nan_policy="flag")
    stats = col.collect(30)
    assert stats["nonfinite_steps"] == 1
    for _kind, _, rows in rec.calls:
        if "observation" in rows:
            assert np.isfinite(rows["observation"]).all()


def test_env_raising_mid_rollout_keeps_committed_data():
    env = FaultyEnv("raise", fault_at=20)
    buf = TrajectoryBuffer.from_env_spec(env.spec, 10_000, 3)
    col = Collector(env, RandomPolicy(env.spec), buf)
    col.collect(45)
    before = (len(buf), buf.num_trajectories)
    with pytest.raises(RuntimeError, match="simulator crashed"):
        col.collect(60)
    assert buf.num_trajectories >= before[1] and len(buf) >= before[0]
    n_before = buf.num_trajectories
    col.collect(30)
    assert buf.num_trajectories >= n_before


def test_bad_policy_action_shape_is_a_clear_error():
    class BadPolicy(RandomPolicy):
        def act(self, rows, state, sample=True, env_ids=None):
            return np.zeros((len(rows["time_index"]), 2), np.int32), state

    env = make_env("tmaze-passive", 2, corridor_length=3)
    rec = RowRecorder(2)
    col = Collector(env, BadPolicy(env.spec), rec)
    with pytest.raises(ValueError, match="policy for tmaze-passive: actions have shape"):
        col.collect(4)
    assert not any(kind == "append" for kind, _, _ in rec.calls)


def test_policy_int64_actions_stored_as_int32():
    class Int64Policy(RandomPolicy):
        def act(self, rows, state, sample=True, env_ids=None):
            a, state = super().act(rows, state, sample, env_ids)
            return a.astype(np.int64), state

    env = make_env("tmaze-passive", 2, corridor_length=3)
    buf = TrajectoryBuffer.from_env_spec(env.spec, 1000, 2)
    Collector(env, Int64Policy(env.spec), buf).collect(20)
    assert buf.num_trajectories >= 4


def test_resume_continues_identically():
    def build(seed):
        env = make_env("tmaze-passive", 4, seed=seed, corridor_length=4)
        expl = EpsilonGreedy(env.spec.action, 4, anneal_steps=200, seed=seed)
        rec = RowRecorder(4)
        return Collector(env, RandomPolicy(env.spec, seed=seed), rec, expl, seed=seed), rec

    a, rec_a = build(0)
    a.collect(37)
    sd = a.state_dict()
    mark = len(rec_a.calls)
    a.collect(120)
    b, rec_b = build(99)
    b.load_state_dict(sd)
    b.collect(120)
    calls_a = rec_a.calls[mark:]
    assert len(calls_a) == len(rec_b.calls) > 20
    for (ka, ia, ra), (kb, ib, rb) in zip(calls_a, rec_b.calls):
        assert ka == kb and ia == ib
        for k in ra:
            np.testing.assert_array_equal(ra[k], rb[k])


def test_evaluate_writes_nothing_and_training_resumes():
    env = make_env("tmaze-passive", 4, seed=0, corridor_length=3)
    buf = TrajectoryBuffer.from_env_spec(env.spec, 10_000, 4)
    col = Collector(env, RandomPolicy(env.spec), buf, make_exploration(env.spec.action, 4))
    col.collect(20)
    added = buf.total_steps_added
    ev = col.evaluate(10)
    assert ev["episodes"] >= 10 and buf.total_steps_added == added
    assert ev["per_env"]["tmaze-passive"]["episodes"] == ev["episodes"]
    col.collect(20)
    assert buf.total_steps_added > added
    other = make_env("tmaze-passive", 2, seed=1, corridor_length=3)
    ev2 = Collector(env, RandomPolicy(env.spec), buf, eval_env=other).evaluate(3)
    assert ev2["episodes"] >= 3


# ----------------------------------------------------------------------------- exploration
def test_epsilon_greedy_schedule_scales_and_state():
    spec = ActionSpec("discrete", n=5)
    e = EpsilonGreedy(spec, 1000, eps_start=1.0, eps_end=0.1, anneal_steps=100, seed=0)
    assert e.current() == 1.0
    e.advance(50)
    assert abs(e.current() - 0.55) < 1e-9
    e.advance(500)
    assert abs(e.current() - 0.1) < 1e-9
    assert 0.4 < e.scale.mean() < 0.6 and e.scale.min() >= 0 and e.scale.max() <= 1
    greedy = np.zeros(1000, np.int32)
    out = e.apply(greedy)
    changed = (out != 0).mean()
    # expected fraction replaced by a non-zero action: mean(eps_i) * 4/5
    assert abs(changed - 0.1 * e.scale.mean() * 0.8) < 0.03
    old = e.scale[:10].copy()
    e.reset_envs(np.arange(10))
    assert not np.array_equal(old, e.scale[:10])
    sd = e.state_dict()
    x = e.apply(greedy)
    e2 = EpsilonGreedy(spec, 1000, eps_start=1.0, eps_end=0.1, anneal_steps=100, seed=7)
    e2.load_state_dict(sd)
    np.testing.assert_array_equal(x, e2.apply(greedy))
    e0 = EpsilonGreedy(spec, 8, eps_start=0.0, eps_end=0.0, seed=0)
    np.testing.assert_array_equal(e0.apply(np.full(8, 3)), 3)
    md = EpsilonGreedy(ActionSpec("multidiscrete", nvec=(2, 7)), 500, eps_start=1.0,
                       randomize=False, anneal_steps=10, seed=0)
    y = md.apply(np.zeros((500, 2), np.int32))
    assert y[:, 1].max() == 6 and y[:, 0].max() == 1
    with pytest.raises(ValueError):
        EpsilonGreedy(ActionSpec("continuous", shape=(2,)), 4)


def test_gaussian_noise_clipped_and_annealed():
    spec = ActionSpec("continuous", shape=(3,), low=(-1, -2, 0), high=(1, 2, 5))
    g = GaussianNoise(spec, 200, std_start=2.0, std_end=0.0, anneal_steps=10, seed=0)
    a = np.zeros((200, 3), np.float32) + np.array([0, 0, 2.5], np.float32)
    y = g.apply(a)
    assert (y >= np.array(spec.low)).all() and (y <= np.array(spec.high)).all()
    assert (y != a).any()
    g.advance(10)
    np.testing.assert_array_equal(g.apply(a), a)
    assert isinstance(make_exploration(spec, 4), GaussianNoise)


def test_collect_with_exploration_and_continuous_env():
    env = make_env("envpool:BallInCupCatch-v1", 2, seed=0)
    buf = TrajectoryBuffer.from_env_spec(env.spec, 5000, 2)
    expl = make_exploration(env.spec.action, 2, seed=0)
    col = Collector(env, RandomPolicy(env.spec), buf, expl)
    s = col.collect(50)
    assert s["env_steps"] >= 50 and expl.steps >= 50


def test_collect_with_the_agent_policy():
    agent_mod = pytest.importorskip("amago_fast.agent")
    import torch

    env = make_env("tmaze-passive", 3, seed=0, corridor_length=3)
    cfg = agent_mod.AgentConfig(d_model=32, num_layers=1, num_heads=2, context_len=16,
                                tstep_hidden=32, tstep_out=32, actor_hidden=32,
                                critic_hidden=32)
    agent = agent_mod.Agent(env.spec, cfg)
    buf = TrajectoryBuffer.from_env_spec(env.spec, 5000, 3)
    col = Collector(env, agent, buf, make_exploration(env.spec.action, 3, seed=0))
    with torch.no_grad():
        stats = col.collect(30)
        ev = col.evaluate(3)
    assert stats["episodes"] >= 6 and buf.num_trajectories == stats["episodes"]
    assert len(buf) == buf.num_trajectories * 5  # horizon 4 -> 5 rows per trajectory
    assert ev["episodes"] >= 3


def test_async_evaluate_and_restart_after_borrowing():
    env = EnvPoolEnv("CartPole-v1", 4, seed=0, batch_size=2)
    buf = TrajectoryBuffer.from_env_spec(env.spec, 10_000, 4)
    col = Collector(env, RandomPolicy(env.spec), buf)
    col.collect(40)
    added = buf.total_steps_added
    ev = col.evaluate(4)  # borrows the async training env: its pool is rebuilt afterwards
    assert ev["episodes"] >= 4 and buf.total_steps_added == added
    col.collect(200)
    assert buf.total_steps_added >= added + 200 and buf.num_trajectories >= 4


# ----------------------------------------------------------------------------- fast-path contracts
class KeepRowsPolicy(RandomPolicy):
    """Keeps the rows it is given *without copying* and a copy of them: the collector must
    never write into arrays it already handed to the policy."""

    def __init__(self, spec, seed=0):
        super().__init__(spec, seed)
        self.kept: list[tuple[dict, dict]] = []

    def act(self, rows, state, sample=True, env_ids=None):
        self.kept.append((dict(rows), {k: np.array(v, copy=True) for k, v in rows.items()}))
        return super().act(rows, state, sample, env_ids)


@pytest.mark.parametrize("batch_size", [None, 3])
def test_rows_given_to_the_policy_are_never_mutated_later(batch_size):
    env = EnvPoolEnv("CartPole-v1", 6, seed=3, batch_size=batch_size)
    policy = KeepRowsPolicy(env.spec, seed=4)
    buf = TrajectoryBuffer.from_env_spec(env.spec, 20_000, 6)
    stats = Collector(env, policy, buf).collect(400)
    assert stats["episodes"] > 5  # resets happened while references were held
    for live, snap in policy.kept:
        for k in snap:
            np.testing.assert_array_equal(live[k], snap[k], err_msg=k)


def test_overridden_step_is_always_called():
    """A subclass overriding step() alone (a wrapper) must not be bypassed by the trusted path;
    an env whose step() is paired with step_trusted() is stepped through the latter."""
    from amago_fast.envs.base import trusted_step
    from amago_fast.envs.tmaze import TMaze

    class CountingTMaze(TMaze):
        calls = 0

        def step(self, actions, env_ids=None):
            CountingTMaze.calls += 1
            return super().step(actions, env_ids)

    env = CountingTMaze(2, corridor_length=3)
    assert trusted_step(env) == env.step
    Collector(env, RandomPolicy(env.spec)).collect(20)
    assert CountingTMaze.calls >= 10
    plain = make_env("tmaze-passive", 2, corridor_length=3)
    assert trusted_step(plain) == plain.step_trusted
    pool = EnvPoolEnv("CartPole-v1", 2, seed=0)
    assert trusted_step(pool) == pool.step_trusted


def test_custom_exploration_output_is_validated():
    class BadExploration:
        num_envs = 2

        def apply(self, actions, env_ids=None):
            return np.full_like(actions, 7)  # T-Maze has 4 actions

        def advance(self, n):
            pass

        def reset_envs(self, ids):
            pass

        def current(self):
            return 0.0

    env = make_env("tmaze-passive", 2, corridor_length=3)
    rec = RowRecorder(2)
    col = Collector(env, RandomPolicy(env.spec), rec, BadExploration())
    with pytest.raises(ValueError, match="exploration for tmaze-passive: discrete actions out"):
        col.collect(4)
    assert not any(kind == "append" for kind, _, _ in rec.calls)


def test_random_actions_in_range_and_uniform():
    from amago_fast.collector import random_actions

    rng = np.random.default_rng(0)
    a = random_actions(ActionSpec("discrete", n=5), 50_000, rng)
    assert a.dtype == np.int32 and a.min() == 0 and a.max() == 4
    counts = np.bincount(a, minlength=5)
    assert np.abs(counts / a.size - 0.2).max() < 0.01
    md = random_actions(ActionSpec("multidiscrete", nvec=(2, 7)), 20_000, rng)
    assert md.dtype == np.int32 and md[:, 0].max() == 1 and md[:, 1].max() == 6
    assert md.min() == 0
    spec = ActionSpec("continuous", shape=(2,), low=(-1, 0), high=(1, 5))
    c = random_actions(spec, 20_000, rng)
    assert c.dtype == np.float32 and c.shape == (20_000, 2)
    assert (c >= np.array(spec.low)).all() and (c <= np.array(spec.high)).all()
    assert abs(c[:, 1].mean() - 2.5) < 0.1


def test_stats_match_numpy_over_the_episodes():
    env = EnvPoolEnv("CartPole-v1", 8, seed=2)
    stats = Collector(env, RandomPolicy(env.spec)).collect(1500)
    r = np.asarray(stats["returns"])
    assert stats["episodes"] == r.size > 20
    assert stats["return"] == pytest.approx(r.mean())
    assert stats["return_std"] == pytest.approx(r.std())
    # CartPole pays 1 per transition: lengths equal returns
    assert stats["length"] == pytest.approx(r.mean())


@pytest.mark.parametrize("name, kw", [("gym:CartPole-v1", {}),
                                      ("tmaze-passive", {"corridor_length": 3})])
def test_trusted_step_backends_store_the_hand_stepped_episodes(name, kw):
    """The collector steps gymnasium and built-in envs through step_trusted: the stored
    trajectories equal those of the same env stepped by hand through the validating step()."""
    n = 3
    env = make_env(name, n, seed=7, **kw)
    rec = RowRecorder(n)
    policy = LoggingPolicy(env.spec, seed=3)
    Collector(env, policy, rec, seed=7).collect(150)
    actions = [a for _, _, a in policy.log]
    want = hand_episodes(make_env(name, n, seed=7, **kw), actions)
    keys = [f.name for f in env.spec.observation] + ["action", "reward", "terminated",
                                                     "truncated"]
    assert len(rec.trajectories) == len(want) > 3
    for (gi, g), (wi, w) in zip(sorted(rec.trajectories, key=lambda e: e[0]),
                                sorted(want, key=lambda e: e[0])):
        assert gi == wi
        assert_same_trajectory(g, w, keys)


_STATE_KEYS = ("prev_action", "prev_reward", "time_index", "pending_reset", "ep_return")


def _poison_replay(env, step: int, row: int, value: float) -> None:
    """Put ``value`` (NaN/inf) into row ``row`` of the first observation key at replayed step
    ``step`` (as float32)."""
    obs = env._record[step][0]
    key = next(iter(obs))
    obs[key] = obs[key].astype(np.float32)
    obs[key][row] = value


def _assert_same_collection(cols, stats, stat_keys, state_keys=_STATE_KEYS) -> None:
    """Two collectors fed the same env stream report the same statistics and hold the same
    rollout state (dtypes included) and, for async, the same rows for the policy's next step."""
    for k in stat_keys:
        assert stats[0].get(k) == stats[1].get(k), k
    np.testing.assert_array_equal(stats[0].get("returns", []), stats[1].get("returns", []))
    sds = [c._train.state_dict() for c in cols]
    for k in state_keys:
        assert sds[0][k].dtype == sds[1][k].dtype, k
        np.testing.assert_array_equal(sds[0][k], sds[1][k], err_msg=k)
    for k in sds[0]["rows"]:
        np.testing.assert_array_equal(sds[0]["rows"][k], sds[1]["rows"][k], err_msg=k)
    if cols[0]._train.batch_rows is not None:  # what the policy is given next (async)
        for k, v in cols[0]._train.batch_rows.items():
            assert v.dtype == cols[1]._train.batch_rows[k].dtype, k
            np.testing.assert_array_equal(v, cols[1]._train.batch_rows[k], err_msg=k)


def _assert_same_buffers(bufs) -> None:
    assert bufs[0].total_steps_added == bufs[1].total_steps_added > 200
    assert len(bufs[0]) == len(bufs[1])
    np.testing.assert_array_equal(bufs[0].storage.pieces(), bufs[1].storage.pieces())
    np.testing.assert_array_equal(bufs[0].storage.open_lengths(), bufs[1].storage.open_lengths())
    for k in bufs[0].storage.ring:
        np.testing.assert_array_equal(bufs[0].storage.ring[k], bufs[1].storage.ring[k], err_msg=k)


@pytest.mark.parametrize("name,kw,nan_at", [
    ("envpool:CartPole-v1", {}, None),
    ("envpool:CartPole-v1", {"batch_size": 3}, 40),
    ("envpool:BallInCupCatch-v1", {"batch_size": 2}, None),
    ("tmaze-passive", {"corridor_length": 4}, 25),
])
def test_native_bookkeeping_equals_numpy_reference(name, kw, nan_at):
    """The C++ step bookkeeping (_core.absorb_step) against the NumPy path on identical env
    streams (a recorded env replayed to both), through autoresets, async batches and a NaN
    (flagged: the native call leaves it to the NumPy screening)."""
    import copy

    from amago_fast.bench.collect import ReplayEnv
    from amago_fast.collector import native_absorb_step

    if native_absorb_step() is None:
        pytest.skip("amago_fast._core not built")
    real = make_env(name, 6, seed=0, **kw)
    env_native = ReplayEnv(real, steps=120)
    real.close()
    if nan_at is not None:
        _poison_replay(env_native, nan_at, 1, np.nan)
    env_numpy = copy.deepcopy(env_native)
    cols = []
    for env, native in ((env_native, True), (env_numpy, False)):
        buf = TrajectoryBuffer.from_env_spec(env.spec, capacity_steps=5000, num_envs=6, seed=0)
        col = Collector(env, RandomPolicy(env.spec, seed=3), buf,
                        exploration=make_exploration(env.spec.action, 6, seed=1),
                        nan_policy="flag")
        if not native:
            col._train.absorb_step = None
        assert (col._train.absorb_step is not None) == native
        cols.append(col)
    flagged = 0
    for _ in range(6):
        stats = [c.collect(37) for c in cols]
        flagged += stats[0]["nonfinite_steps"]
        _assert_same_collection(
            cols, stats, ("env_steps", "vector_steps", "episodes", "nonfinite_steps"))
    _assert_same_buffers([c.buffer for c in cols])
    assert flagged == (0 if nan_at is None else 1)  # the NaN row was met on both paths


def test_native_bookkeeping_rejects_bad_arrays():
    from amago_fast.collector import native_absorb_step

    absorb = native_absorb_step()
    if absorb is None:
        pytest.skip("amago_fast._core not built")
    n = 4
    state = [np.zeros(n, bool), np.zeros(n, np.int64), np.zeros(n), np.zeros(n, np.float32),
             np.zeros(n, np.int32)]
    obs_state = [np.zeros((n, 3), np.float32)]
    batch = [np.ones(2, np.float32), np.zeros(2, bool), np.zeros(2, bool), np.ones(2, np.int32)]
    obs = [np.ones((2, 3), np.float32)]
    before = [a.copy() for a in state + obs_state]

    def call(**over):
        args = dict(pending_reset=state[0], time_index=state[1], ep_return=state[2],
                    prev_reward=state[3], prev_action=state[4], obs_state=obs_state,
                    env_ids=np.array([0, 2]), reward=batch[0], terminated=batch[1],
                    truncated=batch[2], actions=batch[3], obs_batch=obs, float_obs=[0],
                    check_finite=True)
        args.update(over)
        return absorb(**args)

    with pytest.raises(ValueError, match="env_ids"):
        call(env_ids=np.array([1, 1]))
    with pytest.raises(ValueError, match="env_ids"):
        call(env_ids=np.array([0, 4]))
    with pytest.raises(ValueError, match="reward"):
        call(reward=np.ones(2, np.float64))
    with pytest.raises(ValueError, match="actions"):
        call(actions=np.ones(2, np.int64))
    with pytest.raises(ValueError, match="observation"):
        call(obs_batch=[np.ones((2, 4), np.float32)])
    with pytest.raises(TypeError, match="time_index"):
        call(time_index=[0, 0, 0, 0])
    with pytest.raises(ValueError, match="pending_reset"):
        call(pending_reset=np.zeros(n, bool)[::-1])  # a state array must be C-contiguous
    nan_obs = [np.full((2, 3), np.nan, np.float32)]
    assert call(obs_batch=nan_obs) is None  # NaN: nothing done, the caller screens it
    for a, b in zip(state + obs_state, before):
        np.testing.assert_array_equal(a, b)
    out = call()
    assert out is not None and state[1][[0, 2]].tolist() == [1, 1]  # async: written back
    assert obs_state[0][0].tolist() == [1, 1, 1]


def test_random_policy_for_another_action_spec_is_still_checked():
    """RandomPolicy's actions skip check_actions only when drawn for the env's own spec."""
    from dataclasses import replace

    env = make_env("tmaze-passive", 4, corridor_length=3)
    wider = replace(env.spec, action=ActionSpec("discrete", n=50))
    col = Collector(env, RandomPolicy(wider, seed=0))
    assert not col._train.policy_trusted
    with pytest.raises(ValueError, match="out of range"):
        col.collect(40)
    assert Collector(env, RandomPolicy(env.spec))._train.policy_trusted


@pytest.mark.parametrize("batch_size", [None, 3])
def test_every_counted_transition_is_in_the_buffer_when_collect_returns(batch_size):
    """EnvPool steps send → write the previous step → recv: the rows still owed when the loop
    ends are written before collect returns, and before state_dict."""
    env = EnvPoolEnv("CartPole-v1", 6, seed=2, batch_size=batch_size)
    buf = TrajectoryBuffer.from_env_spec(env.spec, capacity_steps=10_000, num_envs=6)
    col = Collector(env, RandomPolicy(env.spec, seed=0), buf)
    assert col._train.split is not None
    total = 0
    for n in (1, 7, 50):
        total += col.collect(n)["env_steps"]
        assert col._train.pending_write is None
        assert buf.total_steps_added == total
    col.state_dict()
    assert buf.total_steps_added == total


def _split_replay_env(real, steps):
    """A ReplayEnv stepped as send/recv like EnvPool (so the collector defers or fuses the
    buffer write exactly as it does for a real pool), replaying recorded outputs."""
    from amago_fast.bench.collect import ReplayEnv

    class SplitReplayEnv(ReplayEnv):
        def step(self, actions, env_ids=None):
            return super().step(actions, env_ids)

        def step_trusted(self, actions, env_ids=None):
            self.send_trusted(actions, env_ids)
            return self.recv_step()

        def send_trusted(self, actions, env_ids=None):
            self._sent = (actions, env_ids)

        def recv_step(self):
            return ReplayEnv.step_trusted(self, *self._sent)

    return SplitReplayEnv(real, steps=steps)


@pytest.mark.parametrize("name,kw,nan_at", [
    ("envpool:CartPole-v1", {}, None),
    ("envpool:CartPole-v1", {"batch_size": 3}, 40),
    ("envpool:BallInCupCatch-v1", {"batch_size": 2}, None),
    ("tmaze-passive", {"corridor_length": 4}, 25),
    ("maze-runner", {}, None),
])
@pytest.mark.parametrize("split", [False, True])
def test_fused_buffer_write_equals_numpy_reference_buffer(name, kw, nan_at, split):
    """absorb_step writing the step's rows into the native store itself (the fused write) stores
    exactly what the NumPy reference buffer stores when fed by the NumPy bookkeeping, through
    autoresets, async batches, goal fields, a flagged NaN (that step takes the NumPy path and
    a separate write) and max-length cuts; sync send/recv envs keep the deferred write."""
    import copy

    from amago_fast.bench.collect import ReplayEnv
    from amago_fast.buffer import NATIVE_AVAILABLE
    from amago_fast.collector import native_absorb_step
    from tests._buffers import NUMPY

    if native_absorb_step() is None or not NATIVE_AVAILABLE:
        pytest.skip("amago_fast._core not built")
    real = make_env(name, 6, seed=0, **kw)
    env_fused = _split_replay_env(real, 120) if split else ReplayEnv(real, steps=120)
    real.close()
    if nan_at is not None:
        _poison_replay(env_fused, nan_at, 1, np.nan)
    env_ref = copy.deepcopy(env_fused)
    cols = []
    for env, buf_cls in ((env_fused, TrajectoryBuffer), (env_ref, NUMPY)):
        buf = buf_cls.from_env_spec(env.spec, capacity_steps=3000, num_envs=6, seed=0,
                                    max_trajectory_len=9)
        col = Collector(env, RandomPolicy(env.spec, seed=3), buf,
                        exploration=make_exploration(env.spec.action, 6, seed=1),
                        nan_policy="flag")
        cols.append(col)
    assert (cols[0]._train.split is not None) == split
    assert (cols[0]._train.fused is not None) == (not split or env_fused.is_async)
    assert cols[1]._train.fused is None  # the reference buffer: separate write_step calls
    cols[1]._train.absorb_step = None  # and the NumPy bookkeeping
    flagged = 0
    for it in range(6):
        if it == 2:  # a restart (as after an env fault) replaces the state arrays
            for c in cols:
                c._train.started = False
        if it == 4:  # so does a resume (the async absorber is rebuilt either way)
            for c in cols:
                c.load_state_dict(c.state_dict())
        stats = [c.collect(37) for c in cols]
        flagged += stats[0]["nonfinite_steps"]
        _assert_same_collection(
            cols, stats, ("env_steps", "vector_steps", "episodes", "nonfinite_steps", "length"))
    _assert_same_buffers([c.buffer for c in cols])
    assert flagged == (0 if nan_at is None else 1)  # the NaN row was met on both paths


def test_fused_write_failure_changes_neither_store_nor_state():
    """A fused write that fails — a field the store does not accept, an appended env with no
    open trajectory, a NaN reward — raises the write_step error and leaves the store and the
    rollout state as they were."""
    from amago_fast.buffer import NATIVE_AVAILABLE
    from amago_fast.collector import native_absorb_step

    absorb = native_absorb_step()
    if absorb is None or not NATIVE_AVAILABLE:
        pytest.skip("amago_fast._core not built")
    env = make_env("tmaze-passive", 4, corridor_length=3)
    buf = TrajectoryBuffer.from_env_spec(env.spec, capacity_steps=500, num_envs=4)
    col = Collector(env, RandomPolicy(env.spec), buf)
    sink, plan = col._train.fused
    store = sink.store
    n = 4
    state = [np.zeros(n, bool), np.zeros(n, np.int64), np.zeros(n), np.zeros(n, np.float32),
             np.zeros(n, np.int32)]
    obs_names = [f.name for f in env.spec.observation]
    obs_state = [np.zeros((n, *f.shape), f.dtype) for f in env.spec.observation]
    obs = [np.ones((2, *f.shape), f.dtype) for f in env.spec.observation]
    before = [a.copy() for a in state + obs_state]
    ring_before = {k: v.copy() for k, v in buf.storage.ring.items()}

    def call(**over):
        args = dict(pending_reset=state[0], time_index=state[1], ep_return=state[2],
                    prev_reward=state[3], prev_action=state[4], obs_state=obs_state,
                    env_ids=np.array([0, 2]), reward=np.ones(2, np.float32),
                    terminated=np.array([True, False]), truncated=np.zeros(2, bool),
                    actions=np.ones(2, np.int32), obs_batch=obs,
                    float_obs=[i for i, f in enumerate(env.spec.observation)
                               if f.dtype.kind == "f"],
                    check_finite=True, store=store, store_plan=plan)
        args.update(over)
        return absorb(**args)

    def unchanged():
        for a, b in zip(state + obs_state, before):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(buf.storage.open_lengths(), np.zeros(n, np.int64))
        assert len(buf) == 0
        for k, v in buf.storage.ring.items():
            np.testing.assert_array_equal(v, ring_before[k], err_msg=k)

    # No env has an open trajectory: appending to envs 0 and 2 must fail before any change.
    with pytest.raises(ValueError, match="no open trajectory"):
        call()
    unchanged()
    with pytest.raises(ValueError, match="store_plan"):
        call(store_plan=plan[:-1])
    unchanged()
    bad_obs = [o.astype(np.float64) if o.dtype == np.float32 else o.astype(np.int64)
               for o in obs]
    obs_state_64 = [o.astype(b.dtype) for o, b in zip(obs_state, bad_obs)]
    with pytest.raises(TypeError, match=f"field '{obs_names[0]}' has dtype"):
        call(obs_batch=bad_obs, obs_state=obs_state_64, float_obs=[])
    unchanged()
    with pytest.raises(ValueError, match="reward.*NaN"):
        call(reward=np.array([np.nan, 1.0], np.float32), check_finite=False)
    unchanged()
    # Open env 0 and 2 (a start row each), then a good append commits env 0's trajectory.
    state[0][:] = True
    assert call() is not None
    np.testing.assert_array_equal(buf.storage.open_lengths(), [1, 0, 1, 0])
    state[0][:] = False
    copies = [a.copy() for a in state + obs_state]
    full = call(store=None)  # the same step without the write, full result
    full_state = [a.copy() for a in state + obs_state]
    for a, c in zip(state + obs_state, copies):
        a[...] = c
    # The AsyncAbsorber (state and store bound once) does the same step and the same write.
    from amago_fast._native import core as _core

    sent = np.zeros(n, np.int32)
    float_idx = [i for i, f in enumerate(env.spec.observation) if f.dtype.kind == "f"]
    row_keys = [*obs_names, "action", "reward", "time_index"]
    absorber = _core.AsyncAbsorber(*state, sent, obs_state, float_idx, store, plan, row_keys)
    obs_dict = dict(zip(obs_names, obs))

    def step(**over):
        args = dict(env_ids=np.array([0, 2]), reward=np.ones(2, np.float32),
                    terminated=np.array([True, False]), truncated=np.zeros(2, bool),
                    sent_ids=np.array([0, 2]), sent_actions=np.ones(2, np.int32),
                    obs=obs_dict, check_finite=True)
        args.update(over)
        return absorber.step(**args)

    lean = step(sent_ids=np.array([2, 0, 3]), sent_actions=np.array([1, 1, 0], np.int32))
    np.testing.assert_array_equal(sent, [1, 0, 1, 0])  # the sent actions are recorded
    np.testing.assert_array_equal(buf.storage.open_lengths(), [0, 0, 2, 0])
    assert buf.num_trajectories == 1
    for a, want in zip(state + obs_state, full_state):  # the same state update
        np.testing.assert_array_equal(a, want)
    (reward, prev_reward, time_index, ep_return, done, prev_action, starts, start_rows,
     done_rows) = full
    rows, stored, start_ids, done_pos, done_returns, done_length_sum = lean
    assert stored == reward.size - start_rows.size == 2
    # The policy's next rows: the batch's observations themselves, then fresh arrays.
    assert list(rows) == row_keys
    for k in obs_names:
        assert rows[k] is obs_dict[k]
    for k, want in zip(row_keys[-3:], (prev_action, prev_reward, time_index)):
        assert rows[k].dtype == want.dtype, k
        np.testing.assert_array_equal(rows[k], want, err_msg=k)
    assert start_ids is None and start_rows.size == 0
    assert done_pos == done_rows.tolist() == [0]
    assert done_returns == ep_return[done_rows].tolist()
    assert type(done_length_sum) is int and done_length_sum == time_index[done_rows].sum()
    state[0][:] = [True, False, False, False]
    # Env 0 restarts (its trajectory was committed), env 2 goes on with the action last sent
    # to it (env 3's and env 1's are sent now, not stored).
    sent[2] = 0
    rows, stored, start_ids, done_pos, done_returns, done_length_sum = step(
        sent_ids=np.array([1, 3]), sent_actions=np.array([1, 1], np.int32))
    np.testing.assert_array_equal(rows["action"], [0, 0])  # reset row: 0; env 2: sent 0
    np.testing.assert_array_equal(rows["time_index"], [0, 2])
    np.testing.assert_array_equal(start_ids, [0])
    assert stored == 1 and done_pos is None and done_returns is None and done_length_sum == 0
    np.testing.assert_array_equal(buf.storage.open_lengths(), [1, 0, 3, 0])
    # Bad batches: a clear error, and neither the state nor the store changes.
    copies = [a.copy() for a in state + obs_state + [sent]]
    opened = buf.storage.open_lengths().copy()
    for over, err, match in [
        (dict(env_ids=np.array([1, 1])), ValueError, "env_ids"),
        (dict(env_ids=np.array([0, 4])), ValueError, "env_ids"),
        (dict(env_ids=np.array([1, 3])), ValueError, "no open trajectory"),
        (dict(sent_actions=np.ones(2, np.int64)), ValueError, "actions"),
        (dict(sent_actions=np.ones(3, np.int32)), ValueError, "actions"),
        (dict(sent_ids=np.array([0, 5])), ValueError, "sent env_ids"),
        (dict(reward=np.ones(2, np.float64)), ValueError, "reward"),
        (dict(reward=np.ones((2, 2), np.float32)), ValueError, "one value per row"),
        (dict(obs={k: o.astype(np.float64) for k, o in obs_dict.items()}), ValueError,
         "observation"),
        (dict(obs={}), KeyError, "no key"),
        (dict(reward=np.array([np.nan, 1.0], np.float32), check_finite=False), ValueError,
         "reward.*NaN"),
    ]:
        with pytest.raises(err, match=match):
            step(**over)
        for a, c in zip(state + obs_state + [sent], copies):
            np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(buf.storage.open_lengths(), opened)
    assert step(obs={k: np.full_like(o, np.nan) if o.dtype.kind == "f" else o
                     for k, o in obs_dict.items()}, sent_actions=np.zeros(2, np.int32)) is None
    for a, c in zip(state + obs_state + [sent], copies):  # sent_action untouched too
        np.testing.assert_array_equal(a, c)
    with pytest.raises(TypeError, match="dtype"):  # the store's field, checked once
        _core.AsyncAbsorber(*state[:4], state[4].astype(np.int64), sent.astype(np.int64),
                            obs_state, [], store, plan, row_keys)
    with pytest.raises(ValueError, match="sent_action"):
        _core.AsyncAbsorber(*state, sent.astype(np.int64), obs_state, [], store, plan,
                            row_keys)
    with pytest.raises(ValueError, match="store_plan"):
        _core.AsyncAbsorber(*state, sent, obs_state, [], store, plan[:-1], row_keys)
    with pytest.raises(ValueError, match="row_keys"):
        _core.AsyncAbsorber(*state, sent, obs_state, [], store, plan, row_keys[:-1])


def test_fused_write_off_for_overridden_buffers_and_by_switch(monkeypatch):
    """A TrajectoryBuffer subclass that overrides write_step is always called through it;
    AMAGO_FAST_FUSED_WRITE=0 restores the separate write_step call."""
    from amago_fast.buffer import NATIVE_AVAILABLE
    from amago_fast.collector import native_absorb_step

    if native_absorb_step() is None or not NATIVE_AVAILABLE:
        pytest.skip("amago_fast._core not built")
    calls = []

    class Counting(TrajectoryBuffer):
        def write_step(self, rows, env_ids=None, starts=None):
            calls.append(len(rows["reward"]))
            return super().write_step(rows, env_ids, starts)

    env = make_env("tmaze-passive", 3, corridor_length=3)
    col = Collector(env, RandomPolicy(env.spec),
                    Counting.from_env_spec(env.spec, capacity_steps=500, num_envs=3))
    assert col._train.fused is None
    col.collect(20)
    assert len(calls) >= 7
    plain = TrajectoryBuffer.from_env_spec(env.spec, capacity_steps=500, num_envs=3)
    assert Collector(env, RandomPolicy(env.spec), plain)._train.fused is not None
    monkeypatch.setenv("AMAGO_FAST_FUSED_WRITE", "0")
    assert Collector(env, RandomPolicy(env.spec), plain)._train.fused is None
    sync_pool = EnvPoolEnv("CartPole-v1", 4, seed=0)
    async_pool = EnvPoolEnv("CartPole-v1", 4, seed=0, batch_size=2)
    monkeypatch.delenv("AMAGO_FAST_FUSED_WRITE")
    for pool, fused in ((sync_pool, False), (async_pool, True)):
        b = TrajectoryBuffer.from_env_spec(pool.spec, capacity_steps=500, num_envs=4)
        assert (Collector(pool, RandomPolicy(pool.spec), b)._train.fused is not None) == fused
        pool.close()


def test_async_absorber_without_buffer_equals_numpy_path():
    """Async batches without a buffer (evaluation, the overhead baseline) take the
    AsyncAbsorber too: same statistics and rollout state as the NumPy bookkeeping."""
    import copy

    from amago_fast.bench.collect import ReplayEnv
    from amago_fast.collector import native_absorb_step

    if native_absorb_step() is None:
        pytest.skip("amago_fast._core not built")
    real = make_env("envpool:CartPole-v1", 6, seed=0, batch_size=3)
    env = ReplayEnv(real, steps=120)
    real.close()
    _poison_replay(env, 30, 2, np.inf)
    cols = [Collector(e, RandomPolicy(env.spec, seed=3), nan_policy="flag")
            for e in (env, copy.deepcopy(env))]
    assert cols[0]._train.async_absorber_ok
    cols[1]._train.absorb_step = None
    flagged = 0
    for it in range(5):
        if it == 2:
            for c in cols:
                c._train.started = False
        stats = [c.collect(40) for c in cols]
        flagged += stats[0]["nonfinite_steps"]
        _assert_same_collection(
            cols, stats, ("env_steps", "vector_steps", "episodes", "nonfinite_steps", "length"),
            (*_STATE_KEYS, "batch_ids"))
    assert cols[0]._train.absorber is not None
    assert flagged == 1


class _BreaksAtStep(VectorEnv):
    """A user VectorEnv around EnvPool CartPole whose step `at` returns one malformed output."""

    def __init__(self, mode: str, at: int = 60):
        self.inner = EnvPoolEnv("CartPole-v1", 4, seed=0)
        self.spec, self.num_envs, self.mode, self.at, self.t = self.inner.spec, 4, mode, at, 0

    def reset(self, seed=None):
        return self.inner.reset()

    def step(self, actions, env_ids=None):
        obs, r, te, tr, info = self.inner.step(actions)
        self.t += 1
        if self.t == self.at:
            if self.mode == "float64 obs":
                obs = {"observation": obs["observation"].astype(np.float64)}
            elif self.mode == "missing key":
                obs = {"obs": obs["observation"]}
            elif self.mode == "reward float64":
                r = r.astype(np.float64)
            elif self.mode == "terminated int":
                te = te.astype(np.int64)
            elif self.mode == "reward None":
                r = None
        return obs, r, te, tr, info


@pytest.mark.parametrize("mode,expect", [
    ("float64 obs", r"observation 'observation' is float64\(4, 4\), spec says float32"),
    ("missing key", r"observation keys \['obs'\]"),
    ("reward float64", r"returned reward float64\(4,\), expected a float32 array"),
    ("terminated int", r"returned terminated int64\(4,\), expected a bool array"),
    ("reward None", r"returned reward NoneType"),
])
def test_malformed_env_output_names_the_env_and_field(mode, expect, tmp_path):
    """Mid-rollout, a user env returns an output that breaks VectorEnv.step's contract: the
    error names the env and the field against its spec (not the native absorber's argument
    names), and the committed trajectories are unchanged."""
    env = _BreaksAtStep(mode)
    buf = TrajectoryBuffer.from_env_spec(env.spec, 10_000, 4)
    col = Collector(env, RandomPolicy(env.spec, seed=0), buf)
    col.collect(40 * 4)
    before = [dict(np.load(p)) for p in buf.export_npz(tmp_path / "before")]
    assert before
    with pytest.raises(ValueError, match=expect) as e:
        col.collect(40 * 4)
    assert "'envpool:CartPole-v1'" in str(e.value)
    after = [dict(np.load(p)) for p in buf.export_npz(tmp_path / "after")]
    for old in before:  # every trajectory committed before is still there, unchanged
        assert any(old.keys() == new.keys() and all(
            np.array_equal(old[k], new[k]) for k in old) for new in after)


def test_buffer_that_does_not_fit_the_env_is_rejected_up_front():
    env = make_env("envpool:CartPole-v1", 4)
    other = make_env("envpool:Acrobot-v1", 1)
    cases = [
        (TrajectoryBuffer.from_env_spec(env.spec, 1000, 2), "num_envs=2 slots.*4 envs"),
        (TrajectoryBuffer.from_env_spec(env.spec, 1000, 8), "num_envs=8 slots.*4 envs"),
        (TrajectoryBuffer.from_env_spec(other.spec, 1000, 4), "field 'observation' is float32"),
    ]
    for buf, msg in cases:
        with pytest.raises(ValueError, match=msg):
            Collector(env, RandomPolicy(env.spec), buf)
    env.close()
    other.close()


def test_collector_checkpoint_keeps_the_actuator_inversion_context_stream():
    """EnvPool physics cannot be snapshot, so a restored collector restarts its rollouts; the
    actuator-inversion context RNG is saved with it, so the resumed run draws the contexts the
    uninterrupted one would draw after a reset at that point — not the stream's start again."""
    import pickle

    from tests._envs import actinv_cartpole, actinv_contexts_after_reset

    a = actinv_cartpole(3, n=2)
    col_a = Collector(a, RandomPolicy(a.spec, seed=0))
    col_a.collect(2 * 30)
    sd = pickle.loads(pickle.dumps(col_a.state_dict()))
    assert sd["env_rng"] is not None
    want = actinv_contexts_after_reset(a)  # reset: what the restored collector's collect does
    b = actinv_cartpole(11, n=2)
    col_b = Collector(b, RandomPolicy(b.spec, seed=0))
    col_b.load_state_dict(sd)
    got = actinv_contexts_after_reset(b)
    for (ws, wi), (gs, gi) in zip(want, got):
        np.testing.assert_array_equal(gs, ws)
        np.testing.assert_array_equal(gi, wi)
    # The stream continued: a fresh env of the same seed draws other contexts.
    fresh = actinv_contexts_after_reset(actinv_cartpole(3, n=2))
    assert any((f[1] != w[1]).any() for f, w in zip(fresh, want))
    # A corrupt RNG state is refused before the collector changes.
    bad = dict(sd, env_rng={**sd["env_rng"], "split": "eval-out"})
    steps = col_b.total_env_steps
    with pytest.raises(ValueError):
        Collector(actinv_cartpole(5, n=2), RandomPolicy(b.spec, seed=0)).load_state_dict(bad)
    assert col_b.total_env_steps == steps
    for env in (a, b):
        env.close()


def test_collect_passes_greedy_or_sampled_actions_to_the_policy():
    """collect(sample=False) asks the policy for its greedy action (TrainConfig.collect_sample
    = false: only the exploration scheme explores); the default samples."""
    env = make_env("aib-di", 2, seed=0)

    class Recorder(RandomPolicy):
        def __init__(self, spec):
            super().__init__(spec, seed=0)
            self.flags = set()

        def act(self, rows, state, sample=True, env_ids=None):
            self.flags.add(sample)
            return super().act(rows, state, sample, env_ids)

    for sample in (False, True):
        pol = Recorder(env.spec)
        buf = TrajectoryBuffer.from_env_spec(env.spec, 1000, 2)
        Collector(env, pol, buf).collect(10, sample=sample)
        assert pol.flags == {sample}
