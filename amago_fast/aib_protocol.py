"""The AIB evaluation protocol (``amago-fast aib``): AER per split over the seeds of one task.

Benad et al. evaluate every 5k vector steps on the 20 instances of each split (train, eval-in,
eval-out), 5 deterministic episodes per instance, the split score being the mean over the 20
instances; a seed's **AER** is the better of its last two evaluations, and a table entry is the
mean ± std (ddof 0) over seeds, in raw returns.

Here a *run directory* is one seed. Its evaluation history is the trainer's periodic evaluation
of the same protocol (the ``aib-*`` presets evaluate the three splits as ``env.eval_sets``,
20 slots x 5 episodes, counted exactly per slot) in ``eval.csv``. By default the newest
checkpoint is also evaluated afresh with the protocol (20 instances x 5 episodes per split,
greedy actions) and that evaluation takes its place in the history (replacing the periodic
one at the same step), so the AER always includes a measurement made by this command.

How the history before an episode is filled (an option): the *warm-up* (the default, as the
paper's methods: ``warmup_steps`` transitions in the same context before every scored episode,
their reward not scored) or a *multi-episode trial* (``episodes_per_trial`` K: K scored
episodes in one rollout, the context kept across the resets; every scored episode counts).
By default both come from the run's own training env (what it was trained with).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from amago_fast.envs.aib import AIB_SPLITS, AIB_TASKS, AIBTask, get_task

__all__ = ["aib_report", "combine_reports", "evaluate_protocol", "format_table",
           "markdown_table", "read_history"]

EPISODES_PER_INSTANCE = 5
INSTANCES = 20


def _run_config(run_dir: Path) -> Any:
    from amago_fast.config import load_config

    if not (run_dir / "config.json").is_file():
        raise ValueError(f"{run_dir}: not a run directory (no config.json)")
    return load_config(run_dir / "config.json")


def read_history(run_dir: str | os.PathLike) -> tuple[AIBTask, list[dict[str, float]]]:
    """(the run's AIB task, its evaluation rows): one dict per periodic evaluation with
    ``env_steps`` and, per split, ``<split>/return`` (and ``<split>/return/sign±1``)."""
    from amago_fast.logger import read_csv

    run_dir = Path(run_dir)
    cfg = _run_config(run_dir)
    if cfg.env.name not in AIB_TASKS:
        raise ValueError(f"{run_dir}: env {cfg.env.name!r} is not an AIB task "
                         f"({', '.join(AIB_TASKS)})")
    task = get_task(cfg.env.name)
    path = run_dir / "eval.csv"
    cols = read_csv(path) if path.is_file() else {}
    keys = [f"{s}/return" for s in AIB_SPLITS]
    if not cols.get("env_steps") or not all(k in cols for k in keys):
        raise ValueError(f"{run_dir}: no AIB evaluation history (eval.csv needs "
                         f"{', '.join(keys)}; train with an aib-* preset, whose env.eval_sets "
                         "evaluate the three splits)")
    rows = []
    for i, step in enumerate(cols["env_steps"]):
        row = {"env_steps": step}
        for k, v in cols.items():
            if k.split("/", 1)[0] in AIB_SPLITS and "/return" in k and v[i] is not None:
                row[k] = v[i]
        if all(row.get(k) is not None and math.isfinite(row[k]) for k in keys):
            rows.append(row)
    if not rows:
        raise ValueError(f"{run_dir}: eval.csv holds no complete AIB evaluation")
    return task, rows


def evaluate_protocol(
    run_dir: str | os.PathLike,
    checkpoint: str | int = "latest",
    *,
    warmup_steps: int | None = None,
    episodes_per_trial: int | None = None,
    episodes_per_instance: int = EPISODES_PER_INSTANCE,
    device: str = "cpu",
    seed: int = 12345,
) -> dict[str, Any]:
    """Evaluate one checkpoint on the 20 instances of every split, `episodes_per_instance`
    greedy episodes each (counted exactly per instance). Returns ``env_steps`` (the
    checkpoint's) and per split ``return`` (mean over instances of each instance's mean),
    ``instances`` (the 20 instance scores) and, for sign-flip tasks, ``return/sign±1``."""
    from amago_fast import checkpoint as ckpt
    from amago_fast.collector import Collector
    from amago_fast.deploy import load_agent
    from amago_fast.envs import make_env

    run_dir = Path(run_dir)
    cfg = _run_config(run_dir)
    task = get_task(cfg.env.name)
    if episodes_per_instance < 1:
        raise ValueError(f"episodes_per_instance must be >= 1, got {episodes_per_instance}")
    policy = load_agent(run_dir, checkpoint, device=device)  # resolves and verifies (sha256)
    agent, path = policy.agent, policy.checkpoint
    kwargs = {k: v for k, v in cfg.env.kwargs.items() if k not in ("split", "instances")}
    if warmup_steps is not None:
        kwargs["warmup_steps"] = warmup_steps
    if episodes_per_trial is not None:
        kwargs["episodes_per_trial"] = episodes_per_trial
    # the manifest's step only: load_agent already checked every file's sha256
    step = ckpt.verify_checkpoint(path, hashes=False)["step"]
    out: dict[str, Any] = {"env_steps": float(step), "checkpoint": path.name}
    for split in AIB_SPLITS:
        env = make_env(task.name, INSTANCES, seed=seed, split=split, **kwargs)
        try:
            k = env.scored_episodes
            rollouts = -(-episodes_per_instance // k)
            stats = Collector(env, agent).evaluate(INSTANCES * rollouts)
            per_slot = _scored_episodes(stats, env, episodes_per_instance)
            scores = np.array([np.mean(e) for e in per_slot])
            res: dict[str, Any] = {"return": float(scores.mean()),
                                   "instances": scores.tolist(),
                                   "episodes": int(sum(len(e) for e in per_slot))}
            for group, slots in env.slot_groups().items():
                res[f"return/{group}"] = float(scores[slots].mean())
            out[split] = res
            out["warmup_steps"] = env.warmup_steps
            out["episodes_per_trial"] = k
        finally:
            env.close()
    return out


def _scored_episodes(stats: dict, env: Any, want: int) -> list[list[float]]:
    """Per slot, its first `want` scored episode returns (warm-up excluded)."""
    if env.trial_mode:  # warm-up or several episodes: the inner episodes' returns
        per_slot = [[float(x) for r in rollouts for x in r if np.isfinite(x)]
                    for rollouts in stats["slot_episode_returns"]]
    else:
        per_slot = [list(map(float, r)) for r in stats["slot_returns"]]
    short = [i for i, e in enumerate(per_slot) if len(e) < want]
    if short:
        raise RuntimeError(f"evaluation finished fewer than {want} episodes in slots {short} "
                           "(the step cap was reached)")
    return [e[:want] for e in per_slot]


def aib_report(
    run_dirs: list[str | os.PathLike],
    *,
    evaluate: bool = True,
    **protocol: Any,
) -> dict[str, Any]:
    """AER per split over the seeds in `run_dirs` (all of one AIB task), with the published
    AMAGO and best rows beside it. ``evaluate``: evaluate each run's newest checkpoint afresh
    (:func:`evaluate_protocol` with `protocol` options) and put it in the history."""
    if isinstance(run_dirs, (str, os.PathLike)) or not run_dirs:
        raise ValueError("give a list of run directories (one per seed)")
    runs = []
    task = None
    for rd in run_dirs:
        t, rows = read_history(rd)
        if task is not None and t.name != task.name:
            raise ValueError(f"run directories of different AIB envs: {run_dirs[0]} is "
                             f"{task.name}, {rd} is {t.name}; evaluate one env per call")
        task = t
        fresh = None
        if evaluate:
            fresh = evaluate_protocol(rd, **protocol)
            step = fresh["env_steps"]
            rows = [r for r in rows if r["env_steps"] != step]
            rows.append({"env_steps": step, **{f"{s}/{k}": v for s in AIB_SPLITS
                                               for k, v in fresh[s].items()
                                               if k.startswith("return")}})
            rows.sort(key=lambda r: r["env_steps"])
        runs.append({"run_dir": str(rd), "rows": rows, "fresh": fresh})
    assert task is not None
    splits: dict[str, Any] = {}
    for split in AIB_SPLITS:
        key = f"{split}/return"
        per_seed, chosen_rows, sign = [], [], {}
        for run in runs:
            last = run["rows"][-2:]
            best = max(last, key=lambda r: r[key])
            per_seed.append(best[key])
            chosen_rows.append([int(r["env_steps"]) for r in last])
            for col, v in best.items():
                if col.startswith(f"{key}/"):
                    sign.setdefault(col.rsplit("/", 1)[1], []).append(v)
        vals = np.array(per_seed)
        splits[split] = {
            "aer_mean": float(vals.mean()), "aer_std": float(vals.std()),
            "per_seed": vals.tolist(), "evaluations_env_steps": chosen_rows,
            **{f"aer_mean/{g}": float(np.mean(v)) for g, v in sign.items()},
            "amago": task.amago.get(split), "best_published": task.best.get(split),
        }
    first = runs[0]["fresh"] or {}
    return {
        "env": task.name, "title": task.title, "seeds": len(runs),
        "run_dirs": [r["run_dir"] for r in runs],
        "episodes_per_instance": protocol.get("episodes_per_instance", EPISODES_PER_INSTANCE),
        "instances": INSTANCES,
        "warmup_steps": first.get("warmup_steps"),
        "episodes_per_trial": first.get("episodes_per_trial"),
        "fresh_checkpoints": [r["fresh"]["checkpoint"] if r["fresh"] else None for r in runs],
        "splits": splits,
    }


def combine_reports(paths: list[str | os.PathLike]) -> list[dict[str, Any]]:
    """Reports written by ``amago-fast aib --json`` (one env each), for one table."""
    reports = []
    for p in paths:
        try:
            rep = json.loads(Path(p).read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{p}: not a readable AIB report ({e})") from None
        reps = rep if isinstance(rep, list) else [rep]
        for r in reps:
            if not isinstance(r, dict) or r.get("env") not in AIB_TASKS or "splits" not in r:
                raise ValueError(f"{p}: not an AIB report written by amago-fast aib --json")
        reports += reps
    return reports


def _cell(entry: dict[str, Any]) -> str:
    return f"{entry['aer_mean']:.1f} ± {entry['aer_std']:.1f}"


def _published(v: float | None) -> str:
    return "—" if v is None else f"{v:g}"


def format_table(reports: list[dict[str, Any]]) -> str:
    """Plain-text table: env × {train, eval-in, eval-out}: ours (mean ± std, seeds) | AMAGO."""
    head = f"{'env':<13}{'seeds':>6}  " + "".join(f"{s + ' ours':>18}{'AMAGO':>8}"
                                                  for s in AIB_SPLITS)
    lines = [head, "-" * len(head)]
    for r in reports:
        cells = "".join(f"{_cell(r['splits'][s]):>18}{_published(r['splits'][s]['amago']):>8}"
                        for s in AIB_SPLITS)
        lines.append(f"{r['title']:<13}{r['seeds']:>6}  {cells}")
        for g in ("sign+1", "sign-1"):
            if f"aer_mean/{g}" in r["splits"]["train"]:
                vals = "".join(f"{r['splits'][s][f'aer_mean/{g}']:>18.1f}{'':>8}"
                               for s in AIB_SPLITS)
                lines.append(f"{'  ' + g:<13}{'':>6}  {vals}")
    return "\n".join(lines)


def markdown_table(reports: list[dict[str, Any]]) -> str:
    """The table as markdown, each row naming env, split, seeds, checkpoints and episodes."""
    out = ["| env | split | ours: AER mean ± std | seeds | per seed | AMAGO (published) | "
           "best published | evaluations (env steps) | episodes |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in reports:
        eps = f"{r['instances']} inst. × {r['episodes_per_instance']}"
        for s in AIB_SPLITS:
            e = r["splits"][s]
            signs = ", ".join(f"{g}: {e[f'aer_mean/{g}']:.1f}" for g in ("sign+1", "sign-1")
                              if f"aer_mean/{g}" in e)
            ours = _cell(e) + (f" ({signs})" if signs else "")
            seeds = ", ".join(f"{v:.1f}" for v in e["per_seed"])
            steps = "; ".join("/".join(str(x) for x in c) for c in e["evaluations_env_steps"])
            out.append(f"| {r['title']} | {s} | {ours} | {r['seeds']} | {seeds} | "
                       f"{_published(e['amago'])} | {_published(e['best_published'])} | "
                       f"{steps} | {eps} |")
    return "\n".join(out)
