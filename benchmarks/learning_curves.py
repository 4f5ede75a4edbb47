"""Longer learning curves (docs/LEARNING.md): the exact `amago-fast train` commands, a runner
that measures them, and the figures.

    python benchmarks/learning_curves.py list                 # the exact train commands
    python benchmarks/learning_curves.py run [NAME...]        # nice'd, time-limited, 2 at once
    python benchmarks/learning_curves.py summary              # JSON: evals, steps, CPU, wall
    python benchmarks/learning_curves.py plot --out docs/figures

A tool of the repository, not of the library: it runs the `amago-fast` command as a user would
and reads the runs' CSVs (the throughput benchmarks live in amago_fast.bench and ship in the
wheel for `amago-fast bench`; this file does not).

Every curve is a preset plus command-line overrides, so each figure can be reproduced by hand with
the command that `python benchmarks/learning_curves.py list` prints. The runner starts the
commands as child processes (``nice``-d, at most `parallel` at once), stops each one at its
wall-clock limit with SIGTERM (the trainer's graceful stop: checkpoint, no further evaluation),
and records per run the command, seed, wall seconds and the child's CPU seconds (``os.wait4``)
in ``<run_dir>/run_meta.json``. ``summary`` reads those with the runs' eval.csv / train.csv and
prints JSON; ``plot`` writes one PNG pair (vs env steps, vs training wall clock) per curve
group into docs/figures/.

The budgets are what fits a shared 2-core CPU box in minutes, far below the AMAGO paper's; the
curves show early learning, not final performance.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amago_fast.logger import read_csv

__all__ = [
    "Curve", "CURVES", "command", "run_curves", "final_result", "summarize_run", "plot_group",
    "main",
]

# The `tmaze` preset's tiny model and optimiser, repeated on the command line for presets whose
# own model is larger: it is what trains in minutes on one CPU core.
_TINY = [
    "--agent.d_model", "32", "--agent.num_layers", "2", "--agent.num_heads", "2",
    "--agent.tstep_hidden", "32", "--agent.tstep_out", "32", "--agent.actor_hidden", "32",
    "--agent.critic_hidden", "32", "--learner.lr", "1e-3", "--learner.warmup_steps", "50",
]


def _tmaze(corridor: int) -> list[str]:
    h = corridor + 1
    explore = {"eps_start": 1.0, "eps_end": 0.3, "anneal_steps": 2000, "horizon": h,
               "explore_last": 1}
    return [
        "--env.kwargs", json.dumps({"corridor_length": corridor}),
        "--agent.context_len", str(h + 1), "--window_len", str(h),
        "--exploration", json.dumps(explore),
        "--total_env_steps", "40000", "--eval_interval", "2000", "--eval_episodes", "32",
    ]


# Dark Key-To-Door, scaled down (5 x 5 room, 25-step episodes, 150-step trials) so that a trial
# fits a 151-step context and a few hundred trials fit the budget; random play scores 2.7 per
# trial here (2.6 in the 9 x 9 / 500-step setting; 64 trials, amago_fast.envs, uniform actions).
_KTD_ENV = {"room_size": 5, "episode_max_steps": 25, "trial_max_steps": 150}
_KTD = [
    *_TINY,
    "--env.kwargs", json.dumps(_KTD_ENV),
    "--agent.context_len", "151", "--window_len", "150",
    "--agent.gammas", "[0.9,0.99,0.999]",
    "--exploration", json.dumps({"eps_start": 1.0, "eps_end": 0.05, "anneal_steps": 10000}),
    "--total_env_steps", "60000", "--learning_starts", "1000", "--collect_steps_per_iter", "64",
    "--updates_per_env_step", "0.15", "--eval_interval", "3000", "--eval_episodes", "16",
]


def _popgym(task: str, context: int = 64) -> list[str]:
    # The context holds the whole episode: most Easy POPGym tasks end after 51 steps,
    # AutoencodeEasy after 104 (52 cards shown, then recalled).
    return [
        *_TINY,
        "--env.name", f"gym:popgym-{task}-v0",
        "--agent.context_len", str(context), "--window_len", str(context),
        "--agent.gammas", "[0.9,0.99]",
        "--exploration", json.dumps({"eps_start": 1.0, "eps_end": 0.05, "anneal_steps": 5000}),
        "--total_env_steps", "60000", "--learning_starts", "1000",
        "--collect_steps_per_iter", "64", "--updates_per_env_step", "0.15",
        "--eval_interval", "3000", "--eval_episodes", "32",
    ]


def _maze(relabel: bool) -> list[str]:
    # The learning check's MazeRunner k=2 settings (docs/LEARNING.md), 3x the env steps.
    rl = ["--buffer.relabel", "all", "--buffer.relabel_prob", "0.8"] if relabel else [
        "--buffer.relabel", "none"]
    return [
        *_TINY,
        "--env.kwargs", json.dumps({"k": 2, "maze_size": 9, "episode_max_steps": 30,
                                    "num_layouts": 4}),
        "--agent.gammas", "[0.9,0.99]", "--agent.context_len", "31", "--window_len", "30",
        "--exploration", json.dumps({"eps_start": 1.0, "eps_end": 0.05, "anneal_steps": 2000}),
        "--total_env_steps", "12000", "--learning_starts", "500",
        "--updates_per_env_step", "0.3", "--collect_steps_per_iter", "64",
        "--eval_interval", "1000", "--eval_episodes", "64", *rl,
    ]


@dataclass(frozen=True)
class Curve:
    """One training command (run once per seed) and where its figure goes."""

    preset: str
    args: list[str]
    seeds: tuple[int, ...]
    time_limit_s: float
    group: str  # runs of one group share a figure
    metric: str = "return"
    label: str = ""
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


CURVES: dict[str, Curve] = {
    "tmaze100": Curve("tmaze", _tmaze(100), (0, 1, 2, 3), 900.0, "tmaze100", "success",
                      notes="passive T-Maze, corridor 100"),
    "ktd5": Curve("key-to-door", _KTD, (0, 1), 900.0, "key_to_door_5x5", "return",
                  notes="Dark Key-To-Door 5x5, 150-step trials"),
    "popgym_repeatprev": Curve("popgym", _popgym("RepeatPreviousEasy"), (0,), 600.0,
                               "popgym", "return", label="RepeatPreviousEasy"),
    "popgym_countrecall": Curve("popgym", _popgym("CountRecallEasy"), (0,), 600.0,
                                "popgym", "return", label="CountRecallEasy"),
    "popgym_autoencode": Curve("popgym", _popgym("AutoencodeEasy", context=112), (0,), 600.0,
                               "popgym", "return", label="AutoencodeEasy"),
    "maze_k2_relabel": Curve("maze-runner", _maze(True), (0, 1, 2), 600.0, "maze_k2_long",
                             "return", label="relabel all (p 0.8)"),
    "maze_k2_none": Curve("maze-runner", _maze(False), (0, 1, 2), 600.0, "maze_k2_long",
                          "return", label="no relabeling"),
}


def _run_dir(root: Path, name: str, seed: int) -> Path:
    return root / f"{name}_s{seed}"


def command(name: str, seed: int, run_dir: str | os.PathLike) -> list[str]:
    """The `amago-fast train` argv for curve `name` and `seed` (torch threads 1)."""
    if name not in CURVES:
        raise KeyError(f"unknown curve {name!r}; curves: {', '.join(CURVES)}")
    c = CURVES[name]
    return ["amago-fast", "train", "--preset", c.preset, *c.args, "--torch_threads", "1",
            "--progress_bar", "false", "--seed", str(seed), "--run-dir", str(run_dir)]


def _executable() -> str:
    # The console script next to this interpreter (the venv's), else the one on PATH.
    local = Path(sys.executable).with_name("amago-fast")
    return str(local) if local.exists() else (shutil.which("amago-fast") or "amago-fast")


def run_curves(
    names: list[str],
    root: str | os.PathLike,
    seeds: tuple[int, ...] | None = None,
    parallel: int = 2,
    niceness: int = 10,
    time_scale: float = 1.0,
) -> list[dict[str, Any]]:
    """Run every (curve, seed), at most `parallel` at once, each stopped at its time limit
    (x `time_scale`); returns and writes each run's run_meta.json."""
    if parallel < 1:
        raise ValueError(f"parallel must be >= 1, got {parallel}")
    if time_scale <= 0:
        raise ValueError(f"time_scale must be > 0, got {time_scale}")
    for n in names:
        if n not in CURVES:
            raise KeyError(f"unknown curve {n!r}; curves: {', '.join(CURVES)}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    jobs = [(n, s) for n in names for s in (seeds if seeds is not None else CURVES[n].seeds)]
    running: dict[int, dict[str, Any]] = {}
    done: list[dict[str, Any]] = []

    def start(name: str, seed: int) -> None:
        rd = _run_dir(root, name, seed)
        argv = command(name, seed, rd)
        log = open(root / f"{name}_s{seed}.log", "w")  # noqa: SIM115 — closed when reaped
        proc = subprocess.Popen([_executable(), *argv[1:]], stdout=log, stderr=subprocess.STDOUT,
                                preexec_fn=lambda: os.nice(niceness))
        running[proc.pid] = {"proc": proc, "log": log, "name": name, "seed": seed, "run_dir": rd,
                             "argv": argv, "t0": time.perf_counter(), "term_sent": False,
                             "limit": CURVES[name].time_limit_s * time_scale}

    while jobs or running:
        while jobs and len(running) < parallel:
            start(*jobs.pop(0))
        now = time.perf_counter()
        for job in running.values():
            elapsed = now - job["t0"]
            if not job["term_sent"] and elapsed > job["limit"]:
                job["proc"].send_signal(signal.SIGTERM)  # graceful: checkpoint and stop
                job["term_sent"] = True
            elif job["term_sent"] and elapsed > job["limit"] + 120:
                job["proc"].kill()
        pid, status, usage = os.wait4(-1, os.WNOHANG) if running else (0, 0, None)
        if pid == 0 or pid not in running:
            time.sleep(1.0)
            continue
        job = running.pop(pid)
        job["log"].close()
        meta = {
            "curve": job["name"], "seed": job["seed"], "command": job["argv"],
            "niceness": niceness, "time_limit_s": job["limit"],
            "stopped_at_limit": job["term_sent"],
            "returncode": os.waitstatus_to_exitcode(status),
            "wall_s": round(time.perf_counter() - job["t0"], 1),
            "cpu_user_s": round(usage.ru_utime, 1), "cpu_sys_s": round(usage.ru_stime, 1),
            "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        job["run_dir"].mkdir(parents=True, exist_ok=True)
        (job["run_dir"] / "run_meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        done.append(meta)
    return done


def _last(cols: dict[str, list[float]], key: str) -> float | None:
    vals = [v for v in cols.get(key, []) if not math.isnan(v)]
    return vals[-1] if vals else None


def final_result(log_text: str) -> dict[str, Any] | None:
    """The JSON result `amago-fast train` prints when it stops (last top-level ``{ ... }``
    block of its output), or None if there is none (e.g. the run was killed)."""
    lines = log_text.splitlines()
    starts = [i for i, ln in enumerate(lines) if ln == "{"]
    for i in reversed(starts):
        for j in range(i + 1, len(lines)):
            if lines[j] == "}":
                try:
                    return json.loads("\n".join(lines[i:j + 1]))
                except json.JSONDecodeError:
                    break
    return None


def summarize_run(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Greedy evaluations, final env steps / updates and timing of one run.

    The final env steps and updates come from the result the trainer printed into the run's log
    (``<run_dir>.log``, what `run_curves` writes); train.csv's last row (written every
    log_interval steps) is the fallback.
    """
    rd = Path(run_dir)
    out: dict[str, Any] = {"run_dir": str(rd)}
    meta = rd / "run_meta.json"
    if meta.is_file():
        out.update(json.loads(meta.read_text()))
    if (rd / "train.csv").is_file():
        tr = read_csv(rd / "train.csv")
        out["env_steps"] = _last(tr, "env_steps")
        out["updates"] = _last(tr, "updates")
        out["train_wall_s"] = round(_last(tr, "wall_time") or 0.0, 1)
    log = rd.with_name(rd.name + ".log")
    res = final_result(log.read_text(errors="replace")) if log.is_file() else None
    if res is not None and "env_steps" in res:
        out["env_steps"], out["updates"] = res["env_steps"], res.get("updates")
        out["train_wall_s"] = round(res.get("train_seconds", float("nan")), 1)
        out["interrupted"] = res.get("interrupted")
    if (rd / "eval.csv").is_file():
        ev = read_csv(rd / "eval.csv")
        keys = ("return", "success", "trial_first_episode_return",
                "trial_later_episode_return", "length")
        out["eval"] = [
            {"env_steps": int(ev["env_steps"][i]), "wall_s": round(ev["wall_time"][i], 1),
             **{k: round(ev[k][i], 3) for k in keys if k in ev and not math.isnan(ev[k][i])}}
            for i in range(len(ev["env_steps"]))
        ]
    return out


def plot_group(group: str, root: str | os.PathLike, out_dir: str | os.PathLike) -> list[Path]:
    """`<group>_env_steps.png` and `<group>_wall_clock.png` from the group's runs under root."""
    from amago_fast.plot import plot_runs

    root = Path(root)
    dirs, labels, metric = [], [], None
    for name, c in CURVES.items():
        if c.group != group:
            continue
        metric = c.metric
        for seed in c.seeds:
            rd = _run_dir(root, name, seed)
            if (rd / "eval.csv").is_file():
                dirs.append(rd)
                labels.append(f"{c.label or name} seed {seed}")
    if not dirs:
        raise FileNotFoundError(f"no runs with eval.csv for group {group!r} under {root}")
    return plot_runs(dirs, out_dir=out_dir, metric=metric, labels=labels, stem=group)


def main(argv: list[str] | None = None) -> None:
    """``python benchmarks/learning_curves.py {list,run,summary,plot} ...``"""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="print each curve's commands (one per seed) as JSON")
    r = sub.add_parser("run", help="train the named curves (all if none), nice'd, time-limited")
    r.add_argument("names", nargs="*")
    r.add_argument("--root", default="runs/curves")
    r.add_argument("--seeds", type=int, nargs="+", default=None)
    r.add_argument("--parallel", type=int, default=2)
    r.add_argument("--time-scale", type=float, default=1.0,
                   help="multiply every wall-clock limit (e.g. 4 on a quiet machine)")
    s = sub.add_parser("summary", help="JSON summary of the runs under --root")
    s.add_argument("--root", default="runs/curves")
    g = sub.add_parser("plot", help="one PNG pair per curve group")
    g.add_argument("--root", default="runs/curves")
    g.add_argument("--out", default="docs/figures")
    args = p.parse_args(argv)
    if args.cmd == "list":
        print(json.dumps({n: {"time_limit_s": c.time_limit_s, "commands": [
            " ".join(_quote(a) for a in command(n, s, f"runs/curves/{n}_s{s}")) for s in c.seeds]}
            for n, c in CURVES.items()}, indent=2))
    elif args.cmd == "run":
        metas = run_curves(args.names or list(CURVES), args.root,
                           tuple(args.seeds) if args.seeds else None, args.parallel,
                           time_scale=args.time_scale)
        print(json.dumps(metas, indent=2))
    elif args.cmd == "summary":
        root = Path(args.root)
        print(json.dumps({f"{n}_s{s}": summarize_run(_run_dir(root, n, s))
                          for n, c in CURVES.items() for s in c.seeds
                          if _run_dir(root, n, s).is_dir()}, indent=2))
    else:
        groups = dict.fromkeys(c.group for c in CURVES.values())
        written = {}
        for grp in groups:
            try:
                written[grp] = [str(x) for x in plot_group(grp, args.root, args.out)]
            except FileNotFoundError as e:
                written[grp] = str(e)
        print(json.dumps(written, indent=2))


def _quote(a: str) -> str:
    return "'" + a + "'" if any(ch in a for ch in " {}[]\"") else a


if __name__ == "__main__":
    main()
