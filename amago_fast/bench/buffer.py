"""Trajectory buffer benchmark: native core vs NumPy reference vs a plain memcpy, same run.

Cases: B=24 windows of L=256 and L=1024 steps; 16-d float32 observations and
64x64x3 uint8 images; without and with hindsight relabeling (k=3 goals); one 64-env
``append_step`` with 16-d observations.

Each sampling case reports windows/s of the native buffer and of the NumPy reference, and the
time of ``np.copyto`` of the same number of bytes between two preallocated buffers (one
memcpy: the physical limit of a single thread), all measured in this run (medians of repeated
calls). Relabeling cases use a schema with goal fields; their ``relabel_cost`` is native
relabeled time / native plain time on that same schema and data.

Data: trajectories of 2L transitions (so windows are full), random content, enough of them to
fill the ring 4 times over a window's worth. Goal instructions are drawn from 1024 values per
goal so most windows have unreached goals to relabel (strategy "all", probability 1: the most
work per window).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np

from amago_fast.buffer import NATIVE_AVAILABLE, RelabelConfig, TrajectoryBuffer
from amago_fast.buffer.synthetic import goal_env_spec, plain_env_spec
from amago_fast.spaces import ActionSpec, EnvSpec

TARGETS = {
    "native_over_reference": 10.0,
    "gather_over_memcpy_bandwidth_at_L1024": 0.30,
    "relabel_cost_max": 2.0,
    "append64_us_max": 20.0,
    "windows_per_s_L256_vec16": 130_000,
}


def _median_time(fn: Callable[[], object], min_reps: int, max_reps: int,
                 budget_s: float) -> float:
    fn()  # warm-up (page faults, thread start)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_reps and (len(times) < min_reps
                                     or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _memcpy_time(nbytes: int, budget_s: float) -> float:
    src = np.ones(nbytes, np.uint8)
    dst = np.empty_like(src)
    return _median_time(lambda: np.copyto(dst, src), 5, 500, budget_s)


def _spec(obs: str, goals: bool) -> EnvSpec:
    action = ActionSpec("discrete", n=4)
    image = (64, 64, 3) if obs == "img64" else None
    obs_dim = 16 if obs == "vec16" else 0
    if goals:
        spec = goal_env_spec(k=3, goal_dim=2, obs_dim=max(obs_dim, 1), image=image, action=action)
        if obs_dim == 0:  # drop the vector obs for the image case
            spec = EnvSpec(spec.name, tuple(f for f in spec.observation if f.name != "obs"),
                           action, goals=spec.goals)
        return spec
    return plain_env_spec(obs_dim=obs_dim, image=image, action=action)


def _trajectory(spec: EnvSpec, T: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    rows: dict[str, np.ndarray] = {}
    for f in spec.buffer_fields():
        shape = (T + 1, *f.shape)
        if f.dtype == np.uint8:
            rows[f.name] = rng.integers(0, 256, shape, dtype=np.uint8)
        elif f.dtype == np.bool_:
            rows[f.name] = np.zeros(shape, bool)
        elif f.dtype == np.int32:
            rows[f.name] = np.zeros(shape, np.int32)
        else:
            rows[f.name] = rng.standard_normal(shape).astype(f.dtype)
    g = spec.goals
    if g is not None:
        rows[g.goal_field] = np.broadcast_to(
            rng.integers(0, 32, (1, g.k, g.goal_dim)), rows[g.goal_field].shape
        ).astype(np.float32)
        rows[g.achieved_field] = rng.integers(0, 32, rows[g.achieved_field].shape).astype(
            np.float32)
    rows["terminated"][-1] = True
    return rows


def _filled(engine: str | None, spec: EnvSpec, L: int, num_threads: int | None, seed: int = 0):
    T = 2 * L
    num_traj = 8
    buf = TrajectoryBuffer.from_env_spec(spec, capacity_steps=num_traj * (T + 1), num_envs=1,
                                         seed=seed, num_threads=num_threads, engine=engine)
    rng = np.random.default_rng(seed)
    for i in range(num_traj):
        buf.add_trajectory(_trajectory(spec, T, rng), time_offset=i)
    return buf


def _window_bytes(buf, B: int, L: int) -> int:
    return B * (L + 1) * (buf.row_bytes + 1 + 8) + 2 * B * 8  # fields + mask + time_index + ids


def sample_case(obs: str, L: int, relabel: bool, B: int = 24, num_threads: int | None = None,
                budget_s: float = 1.0, reference: bool = True) -> dict:
    spec = _spec(obs, goals=relabel)
    native = _filled(None, spec, L, num_threads)
    rel = RelabelConfig("all", 1.0) if relabel else None
    out = native.allocate_batch(B, L)
    t_native = _median_time(lambda: native.sample_windows(B, L, out=out, relabel=rel),
                            5, 500, budget_s)
    nbytes = _window_bytes(native, B, L)
    t_memcpy = _memcpy_time(nbytes, budget_s)
    res = {
        "case": f"sample B={B} L={L} {obs}" + (" relabel(all, k=3)" if relabel else ""),
        "batch": B, "length": L, "obs": obs, "relabel": relabel,
        "bytes_per_call": nbytes,
        "native_engine": native.engine,
        "native_threads": native.num_threads,
        "native_windows_per_s": B / t_native,
        "native_GBps": nbytes / t_native / 1e9,
        "memcpy_GBps": nbytes / t_memcpy / 1e9,
        "native_over_memcpy_bandwidth": t_memcpy / t_native,
    }
    if relabel:
        # Plain and relabeled calls alternate so both see the same machine load (the dev
        # machine is shared: sequential measurements drifted by 2x between runs).
        plain_out = native.allocate_batch(B, L)
        t_plain_list, t_rel_list = [], []
        start = time.perf_counter()
        while len(t_rel_list) < 5 or (time.perf_counter() - start < budget_s
                                      and len(t_rel_list) < 500):
            t0 = time.perf_counter()
            native.sample_windows(B, L, out=plain_out)
            t1 = time.perf_counter()
            native.sample_windows(B, L, out=out, relabel=rel)
            t2 = time.perf_counter()
            t_plain_list.append(t1 - t0)
            t_rel_list.append(t2 - t1)
        t_plain = statistics.median(t_plain_list)
        res["native_plain_same_schema_windows_per_s"] = B / t_plain
        res["relabel_cost"] = statistics.median(t_rel_list) / t_plain
    if reference:
        ref = _filled("numpy", spec, L, None)
        ref_out = ref.allocate_batch(B, L)
        t_ref = _median_time(lambda: ref.sample_windows(B, L, out=ref_out, relabel=rel),
                             3, 50, budget_s)
        res["reference_windows_per_s"] = B / t_ref
        res["native_over_reference"] = t_ref / t_native
    return res


def append_case(num_envs: int = 64, obs_dim: int = 16, budget_s: float = 1.0,
                reference: bool = True) -> dict:
    spec = plain_env_spec(obs_dim=obs_dim, action=ActionSpec("discrete", n=4))
    rng = np.random.default_rng(0)
    rows = {
        "obs": rng.standard_normal((num_envs, obs_dim)).astype(np.float32),
        "action": rng.integers(0, 4, num_envs).astype(np.int32),
        "reward": rng.standard_normal(num_envs).astype(np.float32),
        "terminated": np.zeros(num_envs, bool),
        "truncated": np.zeros(num_envs, bool),
    }
    res: dict = {"case": f"append_step {num_envs} envs obs {obs_dim}-d f32"}

    def measure(engine: str | None):
        # cuts every 500 steps, so the timed appends include their share of commits
        buf = TrajectoryBuffer.from_env_spec(spec, capacity_steps=200_000, num_envs=num_envs,
                                             max_trajectory_len=500, engine=engine)
        buf.reset_envs({"obs": rows["obs"]})

        def hundred():
            for _ in range(100):
                buf.append_step(rows)

        return _median_time(hundred, 5, 200, budget_s) / 100, buf.engine

    t_native, engine = measure(None)
    res.update(native_engine=engine, native_us=t_native * 1e6)
    row_bytes = num_envs * (obs_dim * 4 + 4 + 4 + 2)
    src = np.ones(row_bytes, np.uint8)
    dst = np.empty_like(src)

    def copies():
        for _ in range(100):
            np.copyto(dst, src)

    res["memcpy_same_bytes_us"] = _median_time(copies, 5, 200, budget_s) / 100 * 1e6
    if reference:
        t_ref, _ = measure("numpy")
        res.update(reference_us=t_ref * 1e6, native_over_reference=t_ref / t_native)
    return res


def run(batch: int = 24, lengths: tuple[int, ...] = (256, 1024),
        obs_kinds: tuple[str, ...] = ("vec16", "img64"), relabel: tuple[bool, ...] = (False, True),
        num_threads: int | None = None, budget_s: float = 1.0, reference: bool = True) -> dict:
    """Run the benchmark; returns a JSON-able dict (cases with same-run baselines + targets)."""
    cases = []
    for obs in obs_kinds:
        for L in lengths:
            for rel in relabel:
                cases.append(sample_case(obs, L, rel, batch, num_threads, budget_s, reference))
    cases.append(append_case(budget_s=budget_s, reference=reference))
    return {
        "benchmark": "buffer",
        "native_available": NATIVE_AVAILABLE,
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpu_count": os.cpu_count()},
        "targets": TARGETS,
        "cases": cases,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=24)
    p.add_argument("--lengths", type=int, nargs="+", default=[256, 1024])
    p.add_argument("--obs", nargs="+", default=["vec16", "img64"], choices=["vec16", "img64"])
    p.add_argument("--relabel", choices=["both", "off", "on"], default="both")
    p.add_argument("--threads", type=int, default=None, help="native gather threads")
    p.add_argument("--budget", type=float, default=1.0, help="seconds of timing per measurement")
    p.add_argument("--no-reference", action="store_true", help="skip the NumPy reference")
    a = p.parse_args(argv)
    rel = {"both": (False, True), "off": (False,), "on": (True,)}[a.relabel]
    res = run(a.batch, tuple(a.lengths), tuple(a.obs), rel, a.threads, a.budget,
              not a.no_reference)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
