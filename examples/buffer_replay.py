"""The trajectory buffer as a standalone replay: store whole trajectories, sample windows.

No agent, no env: any code with sequences of (observation, action, reward, done) can use the
native buffer for variable-length trajectories and padded, masked windows (docs/DESIGN.md,
"Data layout: rows"). ``python examples/buffer_replay.py [--quick]``.
"""

from __future__ import annotations

import argparse

import numpy as np

import amago_fast
from amago_fast.spaces import ActionSpec, EnvSpec, FieldSpec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smoke test")
    args = parser.parse_args()
    spec = EnvSpec("toy", (FieldSpec("observation", (3,), np.float32),),
                   ActionSpec("continuous", shape=(2,), low=(-1.0, -1.0), high=(1.0, 1.0)))
    buf = amago_fast.TrajectoryBuffer.from_env_spec(spec, capacity_steps=10_000)
    rng = np.random.default_rng(0)
    for _ in range(20 if args.quick else 500):
        T = int(rng.integers(5, 40))  # a trajectory of T transitions is T + 1 rows
        rows = {"observation": rng.normal(size=(T + 1, 3)).astype(np.float32),
                "action": rng.uniform(-1, 1, (T + 1, 2)).astype(np.float32),
                "reward": rng.normal(size=T + 1).astype(np.float32),
                "terminated": np.zeros(T + 1, bool), "truncated": np.zeros(T + 1, bool)}
        rows["action"][0] = rows["reward"][0] = 0  # row 0: no action taken yet
        rows["terminated"][-1] = True
        buf.add_trajectory(rows)
    batch = buf.sample_windows(batch_size=8, length=16)
    print(f"{buf.num_trajectories} trajectories, {len(buf)} rows; a batch: "
          + ", ".join(f"{k} {v.shape}" for k, v in batch.items()))
    print(f"valid rows in the batch: {int(batch['mask'].sum())} of {batch['mask'].size}")


if __name__ == "__main__":
    main()
