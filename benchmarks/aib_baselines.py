"""Policy-free baselines of the AIB protocol: what a uniform-random and an all-zero action score.

    python benchmarks/aib_baselines.py [--tasks aib-di,aib-di-friction,aib-ode] [--seed 12345]

Each baseline runs exactly the protocol of ``amago-fast aib`` (20 instances per split, 5
episodes each, counted exactly per instance, the default warm-up before each episode) so its
numbers sit beside a trained agent's AER. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


class ZeroPolicy:
    """Always the all-zero action (the midpoint of AIB's [-1, 1] action box)."""

    def __init__(self, spec) -> None:
        self.dim = spec.action.shape[0]

    def init_state(self, num_envs: int):
        return None

    def reset_state(self, state, env_ids):
        return state

    def act(self, rows, state, sample=True, env_ids=None):
        n = rows["time_index"].shape[0]
        return np.zeros((n, self.dim), np.float32), state


def main(argv: list[str] | None = None) -> int:
    from amago_fast.aib_protocol import EPISODES_PER_INSTANCE, INSTANCES
    from amago_fast.collector import Collector, RandomPolicy
    from amago_fast.envs import make_env
    from amago_fast.envs.aib import AIB_SPLITS, AIB_TASKS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="aib-di,aib-di-friction,aib-ode")
    ap.add_argument("--seed", type=int, default=12345)
    args = ap.parse_args(argv)
    out: dict = {"episodes_per_instance": EPISODES_PER_INSTANCE, "instances": INSTANCES}
    for name in args.tasks.split(","):
        if name not in AIB_TASKS:
            ap.error(f"unknown AIB task {name!r}")
        res = {}
        for kind in ("random", "zero"):
            for split in AIB_SPLITS:
                env = make_env(name, INSTANCES, seed=args.seed, split=split)
                policy = (RandomPolicy(env.spec, seed=args.seed) if kind == "random"
                          else ZeroPolicy(env.spec))
                t0 = time.perf_counter()
                stats = Collector(env, policy).evaluate(INSTANCES * EPISODES_PER_INSTANCE)
                env.close()
                per_slot = [np.mean(r) for r in stats["slot_returns"]]
                res[f"{kind}/{split}"] = {"return": float(np.mean(per_slot)),
                                          "seconds": time.perf_counter() - t0}
        out[name] = res
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
