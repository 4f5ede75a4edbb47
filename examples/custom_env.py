"""Train AMAGO on your own environment, from Python, with no registration.

The env is a NumPy-batched ``amago_fast.VectorEnv``: "repeat the first bit" — the first
observation shows a bit, the agent must output it after ``delay`` blank steps (a memory task,
like T-Maze). Run: ``python examples/custom_env.py`` (``--quick``: a few seconds, smoke test).
"""

from __future__ import annotations

import argparse
import tempfile

import numpy as np

import amago_fast
from amago_fast.spaces import ActionSpec, EnvSpec, FieldSpec


class RepeatFirstBit(amago_fast.VectorEnv):
    """Next-step autoreset, like every amago_fast env (see docs/DESIGN.md)."""

    def __init__(self, num_envs: int, seed: int = 0, delay: int = 4) -> None:
        self.num_envs, self.delay = num_envs, delay
        self.spec = EnvSpec("repeat-first-bit", (FieldSpec("observation", (2,), np.float32),),
                            ActionSpec("discrete", n=2), max_episode_steps=delay + 1)
        self.rng = np.random.default_rng(seed)
        self.bit = np.zeros(num_envs, np.int64)
        self.t = np.zeros(num_envs, np.int64)
        self.done = np.zeros(num_envs, bool)

    def _obs(self) -> dict[str, np.ndarray]:
        obs = np.zeros((self.num_envs, 2), np.float32)
        first = self.t == 0
        obs[first, self.bit[first]] = 1.0  # the bit is visible at t = 0 only
        return {"observation": obs}

    def reset(self, seed: int | None = None) -> dict[str, np.ndarray]:
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self.bit = self.rng.integers(0, 2, self.num_envs)
        self.t[:] = 0
        self.done[:] = False
        return self._obs()

    def step(self, actions, env_ids=None):
        actions = amago_fast.envs.check_actions(self.spec.action, actions, self.num_envs)
        restart = self.done.copy()  # next-step autoreset: these envs start a new episode
        self.t += 1
        final = (self.t == self.delay + 1) & ~restart
        reward = np.where(final, (actions == self.bit).astype(np.float32), 0.0)
        self.done = final
        self.t[restart] = 0
        self.bit[restart] = self.rng.integers(0, 2, int(restart.sum()))
        info = {"success": final & (actions == self.bit)}
        return self._obs(), reward.astype(np.float32), final, np.zeros_like(final), info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny budget (smoke test)")
    parser.add_argument("--run-dir", default=None)
    args = parser.parse_args()
    steps = 200 if args.quick else 4000
    run_dir = args.run_dir or (tempfile.mkdtemp(prefix="amago_example_") + "/run"
                               if args.quick else None)
    cfg = amago_fast.get_preset("tmaze")  # a small Transformer; the env replaces T-Maze
    result = amago_fast.train(cfg, env=lambda num_envs, seed: RepeatFirstBit(num_envs, seed),
                              run_dir=run_dir, overrides={
                                  "env.name": "repeat-first-bit", "total_env_steps": steps,
                                  "learning_starts": 100, "agent.context_len": 8,
                                  "window_len": 6, "exploration": {}, "eval_interval": 0,
                                  "checkpoint_interval": 0, "progress_bar": False,
                                  "tensorboard": False})
    print(f"greedy success {result['eval'].get('success')} after {result['env_steps']} steps; "
          f"run in {result['run_dir']}")


if __name__ == "__main__":
    main()
