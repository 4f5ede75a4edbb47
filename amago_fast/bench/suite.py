"""`amago-fast bench`: run every benchmark module that exists and print one table + JSON.

Each `amago_fast.bench.<name>` module exposes `run(**kwargs) -> dict`; every figure it reports
carries a baseline measured in the same run and their ratio. This runner imports the modules in
`BENCHMARKS` order (a module not present in this build is reported as missing, not an error),
calls `run()` (with `quick=True` when asked and supported), then flattens the results into one
table: every dict that holds a `ratio` is one row, shown with its other numeric entries (the
figure and its baseline) beside it.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import math
import os
import platform
import time
import traceback
from typing import Any

__all__ = ["BENCHMARKS", "run_suite", "table_rows", "format_table", "run", "main"]

# buffer / collect / update run anywhere; attention / critic measure Triton kernels on a GPU
# (their modules skip cleanly without one).
BENCHMARKS = ("buffer", "collect", "update", "attention", "critic")


def machine_info() -> dict[str, Any]:
    """Where the figures were measured."""
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return info


# Smaller cases for `--quick` (a smoke run of every code path); only the keywords a module's
# run() accepts are passed.
QUICK_KWARGS: dict[str, dict[str, Any]] = {
    "buffer": {"quick": True},
    "collect": {
        "num_envs": (8,),
        "modes": ("sync",),
        "seconds": 0.2,
        "repeats": 1,
        "context_check": False,
    },
    "update": {"quick": True, "sizes": ("small",)},
    "attention": {"quick": True},
    "critic": {"quick": True},
}


def _call_run(name: str, fn, quick: bool) -> dict:
    params = inspect.signature(fn).parameters
    takes_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
    kwargs = {}
    if quick:
        wanted = QUICK_KWARGS.get(name, {"quick": True})
        kwargs = {k: v for k, v in wanted.items() if takes_any or k in params}
    return fn(**kwargs)


def run_suite(
    only: list[str] | None = None, quick: bool = False, print_table: bool = False
) -> dict[str, Any]:
    """Run the benchmarks (all of BENCHMARKS, or `only`); return {"machine", "results"}.

    Unknown names in `only` raise KeyError. A benchmark that raises is recorded with its error
    and the others still run.
    """
    names = list(BENCHMARKS) if only is None else list(only)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise KeyError(f"unknown benchmarks {unknown}; known: {list(BENCHMARKS)}")
    results: dict[str, Any] = {}
    for name in names:
        modname = f"amago_fast.bench.{name}"
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as e:
            if e.name == modname:
                results[name] = {"status": "missing", "reason": f"{modname} is not in this build"}
                continue
            raise
        t0 = time.perf_counter()
        try:
            res = _call_run(name, mod.run, quick)
            results[name] = {"status": "ok", "seconds": time.perf_counter() - t0, "result": res}
        except Exception as e:  # one broken benchmark must not hide the others' figures
            results[name] = {
                "status": "error",
                "error": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exc(limit=5),
            }
    out = {"machine": machine_info(), "quick": quick, "results": results}
    if print_table:
        print(format_table(out))
    return out


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _label(item: dict, index: int) -> str:
    """A list item's name: its string entries and small integer settings (num_envs, L, ...)."""
    parts = [
        f"{k}={v}"
        for k, v in item.items()
        if isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool) and v < 10**6)
    ]
    return ",".join(parts)[:48] or str(index)


def table_rows(results: dict[str, Any]) -> list[tuple[str, dict[str, float], float]]:
    """(row name, {figure: value}, ratio) for every ratio found in the results.

    A key `ratio` makes its whole dict one row (every other number is a figure). A key like
    `<what>_ratio_vs_<baseline>` (or `<what>_ratio`) makes one row with the numbers whose keys
    start with `<what>` or `<baseline>`.
    """
    rows: list[tuple[str, dict[str, float], float]] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            nums = {k: float(v) for k, v in node.items() if _is_num(v)}
            plain = {k: v for k, v in nums.items() if "ratio" not in k}
            for k, v in nums.items():
                if "ratio" not in k:
                    continue
                if k == "ratio":
                    rows.append((path, plain, v))
                    continue
                what = k.split("_ratio")[0]
                base = k.split("_vs_", 1)[1] if "_vs_" in k else None
                figs = {
                    kk: vv
                    for kk, vv in plain.items()
                    if (what and kk.startswith(what)) or (base and kk.startswith(base))
                }
                rows.append((f"{path}.{what}" if what else path, figs, v))
            for k, v in node.items():
                if isinstance(v, (dict, list)):
                    # a generic container name adds nothing to the row name
                    walk(v, path if k in ("results", "cases") else f"{path}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                label = _label(v, i) if isinstance(v, dict) else str(i)
                walk(v, f"{path}[{label}]")

    for name, entry in results.get("results", {}).items():
        if entry.get("status") == "ok":
            walk(entry["result"], name)
    return rows


def _fmt(v: float) -> str:
    if math.isnan(v):
        return "nan"
    if v == 0 or 1e-3 <= abs(v) < 1e6:
        return f"{v:.4g}"
    return f"{v:.3e}"


def format_table(results: dict[str, Any]) -> str:
    """A plain-text table: one row per figure with its same-run baseline and the ratio."""
    lines = [f"{'benchmark / case':72s} {'ratio':>9s}  figures (value and same-run baseline)"]
    lines.append("-" * 120)
    for path, figures, ratio in table_rows(results):
        figs = ", ".join(f"{k}={_fmt(v)}" for k, v in figures.items())
        lines.append(f"{path[-72:]:72s} {_fmt(ratio):>9s}  {figs}")
    for name, entry in results.get("results", {}).items():
        if entry.get("status") != "ok":
            why = entry.get("reason") or entry.get("error", "")
            lines.append(f"{name:72s} {entry.get('status'):>9s}  {why}")
    return "\n".join(lines)


def run(only: list[str] | None = None, quick: bool = False) -> dict[str, Any]:
    """`run_suite` without printing (the benchmark-module interface)."""
    return run_suite(only=only, quick=quick)


def main(argv: list[str] | None = None) -> None:
    """Run the suite, print the table then the JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default=None)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    only = [s.strip() for s in args.only.split(",")] if args.only else None
    res = run_suite(only=only, quick=args.quick, print_table=True)
    print(json.dumps(res, indent=2, default=float))


if __name__ == "__main__":
    main()
