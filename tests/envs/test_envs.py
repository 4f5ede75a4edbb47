"""Environments: registry, observation contract, next-step autoreset, task rules vs references."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from amago_fast.buffer import relabel
from amago_fast.envs import (
    BanditTrials,
    DarkKeyToDoor,
    EnvPoolEnv,
    GymVectorEnv,
    MazeRunner,
    TMaze,
    list_envs,
    make_env,
)
from amago_fast.envs.actuator_inversion import (
    EVAL_OUT_GAIN,
    ActuatorInversionEnv,
    actuator_subsets,
)
from amago_fast.envs.trials import first_vs_later, make_trial_env
from tests._envs import actinv_cartpole, actinv_contexts_after_reset

pytestmark = pytest.mark.filterwarnings("ignore:.*precision lowered.*")


def random_actions(spec, n, rng):
    a = spec.action
    if a.kind == "discrete":
        return rng.integers(0, a.n, n).astype(np.int32)
    return rng.uniform(a.low, a.high, (n, *a.shape)).astype(np.float32)


def record_observations(env, on_obs, methods=("reset", "step_trusted")):
    """Wrap `env`'s `methods` so that every observation dict they return is passed to
    `on_obs` (the tests that check a buffer stores only rows its env returned)."""
    def wrap(fn):
        def call(*args, **kwargs):
            out = fn(*args, **kwargs)
            on_obs(out if isinstance(out, dict) else out[0])
            return out
        return call

    for m in methods:
        setattr(env, m, wrap(getattr(env, m)))


def assert_obs_matches(spec, obs, n):
    assert set(obs) == {f.name for f in spec.observation}
    for f in spec.observation:
        assert obs[f.name].dtype == f.dtype, f.name
        assert obs[f.name].shape == (n, *f.shape), f.name


# ----------------------------------------------------------------------------- registry
def test_registry_names_and_errors():
    names = list_envs()
    for n in ["tmaze-passive", "tmaze-active", "key-to-door", "maze-runner", "bandit",
              "actinv-ballincup", "actinv-walker", "actinv-cartpole", "actinv-hopper"]:
        assert n in names
    with pytest.raises(ValueError, match="tmaze-passive"):
        make_env("no-such-env", 2)
    with pytest.raises(TypeError, match="corridor"):
        make_env("tmaze-passive", 2, corridor=5)
    with pytest.raises(ValueError, match="num_envs"):
        make_env("tmaze-passive", 0)
    with pytest.raises(ValueError, match="unknown EnvPool task"):
        make_env("envpool:NoSuchTask-v9", 2)
    with pytest.raises(ValueError, match="unknown gymnasium id"):
        make_env("gym:NoSuchTask-v9", 2)
    with pytest.raises(ValueError, match="split"):
        make_env("actinv-cartpole", 2, split="test")
    assert make_env("maze-runner", 1, num_goals=2).spec.goals.k == 2
    assert make_env("maze-runner", 1, k=4).spec.goals.k == 4
    with pytest.raises(ValueError, match="disagree"):
        make_env("maze-runner", 1, k=4, num_goals=2)


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("tmaze-passive", {"corridor_length": 6}),
        ("tmaze-active", {"corridor_length": 6}),
        ("key-to-door", {}),
        ("maze-runner", {"k": 2}),
        ("bandit", {}),
        ("envpool:CartPole-v1", {}),
        ("envpool:BallInCupCatch-v1", {}),
        ("actinv-cartpole", {}),
        ("gym:CartPole-v1", {}),
        ("gym:Pendulum-v1", {}),
    ],
)
def test_observation_contract(name, kwargs):
    n = 3
    env = make_env(name, n, seed=1, **kwargs)
    rng = np.random.default_rng(0)
    try:
        obs = env.reset()
        assert_obs_matches(env.spec, obs, n)
        for _ in range(40):
            obs, r, te, tr, info = env.step(random_actions(env.spec, n, rng))
            assert_obs_matches(env.spec, obs, n)
            assert r.dtype == np.float32 and r.shape == (n,)
            assert te.dtype == np.bool_ and tr.dtype == np.bool_
        with pytest.raises(ValueError, match="shape"):
            env.step(random_actions(env.spec, n + 1, rng))
    finally:
        env.close()


# ----------------------------------------------------------------------------- T-Maze
class ScalarTMaze:
    """Plain per-env reference of the T-Maze rules in the module docstring."""

    def __init__(self, h, active, cue):
        self.h, self.active, self.cue = h, active, cue
        self.x, self.y, self.t = (1 if active else 0), 0, 0
        self.horizon = h + (2 if active else 1)

    def obs(self):
        if self.x == self.h:
            return [1.0, float(self.y)]
        if self.x == 0 and (self.active or self.t == 0):
            return [0.0, self.cue]
        return [0.0, 0.0]

    def step(self, a):
        r = 0.0
        if self.x < self.h and a != 0 and not (self.active and a == 2 and self.x == 1):
            r -= 1.0 / self.h
        if self.x == self.h and self.y == 0:
            self.y = {1: 1, 3: -1}.get(a, 0)
        elif self.y == 0:
            self.x = min(max(self.x + {0: 1, 2: -1}.get(a, 0), 0), self.h)
        self.t += 1
        done = self.t >= self.horizon
        success = done and self.y == self.cue
        return r + (1.0 if success else 0.0), done, success


@pytest.mark.parametrize("active", [False, True])
def test_tmaze_matches_scalar_reference_with_autoreset(active):
    h, n = 4, 16
    env = TMaze(n, corridor_length=h, active=active, seed=3)
    obs = env.reset()
    refs = [ScalarTMaze(h, active, env.cue[i]) for i in range(n)]
    rng = np.random.default_rng(0)
    pending = np.zeros(n, bool)
    for _ in range(60):
        # Bias towards "right" so junctions and arms are reached often.
        a = np.where(rng.random(n) < 0.6, 0, rng.integers(0, 4, n)).astype(np.int32)
        obs, r, te, tr, info = env.step(a)
        for i in range(n):
            if pending[i]:  # next-step autoreset: action ignored, reward 0, new episode
                assert r[i] == 0 and not te[i] and not tr[i]
                refs[i] = ScalarTMaze(h, active, env.cue[i])
                np.testing.assert_allclose(obs["observation"][i], refs[i].obs())
                continue
            rr, done, success = refs[i].step(int(a[i]))
            np.testing.assert_allclose(r[i], rr, rtol=1e-6, atol=1e-7)
            assert te[i] == done and not tr[i]
            assert info["success"][i] == success
            np.testing.assert_allclose(obs["observation"][i], refs[i].obs())
        pending = te | tr


@pytest.mark.parametrize("active", [False, True])
def test_tmaze_optimal_return_is_one(active):
    h, n = 7, 6
    env = make_env("tmaze-active" if active else "tmaze-passive", n, seed=0, corridor_length=h)
    obs = env.reset()
    if not active:
        cue = obs["observation"][:, 1].copy()
        assert set(np.unique(np.abs(cue))) == {1.0}
        plan = [np.zeros(n, np.int32)] * h
    else:
        np.testing.assert_array_equal(obs["observation"], 0.0)  # no cue at the start
        obs, *_ = env.step(np.full(n, 2, np.int32))  # step back onto the oracle cell
        cue = obs["observation"][:, 1].copy()
        plan = [np.zeros(n, np.int32)] * h
    total = np.zeros(n)
    for a in plan:
        obs, r, te, *_ = env.step(a)
        total += r
        assert not te.any()
    np.testing.assert_array_equal(obs["observation"], np.tile([1.0, 0.0], (n, 1)))
    turn = np.where(cue > 0, 1, 3).astype(np.int32)
    obs, r, te, tr, info = env.step(turn)
    total += r
    assert te.all() and info["success"].all()
    np.testing.assert_allclose(total, 1.0, atol=1e-6)
    # Wrong turns score 0 (no penalty at the junction).
    env.reset()
    cue = env.cue.copy()
    if active:
        env.step(np.full(n, 2, np.int32))
    for a in plan:
        env.step(a)
    _, r, te, _, info = env.step(np.where(cue > 0, 3, 1).astype(np.int32))
    assert te.all() and not info["success"].any()
    np.testing.assert_allclose(r, 0.0)


# ----------------------------------------------------------------------------- MazeRunner
def goal_rule(goal, achieved, k):
    """The GoalSpec rule of amago_fast.spaces, recomputed along one episode's rows."""
    active, completed, rewards, terms = 0, np.zeros(k, bool), [0.0], [False]
    actives, comps = [0], [completed.copy()]
    for t in range(1, len(achieved)):
        r = 0.0
        if active < k and np.array_equal(achieved[t], goal[active]):
            completed[active] = True
            r = 1.0
            active += 1
        rewards.append(r)
        terms.append(active == k)
        actives.append(active)
        comps.append(completed.copy())
    return np.array(rewards), np.array(terms), np.array(actives), np.array(comps)


def test_maze_runner_rewards_follow_goal_spec_rule():
    k, n = 2, 8
    env = MazeRunner(n, num_goals=k, maze_size=7, episode_max_steps=60, num_layouts=4, seed=2)
    assert env.spec.goals is not None and env.spec.goals.k == k
    obs = env.reset()
    rows = [[{key: v[i].copy() for key, v in obs.items()}] for i in range(n)]
    rewards, terms = [[0.0] for _ in range(n)], [[False] for _ in range(n)]
    rng = np.random.default_rng(1)
    episodes = 0
    pending = np.zeros(n, bool)
    for _ in range(600):
        obs, r, te, tr, info = env.step(rng.integers(0, 4, n).astype(np.int32))
        for i in range(n):
            if pending[i]:
                rows[i] = [{key: v[i].copy() for key, v in obs.items()}]
                rewards[i], terms[i] = [0.0], [False]
                continue
            rows[i].append({key: v[i].copy() for key, v in obs.items()})
            rewards[i].append(float(r[i]))
            terms[i].append(bool(te[i]))
            if te[i] or tr[i]:
                goal = rows[i][0]["goal"]
                ach = np.stack([row["achieved"] for row in rows[i]])
                # the instruction is constant along the episode
                for row in rows[i]:
                    np.testing.assert_array_equal(row["goal"], goal)
                ref_r, ref_t, ref_a, ref_c = goal_rule(goal, ach, k)
                # ... and the buffer's own replay of the rule (what relabeling recomputes)
                m = relabel.match_matrix(env.spec.goals, ach, goal, None)
                reached, final = relabel.replay(m, 0, k, len(ach) - 1)
                np.testing.assert_array_equal(reached >= 0, np.array(rewards[i]) > 0)
                assert final == rows[i][-1]["goal_active"]
                np.testing.assert_array_equal(np.array(rewards[i]), ref_r)
                np.testing.assert_array_equal(np.array(terms[i]), ref_t)
                np.testing.assert_array_equal([row["goal_active"] for row in rows[i]], ref_a)
                np.testing.assert_array_equal(
                    np.stack([row["goal_completed"] for row in rows[i]]), ref_c
                )
                assert info["success"][i] == bool(te[i])
                episodes += 1
        pending = te | tr
    assert episodes >= n


