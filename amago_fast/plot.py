"""Learning-curve PNGs comparing runs (`amago-fast plot RUN_DIR...`).

Reads each run's `eval.csv` (greedy evaluation returns) — or, for runs without evaluations yet,
the `recent_return` column of `train.csv` — and writes two figures: return vs env steps and
return vs wall-clock training time. Where eval.csv holds the metric's 95% interval
(``<metric>_ci_low`` / ``<metric>_ci_high``, amago_fast/intervals.py) it is drawn as a band
around the curve; ``reference`` lines (random play, chance, a paper's figure) are drawn
dashed. Uses matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from amago_fast.logger import read_csv

__all__ = ["plot_runs", "load_curve"]

# Column names tried, in order, when no --metric is given.
_EVAL_METRICS = ("return", "mean_return", "episode_return", "return_mean")


def load_curve(run_dir: str | os.PathLike, metric: str | None = None) -> tuple[str, dict]:
    """(metric name, {"env_steps", "wall_time", "value"}) for one run; raises on missing data."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run directory")
    candidates: list[tuple[Path, tuple[str, ...]]] = []
    if metric is not None:
        candidates = [(run_dir / "eval.csv", (metric,)), (run_dir / "train.csv", (metric,))]
    else:
        candidates = [
            (run_dir / "eval.csv", _EVAL_METRICS),
            (run_dir / "train.csv", ("recent_return",)),
        ]
    for path, names in candidates:
        if not path.is_file():
            continue
        cols = read_csv(path)
        for name in names:
            if name in cols:
                keep = [i for i, v in enumerate(cols[name]) if not math.isnan(v)]
                if not keep:
                    continue
                curve = {
                    "env_steps": [cols["env_steps"][i] for i in keep],
                    "wall_time": [cols["wall_time"][i] for i in keep],
                    "value": [cols[name][i] for i in keep],
                }
                for bound in ("ci_low", "ci_high"):
                    if f"{name}_{bound}" in cols:
                        # one-episode evaluations have unbounded intervals: no band there
                        curve[bound] = [v if math.isfinite(v) else math.nan
                                        for v in (cols[f"{name}_{bound}"][i] for i in keep)]
                return name, curve
        if metric is None and path.name == "eval.csv":
            # eval.csv without a known return column: fall back to any "*return*" column.
            for name, values in cols.items():
                if "return" in name and any(not math.isnan(v) for v in values):
                    keep = [i for i, v in enumerate(values) if not math.isnan(v)]
                    return name, {
                        "env_steps": [cols["env_steps"][i] for i in keep],
                        "wall_time": [cols["wall_time"][i] for i in keep],
                        "value": [values[i] for i in keep],
                    }
    wanted = metric or " / ".join(_EVAL_METRICS)
    raise ValueError(f"{run_dir}: no logged values of {wanted} in eval.csv or train.csv")


def eval_set_returns(run_dir: str | os.PathLike) -> list[str]:
    """The ``<set>/return`` columns of a run's eval.csv when it evaluated several named sets
    (``env.eval_sets``), in logged order; [] otherwise."""
    path = Path(run_dir) / "eval.csv"
    if not path.is_file():
        return []
    names = [k for k in read_csv(path) if k.count("/") == 1 and k.endswith("/return")]
    return names if len(names) > 1 else []


def run_curves(run_dirs: list[str | os.PathLike], metric: str | None = None,
               labels: list[str] | None = None) -> list[tuple[str, str, dict]]:
    """(legend label, metric name, curve) of every line `plot_runs` draws: one per run, or one
    per named evaluation set (``env.eval_sets``: AIB's three splits) when no metric is named."""
    curves = []
    for i, rd in enumerate(run_dirs):
        label = labels[i] if labels is not None else (Path(rd).name or str(rd))
        for m in ([metric] if metric is not None else eval_set_returns(rd) or [None]):
            name, curve = load_curve(rd, m)
            curves.append((label, name, curve))
    return curves


def plot_runs(
    run_dirs: list[str | os.PathLike],
    out_dir: str | os.PathLike | None = None,
    metric: str | None = None,
    labels: list[str] | None = None,
    stem: str = "curves",
    reference: dict[str, float] | None = None,
) -> list[Path]:
    """Write `<stem>_env_steps.png` and `<stem>_wall_clock.png`; return their paths.

    `labels`: one legend entry per run (default: the run directory's name). `reference`:
    horizontal dashed lines, label -> value (e.g. {"random": -0.51, "chance": 0.5}).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not run_dirs:
        raise ValueError("give at least one run directory")
    if labels is not None and len(labels) != len(run_dirs):
        raise ValueError(f"{len(labels)} labels for {len(run_dirs)} run directories")
    if not stem or os.sep in stem:
        raise ValueError(f"stem must be a non-empty file-name prefix, got {stem!r}")
    for label, value in (reference or {}).items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) \
                or not math.isfinite(value):
            raise ValueError(f"reference {label!r} must be a finite number, got {value!r}")
    curves = run_curves(run_dirs, metric, labels)
    out = Path(out_dir) if out_dir is not None else Path(run_dirs[0])
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for x_key, x_label, fname in (
        ("env_steps", "environment steps", f"{stem}_env_steps.png"),
        ("wall_time", "wall-clock training time (s)", f"{stem}_wall_clock.png"),
    ):
        fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
        for label, name, curve in curves:
            (line,) = ax.plot(
                curve[x_key], curve["value"], marker="o", markersize=3, label=f"{label} ({name})"
            )
            if "ci_low" in curve and "ci_high" in curve:
                ax.fill_between(curve[x_key], curve["ci_low"], curve["ci_high"],
                                color=line.get_color(), alpha=0.2, linewidth=0)
        for i, (ref_label, value) in enumerate((reference or {}).items()):
            ax.axhline(value, linestyle="--", linewidth=1, color=f"C{(len(curves) + i) % 10}",
                       label=ref_label)
        ax.set_xlabel(x_label)
        ax.set_ylabel(metric or "return")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / fname
        tmp = path.with_name(path.stem + ".tmp.png")
        fig.savefig(tmp)
        plt.close(fig)
        os.replace(tmp, path)
        paths.append(path)
    return paths
