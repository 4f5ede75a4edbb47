"""Offline → online RL: write a dataset, pretrain on it, then keep learning online with a share
of every batch drawn from it.

The dataset comes from a scripted T-Maze player with noisy turns (any source works: the
format is one ``.npz`` per trajectory in the buffer's row layout; ``TrajectoryBuffer.export_npz``
writes it, and ``amago-fast train --data DIR`` reads it). ``python examples/offline_to_online.py
[--quick]``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

import amago_fast


class NoisyScriptedTMaze:
    """Remembers the cue shown at t = 0, walks right, turns toward the cue (a random turn with
    probability `eps`): the Policy protocol the collector drives."""

    def __init__(self, eps: float, seed: int = 0) -> None:
        self.eps, self.rng = eps, np.random.default_rng(seed)

    def init_state(self, num_envs: int) -> np.ndarray:
        return np.zeros(num_envs, np.float32)

    def reset_state(self, cue: np.ndarray, env_ids: np.ndarray) -> np.ndarray:
        cue[env_ids] = 0.0
        return cue

    def act(self, rows, cue, sample, env_ids=None):
        obs = rows["observation"]
        cue = np.where(rows["time_index"] == 0, obs[:, 1], cue)
        at_junction = obs[:, 0] == 1
        turn = np.where(cue > 0, 1, 3)
        noisy = self.rng.random(len(cue)) < self.eps
        turn = np.where(noisy, self.rng.choice([1, 3], len(cue)), turn)
        return np.where(at_junction, turn, 0).astype(np.int32), cue


def write_dataset(directory: Path, steps: int, corridor: int) -> int:
    env = amago_fast.make_env("tmaze-passive", 8, seed=1, corridor_length=corridor)
    buf = amago_fast.TrajectoryBuffer.from_env_spec(env.spec, capacity_steps=steps * 2,
                                                    num_envs=8)
    amago_fast.Collector(env, NoisyScriptedTMaze(eps=0.5), buf).collect(steps)
    env.close()
    return len(buf.export_npz(directory))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny budget (smoke test)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="amago_example_"))
    corridor = 5
    n = write_dataset(work / "data", 300 if args.quick else 3000, corridor)
    print(f"wrote {n} trajectories to {work / 'data'}")
    result = amago_fast.train("tmaze", run_dir=work / "run", overrides={
        "env.kwargs": {"corridor_length": corridor}, "agent.context_len": corridor + 2,
        "window_len": corridor + 1,
        "exploration": {"eps_start": 0.3, "eps_end": 0.3, "anneal_steps": 1,
                        "horizon": corridor + 1, "explore_last": 1},
        "data.path": str(work / "data"), "data.offline_updates": 20 if args.quick else 600,
        "data.share": 0.5, "learning_starts": 0,
        "total_env_steps": 100 if args.quick else 2000, "eval_interval": 0,
        "checkpoint_interval": 0, "progress_bar": False, "tensorboard": False})
    print(f"after {result['updates']} updates ({result['env_steps']} env steps): greedy success "
          f"{result['eval'].get('success')}")


if __name__ == "__main__":
    main()
