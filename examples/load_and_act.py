"""Load a trained agent and act with it in a plain reset/step loop (no collector, no trainer).

``python examples/load_and_act.py RUN_DIR`` deploys a run written by ``amago-fast train``;
without RUN_DIR it first trains a tiny T-Maze run (``--quick``: a few seconds, smoke test).
The policy keeps the previous action and reward, the time index and the KV cache itself:
pass it each observation, the reward received on arriving there and the done flags.
"""

from __future__ import annotations

import argparse
import tempfile

import numpy as np

import amago_fast


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_dir", nargs="?", default=None)
    parser.add_argument("--quick", action="store_true", help="tiny budget (smoke test)")
    parser.add_argument("--episodes", type=int, default=16)
    args = parser.parse_args()
    run_dir = args.run_dir
    if run_dir is None:
        run_dir = tempfile.mkdtemp(prefix="amago_example_") + "/run"
        amago_fast.train("tmaze", run_dir=run_dir, overrides={
            "total_env_steps": 200 if args.quick else 6000, "progress_bar": False,
            "tensorboard": False, "eval_interval": 0})
    policy = amago_fast.load_agent(run_dir, device="cpu")
    cfg = policy.config
    env = amago_fast.make_env(cfg.env.name, 4, seed=123, **cfg.env.kwargs)
    obs = env.reset()
    policy.reset(env.num_envs)
    reward = done = None
    returns, ep_return = [], np.zeros(env.num_envs)
    while len(returns) < (4 if args.quick else args.episodes):
        actions = policy.act(obs, reward, done)
        was_done = done if done is not None else np.zeros(env.num_envs, bool)
        obs, reward, term, trunc, _ = env.step(actions)
        ep_return = np.where(was_done, 0.0, ep_return) + reward
        done = (term | trunc) & ~was_done
        returns += ep_return[done].tolist()
    env.close()
    print(f"{policy.checkpoint.name}: mean return {np.mean(returns):.3f} over {len(returns)} "
          "episodes")


if __name__ == "__main__":
    main()
