"""Meta-RL trials on any gymnasium env: k episodes of one task per rollout, context kept.

A 3-armed bandit whose best arm is the task: ``amago_fast.TrialEnv`` resamples it at each
trial's start through the hook, keeps it for the trial's ``episodes_per_trial`` episodes, marks
episode starts (``episode_start``) and reports done only at the trial's end, so the agent can
learn in context which arm pays. ``python examples/meta_rl_trials.py [--quick]``.
"""

from __future__ import annotations

import argparse
import tempfile

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, SyncVectorEnv

import amago_fast


class Arms(gym.Env):
    observation_space = gym.spaces.Box(0.0, 1.0, (1,), np.float32)
    action_space = gym.spaces.Discrete(3)
    best = 0  # the task: set by the trial hook, kept across resets

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(1, np.float32), {}

    def step(self, action):
        hit = int(action) == self.best
        return np.zeros(1, np.float32), float(hit), True, False, {"success": hit}


def build(num_envs: int, seed: int) -> amago_fast.TrialEnv:
    vec = SyncVectorEnv([Arms for _ in range(num_envs)], autoreset_mode=AutoresetMode.NEXT_STEP)

    def new_task(env_ids: np.ndarray, rng: np.random.Generator) -> None:
        for i in env_ids:
            vec.envs[i].unwrapped.best = int(rng.integers(3))

    return amago_fast.TrialEnv(vec, episodes_per_trial=6, resample_task=new_task, seed=seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny budget (smoke test)")
    args = parser.parse_args()
    run_dir = tempfile.mkdtemp(prefix="amago_example_") + "/run" if args.quick else None
    # the T-Maze preset's small Transformer; a trial is 6 one-step episodes + 5 inner resets
    result = amago_fast.train("tmaze", env=build, run_dir=run_dir, overrides={
        "env.name": "arms-trials", "env.kwargs": {}, "agent.context_len": 12, "window_len": 11,
        "exploration": {}, "total_env_steps": 200 if args.quick else 10_000,
        "learning_starts": 100, "eval_interval": 0, "checkpoint_interval": 0,
        "progress_bar": False, "tensorboard": False})
    ev = result["eval"]
    print(f"greedy evaluation: mean trial return {ev['return']:.2f} of 6, success (share of "
          f"episodes on the best arm) {ev['success']:.2f}; run in {result['run_dir']}")


if __name__ == "__main__":
    main()
