"""Bring your own env: Trainer(cfg, env=..., eval_env=...) and amago_fast.train with a
VectorEnv, a gymnasium vector env, an EnvPool pool or a builder; resume with a user env; and
TrialEnv's meta-RL trials over a gymnasium env with a task hook."""

from __future__ import annotations

import json

import numpy as np
import pytest

from amago_fast.api import train
from amago_fast.checkpoint import CheckpointError
from amago_fast.collector import Collector
from amago_fast.config import ConfigError
from amago_fast.deploy import load_agent
from amago_fast.envs import TMaze
from amago_fast.envs.trials import first_vs_later
from amago_fast.trainer import Trainer
from amago_fast.user_env import TrialEnv
from tests._tiny_run import tiny_tmaze_config

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.filterwarnings("ignore:.*precision lowered by casting")]
gym = pytest.importorskip("gymnasium")


def _cfg(**kw):
    return tiny_tmaze_config(**{"checkpoint_interval": 0, "learning_starts": 32, **kw})


def _gym_vec(n: int, env_id: str = "CartPole-v1"):
    from gymnasium.vector import AutoresetMode

    return gym.make_vec(env_id, num_envs=n, vectorization_mode="sync",
                        vector_kwargs={"autoreset_mode": AutoresetMode.NEXT_STEP})


def test_a_vectorenv_object_trains_evaluates_and_loads(tmp_path):
    cfg = _cfg(**{"env.name": "my-maze", "env.num_envs": 5})  # a label; the env's count wins
    env = TMaze(3, corridor_length=3, seed=4)
    t = Trainer(cfg, tmp_path / "run", env=env)
    result = t.train()
    assert result["env_steps"] >= 96 and result["updates"] > 0
    assert "success" in result["eval"]  # evaluation borrowed the training env
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["env"]["name"] == "my-maze" and saved["env"]["num_envs"] == 3
    assert cfg.env.num_envs == 5  # the caller's config is not changed
    assert t.buffer.total_steps_added == t.env_steps
    policy = load_agent(tmp_path / "run")
    assert policy.spec == env.spec


def test_builders_get_num_envs_and_seed_and_build_the_eval_env(tmp_path):
    calls = []

    def build(num_envs, seed):
        calls.append((num_envs, seed))
        return _gym_vec(num_envs)

    cfg = _cfg(**{"env.name": "cartpole", "env.num_envs": 2, "env.eval_num_envs": 3,
                  "env.kwargs": {}, "exploration": {}, "buffer.capacity_steps": 2000,
                  "seed": 7})
    result = train(cfg, env=build, run_dir=tmp_path / "run")
    assert calls == [(2, 7), (3, 507)]
    assert result["eval"]["episodes"] >= 2
    # A gymnasium vector env object as the training env, EnvPool as the evaluation env.
    envpool = pytest.importorskip("envpool")
    pool = envpool.make("CartPole-v1", env_type="gymnasium", num_envs=2, seed=3)
    t = Trainer(cfg, tmp_path / "run2", env=_gym_vec(2), eval_env=pool)
    out = t.train()
    assert out["updates"] > 0 and out["eval"]["episodes"] >= 2


def test_bad_user_envs_are_refused_with_one_clear_error(tmp_path):
    cfg = _cfg()
    with pytest.raises(TypeError, match="env must be an amago_fast VectorEnv"):
        Trainer(cfg, tmp_path / "a", env=42)
    with pytest.raises(TypeError, match="single gymnasium env"):
        Trainer(cfg, tmp_path / "a", env=gym.make("CartPole-v1"))
    with pytest.raises(TypeError, match="eval_env is given without env"):
        Trainer(cfg, tmp_path / "a", eval_env=TMaze(2, corridor_length=3))
    t = Trainer(cfg, tmp_path / "b", env=lambda num_envs: TMaze(num_envs + 1, corridor_length=3))
    with pytest.raises(ValueError, match="asked for num_envs=2 and built 3"):
        t.train()
    t = Trainer(cfg, tmp_path / "c", env=TMaze(2, corridor_length=3),
                eval_env=TMaze(2, corridor_length=3, episodes_per_trial=2))
    with pytest.raises(ValueError, match="eval_env's observation/action spec differs"):
        t.train()
    t = Trainer(_cfg(overlap_collection=True), tmp_path / "d", env=TMaze(2, corridor_length=3))
    with pytest.raises(ConfigError, match="overlap_collection"):
        t.train()
    for d in "abcd":
        assert not (tmp_path / d / "config.json").exists()


