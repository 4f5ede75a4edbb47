"""Env steps/s of the AIB MuJoCo vector envs against EnvPool's fixed-context equivalents.

Usage: python benchmarks/bench_aib_envs.py [--tasks aib-walker ...] [--num-envs 20]
       [--steps 300] [--workers 0 1 2] [--threads 1 2] [--repeats 3]

For every task, in one run and interleaved (so machine load hits all alike): ours
(``make_env(task, num_envs, num_workers=w)``, default warm-up, random actions in [-1, 1]) for
each worker count and EnvPool's task of the same stock model and reward
(``make_env("envpool:<id>", num_envs, num_threads=t)``; one shared model, no context) for each
thread count. Reported: env transitions per second over `steps` vector steps after 20 untimed
ones (median and range over interleaved repeats), and the construction time. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

from amago_fast.envs import make_env
from amago_fast.envs.aib_mujoco import MUJOCO_TASKS

ENVPOOL_TWIN = {
    "aib-walker": "WalkerWalk-v1",
    "aib-ballincup": "BallInCupCatch-v1",
    "aib-cheetah": "CheetahRun-v1",
    "aib-reacher-easy": "ReacherEasy-v1",
    "aib-reacher-hard": "ReacherHard-v1",
    "aib-cartpole": "CartpoleBalance-v1",
    "aib-walkergym": "Walker2d-v5",
    "aib-hoppergym": "Hopper-v5",
}
UNTIMED = 20


def _measure(name: str, num_envs: int, kwargs: dict, steps: int,
             seed: int) -> tuple[float, float]:
    """(env transitions per second, construction seconds) of one fresh env."""
    t0 = time.perf_counter()
    env = make_env(name, num_envs, **kwargs)
    built = time.perf_counter() - t0
    try:
        a = env.spec.action
        rng = np.random.default_rng(seed)
        actions = rng.uniform(a.low, a.high, (UNTIMED + steps, env.num_envs, *a.shape))
        actions = actions.astype(np.float32)
        env.reset()
        for x in actions[:UNTIMED]:
            env.step(x)
        t0 = time.perf_counter()
        for x in actions[UNTIMED:]:
            env.step(x)
        dt = time.perf_counter() - t0
    finally:
        env.close()
    return steps * env.num_envs / dt, built


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", nargs="+", default=list(MUJOCO_TASKS), choices=list(MUJOCO_TASKS))
    p.add_argument("--num-envs", type=int, default=20)
    p.add_argument("--steps", type=int, default=300, help="timed vector steps per measurement")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                   help="EnvPool num_threads values")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats (median, range)")
    args = p.parse_args()
    configs = []  # (task, label, env name, kwargs)
    for task in args.tasks:
        for w in args.workers:
            configs.append((task, f"ours_workers{w}", task, {"num_workers": w}))
        extra = {"terminate_when_unhealthy": False} if task.endswith("gym") else {}
        for t in args.threads:
            configs.append((task, f"envpool_threads{t}", f"envpool:{ENVPOOL_TWIN[task]}",
                            {"num_threads": t, **extra}))
    samples: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for rep in range(args.repeats):  # repeats interleaved: load drifts hit every config alike
        for task, label, name, kwargs in configs:
            sample = _measure(name, args.num_envs, kwargs, args.steps, rep)
            print(json.dumps({"task": task, "config": label, "repeat": rep,
                              "env_steps_per_s": round(sample[0]), "build_s": round(sample[1], 2),
                              "loadavg": round(os.getloadavg()[0], 2)}),
                  file=sys.stderr, flush=True)  # progress
            samples.setdefault((task, label), []).append(sample)
    results: dict[str, dict] = {}
    for (task, label), vals in samples.items():
        rates = sorted(v[0] for v in vals)
        results.setdefault(task, {"envpool_task": ENVPOOL_TWIN[task]})[label] = {
            "env_steps_per_s_median": round(float(np.median(rates))),
            "env_steps_per_s_range": [round(rates[0]), round(rates[-1])],
            "build_s_median": round(float(np.median([v[1] for v in vals])), 2)}
    print(json.dumps({
        "num_envs": args.num_envs, "timed_vector_steps": args.steps, "repeats": args.repeats,
        "cpus": os.cpu_count(), "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(), "results": results}, indent=1))


if __name__ == "__main__":
    main()