def test_maze_runner_goals_rare_by_chance():
    env = make_env("maze-runner", 32, seed=0)  # defaults: 15x15, k=3
    env.reset()
    rng = np.random.default_rng(0)
    ends = full = 0
    first_goal = 0
    pending = np.zeros(32, bool)
    for _ in range(env.spec.max_episode_steps * 2 + 2):
        obs, r, te, tr, info = env.step(rng.integers(0, 4, 32).astype(np.int32))
        done = (te | tr) & ~pending
        ends += done.sum()
        full += te.sum()
        first_goal += (done & (obs["goal_active"] >= 1)).sum()
        pending = te | tr
    assert ends >= 32
    assert full == 0 and first_goal / ends < 0.5


def test_maze_walls_block_and_layouts_connected():
    env = MazeRunner(2, maze_size=9, num_layouts=5, seed=4)
    for w in env.walls:
        assert w[0].all() and w[-1].all() and w[:, 0].all() and w[:, -1].all()
        free = {tuple(c) for c in np.argwhere(w == 0)}
        start = next(iter(free))
        seen, stack = {start}, [start]
        while stack:
            x, y = stack.pop()
            for dx, dy in ((0, 1), (1, 0), (0, -1), (-1, 0)):
                c = (x + dx, y + dy)
                if c in free and c not in seen:
                    seen.add(c)
                    stack.append(c)
        assert seen == free


# ----------------------------------------------------------------------------- trials
def test_key_to_door_trial_structure_and_scripted_agent():
    n = 4
    env = DarkKeyToDoor(n, room_size=5, episode_max_steps=20, trial_max_steps=60, seed=0)
    obs = env.reset()
    assert "episode_start" in obs and (obs["episode_start"] == 1).all()
    key0, door0 = env.key.copy(), env.door.copy()
    trial_return = np.zeros(n)
    partial = np.zeros(n)  # return of the inner episode still open
    starts = np.zeros(n)
    for t in range(60):
        target = np.where(env.has_key[:, None], env.door, env.key)
        d = target - env.pos
        a = np.where(d[:, 0] > 0, 1, np.where(d[:, 0] < 0, 3, np.where(d[:, 1] > 0, 0, 2)))
        obs, r, te, tr, info = env.step(a.astype(np.int32))
        trial_return += r
        partial = np.where(obs["episode_start"][:, 0] == 1, 0.0, partial + r)
        if t < 59:
            np.testing.assert_array_equal(env.key, key0)  # layout fixed within the trial
            np.testing.assert_array_equal(env.door, door0)
            assert not (te | tr).any()
        starts += obs["episode_start"][:, 0]
    assert tr.all() and not te.any()
    ep = info["episode_returns"]
    # Finished inner episodes only: the one cut off at step 60 is not among them (unless it
    # ended on that very step).
    cut = np.nansum(ep, axis=1)
    assert (np.isclose(cut, trial_return - partial) | np.isclose(cut, trial_return)).all()
    # A layout-aware agent completes every episode (key then door = 2 per episode).
    finished = (~np.isnan(ep)).sum(axis=1)
    assert (finished >= 3).all()
    assert (np.nan_to_num(ep)[:, : 3] == 2).all()
    assert (starts >= 3).all()
    # next step: autoreset into a new trial with a fresh layout draw
    obs, r, te, tr, _ = env.step(np.zeros(n, np.int32))
    assert (r == 0).all() and (obs["episode_start"] == 1).all()


def test_bandit_trials_returns_and_meta_signal():
    n, k = 64, 6
    env = BanditTrials(n, num_arms=4, episodes_per_trial=k, seed=0)
    env.reset()
    best = env.probs.argmax(axis=1).astype(np.int32)
    total = np.zeros(n)
    for t in range(k):
        obs, r, te, tr, info = env.step(best)
        total += r
        # each pull is an episode: every row but the trial's final one starts an episode
        assert (obs["episode_start"] == 1).all() == (t < k - 1)
        assert te.all() == (t == k - 1)
        assert info["success"].all()
    np.testing.assert_allclose(info["episode_returns"].sum(axis=1), total)
    stats = first_vs_later([info["episode_returns"]])
    assert stats["num_trials"] == n
    # the oracle arm pays more than chance on average
    assert total.mean() / k > 0.6


def test_make_trial_env_generic():
    env = make_trial_env("tmaze", 3, episodes_per_trial=3, corridor_length=2)
    assert env.spec.max_episode_steps == 9
    obs = env.reset()
    cue = env.cue.copy()
    flags = [obs["episode_start"][:, 0].copy()]
    for t in range(9):
        obs, r, te, tr, info = env.step(np.zeros(3, np.int32))
        flags.append(obs["episode_start"][:, 0].copy())
        if t < 8:
            np.testing.assert_array_equal(env.cue, cue)
            assert not te.any()
    assert te.all()
    flags = np.stack(flags)
    assert flags[[0, 3, 6], :].all() and flags.sum() == 9
    with pytest.raises(ValueError, match="trial"):
        make_trial_env("tmaze", 2, episodes_per_trial=1)
    with pytest.raises(ValueError, match="unknown trial task"):
        make_trial_env("nope", 2)


# ----------------------------------------------------------------------------- resume / input
@pytest.mark.parametrize("cls,kw", [(TMaze, {"corridor_length": 3}), (DarkKeyToDoor, {}),
                                    (MazeRunner, {"maze_size": 7}), (BanditTrials, {})])
def test_state_dict_resume_is_exact(cls, kw):
    n = 5
    a_env = cls(n, seed=7, **kw)
    a_env.reset()
    rng = np.random.default_rng(0)
    for _ in range(13):
        a_env.step(random_actions(a_env.spec, n, rng))
    sd = a_env.state_dict()
    b_env = cls(n, seed=123, **kw)
    b_env.load_state_dict(sd)
    for _ in range(40):
        act = random_actions(a_env.spec, n, rng)
        oa, ra, ta, ua, _ = a_env.step(act)
        ob, rb, tb, ub, _ = b_env.step(act)
        for key in oa:
            np.testing.assert_array_equal(oa[key], ob[key])
        np.testing.assert_array_equal(ra, rb)
        np.testing.assert_array_equal(ta | ua, tb | ub)
    with pytest.raises(ValueError):
        cls(n + 1, seed=0, **kw).load_state_dict(sd)


def test_bad_action_leaves_state_unchanged():
    env = TMaze(4, corridor_length=3, seed=0)
    env.reset()
    before = env.state_dict()
    for bad in [np.zeros(3, np.int32), np.full(4, 4, np.int32), np.full(4, -1, np.int32),
                np.full(4, 0.5)]:
        with pytest.raises(ValueError):
            env.step(bad)
    after = env.state_dict()
    for k in before["arrays"]:
        np.testing.assert_array_equal(before["arrays"][k], after["arrays"][k])
    assert before["rng"] == after["rng"]


# ----------------------------------------------------------------------------- EnvPool
def test_envpool_autoreset_and_async_ids():
    env = EnvPoolEnv("CartPole-v1", 4, seed=0)
    env.reset()
    pending = np.zeros(4, bool)
    seen_reset = 0
    for _ in range(80):
        obs, r, te, tr, info = env.step(np.zeros(4, np.int32))  # always left: short episodes
        assert (r[pending] == 0).all() and not (te | tr)[pending].any()
        assert (info["elapsed_step"][pending] == 0).all()
        seen_reset += pending.sum()
        pending = te | tr
    assert seen_reset > 4
    a = EnvPoolEnv("CartPole-v1", 6, seed=0, batch_size=3)
    a.reset()
    ids = a.last_env_ids
    assert ids.shape == (3,)
    with pytest.raises(ValueError, match="env_ids"):
        a.step(np.zeros(3, np.int32))
    covered = set(ids.tolist())
    for _ in range(10):
        obs, r, te, tr, info = a.step(np.zeros(3, np.int32), ids)
        ids = info["env_id"]
        covered |= set(ids.tolist())
        assert obs["observation"].shape == (3, 4)
    assert covered == set(range(6))


def test_envpool_dmc_dict_to_float32():
    env = EnvPoolEnv("BallInCupCatch-v1", 2, seed=0)
    obs = env.reset()
    assert set(obs) == {"position", "velocity"}
    assert all(v.dtype == np.float32 for v in obs.values())
    assert env.spec.action.kind == "continuous" and env.spec.action.shape == (2,)
    with pytest.raises(ValueError, match="seed"):
        env.reset(seed=5)


