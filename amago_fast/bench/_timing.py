"""Timers shared by the benchmark modules: medians, because the machines here are noisy."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def time_cpu(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    """Median wall time of `fn()` in ms."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def time_cuda(fn: Callable[[], object], repeats: int, warmup: int = 5) -> float:
    """Median CUDA-event time of `fn()` in ms (kernel time, launch queue drained each call)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)
