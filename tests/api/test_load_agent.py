"""amago_fast.load_agent / DeployedPolicy on real runs: the loaded policy acts exactly as the
trained Agent does under the collector, a trained T-Maze run reproduces its greedy success in a
plain reset/step loop, raw gymnasium observations work, and bad input changes nothing."""

from __future__ import annotations

import hashlib
import json
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from amago_fast.collector import Collector
from amago_fast.deploy import DeployedPolicy, load_agent
from amago_fast.envs import make_env
from amago_fast.spec_io import SPEC_FILE, load_spec
from amago_fast.trainer import Trainer
from tests._tiny_run import tiny_tmaze_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _Recording:
    """The Agent under the collector, recording every action batch it returns."""

    def __init__(self, agent) -> None:
        self.agent, self.actions = agent, []

    def init_state(self, n):
        return self.agent.init_state(n)

    def reset_state(self, state, ids):
        return self.agent.reset_state(state, ids)

    def act(self, rows, state, sample, env_ids=None):
        a, state = self.agent.act(rows, state, sample, env_ids)
        self.actions.append(a.copy())
        return a, state


def _plain_loop(policy: DeployedPolicy, env, steps: int, sample: bool = False):
    """A plain reset/step loop (no collector): every action batch, episode returns/successes."""
    obs = env.reset()
    policy.reset(env.num_envs)
    reward = done = None
    actions, returns, successes = [], [], []
    ep_ret = np.zeros(env.num_envs)
    for _ in range(steps):
        a = policy.act(obs, reward, done, sample=sample)
        actions.append(a.copy())
        was_done = done if done is not None else np.zeros(env.num_envs, bool)
        obs, reward, term, trunc, info = env.step(a)
        reward = np.where(was_done, 0.0, reward)  # the autoreset step carries no reward
        done = (term | trunc) & ~was_done
        ep_ret = np.where(was_done, 0.0, ep_ret) + reward
        for i in np.nonzero(done)[0]:
            returns.append(ep_ret[i])
            successes.append(float(info["success"][i]))
    return actions, returns, successes


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The tiny T-Maze run (96 env steps, ~1 s) and its trained Agent."""
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("tiny") / "run"
    t = Trainer(tiny_tmaze_config(checkpoint_interval=0, eval_interval=0), run)
    t.train()
    return run, t


@pytest.mark.parametrize("sample", [False, True])
def test_loaded_policy_acts_exactly_as_the_agent_under_the_collector(tiny_run, sample):
    run, trainer = tiny_run
    policy = load_agent(run)
    assert policy.checkpoint.name == "ckpt-000000000096"
    ref = _Recording(trainer.agent)
    env_a = make_env("tmaze-passive", 3, seed=7, corridor_length=3)
    env_b = make_env("tmaze-passive", 3, seed=7, corridor_length=3)
    torch.manual_seed(5)
    Collector(env_a, ref).evaluate(9, sample=sample)
    torch.manual_seed(5)
    got, _, _ = _plain_loop(policy, env_b, len(ref.actions), sample=sample)
    assert len(ref.actions) >= 12  # several episodes per env, autoresets included
    for i, (a, b) in enumerate(zip(ref.actions, got)):
        np.testing.assert_array_equal(a, b, err_msg=f"step {i}")


def test_native_and_pytorch_steps_and_a_single_env_agree(tiny_run):
    run, _ = tiny_run
    native, torch_path = load_agent(run), load_agent(run)
    torch_path.agent.use_native_step = False
    env_a = make_env("tmaze-passive", 1, seed=3, corridor_length=3)
    env_b = make_env("tmaze-passive", 1, seed=3, corridor_length=3)
    a, _, _ = _plain_loop(native, env_a, 20)
    b, _, _ = _plain_loop(torch_path, env_b, 20)
    np.testing.assert_array_equal(np.concatenate(a), np.concatenate(b))
    # One env without the leading env dimension: scalar action out, same actions.
    env_c = make_env("tmaze-passive", 1, seed=3, corridor_length=3)
    obs = env_c.reset()
    native.reset(1)
    reward = done = None
    single = []
    for _ in range(20):
        act = native.act({k: v[0] for k, v in obs.items()}, reward, done)
        assert np.ndim(act) == 0
        single.append(int(act))
        obs, r, term, trunc, _ = env_c.step(np.array([act]))
        reward, done = float(r[0]), bool(term[0] | trunc[0])
    assert single == [int(x[0]) for x in a]


def test_env_spec_json_is_what_the_run_trained_on(tiny_run):
    run, trainer = tiny_run
    assert load_spec(run / SPEC_FILE) == trainer.spec


def test_episode_start_is_the_same_step_autoreset_form(tiny_run):
    """SB3-style episode_start on the first observation of the next episode gives the same
    actions as done on the last observation of the previous one."""
    run, _ = tiny_run
    p_done, p_start = load_agent(run), load_agent(run)
    env = make_env("tmaze-passive", 2, seed=11, corridor_length=3)
    obs = env.reset()
    p_done.reset(2)
    p_start.reset(2)
    reward = done = None
    for _ in range(16):
        a = p_done.act(obs, reward, done)
        if done is None or not done.any():
            b = p_start.act(obs, reward)
            np.testing.assert_array_equal(a, b)
        else:  # p_start sees the final observation only as one it is told nothing about
            b = p_start.act(obs, reward)
        obs, reward, term, trunc, _ = env.step(a)
        if done is not None and done.any():
            # next-step autoreset: this step's obs of those envs is the first of an episode
            a2 = p_done.act(obs, reward, term | trunc)
            b2 = p_start.act(obs, reward, episode_start=done)
            np.testing.assert_array_equal(a2, b2)
            obs, reward, term, trunc, _ = env.step(a2)
        done = term | trunc


def test_rejected_calls_change_nothing(tiny_run):
    run, _ = tiny_run
    p, ref = load_agent(run), load_agent(run)
    env = make_env("tmaze-passive", 2, seed=1, corridor_length=3)
    obs = env.reset()
    p.reset(2)
    ref.reset(2)
    a = p.act(obs)
    np.testing.assert_array_equal(a, ref.act(obs))
    obs, reward, term, trunc, _ = env.step(a)
    key = next(iter(obs))
    bad_calls = [
        (lambda: p.act(obs), "reward is required"),
        (lambda: p.act({**obs, "extra": obs[key]}, reward), "unexpected"),
        (lambda: p.act({k: v for k, v in obs.items() if k != key}, reward), "missing"),
        (lambda: p.act({**obs, key: obs[key][:1]}, reward), "has shape"),
        (lambda: p.act({**obs, key: np.full_like(obs[key], np.nan)}, reward), "NaN"),
        (lambda: p.act(obs, np.array([np.nan, 0.0])), "NaN"),
        (lambda: p.act(obs, reward, np.array([2, 0])), "booleans"),
    ]
    for call, match in bad_calls:
        ti = p.time_index
        with pytest.raises(ValueError, match=match):
            call()
        np.testing.assert_array_equal(p.time_index, ti)
    # After all the rejected calls the policy continues exactly as one that saw none.
    for _ in range(6):
        a = p.act(obs, reward, term | trunc)
        np.testing.assert_array_equal(a, ref.act(obs, reward, term | trunc))
        obs, reward, term, trunc, _ = env.step(a)
    with pytest.raises(ValueError, match="num_envs"):
        p.reset(0)
    fresh = load_agent(run)
    with pytest.raises(RuntimeError, match="reset"):
        fresh.act(obs)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_load_agent_refuses_bad_runs_and_checkpoints(tiny_run, tmp_path):
    run, _ = tiny_run
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_agent(tmp_path)
    for bad in ("../../etc", "ckpt-1", -5, 1.5):
        with pytest.raises(ValueError, match="checkpoint"):
            load_agent(run, checkpoint=bad)
    with pytest.raises(FileNotFoundError, match="no checkpoint ckpt-000000000050"):
        load_agent(run, checkpoint=50)
    assert load_agent(run, checkpoint=96).checkpoint == load_agent(run).checkpoint
    # A learner.pt holding an arbitrary pickled object: refused, and the object is never built.
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    ckpt_dir = next((copy / "checkpoints").glob("ckpt-*"))
    marker = tmp_path / "ran"
    payload = pickle.dumps(_Touch(marker))
    (ckpt_dir / "learner.pt").write_bytes(payload)
    # The manifest rewritten to vouch for it (as whoever crafted the file could): the loader
    # itself must refuse it.
    manifest = json.loads((ckpt_dir / "manifest.json").read_text())
    entry = manifest["files"]["learner.pt"]
    if isinstance(entry, dict):
        entry["size"] = len(payload)
        entry["sha256"] = hashlib.sha256(payload).hexdigest()
    else:
        manifest["files"]["learner.pt"] = len(payload)
    (ckpt_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="learner.pt"):
        load_agent(copy)
    assert not marker.exists()


class _Touch:
    """Unpickling it creates a file (what an unsafe loader would do)."""

    def __init__(self, path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_raw_gymnasium_observations(tmp_path):
    """A run trained through the gymnasium adapter, deployed on a plain gymnasium env (one env,
    reset by hand): the same actions as the Agent under the collector on the adapter."""
    gym = pytest.importorskip("gymnasium")
    cfg = tiny_tmaze_config(**{"env.name": "gym:CartPole-v1", "env.kwargs": {},
                               "exploration": {}, "checkpoint_interval": 0, "eval_interval": 0,
                               "buffer.capacity_steps": 2000})
    t = Trainer(cfg, tmp_path / "run")
    t.train()
    single = gym.make("CartPole-v1")
    policy = load_agent(tmp_path / "run", observation_space=single.observation_space,
                        action_space=single.action_space)
    ref = _Recording(t.agent)
    env = make_env("gym:CartPole-v1", 1, seed=21)
    Collector(env, ref).evaluate(3)
    env.close()
    obs, _ = single.reset(seed=21)
    policy.reset(1)
    reward = done = None
    got = []
    for _ in range(len(ref.actions)):
        a = policy.act(obs, reward, done)
        got.append(int(a))
        if done:  # reset by hand: the done flag passed above opens a new rollout
            obs, _ = single.reset()
            reward, done = None, None
            continue
        obs, reward, term, trunc, _ = single.step(a)
        done = term or trunc
    # The collector also acts on the final observation (its action is ignored by the env);
    # the hand-reset loop does the same: the sequences line up one to one.
    assert got == [int(a[0]) for a in ref.actions]
    with pytest.raises(ValueError, match="observation_space"):
        load_agent(tmp_path / "run", observation_space=gym.spaces.Box(-1, 1, (3,)))


def test_trained_tmaze_reproduces_its_greedy_success_in_a_plain_loop(tmp_path):
    """Train T-Maze (corridor 5) to greedy success 1.0, load it, step it in a plain loop."""
    from amago_fast.trainer import evaluate_run
    from tests._api_run import solved_tmaze_config

    t0 = time.perf_counter()
    Trainer(solved_tmaze_config(tmp_path), tmp_path / "run").train()
    train_s = time.perf_counter() - t0
    run_eval = evaluate_run(tmp_path / "run", episodes=32, seed=99)
    policy = load_agent(tmp_path / "run")
    env = make_env("tmaze-passive", 8, seed=99, corridor_length=5)
    _, returns, successes = _plain_loop(policy, env, 6 * 8)
    assert len(successes) >= 32
    assert run_eval["success"] == 1.0, (run_eval, train_s)
    assert np.mean(successes) == 1.0
    assert np.mean(returns) == pytest.approx(run_eval["return"])