@pytest.mark.parametrize("task,batch_size,action_kind", [
    ("CartPole-v1", None, "discrete"),
    ("CartPole-v1", 3, "discrete"),
    ("BallInCupCatch-v1", None, "continuous"),
    ("BallInCupCatch-v1", 3, "continuous"),
    ("Pendulum-v1", None, "continuous"),  # float32 actions in the pool, float64 in the public cast
])
def test_envpool_direct_calls_match_public_api(task, batch_size, action_kind):
    """The C++ send/recv path returns exactly what EnvPool's public API returns (same seed, same
    actions), through autoresets, sync and async. Async batches are made of whichever envs finish
    first, so there each env's own sequence is compared, its actions a function of (env, step),
    and an env's first observation may come from reset() or from a step. The reward and flags of
    a row that starts an episode (elapsed_step 0) are not compared: EnvPool's async dm_control
    pools leave that reward uninitialised (seen: 1.875, 4.6e-41), on either path."""
    fast = EnvPoolEnv(task, 6, seed=3, batch_size=batch_size)
    slow = EnvPoolEnv(task, 6, seed=3, batch_size=batch_size, direct_calls=False)
    assert fast._direct is not None and slow._direct is None
    spec = fast.spec
    assert spec.action.kind == action_kind
    table_rng = np.random.default_rng(0)
    if spec.action.is_discrete:
        table = table_rng.integers(0, spec.action.n, (6, 400)).astype(np.int32)
    else:
        table = table_rng.uniform(-1, 1, (6, 400, *spec.action.shape)).astype(np.float32)

    def run(env):
        per_env = {i: [] for i in range(6)}
        counts = np.zeros(6, np.int64)
        obs = env.reset()
        ids = env.last_env_ids
        for j, i in enumerate(ids):
            per_env[int(i)].append(({k: v[j] for k, v in obs.items()}, None, None, None, 0))
        for _ in range(250):
            act = table[ids, counts[ids]]
            counts[ids] += 1
            obs, rew, term, trunc, info = env.step(act, ids if env.is_async else None)
            np.testing.assert_array_equal(env.last_env_ids, info["env_id"])
            ids = info["env_id"] if env.is_async else np.arange(6)
            for j, i in enumerate(ids):
                per_env[int(i)].append(({k: v[j] for k, v in obs.items()}, rew[j], term[j],
                                        trunc[j], info["elapsed_step"][j]))
            dtypes = ({k: v.dtype for k, v in obs.items()}, rew.dtype, term.dtype, trunc.dtype)
        env.close()
        return per_env, dtypes

    (got, got_dtypes), (want, want_dtypes) = run(fast), run(slow)
    assert got_dtypes == want_dtypes
    # CartPole's batches need no conversion: after the first one, recv_step takes its
    # conversion-free path (so the comparison above covers it); dm_control's float64 dict
    # observations keep the converters.
    if task == "CartPole-v1":
        assert fast._direct.plain is True
    elif task == "BallInCupCatch-v1":
        assert fast._direct.plain is False
    ends = 0
    for i in range(6):
        common = min(len(got[i]), len(want[i]))
        assert common > 50
        for a, b in zip(got[i][:common], want[i][:common]):
            for k in a[0]:
                np.testing.assert_array_equal(a[0][k], b[0][k])
            assert a[4] == b[4]  # elapsed_step
            if a[4] > 0:
                assert a[1:4] == b[1:4]
                ends += bool(a[2] or a[3])
    if task == "CartPole-v1":
        assert ends > 0  # the comparison crossed EnvPool's autoreset


# ----------------------------------------------------------------------------- gymnasium
class _StepCountEnv(gym.Env):
    """A synthetic env whose observations (subclasses' ``_obs``) come from the step count `t`
    and a `tag` drawn at reset in [0, tag_high), so they say which step and env produced
    them; episodes end after `length` steps."""

    tag_high = 10
    length = 4

    def reward(self, action):
        return 0.0

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.tag = int(self.np_random.integers(0, self.tag_high))
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        return self._obs(), self.reward(action), self.t >= self.length, False, {}


class _TextObsEnv(gym.Env):
    observation_space = gym.spaces.Text(5)
    action_space = gym.spaces.Discrete(2)


class _NestedTupleObsEnv(gym.Env):
    observation_space = gym.spaces.Tuple((gym.spaces.Discrete(2),
                                          gym.spaces.Tuple((gym.spaces.Discrete(3),))))
    action_space = gym.spaces.Discrete(2)


class _TupleObsEnv(_StepCountEnv):
    """A Tuple observation whose values say which step and env produced them: a Discrete with
    start 1, a float Box and a MultiBinary (POPGym's Autoencode tasks have Tuple(Discrete,
    Discrete))."""

    observation_space = gym.spaces.Tuple((
        gym.spaces.Discrete(5, start=1),
        gym.spaces.Box(-100, 100, (2,), np.float64),
        gym.spaces.MultiBinary(3),
    ))
    action_space = gym.spaces.Discrete(2)
    tag_high = 50

    def _obs(self):
        return (1 + (self.t + self.tag) % 5, np.array([self.t, self.tag + 0.5]),
                np.array([self.t % 2, 1, self.tag % 2], np.int8))

    def reward(self, action):
        return float(action)


class _DictWithTupleEnv(_TupleObsEnv):
    observation_space = gym.spaces.Dict({
        "pair": gym.spaces.Tuple((gym.spaces.Discrete(3), gym.spaces.Box(0, 1, (2, 2)))),
        "pos": gym.spaces.Box(-1, 1, (2,), np.float32),
    })

    def _obs(self):
        grid = np.full((2, 2), (self.t % 10) / 10, np.float32)
        return {"pair": (self.t % 3, grid), "pos": np.array([self.tag / 50, 0], np.float32)}


class _DictObsEnv(gym.Env):
    observation_space = gym.spaces.Dict({
        "pos": gym.spaces.Box(-1, 1, (2,), np.float64),
        "room": gym.spaces.Discrete(4, start=1),
        "bits": gym.spaces.MultiBinary(3),
    })
    action_space = gym.spaces.MultiDiscrete([2, 3])

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self.observation_space.sample(), {}

    def step(self, action):
        self.t += 1
        return self.observation_space.sample(), float(action.sum()), self.t >= 3, False, {}


def test_envpool_async_send_reuses_int32_ids_only_for_its_own_array():
    """send_trusted passes EnvPool's own int32 ids when given the env's last_env_ids array;
    step() copies its env_ids, so ids a caller reordered in place are sent as they now are (and
    ids changed to envs outside the last batch are refused, checked against EnvPool's ids)."""
    env = EnvPoolEnv("CartPole-v1", 4, seed=0, batch_size=2)
    if env._direct is None:
        env.close()
        pytest.skip("EnvPool's C++ calls are not reachable in this version")
    env.reset()
    env.step(np.zeros(2, np.int32), env.last_env_ids)
    sent = []
    env._direct._send = lambda args: sent.append(args[0].copy())  # the pool is not stepped
    ids = env.last_env_ids
    env.send_trusted(np.zeros(2, np.int32), ids)
    assert sent[-1].dtype == np.int32 and sent[-1].tolist() == ids.tolist()
    mine = ids.tolist()
    other = [i for i in range(4) if i not in mine]
    ids[:] = mine[::-1]  # reordered in place: the cached int32 copy no longer matches
    env._direct._send = lambda args: (sent.append(args[0].copy()),
                                      (_ for _ in ()).throw(ValueError("sent")))
    with pytest.raises(ValueError, match="sent"):
        env.step(np.zeros(2, np.int32), ids)
    assert sent[-1].tolist() == mine[::-1]
    n_sent = len(sent)
    ids[:] = other  # the envs of the other batch are not ours to send
    with pytest.raises(ValueError, match="not awaiting an action"):
        env.step(np.zeros(2, np.int32), ids)
    assert len(sent) == n_sent
    env.close()


@pytest.mark.parametrize("space_env,name", [(_TextObsEnv, "Text"),
                                            (_NestedTupleObsEnv, r"nested .*observation\[1\]")])
def test_gym_unsupported_space_names_it(space_env, name):
    vec = gym.vector.SyncVectorEnv([space_env], autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)
    with pytest.raises(ValueError, match=name):
        GymVectorEnv(vec)


def _sync(env_cls, n=2):
    return gym.vector.SyncVectorEnv([env_cls] * n,
                                    autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)


def test_gym_tuple_observation_is_one_field_per_element():
    """Tuple(Discrete(start=1), Box, MultiBinary): fields observation_0..2 with each element's
    values (the Discrete shifted to start at 0), step after step across the autoreset; a Tuple
    entry of a Dict becomes key_0, key_1; flatten_keys takes those names; clashes are refused."""
    env = GymVectorEnv(_sync(_TupleObsEnv), discrete_obs="index")
    assert [(f.name, f.shape, f.dtype) for f in env.spec.observation] == [
        ("observation_0", (1,), np.int32), ("observation_1", (2,), np.float32),
        ("observation_2", (3,), np.uint8)]
    twin = _sync(_TupleObsEnv)
    obs, (ref, _) = env.reset(seed=7), twin.reset(seed=7)
    for t in range(7):  # across the autoreset after step 4
        assert_obs_matches(env.spec, obs, 2)
        np.testing.assert_array_equal(obs["observation_0"][:, 0], ref[0] - 1)
        np.testing.assert_array_equal(obs["observation_1"], ref[1].astype(np.float32))
        np.testing.assert_array_equal(obs["observation_2"], ref[2])
        a = np.array([t % 2, 1], np.int32)
        obs, *_ = env.step(a)
        ref, *_ = twin.step(a.astype(np.int64))

    env = GymVectorEnv(_sync(_DictWithTupleEnv), flatten_keys=["pair_1"])
    assert [(f.name, f.shape) for f in env.spec.observation] == [
        ("pair_0", (3,)), ("pair_1", (4,)), ("pos", (2,))]
    twin = _sync(_DictWithTupleEnv)
    obs, (ref, _) = env.reset(seed=3), twin.reset(seed=3)
    for _ in range(6):
        np.testing.assert_array_equal(obs["pair_0"], np.eye(3, dtype=np.uint8)[ref["pair"][0]])
        np.testing.assert_array_equal(obs["pair_1"], ref["pair"][1].reshape(2, 4))
        np.testing.assert_array_equal(obs["pos"], ref["pos"])
        obs, *_ = env.step(np.ones(2, np.int32))
        ref, *_ = twin.step(np.ones(2, np.int64))
    assert [f.name for f in GymVectorEnv(_sync(_DictWithTupleEnv), ignore_keys=["pair"])
            .spec.observation] == ["pos"]
    with pytest.raises(ValueError, match="both"):
        GymVectorEnv(_sync(_DictWithTupleEnv), ignore_keys=["pair"], flatten_keys=["pair_1"])
    with pytest.raises(ValueError, match=r"name no observation field.*observation_0"):
        GymVectorEnv(_sync(_TupleObsEnv), flatten_keys=["observation"])

    class Clash(_DictWithTupleEnv):
        observation_space = gym.spaces.Dict({
            "pair": gym.spaces.Tuple((gym.spaces.Discrete(3), gym.spaces.Box(0, 1, (2, 2)))),
            "pair_0": gym.spaces.Box(-1, 1, (2,), np.float32),
        })

    with pytest.raises(ValueError, match="'pair_0', which is also an observation key"):
        GymVectorEnv(_sync(Clash))


