"""Shared helpers of the env and collector tests: a small actuator-inversion env over EnvPool's
CartPole swing-up and the context stream it draws, for the checks that a restored env or
collector continues that stream rather than restarting it."""

from __future__ import annotations

import numpy as np

from amago_fast.envs import EnvPoolEnv
from amago_fast.envs.actuator_inversion import ActuatorInversionEnv


def actinv_cartpole(seed: int, n: int = 4) -> ActuatorInversionEnv:
    """``n`` CartPole swing-up envs with actuator inversion. Time-limit-only episodes of 5 steps:
    episode starts do not depend on the simulator state, so two envs built alike reset alike."""
    base = EnvPoolEnv("CartpoleSwingup-v1", n, seed=seed, max_episode_steps=5)
    return ActuatorInversionEnv(base, split="train", seed=seed)


def actinv_contexts_after_reset(env: ActuatorInversionEnv,
                                steps: int = 24) -> list[tuple[np.ndarray, np.ndarray]]:
    """Contexts (sign, inverted) of a reset() and of the episodes started over `steps`
    zero-action steps."""
    env.reset()
    out = [(env.sign.copy(), env.inverted.copy())]
    for _ in range(steps):
        _, _, _, _, info = env.step(np.zeros((env.num_envs, env.d), np.float32))
        out.append((env.sign.copy(), info["inverted"].copy()))
    return out
