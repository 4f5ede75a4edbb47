"""A multi-task run: several envs share the parallel envs of one agent (``env.mixture``).

``python examples/multitask.py`` trains the ``multitask`` preset — passive T-Maze at corridors
4 and 8, AMAGO-2's settings (two-hot critic, action-input discrete critic, filtered-BC actor) —
and prints each task's greedy success from the run's eval.csv (both reach 1.0 by ~6k env
steps: docs/LEARNING.md). ``--quick``: a few hundred steps (smoke test). Any env names work
when their observation/action specs join (amago_fast/envs/mixture.py); e.g. POPGym:
``{"env.mixture": ["gym:popgym-RepeatPreviousEasy-v0", "gym:popgym-CountRecallEasy-v0"],
"env.import_modules": ["popgym"]}`` over the ``auto`` preset.
"""

from __future__ import annotations

import argparse
import tempfile

import amago_fast


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny budget (smoke test)")
    args = parser.parse_args()
    run_dir = tempfile.mkdtemp(prefix="amago_example_") + "/multitask"
    overrides = {"progress_bar": False, "tensorboard": False}
    if args.quick:
        overrides |= {"total_env_steps": 300, "learning_starts": 100, "eval_interval": 0,
                      "eval_episodes": 4, "checkpoint_interval": 0}
    cfg = amago_fast.get_preset("multitask")
    labels = [task["label"] for task in cfg.env.mixture]
    result = amago_fast.train(cfg, run_dir=run_dir, overrides=overrides)
    for label in labels:  # each task is its own evaluation set: <label>/success, ...
        print(f"{label}: greedy success {result['eval'][f'{label}/success']:.2f} over "
              f"{int(result['eval'][f'{label}/episodes'])} episodes")


if __name__ == "__main__":
    main()