class _CategoricalObsEnv(_StepCountEnv):
    """Discrete(5, start=-2) and MultiDiscrete([3, 2], start=[1, 0]) entries whose values
    follow the step count; `bad_at` makes the Discrete value leave its space at that step (an
    env bug)."""

    observation_space = gym.spaces.Dict({
        "cell": gym.spaces.Discrete(5, start=-2),
        "pair": gym.spaces.MultiDiscrete([3, 2], start=[1, 0]),
    })
    action_space = gym.spaces.Discrete(2)
    bad_at = None

    tag_high = 5

    def _obs(self):
        cell = 3 if self.t == self.bad_at else (self.t + self.tag) % 5 - 2
        return {"cell": cell, "pair": np.array([1 + self.t % 3, (self.t + self.tag) % 2])}


def test_gym_discrete_observations_are_one_hot_or_indices():
    """Default discrete_obs="onehot": a Discrete entry (start -2) is a uint8 one-hot of its n
    values and a MultiDiscrete one the concatenated one-hots, equal to the env's values at
    every step across the autoreset; "index" keeps int32 indices (start subtracted); a value
    outside its space raises ValueError naming the entry; a bad option is refused."""
    env = GymVectorEnv(_sync(_CategoricalObsEnv))
    assert [(f.name, f.shape, f.dtype) for f in env.spec.observation] == [
        ("cell", (5,), np.uint8), ("pair", (5,), np.uint8)]
    idx = GymVectorEnv(_sync(_CategoricalObsEnv), discrete_obs="index")
    assert [(f.name, f.shape, f.dtype) for f in idx.spec.observation] == [
        ("cell", (1,), np.int32), ("pair", (2,), np.int32)]
    twin = _sync(_CategoricalObsEnv)
    obs, got, (ref, _) = env.reset(seed=5), idx.reset(seed=5), twin.reset(seed=5)
    eye3, eye2, eye5 = (np.eye(k, dtype=np.uint8) for k in (3, 2, 5))
    for _ in range(7):
        np.testing.assert_array_equal(obs["cell"], eye5[ref["cell"] + 2])
        np.testing.assert_array_equal(
            obs["pair"], np.concatenate([eye3[ref["pair"][:, 0] - 1], eye2[ref["pair"][:, 1]]], 1))
        np.testing.assert_array_equal(got["cell"][:, 0], ref["cell"] + 2)
        np.testing.assert_array_equal(got["pair"], ref["pair"] - [1, 0])
        a = np.zeros(2, np.int32)
        obs, got, (ref, *_) = env.step(a), idx.step(a), twin.step(a.astype(np.int64))
        obs, got = obs[0], got[0]

    class Bad(_CategoricalObsEnv):
        bad_at = 2

    bad = GymVectorEnv(_sync(Bad))
    bad.reset()
    bad.step(np.zeros(2, np.int32))
    with pytest.raises(ValueError, match=r"'cell': value 3 is outside its space"):
        bad.step(np.zeros(2, np.int32))
    with pytest.raises(ValueError, match="discrete_obs must be 'onehot' or 'index'"):
        GymVectorEnv(_sync(_CategoricalObsEnv), discrete_obs="embed")

    class Huge(_CategoricalObsEnv):
        observation_space = gym.spaces.Dict({"cell": gym.spaces.Discrete(5000)})

    with pytest.raises(ValueError, match=r"'cell' has 5000 discrete values.*discrete_obs"):
        GymVectorEnv(_sync(Huge))
    assert [f.shape for f in GymVectorEnv(_sync(Huge), discrete_obs="index")
            .spec.observation] == [(1,)]
    # through make_env / --env.kwargs, on a real gymnasium task
    lake = make_env("gym:FrozenLake-v1", 2, seed=0)
    assert [(f.name, f.shape) for f in lake.spec.observation] == [("observation", (16,))]
    assert lake.reset()["observation"].sum(1).tolist() == [1, 1]
    lake_idx = make_env("gym:FrozenLake-v1", 2, seed=0, discrete_obs="index")
    assert [(f.name, f.shape) for f in lake_idx.spec.observation] == [("observation", (1,))]


