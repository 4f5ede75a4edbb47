"""The gymnasium adapter names bad observations: a wrong shape names the key and the expected
shape; values outside the declared space warn once per key."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

gym = pytest.importorskip("gymnasium")
from gymnasium import spaces  # noqa: E402

from amago_fast.envs.gym_adapter import GymVectorEnv  # noqa: E402

SPACE = spaces.Dict({"pos": spaces.Box(-1, 1, (3,), np.float32), "k": spaces.Discrete(4)})


class BadObs(gym.Env):
    """Steps return `obs` (reset returns a valid observation)."""

    observation_space = SPACE
    action_space = spaces.Discrete(2)

    def __init__(self, obs):
        self.obs = obs

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        return {"pos": np.zeros(3, np.float32), "k": 0}, {}

    def step(self, action):
        return self.obs, 0.0, False, False, {}


def _vec(obs, n=2):
    return gym.vector.SyncVectorEnv([lambda: BadObs(obs)] * n,
                                    autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)


def test_wrong_shape_from_gymnasium_batching_names_the_expected_shapes():
    env = GymVectorEnv(_vec({"pos": np.zeros(5, np.float32), "k": 0}))
    env.reset()
    with pytest.raises(ValueError, match=r"could not batch .*'k' \(\), 'pos' \(3,\)"):
        env.step(np.zeros(2, np.int32))
    env.close()


class ShapeShifter(gym.vector.VectorEnv):
    """A user vector env whose step returns 'pos' as (n, 5) against its (3,) space."""

    def __init__(self, n=2):
        self.num_envs = n
        self.single_observation_space = SPACE
        self.single_action_space = spaces.Discrete(2)
        self.observation_space = gym.vector.utils.batch_space(SPACE, n)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, n)
        self.metadata = {"autoreset_mode": gym.vector.AutoresetMode.NEXT_STEP}

    def reset(self, seed=None, options=None):
        return {"pos": np.zeros((self.num_envs, 3), np.float32),
                "k": np.zeros(self.num_envs, np.int64)}, {}

    def step(self, actions):
        obs = {"pos": np.zeros((self.num_envs, 5), np.float32),
               "k": np.zeros(self.num_envs, np.int64)}
        z = np.zeros(self.num_envs, bool)
        return obs, np.zeros(self.num_envs), z, z, {}


def test_wrong_shape_from_a_user_vector_env_names_the_key():
    env = GymVectorEnv(ShapeShifter())
    env.reset()
    with pytest.raises(ValueError, match=r"observation 'pos' has shape \(2, 5\), expected "
                                         r"\(2, 3\)"):
        env.step(np.zeros(2, np.int32))


def test_values_outside_the_space_warn_once_per_key():
    env = GymVectorEnv(_vec({"pos": np.full(3, 7.0, np.float32), "k": 1}))
    env.reset()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(5):
            obs = env.step(np.zeros(2, np.int32))[0]
    msgs = [str(w.message) for w in caught if "outside its declared space" in str(w.message)]
    assert len(msgs) == 1 and "'pos'" in msgs[0] and "[-1.0, 1.0]" in msgs[0]
    np.testing.assert_array_equal(obs["pos"], 7.0)  # stored as given
    env.close()
