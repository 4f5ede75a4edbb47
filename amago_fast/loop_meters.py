"""The training loop's running figures and its one-line notes: what the progress bar and the
train.csv rows are made of between two reports (amago_fast.trainer drives them)."""

from __future__ import annotations

import math
import sys
import time
from collections import deque
from typing import Any

import numpy as np

__all__ = ["LoopMeters", "PROGRESS_REFRESH_S", "mean_or_nan", "note"]

PROGRESS_REFRESH_S = 2.0
"""Seconds between refreshes of the progress bar's rates, return and last evaluation."""


def note(text: str, progress: Any) -> None:
    """One `amago-fast: ...` line on stderr (through tqdm when a bar is shown, so the bar is
    not torn)."""
    if progress is not None:
        progress.write(f"amago-fast: {text}", file=sys.stderr)
    else:
        print(f"amago-fast: {text}", file=sys.stderr, flush=True)


def mean_or_nan(xs) -> float:
    xs = list(xs)
    return float(np.mean(xs)) if xs else math.nan


class LoopMeters:
    """The loop's running figures between train.csv rows and progress-bar refreshes: env steps
    and updates per window, the last 100 training episodes' returns and successes, and the
    metrics pending for the next train row."""

    def __init__(self, train_seconds: float) -> None:
        # The bar's rates and return refresh every PROGRESS_REFRESH_S seconds of the loop,
        # whatever log_interval is (a log_interval of thousands of steps left ups=0.0 on
        # screen for minutes while training).
        self.bar_t0, self.bar_steps, self.bar_updates = time.perf_counter(), 0, 0
        self.recent_returns: deque[float] = deque(maxlen=100)
        self.recent_success: deque[float] = deque(maxlen=100)
        self.window_t0, self.window_steps, self.window_updates = time.perf_counter(), 0, 0
        self.t_start = time.perf_counter()
        self.t_offset = train_seconds
        self.pending: dict[str, list[float]] = {}

    def add_collection(self, stats: dict, new_steps: int, env: Any) -> None:
        """Step 1's bookkeeping: one collection's steps and episode statistics."""
        self.window_steps += new_steps
        self.bar_steps += new_steps
        self.recent_returns.extend(stats.get("returns", []))
        if "exploration_value" in stats:  # the annealed ε / noise std, in train.csv
            self.pending.setdefault("exploration_value", []).append(
                stats["exploration_value"])
        per_env = stats.get("per_env", {})
        if len(per_env) > 1:  # several env names: each one's return in the train row
            for name, sub in per_env.items():
                if "return" in sub:
                    self.pending.setdefault(f"return/{name}", []).append(sub["return"])
        task_stats = getattr(env, "pop_task_stats", None)
        if callable(task_stats):  # a mixture (env.mixture): each task's own episodes
            for key, values in task_stats().items():
                self.pending.setdefault(key, []).extend(values)
        if "success" in stats:
            self.recent_success.extend([stats["success"]] * int(stats.get("episodes", 0)))

    def add_updates(self, done: int) -> None:
        """Step 2's: the updates just made."""
        self.window_updates += done
        self.bar_updates += done