class _GoalReportingEnv(gym.Env):
    """Reports gymnasium-robotics' ``is_success`` only on an episode's last step (episodes of
    2-4 steps, drawn at reset, so envs end at different steps; success iff the last action was
    1), as goal envs that set it at termination do."""

    observation_space = gym.spaces.Box(-1, 1, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.length = 0, int(self.np_random.integers(2, 5))
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self.t += 1
        done = self.t >= self.length
        info = {"is_success": bool(action == 1)} if done else {}
        return np.zeros(2, np.float32), 0.0, done, False, info


def test_gym_success_from_is_success_counts_only_reporting_envs(tmp_path):
    """info["is_success"] is read like "success"; envs that did not report it this step (the
    vector env zero-fills them and clears "_is_success") are NaN, not failures, so the
    collector's success statistic is the share of successful episodes."""
    env = GymVectorEnv(_sync(_GoalReportingEnv, 3))
    env.reset(seed=0)
    partial = 0
    for _ in range(12):
        _, _, term, _, info = env.step(np.array([1, 0, 1], np.int32))
        if term.any():
            got = info["success"]
            np.testing.assert_array_equal(got[term], np.array([1.0, 0.0, 1.0])[term])
            assert np.isnan(got[~term]).all()  # no report: no information, not a failure
            partial += int(not term.all())
        else:
            assert "success" not in info
    assert partial > 0  # some steps ended only some envs
    from amago_fast.buffer import TrajectoryBuffer
    from amago_fast.collector import Collector, RandomPolicy

    env = GymVectorEnv(_sync(_GoalReportingEnv, 2))
    buf = TrajectoryBuffer.from_env_spec(env.spec, 1000, 2)
    col = Collector(env, RandomPolicy(env.spec, seed=3), buf)
    stats = col.collect(60)
    assert stats["episodes"] >= 10
    # The share of episodes whose last action was 1, from the stored episodes.
    eps = [np.load(p) for p in buf.export_npz(tmp_path)]
    assert len(eps) == stats["episodes"]
    want = np.mean([int(np.asarray(e["action"]).reshape(-1)[-1]) == 1 for e in eps])
    assert 0.0 < want < 1.0 and stats["success"] == pytest.approx(want)


class _OffsetActionEnv(gym.Env):
    """Discrete(3, start=-1) actions (e.g. left / stay / right); the observation echoes the
    action the env received."""

    observation_space = gym.spaces.Box(-5, 5, (1,), np.float32)
    action_space = gym.spaces.Discrete(3, start=-1)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(1, np.float32), {}

    def step(self, action):
        assert self.action_space.contains(action), action
        return np.array([action], np.float32), 0.0, False, False, {}


def test_gym_discrete_actions_with_a_start_are_zero_based_for_the_agent():
    env = GymVectorEnv(_sync(_OffsetActionEnv, 3))
    assert env.spec.action.kind == "discrete" and env.spec.action.n == 3
    env.reset(seed=0)
    obs, *_ = env.step(np.array([0, 1, 2], np.int32))
    assert obs["observation"][:, 0].tolist() == [-1.0, 0.0, 1.0]
    with pytest.raises(ValueError):
        env.step(np.array([0, 1, 3], np.int32))  # 3 is outside the agent's 0..2


# (some POPGym tasks return one info dict at every step, which gymnasium's checker warns of)
@pytest.mark.filterwarnings("ignore:.*The infos returned by:UserWarning")
def test_every_popgym_task_builds_and_steps_through_the_adapter():
    """All registered POPGym tasks (optional install; 42 in popgym 1.0.7, three of them with a
    Tuple observation) build through make_env("gym:..."), reset and step with valid random
    actions, and return observations that match their spec."""
    pytest.importorskip("popgym")
    ids = sorted(e for e in gym.registry if e.startswith("popgym-"))
    assert len(ids) >= 39
    rng = np.random.default_rng(0)
    for eid in ids:
        env = make_env(f"gym:{eid}", 2, seed=0)
        obs = env.reset()
        assert_obs_matches(env.spec, obs, 2)
        for _ in range(3):
            act = env.spec.action
            if act.kind == "discrete":
                a = rng.integers(0, act.n, 2).astype(np.int32)
            elif act.kind == "multidiscrete":
                a = np.stack([rng.integers(0, n, 2) for n in act.nvec], 1).astype(np.int32)
            else:
                a = rng.uniform(act.low, act.high, (2, *act.shape)).astype(np.float32)
            obs, *_ = env.step(a)
            assert_obs_matches(env.spec, obs, 2)
        env.close()


def test_popgym_tuple_task_runs_through_the_collector_and_buffer(tmp_path):
    """POPGym's Autoencode (a Tuple(Discrete(2), Discrete(4)) observation; optional install)
    through make_env("gym:..."), the collector and the buffer: every stored row is one the env
    returned (none invented at an autoreset)."""
    pytest.importorskip("popgym")
    from amago_fast.buffer import TrajectoryBuffer
    from amago_fast.collector import Collector, RandomPolicy

    env = make_env("gym:popgym-AutoencodeEasy-v0", 2, seed=1)
    assert [(f.name, f.shape) for f in env.spec.observation] == [
        ("observation_0", (2,)), ("observation_1", (4,))]  # one-hot
    seen: set[tuple[int, int]] = set()

    def on_obs(obs):
        assert (obs["observation_0"].sum(1) == 1).all()
        assert (obs["observation_1"].sum(1) == 1).all()
        seen.update(zip(obs["observation_0"].argmax(1).tolist(),
                        obs["observation_1"].argmax(1).tolist()))

    record_observations(env, on_obs)
    buf = TrajectoryBuffer.from_env_spec(env.spec, 10_000, 2)
    col = Collector(env, RandomPolicy(env.spec, seed=0), buf)
    stats = col.collect(300)
    assert stats["env_steps"] >= 300 and stats["episodes"] >= 2
    paths = buf.export_npz(tmp_path)
    rows = [np.load(p) for p in paths]
    stored = {(int(a), int(b)) for r in rows
              for a, b in zip(r["observation_0"].argmax(1), r["observation_1"].argmax(1))}
    assert stored <= seen and len(stored) > 2
    env.close()


class _DictWithTextEnv(_DictObsEnv):
    observation_space = gym.spaces.Dict({
        "pos": gym.spaces.Box(-1, 1, (2,), np.float64),
        "mission": gym.spaces.Text(8),
    })


def test_gym_ignore_keys_drops_unsupported_entries():
    def vec():
        return gym.vector.SyncVectorEnv([_DictWithTextEnv],
                                        autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)

    with pytest.raises(ValueError, match="mission"):
        GymVectorEnv(vec())
    env = GymVectorEnv(vec(), ignore_keys=("mission",))
    assert [f.name for f in env.spec.observation] == ["pos"]
    assert set(env.reset()) == {"pos"}
    with pytest.raises(ValueError, match="not observation keys"):
        GymVectorEnv(vec(), ignore_keys=("nope",))


class _GridWithMissionEnv(_StepCountEnv):
    """MiniGrid's observation layout: a uint8 (H, W, C) grid of codes, a Discrete direction
    and a Text mission; the grid's values say which step and env produced it."""

    observation_space = gym.spaces.Dict({
        "image": gym.spaces.Box(0, 255, (3, 3, 2), np.uint8),
        "direction": gym.spaces.Discrete(4),
        "mission": gym.spaces.Text(16),
    })
    action_space = gym.spaces.Discrete(3)

    length = 5

    def _obs(self):
        grid = ((np.arange(18).reshape(3, 3, 2) + 20 * self.t + self.tag) % 256).astype(np.uint8)
        return {"image": grid, "direction": self.t % 4, "mission": "go"}


def _field(spec, name):
    return next(f for f in spec.observation if f.name == name)


def test_gym_flatten_keys_stores_a_code_grid_as_a_flat_vector():
    """flatten_keys: the uint8 (H, W, C) grid becomes a flat uint8 field (the timestep encoder
    then normalises it as a vector instead of running its pixel CNN), values unchanged."""
    from amago_fast.nets.timestep import is_image

    def vec(n=2):
        return gym.vector.SyncVectorEnv([_GridWithMissionEnv] * n,
                                        autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)

    with pytest.raises(ValueError, match=r"mission.*ignore_keys=\['mission'\]"):
        GymVectorEnv(vec())
    kept = GymVectorEnv(vec(), ignore_keys=["mission"])
    assert is_image(_field(kept.spec, "image"))
    env = GymVectorEnv(vec(), ignore_keys=["mission"], flatten_keys=["image"])
    f = _field(env.spec, "image")
    assert f.shape == (18,) and f.dtype == np.uint8 and not is_image(f)
    twin = vec()
    ref, _ = twin.reset(seed=4)
    obs = env.reset(seed=4)
    np.testing.assert_array_equal(obs["image"], ref["image"].reshape(2, 18))
    for _ in range(7):  # across the autoreset at step 5
        a = np.array([1, 2], np.int32)
        obs, *_ = env.step(a)
        ref, *_ = twin.step(a.astype(np.int64))
        np.testing.assert_array_equal(obs["image"], ref["image"].reshape(2, 18))
        np.testing.assert_array_equal(obs["direction"], np.eye(4, dtype=np.uint8)[ref["direction"]])
    bad = [
        (dict(ignore_keys=["mission"], flatten_keys=["direction"]), ValueError,
         "only Box entries"),
        (dict(ignore_keys=["mission"], flatten_keys=["nope"]), ValueError, "not observation keys"),
        (dict(ignore_keys=["mission"], flatten_keys=["mission"]), ValueError, "both"),
        (dict(ignore_keys="mission"), TypeError, "list of key strings"),
    ]
    for kwargs, exc, msg in bad:
        with pytest.raises(exc, match=msg):
            GymVectorEnv(vec(), **kwargs)
    with pytest.raises(ValueError, match=r"name no observation field.*\['observation'\]"):
        make_env("gym:CartPole-v1", 1, flatten_keys=["image"])
    flat = make_env("gym:CartPole-v1", 1, flatten_keys=["observation"])
    assert _field(flat.spec, "observation").shape == (4,)


def test_template_missions_are_one_hot_per_placeholder():
    """MissionOneHot (duck-typed MiniGrid MissionSpace): each template mission becomes the
    one-hot of its placeholder values, concatenated; a string the template cannot produce, a
    template that produces one string twice and an oversized template raise, naming the
    field."""
    from types import SimpleNamespace

    from amago_fast.envs.gym_adapter import MissionOneHot

    space = SimpleNamespace(mission_func=lambda c, t: f"get the {c} {t}",
                            ordered_placeholders=[["red", "blue", "grey"], ["ball", "key"]])
    op = MissionOneHot("mission", space)
    assert op.width == 5
    got = op(np.array(["get the blue key", "get the red ball", "get the grey key"]))
    np.testing.assert_array_equal(got, [[0, 1, 0, 0, 1], [1, 0, 0, 1, 0], [0, 0, 1, 0, 1]])
    assert got.dtype == np.uint8
    with pytest.raises(ValueError, match="'mission': mission 'get the green key' is not one"):
        op(("get the green key",))
    twice = SimpleNamespace(mission_func=lambda c: "go", ordered_placeholders=[["a", "b"]])
    with pytest.raises(ValueError, match="comes from two placeholder choices"):
        MissionOneHot("mission", twice)
    huge = SimpleNamespace(mission_func=lambda *a: " ".join(a),
                           ordered_placeholders=[[str(i) for i in range(100)]] * 3)
    with pytest.raises(ValueError, match="1000000 template missions.*ignore_keys"):
        MissionOneHot("mission", huge)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_minigrid_template_mission_is_kept_one_hot(mode):
    """A real MiniGrid task whose mission is a template ("go to the {color} door"; optional
    install): the mission is a 6-bit one-hot field equal to the colour in the env's own mission
    string, step after step across episode ends, sync and async (gymnasium's shared memory
    cannot hold MissionSpace: the adapter then builds the async env without it). DoorKey's
    constant mission (one possible string) is dropped: it tells the agent nothing."""
    pytest.importorskip("minigrid")
    colours = ["blue", "green", "grey", "purple", "red", "yellow"]  # the template's list
    env = make_env("gym:MiniGrid-GoToDoor-5x5-v0", 2, seed=2, vectorization=mode,
                   flatten_keys=["image"])
    assert _field(env.spec, "mission").shape == (6,)
    twin = gym.make_vec("MiniGrid-GoToDoor-5x5-v0", num_envs=2, vectorization_mode="sync",
                        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.NEXT_STEP})
    obs, (ref, _) = env.reset(seed=2), twin.reset(seed=2)
    rng = np.random.default_rng(0)
    ends = 0
    for _ in range(60):
        want = [colours.index(m.split()[3]) for m in ref["mission"]]
        np.testing.assert_array_equal(obs["mission"], np.eye(6, dtype=np.uint8)[want])
        a = rng.integers(0, 7, 2).astype(np.int32)
        obs, _, te, tr, _ = env.step(a)
        ref, *_ = twin.step(a.astype(np.int64))
        ends += int((te | tr).sum())
    assert ends > 0
    env.close(), twin.close()
    door_key = make_env("gym:MiniGrid-DoorKey-5x5-v0", 1, flatten_keys=["image"])
    try:
        names = [f.name for f in door_key.spec.observation]
        assert "mission" not in names and "image" in names
        assert "mission" not in door_key.reset()
    finally:
        door_key.close()


def test_minigrid_runs_through_the_collector_and_buffer(tmp_path):
    """A real MiniGrid task (optional install) through make_env("gym:..."), the collector and
    the buffer, with the mission dropped and the grid flattened: every stored grid row is one
    the env returned (none invented at an autoreset), and the grid holds codes, not pixels."""
    pytest.importorskip("minigrid")
    from amago_fast.buffer import TrajectoryBuffer
    from amago_fast.collector import Collector, RandomPolicy

    env = make_env("gym:MiniGrid-Empty-5x5-v0", 2, seed=1, ignore_keys=["mission"],
                   flatten_keys=["image"])
    assert [f.name for f in env.spec.observation] == ["direction", "image"]
    seen: set[bytes] = set()
    record_observations(env, lambda obs: seen.update(row.tobytes() for row in obs["image"]))
    buf = TrajectoryBuffer.from_env_spec(env.spec, 10_000, 2)
    col = Collector(env, RandomPolicy(env.spec, seed=0), buf)
    stats = col.collect(400)  # 100-step timeouts (or the goal): several episodes per env
    assert stats["env_steps"] >= 400 and stats["episodes"] >= 2
    paths = buf.export_npz(tmp_path)
    assert len(paths) >= 2
    stored = np.concatenate([np.load(p)["image"] for p in paths])
    assert stored.shape[1:] == (147,) and stored.dtype == np.uint8
    assert stored.max() <= 10  # object / colour / state codes
    assert {row.tobytes() for row in stored} <= seen
    env.close()