def test_resume_with_a_user_env_checks_its_fields(tmp_path):
    cfg = _cfg(**{"env.name": "mine", "checkpoint_interval": 64, "total_env_steps": 64})
    Trainer(cfg, tmp_path / "run", env=lambda num_envs, seed: TMaze(num_envs, corridor_length=3,
                                                                     seed=seed)).train()
    t = Trainer.resume(tmp_path / "run", {"total_env_steps": 128},
                       env=lambda num_envs, seed: TMaze(num_envs, corridor_length=3, seed=seed))
    assert t.train()["env_steps"] >= 128
    other = Trainer.resume(tmp_path / "run", {"total_env_steps": 256},
                           env=TMaze(2, corridor_length=3, episodes_per_trial=2))
    with pytest.raises(CheckpointError, match="episode_start"):
        other.train()


class _Arms(gym.Env):
    """A 3-armed bandit whose best arm (the task) is kept across resets: reward 1 for it."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    action_space = gym.spaces.Discrete(3)

    def __init__(self) -> None:
        self.best = 0
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.t += 1
        hit = int(action) == self.best
        return (np.zeros(1, np.float32), float(hit), self.t >= 2, False,
                {"success": hit})


def _arms_vec(n: int):
    from gymnasium.vector import AutoresetMode, SyncVectorEnv

    return SyncVectorEnv([_Arms for _ in range(n)], autoreset_mode=AutoresetMode.NEXT_STEP)


def test_trial_env_keeps_the_task_and_context_across_episodes():
    vec = _arms_vec(2)
    hooks = []

    def resample(ids, rng):
        hooks.append(ids.tolist())
        for i in ids:
            vec.envs[i].best = int(rng.integers(3))

    env = TrialEnv(vec, episodes_per_trial=3, resample_task=resample, seed=1)
    assert [f.name for f in env.spec.observation] == ["observation", "episode_start"]
    assert env.spec.max_episode_steps is None
    obs = env.reset()
    assert hooks == [[0, 1]] and obs["episode_start"].ravel().tolist() == [1.0, 1.0]
    best = [e.best for e in vec.envs]
    starts, dones, infos = [], [], []
    for _ in range(9):  # 3 episodes of 2 steps + 2 inner autoreset steps = 8, then the reset
        obs, r, term, trunc, info = env.step(np.array(best, np.int32))
        starts.append(obs["episode_start"][:, 0].tolist())
        dones.append((term | trunc).tolist())
        infos.append(info)
    assert [d[0] for d in dones] == [False] * 7 + [True, False]
    assert [s[0] for s in starts] == [0, 0, 1, 0, 0, 1, 0, 0, 1]  # inner starts, then a new trial
    np.testing.assert_array_equal(infos[7]["episode_returns"], [[2, 2, 2]] * 2)
    assert infos[7]["success"].tolist() == [1.0, 1.0]
    assert hooks == [[0, 1], [0, 1]]  # a new task only at the trial's end
    assert first_vs_later([infos[7]["episode_returns"]])["later_episode_return"] == 2.0


def test_trial_env_trains_through_the_trainer(tmp_path):
    """One rollout per trial in the buffer: 3 episodes of 2 steps plus 2 inner resets = 8."""
    def build(num_envs, seed):
        vec = _arms_vec(num_envs)

        def resample(ids, rng):
            for i in ids:
                vec.envs[i].best = int(rng.integers(3))

        return TrialEnv(vec, 3, resample, seed=seed)

    cfg = _cfg(**{"env.name": "arms", "env.kwargs": {}, "exploration": {},
                  "buffer.capacity_steps": 2000})
    t = Trainer(cfg, tmp_path / "run", env=build)
    t.train()
    assert t.buffer.num_trajectories >= 2
    env = build(2, 0)
    stats = Collector(env, t.agent).evaluate(4)
    assert stats["length"] == 8.0
    assert stats["trial_episode_returns"].shape == (4, 3)
    assert 0.0 <= stats["success"] <= 1.0
