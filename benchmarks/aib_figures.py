"""Learning curves of AIB runs, one figure per task: the three splits side by side.

    python benchmarks/aib_figures.py --out docs/figures RUN_DIR [RUN_DIR ...]

Each run directory is one seed of an ``aib-*`` preset (its eval.csv holds the periodic
evaluation of every split). Runs are grouped by task and by trajectory encoder (Transformer vs
the memory-free ``ff`` ablation); AMAGO's published AER for a split, where there is one, is drawn
as a dotted line, and with ``--baselines`` the random / zero-action scores of the same protocol
(benchmarks/aib_baselines.py) as dashed lines. With ``--per-sign``, tasks with the sign flip
draw each sign's return (``<split>/return/sign+1`` and ``sign-1`` in eval.csv) instead of the
mean: a policy that solves one sign only shows as one high and one flat curve. ``--suffix``
names the files ``aib_<task>_<suffix>.png`` so a variant does not replace the main figure.
Prints one JSON line per figure written.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from amago_fast.aib_protocol import read_history
    from amago_fast.config import load_config
    from amago_fast.envs.aib import AIB_SPLITS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dirs", nargs="+")
    ap.add_argument("--out", default="docs/figures")
    ap.add_argument("--baselines", default=None,
                    help="JSON written by benchmarks/aib_baselines.py: random / zero-action lines")
    ap.add_argument("--per-sign", action="store_true",
                    help="sign-flip tasks: one curve per sign of the flip instead of the mean")
    ap.add_argument("--suffix", default="",
                    help="file name aib_<task>_<suffix>.png (letters, digits, - and _)")
    args = ap.parse_args(argv)
    if args.suffix and not all(c.isalnum() or c in "-_" for c in args.suffix):
        ap.error(f"--suffix {args.suffix!r}: use letters, digits, - and _ only")
    baselines = json.loads(Path(args.baselines).read_text()) if args.baselines else {}
    groups: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    tasks = {}
    for rd in map(Path, args.run_dirs):
        task, rows = read_history(rd)
        encoder = load_config(rd / "config.json").agent.traj_encoder
        tasks[task.name] = task
        groups[task.name][encoder].append((rd.name, rows))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    styles = {"transformer": "-", "ff": "--", "gru": "-."}
    for name, by_encoder in groups.items():
        task = tasks[name]
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), sharey=True)
        per_sign = args.per_sign and task.flip
        curves = ([("/sign-1", "sign -1", 1.0), ("/sign+1", "sign +1", 0.45)] if per_sign
                  else [("", "", 0.85)])
        for ax, split in zip(axes, AIB_SPLITS):
            for encoder, runs in sorted(by_encoder.items()):
                for i, (label, rows) in enumerate(runs):
                    for key, sign_label, alpha in curves:
                        pts = [(r["env_steps"], r[f"{split}/return{key}"]) for r in rows
                               if r.get(f"{split}/return{key}") is not None]
                        if not pts:
                            continue
                        ax.plot(*zip(*pts), styles.get(encoder, ":"), color=f"C{i}",
                                alpha=alpha, label=f"{label} ({encoder}) {sign_label}".strip())
            for kind, color in (("random", "0.5"), ("zero", "0.75")):
                value = baselines.get(name, {}).get(f"{kind}/{split}", {}).get("return")
                if value is not None:
                    ax.axhline(value, color=color, ls="--", lw=1, label=f"{kind} actions")
            if task.amago.get(split) is not None:
                ax.axhline(task.amago[split], color="k", ls=":",
                           label="AMAGO (published AER, all instances)" if per_sign
                           else "AMAGO (published AER)")
            ax.set_title(f"{task.title} {split}")
            ax.set_xlabel("env steps (20 envs)")
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("return per sign (mean over its instances)" if per_sign
                           else "return (mean of 20 instances x 5 episodes)")
        axes[-1].legend(fontsize=7, loc="best")
        fig.tight_layout()
        stem = f"aib_{name.removeprefix('aib-')}" + (f"_{args.suffix}" if args.suffix else "")
        path = out / f"{stem}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        print(json.dumps({"task": name, "figure": str(path), "per_sign": per_sign,
                          "runs": {e: [r[0] for r in v] for e, v in by_encoder.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