def test_gym_dict_obs_multidiscrete_actions_and_autoreset():
    vec = gym.vector.SyncVectorEnv([_DictObsEnv] * 2,
                                   autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)
    env = GymVectorEnv(vec)
    obs = env.reset()
    assert_obs_matches(env.spec, obs, 2)
    assert env.spec.action.kind == "multidiscrete"
    assert ((obs["room"] >= 0) & (obs["room"] < 4)).all()
    act = np.array([[1, 2], [0, 1]], np.int32)
    for t in range(4):
        obs, r, te, tr, _ = env.step(act)
        if t < 2:
            np.testing.assert_allclose(r, [3, 1])
        if t == 2:
            assert te.all()
        if t == 3:  # the next-step autoreset
            assert (r == 0).all() and not te.any()
    same = gym.vector.SyncVectorEnv([_DictObsEnv],
                                    autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    with pytest.raises(ValueError, match="NEXT_STEP"):
        GymVectorEnv(same)


def test_gym_async_matches_sync():
    rng = np.random.default_rng(0)
    acts = [rng.integers(0, 2, 2).astype(np.int32) for _ in range(30)]
    out = []
    for mode in ("sync", "async"):
        env = make_env("gym:CartPole-v1", 2, seed=3, vectorization=mode)
        obs = [env.reset()["observation"]]
        rs = []
        for a in acts:
            o, r, te, tr, _ = env.step(a)
            obs.append(o["observation"])
            rs.append(r)
        env.close()
        out.append((np.stack(obs), np.stack(rs)))
    np.testing.assert_array_equal(out[0][0], out[1][0])
    np.testing.assert_array_equal(out[0][1], out[1][1])


# ----------------------------------------------------------------------------- actuator inversion
def test_actuator_subsets_split():
    train, held = actuator_subsets(2)
    assert {tuple(s) for s in train} == {(True, False), (True, True)}
    assert {tuple(s) for s in held} == {(False, True)}
    train, held = actuator_subsets(1)
    assert train.shape == (1, 1) and held.shape == (0, 1)
    assert len(actuator_subsets(6)[0]) == 32 and len(actuator_subsets(6)[1]) == 31


def test_actuator_inversion_flips_sign_against_plain_env():
    n = 2
    rng = np.random.default_rng(0)
    acts = [rng.uniform(-1, 1, (n, 2)).astype(np.float32) for _ in range(25)]
    plain = EnvPoolEnv("BallInCupCatch-v1", n, seed=5)
    inv = ActuatorInversionEnv(EnvPoolEnv("BallInCupCatch-v1", n, seed=5), invert_prob=1.0,
                               subsets="all")
    same = ActuatorInversionEnv(EnvPoolEnv("BallInCupCatch-v1", n, seed=5), invert_prob=0.0)
    p0, i0 = plain.reset(), inv.reset()
    same.reset()
    np.testing.assert_array_equal(p0["position"], i0["position"])
    for a in acts:
        po, *_ = plain.step(-a)
        io, _, _, _, info = inv.step(a)
        so, *_ = same.step(-a)
        assert info["inverted"].all()
        np.testing.assert_array_equal(po["position"], io["position"])
        np.testing.assert_array_equal(po["velocity"], so["velocity"])


def test_actuator_inversion_contexts_change_only_at_episode_starts():
    base = EnvPoolEnv("CartpoleSwingup-v1", 4, seed=0, max_episode_steps=5)
    env = ActuatorInversionEnv(base, split="train", seed=1)
    env.reset()
    prev = env.inverted.copy()
    pending = np.zeros(4, bool)
    flips = 0
    for _ in range(60):
        _, _, te, tr, info = env.step(np.zeros((4, 1), np.float32))
        changed = info["inverted"] != prev
        assert not (changed & ~pending).any()  # only on the autoreset step
        flips += changed.sum()
        prev = info["inverted"].copy()
        pending = te | tr
    assert flips > 0
    out = ActuatorInversionEnv(EnvPoolEnv("CartpoleSwingup-v1", 3, seed=0), split="eval-out")
    out.reset()
    assert out.inverted.all()
    g = -out.sign[:, 0]
    assert ((g >= EVAL_OUT_GAIN[0]) & (g <= EVAL_OUT_GAIN[1])).all()
    bic = ActuatorInversionEnv(EnvPoolEnv("BallInCupCatch-v1", 3, seed=0), split="eval-out")
    bic.reset()
    np.testing.assert_array_equal(bic.sign, np.tile([1.0, -1.0], (3, 1)))  # held-out subset {1}


def test_obs_converter_against_numpy_reference():
    """The one step-output converter both adapters use: HWC frames, Discrete offsets, dtype and
    shape conversions, pass-through (no copy) when nothing is to convert."""
    from amago_fast.envs.base import ObsConverter, Shift

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (3, 4, 5, 6), dtype=np.uint8)  # (B, C, H, W)
    room = rng.integers(1, 5, 3)  # Discrete(start=1) values
    pos = rng.normal(size=(3, 2))  # float64
    ok = rng.normal(size=(3, 2)).astype(np.float32)
    scalar = rng.normal(size=3)  # () per env
    conv = ObsConverter([
        ("frames", "frames", np.uint8, (5, 6, 4), "hwc"),
        ("room", "room", np.int32, (1,), Shift(np.array([1]))),
        ("pos", "pos", np.float32, (2,), None),
        ("ok", "ok", np.float32, (2,), None),
        ("scalar", "scalar", np.float32, (1,), None),
    ])
    out = conv({"frames": frames, "room": room, "pos": pos, "ok": ok, "scalar": scalar})
    np.testing.assert_array_equal(out["frames"], np.transpose(frames, (0, 2, 3, 1)))
    assert out["frames"].flags.c_contiguous
    np.testing.assert_array_equal(out["room"], (room - 1).reshape(3, 1))
    assert out["room"].dtype == np.int32
    np.testing.assert_array_equal(out["pos"], pos.astype(np.float32))
    assert out["ok"] is ok
    np.testing.assert_array_equal(out["scalar"], scalar.astype(np.float32).reshape(3, 1))
    whole = ObsConverter([(None, "observation", np.float32, (2,), None)])
    assert whole(ok)["observation"] is ok


def test_step_arrays_pass_native_arrays_and_convert_the_rest():
    """Native float32 / bool arrays pass through as the same objects (the identity fast path);
    any other dtype, byte order, array subclass or sequence is converted, as np.asarray."""
    from amago_fast.envs.base import step_arrays

    r = np.array([1.5, -2.0], np.float32)
    d = np.array([True, False])
    t = np.array([False, True])
    out = step_arrays(r, d, t)
    assert out[0] is r and out[1] is d and out[2] is t
    for reward, term, trunc in [
        (r.astype(np.float64), d, t),
        (r.astype(">f4"), d, t),  # equal values, byte-swapped: converted to native
        (r, d.astype(np.int8), t),
        (r, d, t.astype(np.uint8)),
        (r.tolist(), d.tolist(), t.tolist()),
        (np.ma.masked_array(r), d, t),
    ]:
        got = step_arrays(reward, term, trunc)
        for g, want, dtype in zip(got, (r, d, t), (np.float32, np.bool_, np.bool_)):
            assert type(g) is np.ndarray and g.dtype == dtype and g.dtype.isnative
            np.testing.assert_array_equal(g, want)


@pytest.mark.parametrize("bad", [[0, 4, 1], [0, -1, 1]])
@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.float32])
def test_check_actions_rejects_out_of_range_discrete(bad, dtype):
    """Both the int32 fast path and the general path reject out-of-range and negative ids."""
    from amago_fast.envs.base import check_actions
    from amago_fast.spaces import ActionSpec

    spec = ActionSpec("discrete", n=4)
    with pytest.raises(ValueError, match="out of range"):
        check_actions(spec, np.array(bad, dtype), 3, "e")
    ok = check_actions(spec, np.array([0, 3, 1], dtype), 3, "e")
    assert ok.dtype == np.int32 and ok.tolist() == [0, 3, 1]
    with pytest.raises(ValueError, match="shape"):
        check_actions(spec, np.array([0, 3], dtype), 3, "e")


# ---------------------------------------------------------------------------- env state, T-Maze cue
def test_actinv_rng_state_resume_continues_the_context_stream():
    """Env A runs, saves its context RNG and (as the collector does on resume) resets; a fresh env
    B with another seed loads the state and resets: both draw the same contexts from there on —
    the continuation of A's stream, not its start again."""
    import json
    import pickle

    a = actinv_cartpole(seed=1)
    a.reset()
    for _ in range(13):  # two rounds of episode starts draw contexts
        a.step(np.zeros((4, 1), np.float32))
    saved = a.rng_state_dict()
    via_json = json.loads(json.dumps(saved))
    via_pickle = pickle.loads(pickle.dumps(saved))
    assert via_json == saved == via_pickle
    want = actinv_contexts_after_reset(a)
    assert a.rng_state_dict() != saved  # a copy: A's later draws did not change it
    assert len({tuple(inv) for _, inv in want}) > 1  # contexts were redrawn along the way
    for state in (via_json, via_pickle):
        b = actinv_cartpole(seed=7)
        b.load_rng_state_dict(state)
        got = actinv_contexts_after_reset(b)
        for (ws, wi), (gs, gi) in zip(want, got):
            np.testing.assert_array_equal(gs, ws)
            np.testing.assert_array_equal(gi, wi)
        b.close()
    # Without the state, a restarted env replays the stream from its start instead.
    fresh = actinv_contexts_after_reset(actinv_cartpole(seed=1))
    assert any((f[1] != w[1]).any() for f, w in zip(fresh, want))
    # state_dict() (what the trainer saves for the eval env) is the same state.
    c = actinv_cartpole(seed=9)
    c.load_state_dict(a.state_dict())
    assert c.rng_state_dict() == a.rng_state_dict()
    a.close()


def test_actinv_rng_state_rejects_wrong_or_corrupt_state_unchanged():
    import json

    env = actinv_cartpole(seed=2, n=2)
    good = env.rng_state_dict()
    before = env.rng.bit_generator.state
    other = ActuatorInversionEnv(EnvPoolEnv("BallInCupCatch-v1", 2, seed=0), seed=0)

    def edited(**kw):
        st = json.loads(json.dumps(good))
        for path, v in kw.items():
            node = st
            *head, last = path.split("__")
            for k in head:
                node = node[k]
            if v is KeyError:
                del node[last]
            else:
                node[last] = v
        return st

    bad_states = [
        None, [], {}, {"rng": 1},
        other.rng_state_dict(),  # d = 2, not 1
        _actinv_eval_state("eval-in"),
        edited(format="something-else"), edited(split="eval-out"), edited(invert_prob=0.3),
        edited(subsets="all"), edited(d=KeyError),
        edited(bit_generator="PCG64"), edited(bit_generator__bit_generator="MT19937"),
        edited(bit_generator__state__state=1.5), edited(bit_generator__state__state=-1),
        edited(bit_generator__state__state=2**128), edited(bit_generator__state__inc=2),
        edited(bit_generator__state__inc="3"), edited(bit_generator__state__inc=KeyError),
        edited(bit_generator__has_uint32=2), edited(bit_generator__uinteger=2**32),
        edited(bit_generator__extra=0),
    ]
    for st in bad_states:
        for load in (env.load_rng_state_dict, env.load_state_dict):
            with pytest.raises(ValueError):
                load(st)
            assert env.rng.bit_generator.state == before  # unchanged
    env.load_rng_state_dict(good)  # the untouched dict still loads
    assert env.rng.bit_generator.state == before
    # The older {"rng", "split"} form (checkpoints before rng_state_dict) still loads.
    env.load_state_dict({"rng": before, "split": "train"})
    with pytest.raises(ValueError, match="split"):
        env.load_state_dict({"rng": before, "split": "eval-in"})
    other.close()
    env.close()


