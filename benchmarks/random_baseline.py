"""What uniform-random actions score on an env, with the same evaluation a training run uses.

    python benchmarks/random_baseline.py ENV_ID [ENV_ID ...] [--episodes 200] [--seed 0]

ENV_ID is any ``--env.name`` (``gym:CartPole-v1``, ``gym:popgym-CountRecallEasy-v0``,
``tmaze-passive``, ...). Each env runs `--episodes` whole episodes of uniform-random actions
through the real Collector (counted exactly, as ``amago-fast eval`` counts them); prints a JSON
list, one object per env: mean return and success with their 95% intervals, mean episode
length. The
reference line of a learning table (docs/LEARNING.md) comes from here.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def random_baseline(env_name: str, episodes: int, seed: int, num_envs: int = 16) -> dict:
    """Mean return (and success where the env reports it) of `episodes` random episodes."""
    from amago_fast.collector import Collector, RandomPolicy
    from amago_fast.envs import make_env
    from amago_fast.intervals import interval_stats

    env = make_env(env_name, num_envs, seed=seed)
    try:
        t0 = time.perf_counter()
        stats = Collector(env, RandomPolicy(env.spec, seed=seed)).evaluate(episodes)
        seconds = time.perf_counter() - t0
    finally:
        env.close()
    out = {"env": env_name, "seed": seed, "seconds": round(seconds, 2)}
    for key in ("episodes", "return", "return_std", "length", "success"):
        if key in stats:
            out[key] = stats[key]
    out.update(interval_stats(stats))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("envs", nargs="+", help="env names as --env.name takes them")
    ap.add_argument("--episodes", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.episodes < 1:
        ap.error(f"--episodes must be >= 1, got {args.episodes}")
    rows = []
    for env_name in args.envs:
        try:
            rows.append(random_baseline(env_name, args.episodes, args.seed))
        except (ValueError, TypeError) as e:  # an unknown id, a package that is not installed
            ap.error(f"{env_name}: {e}")
    print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
