"""Gradient updates per second of the AMAGO learner, with a same-run "reference-style" baseline.

Two stated model sizes: ``small`` = 2 layers, d_model 128, 4 heads, L=128, B=24 and
``large`` = 3 layers, d_model 256, 8 heads, L=512, B=24. Each update is timed in phases:
``sample`` (``TrajectoryBuffer.sample_windows`` from a filled buffer + conversion to tensors),
``forward``, ``backward``, ``optimizer`` (clip, AdamW, EMA, PopArt).

The baseline is the same model size and loss computed the way the public AMAGO reference does it
(UT-Austin-RPL/amago v3.x, facts only, no code copied): attention materialising the (L × L) score
matrix; for the (discrete) bench actions the reference's discrete critic — an ensemble MLP over the
state with G·A outputs, contracted with an action vector (one-hot buffer action, the actor's
probabilities for the policy value, the target actor's for the TD target), so three trunk passes
per update (``ReferenceDiscreteCritic``, einsum layers as the reference's ensemble layers); and a
per-parameter Python loop for the target EMA (``ema_per_parameter``); torch's ``F.dropout``
(ours draws CPU masks from a NumPy stream, ``amago_fast.nets.layers.dropout_mask``).
Process-wide settings apply to both: the learner's allocator tuning (``tune_cpu_malloc``, which
the reference does not do) speeds the baseline up too, so the ratio understates that gain. The
baseline's loss is the same function as ours (tested), ours evaluates Q(s, ·) once and reuses it
(two trunk passes: online and target). ``with_action_input`` adds our action-input critic
(``discrete_critic="action_input"``: state, one-hot / probability action and gamma through one
MLP per (critic, gamma) row), the form AMAGO uses for continuous actions. Both (all) run in the
same process, alternating, on the same batches.

``--grid realistic`` runs AMAGO-like sizes (:data:`REALISTIC`: d_model 256-768, 3-6 layers,
context 256-2048, batch 24-32, 7 or 18 gammas) for a GPU, with timesteps/s and peak memory;
``--cuda-graph`` adds ours with the whole update captured as one CUDA graph. Every row counts
the aten ops and host-sync ops of one update per implementation (a launch-bound GPU update
costs roughly per op).

On a shared machine, run multi-thread cases with ``OMP_WAIT_POLICY=PASSIVE`` (recorded in the
JSON): OpenMP workers that spin while waiting steal the cores other processes need. Measured on
the shared 2-core box at load ~5, small model, 2 threads: 0.89-1.02 updates/s passive vs
0.26-0.48 with the default spinning, run back to back.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from amago_fast.agent import DEFAULT_GAMMAS, Agent, AgentConfig
from amago_fast.bench.sync import HostSyncDetector
from amago_fast.buffer import TrajectoryBuffer
from amago_fast.learner import Learner, LearnerConfig
from amago_fast.nets.critics import StateCriticEnsemble
from amago_fast.nets.layers import Dropout
from amago_fast.spaces import ActionSpec, EnvSpec, FieldSpec

SIZES: dict[str, dict[str, int]] = {
    "small": dict(num_layers=2, d_model=128, num_heads=4, window=128, batch=24),
    "large": dict(num_layers=3, d_model=256, num_heads=8, window=512, batch=24),
}
REALISTIC: dict[str, dict[str, int]] = {
    # AMAGO-like training configs: d_model 256-768, 3-6 layers, context 256-2048,
    # batch 24-32, 7 or 18 gammas; head dims 32/64 (the Triton attention's sizes).
    "amago_256x3_ctx512": dict(num_layers=3, d_model=256, num_heads=8, window=512, batch=24,
                               num_gammas=7),
    "amago_512x4_ctx1024": dict(num_layers=4, d_model=512, num_heads=8, window=1024, batch=32,
                                num_gammas=7),
    "amago_384x4_ctx2048_g18": dict(num_layers=4, d_model=384, num_heads=6, window=2048,
                                    batch=24, num_gammas=18),
    "amago_768x6_ctx256_g18": dict(num_layers=6, d_model=768, num_heads=12, window=256,
                                   batch=32, num_gammas=18),
}
SIZES.update(REALISTIC)


def bench_gammas(num_gammas: int | None) -> tuple[float, ...]:
    """The last ``num_gammas`` default gammas (main 0.999 included); more than the 7 defaults:
    ``1 - geomspace(0.9, 0.001, G)`` (0.1 ... 0.999, denser toward 1, as AMAGO's sets are)."""
    if not num_gammas:
        return DEFAULT_GAMMAS
    if num_gammas <= len(DEFAULT_GAMMAS):
        return DEFAULT_GAMMAS[-num_gammas:]
    return tuple(float(g) for g in 1.0 - np.geomspace(0.9, 0.001, num_gammas))


def materialized_attention(q, k, v, valid_mask=None, window=None, softmax_scale=None):
    """Reference-style attention: explicit (B, H, L, L) scores, masked softmax, then @ V."""
    B, L, H, D = q.shape
    scale = softmax_scale or 1.0 / math.sqrt(D)
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    scores = (qt @ kt.transpose(-1, -2)) * scale
    i = torch.arange(L, device=q.device)
    allowed = i[None, :] <= i[:, None]
    if window is not None:
        allowed = allowed & (i[:, None] - i[None, :] < window)
    allowed = allowed[None, None]
    if valid_mask is not None:
        allowed = allowed & valid_mask[:, None, None, :] & valid_mask[:, None, :, None]
    probs = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
    probs = torch.nan_to_num(probs, nan=0.0)  # fully-masked (padded) query rows
    return (probs @ vt).transpose(1, 2)


class ReferenceDiscreteCritic(StateCriticEnsemble):
    """The public reference's discrete critic on our :class:`StateCriticEnsemble` parameters:
    per critic an MLP over the state (einsum ensemble layers) with G·A outputs, contracted with
    an action vector per gamma. Called like ``CriticEnsemble``: ``(state (N, d), action (N, G, A))
    -> q (N, E, G, 1)``; every call runs the whole trunk. Scalar critics only (bench use)."""

    def forward(self, state, action, detach_params: bool = False):  # type: ignore[override]
        if self.out_dim != 1:
            raise ValueError("ReferenceDiscreteCritic: scalar critics only (out_dim 1)")
        ws, _, b1, w2, b2, w3, b3 = self.params.detached() if detach_params else self.params
        slope = self.negative_slope
        h1 = F.leaky_relu(torch.einsum("nd,cdh->nch", state, ws) + b1[:, 0], slope)
        h2 = F.leaky_relu(torch.einsum("nch,chk->nck", h1, w2) + b2, slope)
        out = torch.einsum("nch,cho->nco", h2, w3) + b3
        out = out.reshape(state.shape[0], self.num_critics, self.num_gammas, self.num_actions)
        return (out * action.unsqueeze(1)).sum(-1, keepdim=True)


def ema_per_parameter(targets, onlines, tau: float, apply: torch.Tensor) -> None:
    """Reference-style target EMA: a Python loop, ``t·(1 − tau) + o·tau`` per parameter, kept
    where ``apply`` (the learner's skip flag) is True. Same signature as ``Learner.ema_fn``."""
    with torch.no_grad():
        for t, o in zip(targets, onlines):
            torch.where(apply, t * (1.0 - tau) + o * tau, t, out=t)


def bench_spec(obs_dim: int = 16, num_actions: int = 4) -> EnvSpec:
    return EnvSpec("bench", (FieldSpec("obs", (obs_dim,), np.float32),),
                   ActionSpec("discrete", n=num_actions))


def filled_buffer(spec: EnvSpec, window: int, num_trajectories: int, seed: int):
    """A real TrajectoryBuffer holding random trajectories of 1-2 windows each."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(window, 2 * window, size=num_trajectories)
    buf = TrajectoryBuffer.from_env_spec(spec, int(lengths.sum() + num_trajectories) + 16, 1,
                                         seed=seed)
    for T in lengths:
        rows = {
            "obs": rng.normal(size=(T + 1, spec.observation[0].shape[0])).astype(np.float32),
            "action": rng.integers(0, spec.action.n, size=T + 1).astype(np.int32),
            "reward": rng.normal(size=T + 1).astype(np.float32),
            "terminated": np.zeros(T + 1, bool),
            "truncated": np.zeros(T + 1, bool),
        }
        rows["action"][0], rows["reward"][0] = 0, 0.0
        rows["terminated"][-1] = True
        buf.add_trajectory(rows)
    return buf


def build(size: str, baseline: bool, device: str, seed: int = 0,
          num_gammas: int | None = None, critic_hidden: int = 256,
          discrete_critic: str | None = None, cuda_graph: bool = False) -> Learner:
    """Learner of the stated size; ``num_gammas`` (else the size's own, else 7): see
    :func:`bench_gammas`. ``discrete_critic``: ours' critic form ("state", default, or
    "action_input"); the baseline always uses :class:`ReferenceDiscreteCritic` (the
    reference's form) and rejects it. ``cuda_graph``: ours with ``LearnerConfig.cuda_graph``."""
    if baseline and discrete_critic is not None:
        raise ValueError("the reference-style baseline has a fixed critic form; "
                         "discrete_critic applies to ours only")
    discrete_critic = discrete_critic or "state"
    s = SIZES[size]
    spec = bench_spec()
    torch.manual_seed(seed)
    gammas = bench_gammas(num_gammas or s.get("num_gammas"))
    cfg = AgentConfig(d_model=s["d_model"], num_layers=s["num_layers"], num_heads=s["num_heads"],
                      context_len=s["window"] + 1, gammas=gammas, critic_hidden=critic_hidden,
                      discrete_critic=discrete_critic)
    agent = Agent(spec, cfg)
    if baseline:
        for layer in agent.traj_encoder.layers:
            layer.attention_fn = materialized_attention
        for m in agent.modules():  # torch's own dropout, as the reference uses
            if isinstance(m, Dropout):
                m.fast_cpu_mask = False
        c = agent.critics
        ref = ReferenceDiscreteCritic(c.state_dim, c.num_actions, c.num_gammas, c.num_critics,
                                      c.hidden_dim, c.out_dim, c.negative_slope)
        ref.load_state_dict(c.state_dict())
        agent.critics = ref
        # The learner's action-input path: critic(state, one-hot / probability vector) per call.
        agent.state_critic = False
    learner = Learner(agent, LearnerConfig(device=device, warmup_steps=10, seed=seed,
                                           cuda_graph=cuda_graph))
    if baseline:
        learner.ema_fn = ema_per_parameter
    return learner


def update_gflop(learner: Learner, batch: dict[str, torch.Tensor]) -> float:
    """GFLOP of one update of ``learner`` on ``batch`` (it performs that update): the matmuls
    counted by ``torch.utils.flop_counter`` plus, for the fused CPU attention kernel the
    counter does not see, the causal attention matmuls: forward QKᵀ and PV, backward five
    (recomputed QKᵀ, dV, dP, dQ, dK), each 2·B·H·L²·D over the causal half."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        learner.update(batch)
    counted = counter.get_total_flops()
    traj = learner.agent.traj_encoder
    B, L1 = batch["mask"].shape
    attn = 0
    for layer in getattr(traj, "layers", []):
        if getattr(layer, "attention_fn", None) is not materialized_attention:
            attn += 7 * B * layer.num_heads * L1 * L1 * layer.head_dim  # 7 · 2·B·H·L²·D / 2
    return (counted + attn) / 1e9


def gemm_gflops(repeats: int = 7) -> float:
    """Median fp32 GEMM rate (GFLOP/s) at the current thread count, on the shapes that carry
    most of the small model's FLOPs: (3096 × 256) @ (256 × 256) and its 4-critic batched form
    (N = 24 windows × 129 rows)."""
    a = torch.randn(3096, 256)
    w = torch.randn(256, 256)
    ab = torch.randn(4, 3096, 256)
    wb = torch.randn(4, 256, 256)
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, w)
        torch.bmm(ab, wb)
        dt = time.perf_counter() - t0
        rates.append(5 * 2 * 3096 * 256 * 256 / dt / 1e9)
    return statistics.median(rates)


def update_op_counts(learner: Learner, batch: dict[str, torch.Tensor]) -> dict[str, int]:
    """aten ops and host-sync ops (:class:`amago_fast.bench.sync.HostSyncDetector`) of one update
    of ``learner`` on ``batch`` (it performs that update, metrics read included: the one sync of
    an update with ``stats_every=1``). Launch-bound GPU updates cost roughly per op.
    ``host_sync_sites``: where they happen (on CPU, Dropout's NumPy-stream masks read a host
    seed: a CPU-only path, F.dropout on a GPU)."""
    with HostSyncDetector() as d:
        learner.update(batch)
    sites = sorted({f"{op} @ {where}" for op, where in d.events})
    return {"aten_ops": d.ops, "host_sync_ops": len(d.events), "host_sync_sites": sites}


def _sample(buf: TrajectoryBuffer, B: int, L: int, device: torch.device):
    t0 = time.perf_counter()
    batch = buf.sample_windows(B, L)
    out = {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in batch.items()}
    return out, time.perf_counter() - t0


def run(
    sizes: tuple[str, ...] = ("small", "large"),
    iters: int | None = None,
    warmup: int = 2,
    threads: int | None = None,
    device: str = "cpu",
    quick: bool = False,
    seed: int = 0,
    num_gammas: int | None = None,
    critic_hidden: int = 256,
    with_action_input: bool = False,
    count_flops: bool = True,
    count_ops: bool = True,
    cuda_graph: bool = False,
    window: int | None = None,
    batch_size: int | None = None,
    json_out: str | None = None,
) -> dict[str, Any]:
    """Median phase times, updates/s and timesteps/s for each size, ours vs the reference-style
    baseline.

    ``iters`` timed updates per implementation (default 10 for sizes up to ``small``'s, 3
    above; ``quick``: 4 / 2). The implementations alternate update by update so machine noise
    hits them alike. ``with_action_input`` adds ``ours_action_input``: our kernels with the
    reference's critic form (separates the critic-form gain from the rest). ``cuda_graph``
    adds ``ours_graph``: ours with the whole update captured as one CUDA graph (CUDA only).
    ``count_flops`` (CPU): also report each implementation's GFLOP per update
    (:func:`update_gflop`), a GEMM rate measured in the same run (:func:`gemm_gflops`) and
    their ratio ``flop_floor_updates_per_s``: the ceiling if the whole update ran at GEMM speed.
    ``count_ops``: aten and host-sync ops per update (:func:`update_op_counts`).
    ``window`` / ``batch_size`` override every size's (a CPU smoke run of the realistic grid).
    A size that raises a RuntimeError (out of GPU memory, a failed capture) gets
    ``{"error": ...}`` and the rest still run;
    ``json_out``: the results so far are written there (atomically) after every size, so a
    run cut off by a time limit keeps its finished rows.
    On CUDA each row has ``peak_mb`` (``max_memory_allocated`` during that implementation's
    updates, all resident models included) and ``update_transient_mb`` (that peak minus what
    was allocated when its update started).
    """
    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    results: dict[str, Any] = {"threads": torch.get_num_threads(), "device": device,
                               "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
                               "num_gammas": num_gammas,
                               "critic_hidden": critic_hidden}
    if dev.type == "cuda":
        results["gpu"] = torch.cuda.get_device_name(dev)
    for size in sizes:
        if size not in SIZES:
            raise ValueError(f"unknown size {size!r}; sizes: {sorted(SIZES)}")
    for size in sizes:
        try:
            results[size] = _run_size(size, iters, warmup, dev, quick, seed, num_gammas,
                                      critic_hidden, with_action_input, count_flops,
                                      count_ops, cuda_graph, window, batch_size)
        except RuntimeError as e:  # out of GPU memory, a failed capture: keep the other sizes
            results[size] = {"error": f"{type(e).__name__}: {e}"[:500]}
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        if json_out:
            tmp = f"{json_out}.tmp"
            with open(tmp, "w") as f:
                json.dump(results, f, indent=2)
            os.replace(tmp, json_out)
    return results


def _run_size(size: str, iters: int | None, warmup: int, dev: torch.device, quick: bool,
              seed: int, num_gammas: int | None, critic_hidden: int, with_action_input: bool,
              count_flops: bool, count_ops: bool, cuda_graph: bool, window: int | None,
              batch_size: int | None) -> dict[str, Any]:
    """One row of :func:`run` (arguments as there)."""
    device = str(dev)
    s = dict(SIZES[size])
    if window:
        s["window"] = window
    if batch_size:
        s["batch"] = batch_size
    small = s["window"] * s["d_model"] <= 128 * 128
    n = iters or ((4 if small else 2) if quick else (10 if small else 3))
    buf = filled_buffer(bench_spec(), s["window"], 4 * s["batch"], seed)
    with _patched_size(size, s):
        impls = {name: build(size, name == "baseline", device, seed, num_gammas,
                             critic_hidden) for name in ("ours", "baseline")}
        if with_action_input:
            impls["ours_action_input"] = build(size, False, device, seed, num_gammas,
                                               critic_hidden, discrete_critic="action_input")
        if cuda_graph:
            impls["ours_graph"] = build(size, False, device, seed, num_gammas,
                                        critic_hidden, cuda_graph=True)
    # The graph is captured during warm-up (after its own eager warm-up updates).
    n_warm = max(warmup, impls["ours_graph"].config.cuda_graph_warmup + 1
                 if cuda_graph else 0)
    times: dict[str, dict[str, list[float]]] = {k: {} for k in impls}
    peaks: dict[str, list[float]] = {k: [] for k in impls}
    gemm_rates: list[float] = []
    for i in range(n_warm + n):
        if count_flops and dev.type == "cpu" and i >= n_warm:
            # Interleaved with the updates, so machine noise hits the GEMM rate alike.
            gemm_rates.append(gemm_gflops(repeats=3))
        batch, t_sample = _sample(buf, s["batch"], s["window"], dev)
        for name, learner in impls.items():
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
                before = torch.cuda.memory_allocated(dev)
                torch.cuda.reset_peak_memory_stats(dev)
            t0 = time.perf_counter()
            m = learner.update(batch)  # stats_every=1: ends with the metrics read
            total = time.perf_counter() - t0
            if i < n_warm:
                continue
            if m["skipped_nonfinite"]:
                raise RuntimeError(f"bench update {name} produced a non-finite loss")
            if dev.type == "cuda":
                peak = torch.cuda.max_memory_allocated(dev)
                peaks[name].append(peak / 2**20)
                times[name].setdefault("transient_mb", []).append((peak - before) / 2**20)
            phases = dict(learner.last_timings, sample=t_sample, update_total=total)
            for k, v in phases.items():
                times[name].setdefault(k, []).append(v)
    params = sum(p.numel() for p in impls["ours"].agent.parameters())
    row: dict[str, Any] = {"config": s, "iters": n, "params": params,
                           "gammas": len(impls["ours"].agent.config.gammas)}
    batch, _ = _sample(buf, s["batch"], s["window"], dev)
    if count_ops:
        row["ops_per_update"] = {name: update_op_counts(learner, batch)
                                 for name, learner in impls.items()}
    if count_flops and dev.type == "cpu":
        # After the timed updates (counting costs one more update per implementation).
        gemm = statistics.median(gemm_rates)
        row["gemm_gflops_measured"] = gemm
        for name, learner in impls.items():
            g = update_gflop(learner, batch)
            row.setdefault("gflop_per_update", {})[name] = g
            # The update rate if every FLOP ran at the measured GEMM rate (sampling excluded).
            row.setdefault("flop_floor_updates_per_s", {})[name] = gemm / g
    for name, ph in times.items():
        med = {k: statistics.median(v) for k, v in ph.items()}
        per_update = med["sample"] + med["update_total"]
        row[name] = {
            "updates_per_s": 1.0 / per_update,
            # Timesteps trained per second (B windows of L transitions), sampling included.
            "timesteps_per_s": s["batch"] * s["window"] / per_update,
            "update_only_ms": 1000 * med["update_total"],
            "breakdown_ms": {k: 1000 * med[k] for k in
                             ("sample", "forward", "backward", "optimizer") if k in med},
        }
        if peaks[name]:
            row[name]["peak_mb"] = max(peaks[name])
            row[name]["update_transient_mb"] = max(ph["transient_mb"])
    row["updates_per_s"] = row["ours"]["updates_per_s"]
    row["baseline_updates_per_s"] = row["baseline"]["updates_per_s"]
    row["ratio"] = row["updates_per_s"] / row["baseline_updates_per_s"]
    if with_action_input:
        row["ours_action_input_ratio_vs_baseline"] = (
            row["ours_action_input"]["updates_per_s"] / row["baseline_updates_per_s"])
    if cuda_graph:
        row["ours_graph_ratio_vs_baseline"] = (
            row["ours_graph"]["updates_per_s"] / row["baseline_updates_per_s"])
        row["ours_graph_vs_eager_speedup"] = (
            row["ours_graph"]["updates_per_s"] / row["updates_per_s"])
    return row


@contextlib.contextmanager
def _patched_size(name: str, size: dict[str, int]):
    """``SIZES[name]`` replaced by ``size`` (window/batch overrides) while building."""
    saved = SIZES[name]
    SIZES[name] = size
    try:
        yield
    finally:
        SIZES[name] = saved


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=None, choices=sorted(SIZES))
    p.add_argument("--grid", choices=["issue4", "realistic"], default="issue4",
                   help="issue4: small and large (default); realistic: the AMAGO-like configs "
                        f"{sorted(REALISTIC)} (for a GPU; --window/--batch shrink them)")
    p.add_argument("--iters", type=int, default=None)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--num-gammas", type=int, default=None,
                   help="gammas (default: the size's, else the 7 defaults; see bench_gammas)")
    p.add_argument("--critic-hidden", type=int, default=256)
    p.add_argument("--with-action-input", action="store_true",
                   help="also time ours with discrete_critic='action_input'")
    p.add_argument("--cuda-graph", action="store_true",
                   help="also time ours with the update captured as one CUDA graph")
    p.add_argument("--window", type=int, default=None, help="override every size's window")
    p.add_argument("--batch", type=int, default=None, help="override every size's batch")
    p.add_argument("--no-flops", action="store_true",
                   help="skip the FLOP count and GEMM-rate floor")
    p.add_argument("--no-op-count", action="store_true",
                   help="skip the aten / host-sync op count per update")
    p.add_argument("--json-out", default=None,
                   help="also write the results there after every size (atomic)")
    a = p.parse_args(argv)
    sizes = a.sizes or (sorted(REALISTIC) if a.grid == "realistic" else ["small", "large"])
    print(json.dumps(run(tuple(sizes), a.iters, a.warmup, a.threads, a.device, a.quick,
                         num_gammas=a.num_gammas, critic_hidden=a.critic_hidden,
                         with_action_input=a.with_action_input,
                         count_flops=not a.no_flops, count_ops=not a.no_op_count,
                         cuda_graph=a.cuda_graph, window=a.window, batch_size=a.batch,
                         json_out=a.json_out),
                     indent=2))


if __name__ == "__main__":
    main()
