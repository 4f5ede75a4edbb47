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
    return statistics.median(_event_ms(fn, 1) for _ in range(repeats))


def _event_ms(fn: Callable[[], object], calls: int) -> float:
    """CUDA-event time in ms of ``calls`` calls of ``fn`` issued back to back, then a sync."""
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(calls):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end)


def time_cuda_back_to_back(fn: Callable[[], object], iters: int, rounds: int = 3) -> float:
    """Median over ``rounds`` of (CUDA-event time of ``iters`` calls issued back to back) / iters,
    in ms. Unlike :func:`time_cuda` there is no sync between calls, so the host's launch work
    overlaps the GPU's: what a training loop sees when the GPU, not Python, is the bottleneck."""
    fn()
    torch.cuda.synchronize()
    return statistics.median(_event_ms(fn, iters) / iters for _ in range(rounds))


def time_cuda_graph(fn: Callable[[], object], repeats: int, warmup: int = 3) -> float:
    """Median ms per replay of a CUDA graph that captured one ``fn()``: the GPU time of the
    launched kernels without any host launch cost (METHOD: many small launches -> graphs).
    ``fn`` must already be warm (autotuned, compiled): nothing may synchronise during capture."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up on a side stream, as torch.cuda.graphs asks
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    try:
        return time_cuda(graph.replay, repeats)
    finally:
        del graph
        torch.cuda.empty_cache()