def _actinv_eval_state(split):
    e = ActuatorInversionEnv(EnvPoolEnv("CartpoleSwingup-v1", 2, seed=0), split=split, seed=2)
    st = e.rng_state_dict()
    e.close()
    return st


def test_actinv_hopper_version_option():
    from amago_fast.envs.actuator_inversion import make_actinv_env

    for version, task in [(None, "Hopper-v5"), ("v4", "Hopper-v4"), ("v3", "Hopper-v3")]:
        kw = {} if version is None else {"version": version}
        env = make_env("actinv-hopper", 2, seed=0, **kw)
        assert env.env.spec.extra["task_id"] == task and env.d == 3
        env.reset()
        obs, r, *_ = env.step(np.zeros((2, 3), np.float32))
        assert obs["observation"].shape == (2, 11) and np.isfinite(r).all()
        env.close()
    with pytest.raises(ValueError, match="version"):
        make_env("actinv-hopper", 2, version="v2")
    with pytest.raises(TypeError, match="version"):  # dm_control tasks have no version option
        make_env("actinv-walker", 2, version="v4")
    with pytest.raises(ValueError, match="actinv-hopper only"):
        make_actinv_env("actinv-cartpole", 2, version="v4")


@pytest.mark.parametrize("active", [False, True])
def test_tmaze_cue_is_not_aliased_with_the_junction(active):
    """Ni et al.'s ambiguous encoding: cue [0, c], corridor [0, 0], junction [1, y]. The cue +1
    used to be shown as [1, 0], exactly the junction's observation."""
    h, n = 3, 8
    env = TMaze(n, corridor_length=h, active=active, seed=0)
    obs = env.reset()["observation"]
    if active:
        obs = env.step(np.full(n, LEFT_ACTION, np.int32))[0]["observation"]
    assert set(env.cue.tolist()) == {1.0, -1.0}
    np.testing.assert_array_equal(obs, np.stack([np.zeros(n), env.cue], 1))
    cues = {tuple(o) for o in obs}
    seen = set()
    for _ in range(h):
        obs = env.step(np.zeros(n, np.int32))[0]["observation"]
        seen |= {tuple(o) for o in obs}
    np.testing.assert_array_equal(obs, np.tile([1.0, 0.0], (n, 1)))  # all at the junction
    assert not cues & seen


LEFT_ACTION = 2


# ----------------------------------------------------------------------------- adapter faults
def _track_elapsed(env, steps, ids):
    """Step an async CartPole pool `steps` times with the last batch's ids; every env must come
    back with elapsed_step one more than when last seen (0 after an episode end), and a batch must
    hold distinct envs: an env stepped twice or out of turn breaks one or the other."""
    last = {}
    for _ in range(steps):
        _, _, te, tr, info = env.step(np.zeros(len(ids), np.int32), ids)
        ids = info["env_id"]
        assert len(set(ids.tolist())) == len(ids), ids
        for i, e, d in zip(ids.tolist(), info["elapsed_step"].tolist(), (te | tr).tolist()):
            assert i not in last or e == last[i] + 1, (i, e, last)  # first sight: any
            last[i] = -1 if d else e
    return ids


@pytest.mark.parametrize("bad", ["duplicate", "other"])
def test_envpool_async_step_rejects_bad_env_ids_and_sends_nothing(bad):
    env = EnvPoolEnv("CartPole-v1", 4, seed=0, batch_size=2)
    with pytest.raises(ValueError, match="reset"):  # no batch awaits actions before reset
        env.step(np.zeros(2, np.int32), np.array([0, 1]))
    env.reset()
    ids = env.last_env_ids.copy()
    for _ in range(3):
        if bad == "duplicate":
            wrong, match = np.array([ids[0], ids[0]]), rf"duplicate env_ids \[{ids[0]}\]"
        else:
            wrong, match = np.setdiff1d(np.arange(4), ids), "not awaiting an action"
        with pytest.raises(ValueError, match=match):
            env.step(np.zeros(2, np.int32), wrong)
        np.testing.assert_array_equal(env.last_env_ids, ids)  # nothing sent, nothing received
        ids = _track_elapsed(env, 5, ids)
    # Any order of the last batch's ids is its envs, each once.
    _track_elapsed(env, 5, ids[::-1].copy())
    with pytest.raises(ValueError, match="integer ids"):
        env.step(np.zeros(2, np.int32), env.last_env_ids.astype(np.float64))
    env.close()


def test_envpool_async_step_without_env_ids_says_so():
    env = EnvPoolEnv("CartPole-v1", 4, seed=0, batch_size=2)
    env.reset()
    with pytest.raises(ValueError, match="needs env_ids"):
        env.step(np.zeros(2, np.int32))
    _track_elapsed(env, 3, env.last_env_ids)
    env.close()


def test_actinv_async_step_rejects_bad_env_ids():
    env = make_env("actinv-hopper", 4, batch_size=2)
    env.reset()
    ids = np.asarray(env.last_env_ids).copy()
    with pytest.raises(ValueError, match="needs env_ids"):
        env.step(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="out of bounds"):
        env.step(np.full((2, 3), 1.5, np.float32), ids)
    with pytest.raises(ValueError, match="duplicate env_ids"):
        env.step(np.zeros((2, 3), np.float32), np.array([ids[0], ids[0]]))
    with pytest.raises(ValueError, match="not awaiting an action"):
        env.step(np.zeros((2, 3), np.float32), np.setdiff1d(np.arange(4), ids))
    _, _, _, _, info = env.step(np.zeros((2, 3), np.float32), ids)
    assert len(set(info["env_id"].tolist())) == 2
    env.close()


class _RaisingEnv(gym.Env):
    """Raises on its 4th step after each reset; its observation is the seed of its last seeded
    reset (-1: none) and its step count."""

    observation_space = gym.spaces.Box(-1e9, 1e9, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self):
        self.t, self.seed_seen = 0, -1

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        if seed is not None:
            self.seed_seen = seed
        return np.array([self.seed_seen, 0], np.float32), {}

    def step(self, action):
        self.t += 1
        if self.t == 4:
            raise RuntimeError("physics exploded")
        return np.array([self.seed_seen, self.t], np.float32), 1.0, False, False, {}


gym.register("AmagoFastRaising-v0", entry_point=_RaisingEnv)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("vectorization", ["sync", "async"])
def test_gym_env_rebuilt_after_a_worker_raised(vectorization):
    env = GymVectorEnv("AmagoFastRaising-v0", 2, seed=10, vectorization=vectorization)
    try:
        obs = env.reset()
        np.testing.assert_array_equal(obs["observation"][:, 0], [10, 11])
        for _ in range(3):
            env.step(np.zeros(2, np.int32))
        with pytest.raises(RuntimeError, match="physics exploded"):
            env.step(np.zeros(2, np.int32))
        if vectorization == "async":  # the worker that raised is gone: a clear error
            with pytest.raises(RuntimeError, match="call reset"):
                env.step(np.zeros(2, np.int32))
        for k in (1, 2):  # each rebuild seeds its envs past every seed used so far
            obs = env.reset()
            np.testing.assert_array_equal(obs["observation"][:, 0], [10 + 2 * k, 11 + 2 * k])
            for t in range(1, 4):
                obs, r, *_ = env.step(np.zeros(2, np.int32))
                np.testing.assert_array_equal(obs["observation"][:, 1], [t, t])
            with pytest.raises(RuntimeError, match="physics exploded"):
                env.step(np.zeros(2, np.int32))
        obs = env.reset(seed=3)  # an explicit seed still wins
        np.testing.assert_array_equal(obs["observation"][:, 0], [3, 4])
        obs = env.reset()  # no fault: the envs are kept (not reseeded)
        np.testing.assert_array_equal(obs["observation"][:, 0], [3, 4])
    finally:
        env.close()


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("vectorization", ["sync", "async"])
def test_gym_collector_continues_after_a_worker_raised(vectorization):
    from amago_fast.buffer import TrajectoryBuffer
    from amago_fast.collector import Collector, RandomPolicy

    env = make_env("gym:AmagoFastRaising-v0", 2, vectorization=vectorization)
    buf = TrajectoryBuffer.from_env_spec(env.spec, capacity_steps=1000, num_envs=2)
    col = Collector(env, RandomPolicy(env.spec), buf)
    try:
        with pytest.raises(RuntimeError, match="physics exploded"):
            col.collect(20)
        col.collect(4)  # restarts the rollouts on a rebuilt env (3 steps each before a raise)
    finally:
        env.close()


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_gym_given_async_vector_env_broken_after_fault_says_rebuild():
    from gymnasium.vector import AsyncVectorEnv, AutoresetMode

    vec = AsyncVectorEnv([_RaisingEnv, _RaisingEnv], autoreset_mode=AutoresetMode.NEXT_STEP)
    env = GymVectorEnv(vec)
    try:
        env.reset()
        for _ in range(3):
            env.step(np.zeros(2, np.int32))
        with pytest.raises(RuntimeError, match="physics exploded"):
            env.step(np.zeros(2, np.int32))
        with pytest.raises(RuntimeError, match="broken after a fault.*must be rebuilt"):
            env.reset()
    finally:
        env.close()
    # A given sync vector env keeps working after a fault (reset as it is).
    from gymnasium.vector import SyncVectorEnv

    env = GymVectorEnv(SyncVectorEnv([_RaisingEnv, _RaisingEnv],
                                     autoreset_mode=AutoresetMode.NEXT_STEP))
    env.reset()
    for _ in range(3):
        env.step(np.zeros(2, np.int32))
    with pytest.raises(RuntimeError, match="physics exploded"):
        env.step(np.zeros(2, np.int32))
    obs = env.reset()
    env.step(np.zeros(2, np.int32))
    assert obs["observation"].shape == (2, 2)
    env.close()


