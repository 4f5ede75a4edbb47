"""95% confidence intervals of evaluation statistics (eval.csv, the progress bar, the final JSON).

An evaluation's mean over n greedy episodes is noisy: 16 episodes of a task at 0.25 success
have a standard error of ~0.11, so one evaluation at chance can read 0.5. Every evaluation
therefore carries an interval next to its mean:

- ``return_ci_low`` / ``return_ci_high``: mean ± 1.96 · s / √n (s: the sample standard deviation
  of the episode returns, n - 1 in the denominator);
- ``success_ci_low`` / ``success_ci_high``: the Wilson score interval of the success rate over n
  episodes, which stays inside [0, 1] and is not empty at 0 or 1 (0/64 successes: [0, 0.057];
  64/64: [0.943, 1]). For trial envs the success value is the share of successful inner
  episodes per trial; the interval then treats it as a rate over n trials.
"""

from __future__ import annotations

import math

__all__ = ["Z95", "mean_interval", "wilson_interval", "interval_stats", "format_interval"]

Z95 = 1.959963984540054
"""The two-sided 95% normal quantile."""


def mean_interval(mean: float, std_pop: float, n: int, z: float = Z95) -> tuple[float, float]:
    """(low, high) of `mean` ± z · s / √n, where `std_pop` is the population standard deviation
    (n in the denominator, as the collector reports it) and s the sample one. One episode: the
    interval is unbounded (±inf)."""
    if n < 1 or not math.isfinite(mean):
        return math.nan, math.nan
    if n == 1:
        return -math.inf, math.inf
    half = z * std_pop * math.sqrt(n / (n - 1)) / math.sqrt(n)
    return mean - half, mean + half


def wilson_interval(p: float, n: int, z: float = Z95) -> tuple[float, float]:
    """(low, high) Wilson score interval of a rate `p` observed over `n` episodes."""
    if n < 1 or not math.isfinite(p):
        return math.nan, math.nan
    p = min(1.0, max(0.0, p))
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def interval_stats(stats: dict) -> dict[str, float]:
    """The interval columns for an evaluation's flat stats (``episodes``, ``return``,
    ``return_std``, optional ``success``); {} when it holds no finished episode."""
    n = int(stats.get("episodes", 0) or 0)
    out: dict[str, float] = {}
    if n < 1:
        return out
    if "return" in stats and "return_std" in stats:
        out["return_ci_low"], out["return_ci_high"] = mean_interval(
            float(stats["return"]), float(stats["return_std"]), n)
    if "success" in stats:
        out["success_ci_low"], out["success_ci_high"] = wilson_interval(float(stats["success"]), n)
    return out


def format_interval(stats: dict, metric: str) -> str:
    """``"0.53 [0.41, 0.65]"`` for `metric` of flat eval stats (mean and its 95% interval), or ""
    when the stats hold no such metric."""
    if metric not in stats:
        return ""
    low, high = stats.get(f"{metric}_ci_low"), stats.get(f"{metric}_ci_high")
    text = f"{float(stats[metric]):.3g}"
    if low is not None and high is not None and math.isfinite(low) and math.isfinite(high):
        text += f" [{low:.3g}, {high:.3g}]"
    return text