def test_envpool_env_wraps_a_built_pool():
    import envpool

    pool = envpool.make("CartPole-v1", env_type="gymnasium", num_envs=4, seed=5)
    env = EnvPoolEnv(pool)
    ref = EnvPoolEnv("CartPole-v1", 4, seed=5)
    assert env.spec == ref.spec and env.spec.name == "envpool:CartPole-v1"
    assert (env.num_envs, env.batch_size, env.is_async, env.task_id) == (4, 4, False,
                                                                          "CartPole-v1")
    np.testing.assert_array_equal(env.reset()["observation"], ref.reset()["observation"])
    rng = np.random.default_rng(0)
    for _ in range(30):
        a = rng.integers(0, 2, 4).astype(np.int32)
        got, want = env.step(a), ref.step(a)
        for x, y in zip(got[:4], want[:4]):
            np.testing.assert_array_equal(x["observation"] if isinstance(x, dict) else x,
                                          y["observation"] if isinstance(y, dict) else y)
    with pytest.raises(ValueError, match="seeds are fixed"):
        env.reset(seed=6)
    env.close(), ref.close()
    # Async pool: batch_size from the config; a re-reset rebuilds it from its class and spec.
    pool = envpool.make("CartPole-v0", env_type="gymnasium", num_envs=4, batch_size=2, seed=1)
    env = EnvPoolEnv(pool, 4, batch_size=2, seed=1, name="cp")
    assert env.is_async and env.batch_size == 2 and env.task_id == "CartPole-v0"
    assert env.spec.name == "cp" and env.spec.max_episode_steps == 200
    for _ in range(2):
        env.reset()
        _track_elapsed(env, 6, env.last_env_ids)
    assert env.pool is not pool and env.pool.config == pool.config
    env.close()


def test_envpool_env_rejects_pools_it_cannot_wrap():
    import envpool

    pool = envpool.make("CartPole-v1", env_type="gymnasium", num_envs=4, batch_size=2)
    for kwargs, match in [({"num_envs": 3}, "num_envs=3 but the pool was built with num_envs=4"),
                          ({"batch_size": 4}, "batch_size=4 but"),
                          ({"seed": 1}, "seed=1 but"),
                          ({"max_episode_steps": 10}, "given with a built pool")]:
        with pytest.raises(ValueError, match=match):
            EnvPoolEnv(pool, **kwargs)
    with pytest.raises(ValueError, match="gymnasium-API pool.*dm_env"):
        EnvPoolEnv(envpool.make("CartPole-v1", env_type="dm", num_envs=2))
    with pytest.raises(TypeError, match="task id or an envpool.make"):
        EnvPoolEnv(gym.make("CartPole-v1"), 1)
    with pytest.raises(TypeError, match=r"EnvPoolEnv\(pool\)"):
        GymVectorEnv(pool)
    with pytest.raises(TypeError, match=r"EnvPoolEnv\(pool\)"):
        GymVectorEnv(envpool.make("CartPole-v1", env_type="dm", num_envs=2))
    pool.close()


def test_make_env_num_envs_accepts_numpy_integers_only():
    env = make_env("tmaze-passive", np.int64(3))
    assert env.num_envs == 3 and type(env.num_envs) is int
    env = make_env("envpool:CartPole-v1", np.int32(2), batch_size=np.int64(1))
    assert (env.num_envs, env.batch_size) == (2, 1)
    env.close()
    for bad in (True, np.bool_(True), 2.0, np.float64(2), "2", 0, np.int64(-1)):
        for name in ("tmaze-passive", "envpool:CartPole-v1", "gym:CartPole-v1"):
            with pytest.raises(ValueError, match="num_envs must be a positive integer"):
                make_env(name, bad)
    with pytest.raises(ValueError, match="num_envs must be a positive integer"):
        EnvPoolEnv("CartPole-v1", True)
    with pytest.raises(ValueError, match="num_envs must be a positive integer"):
        TMaze(2.0)


@pytest.mark.parametrize("name", ["envpool:Pendulum-v1", "gym:Pendulum-v1"])
def test_continuous_step_validates_bounds(name):
    env = make_env(name, 3)
    env.reset()
    for bad in (5.0, -2.5, np.nan, np.inf):
        a = np.array([[0.0], [bad], [1.0]], np.float32)
        with pytest.raises(ValueError, match=r"NaN|out of bounds: low=\[-2.0\], high=\[2.0\]"):
            env.step(a)
    # The bounds themselves, float32 rounding just past them and a tanh-squashed batch
    # rescaled to [low, high] (as the agent's policy head does) are in bounds.
    edge = np.float32(2.0) * np.float32(1 + 5e-7)
    env.step(np.array([[-2.0], [2.0], [edge]], np.float32))
    env.step(np.array([[-2.0], [2.0], [-edge]], np.float64))
    squashed = np.tanh(np.array([[-40.0], [0.3], [40.0]], np.float32))
    env.step((-2.0 + (squashed + 1) / 2 * 4.0).astype(np.float32))
    env.close()


@pytest.mark.parametrize("task", ["FrozenLake-v1", "Taxi-v3"])
def test_envpool_discrete_observation_tasks_one_hot(task, tmp_path):
    """EnvPool's toy-text tasks have Discrete observations (FrozenLake's cell, Taxi's 500
    states): one-hot uint8 by default, indices with discrete_obs="index", both equal to the raw
    pool's observation at every step across episode ends; an async collector run stores only
    rows the env returned."""
    import envpool

    from amago_fast.buffer import TrajectoryBuffer
    from amago_fast.collector import Collector, RandomPolicy

    n = 4
    pool = envpool.make(task, env_type="gymnasium", num_envs=n, seed=3)
    env = EnvPoolEnv(task, n, seed=3)
    idx = EnvPoolEnv(task, n, seed=3, discrete_obs="index")
    size = pool.observation_space.n
    assert [(f.name, f.shape, f.dtype) for f in env.spec.observation] == [
        ("observation", (size,), np.uint8)]
    assert [(f.name, f.shape) for f in idx.spec.observation] == [("observation", (1,))]
    ref, obs, got = pool.reset()[0], env.reset(), idx.reset()
    rng = np.random.default_rng(0)
    ends = 0
    for _ in range(210):  # Taxi's episodes are cut at 200 steps
        np.testing.assert_array_equal(obs["observation"].argmax(1), ref)
        np.testing.assert_array_equal(obs["observation"].sum(1), 1)
        np.testing.assert_array_equal(got["observation"][:, 0], ref)
        a = rng.integers(0, pool.action_space.n, n).astype(np.int32)
        ref, _, te, tr, _ = pool.step(a)
        obs, got = env.step(a)[0], idx.step(a)[0]
        ends += int((te | tr).sum())
    assert ends > 0  # the comparison crossed EnvPool's autoreset
    for e in (pool, env, idx):
        e.close()
    with pytest.raises(ValueError, match="discrete_obs must be 'onehot' or 'index'"):
        EnvPoolEnv(task, n, seed=3, discrete_obs="embed")

    env = EnvPoolEnv(task, n, seed=3, batch_size=2)
    seen: set[int] = set()
    record_observations(env, lambda obs: seen.update(obs["observation"].argmax(1).tolist()),
                        methods=("reset", "recv_step"))
    buf = TrajectoryBuffer.from_env_spec(env.spec, 10_000, n)
    stats = Collector(env, RandomPolicy(env.spec, seed=0), buf).collect(1000)
    assert stats["env_steps"] >= 1000 and stats["episodes"] >= 1
    stored = np.concatenate([np.load(p)["observation"] for p in buf.export_npz(tmp_path)])
    assert stored.shape[1:] == (size,) and (stored.sum(1) == 1).all()
    assert set(stored.argmax(1).tolist()) <= seen
    env.close()


def test_minigrid_code_grid_is_flattened_by_default():
    """MiniGrid's ``image`` holds object/colour/state codes, not pixels: with no flatten_keys
    given, a MiniGrid id (or a vector env built from one) stores it as a flat vector, so the
    encoder normalises it instead of running the pixel CNN over codes / 255; flatten_keys=[]
    keeps the grid (the CNN); an env of another suite with the same layout keeps it too."""
    pytest.importorskip("minigrid")
    from amago_fast.nets.timestep import is_image

    env = make_env("gym:MiniGrid-MemoryS7-v0", 2, seed=3)
    try:
        f = _field(env.spec, "image")
        assert f.shape == (147,) and f.dtype == np.uint8 and not is_image(f)
        obs = env.reset(seed=3)
        assert obs["image"].shape == (2, 147) and obs["image"].max() <= 10
    finally:
        env.close()
    grid = make_env("gym:MiniGrid-MemoryS7-v0", 1, flatten_keys=[])
    try:
        assert is_image(_field(grid.spec, "image"))
    finally:
        grid.close()
    vec = gym.make_vec("MiniGrid-Empty-5x5-v0", num_envs=1, vectorization_mode="sync",
                       vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.NEXT_STEP})
    built = GymVectorEnv(vec)
    try:
        assert _field(built.spec, "image").shape == (147,)
    finally:
        built.close()
    other = GymVectorEnv(gym.vector.SyncVectorEnv(
        [_GridWithMissionEnv], autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP),
        ignore_keys=["mission"])
    assert is_image(_field(other.spec, "image"))


def test_a_run_that_stored_the_grid_is_told_how_to_read_it_again():
    """A MiniGrid run made before code grids were flattened by default stored ``image`` as a
    (7, 7, 3) grid: resume/eval name the field and the flatten_keys that reads it so, and with
    that option the env fits the run again (and the other way round)."""
    pytest.importorskip("minigrid")
    from amago_fast.buffer import TrajectoryBuffer
    from amago_fast.resume import fields_mismatch
    from amago_fast.spaces import FieldSpec

    env = make_env("gym:MiniGrid-MemoryS7-v0", 1)
    grid = make_env("gym:MiniGrid-MemoryS7-v0", 1, flatten_keys=[])
    try:
        old = TrajectoryBuffer.from_env_spec(grid.spec, 1000, 1).fields
        flat = TrajectoryBuffer.from_env_spec(env.spec, 1000, 1).fields
        assert FieldSpec("image", (7, 7, 3), np.uint8) in old
        msg = fields_mismatch(old, env)
        assert "'image'" in msg and "flatten_keys\": []" in msg
        assert fields_mismatch(old, grid) is None and fields_mismatch(flat, env) is None
        assert "flatten_keys\": [\"image\"]" in fields_mismatch(flat, grid)
    finally:
        env.close(), grid.close()
