"""Attention benchmarks: training attention (fwd, fwd+bwd) and rollout decode.

GPU part (skipped with a note when CUDA is absent): bf16, D=64, L in {512, 2048, 8192}, B*H sized
to fill the GPU (B*L = 16384 tokens, H=16): our Triton kernel vs
``F.scaled_dot_product_attention`` pinned to the flash backend vs our reference (given a
``valid_mask``, i.e. SDPA with an explicit boolean mask), TFLOP/s and ratios; decode step latency
vs filled context length, Triton vs the reference decode. Each length also records the autotuner's
fastest tiles per kernel (``autotune``) and, up to L=2048 (the fp32 oracle materialises L x L), the
max error of ours and of SDPA-flash vs an fp32 oracle (``accuracy``).

CPU part (always): the reference path the CPU trainer runs, at the trainer's shapes, vs plain
``F.scaled_dot_product_attention(is_causal=True)`` in the same run; and the reference decode step
the CPU collector runs, vs filled context length.

Every figure is a median over repeats and comes with its same-run baseline and ratio.
"""

from __future__ import annotations

import argparse
import json
import platform
from collections.abc import Callable

import torch
import torch.nn.functional as F

from amago_fast.bench._timing import (
    time_cpu,
    time_cuda,
    time_cuda_back_to_back,
    time_cuda_graph,
)
from amago_fast.kernels.attention import causal_attention, causal_attention_reference
from amago_fast.kernels.decode import RingKVCache, decode_attention

CPU_SHAPES = [(24, 128, 4, 32), (24, 512, 8, 32)]  # (B, L, H, D): trainer's CPU configs
GPU_LENGTHS = [512, 2048, 8192]


def _fwd_bwd(attn: Callable, q, k, v, g) -> Callable[[], None]:
    def step():
        out = attn(q, k, v)
        torch.autograd.grad(out, (q, k, v), g)

    return step


def _measure(variants: dict, q, k, v, g, timer: Callable, repeats: int,
             after: Callable[[str], None] | None = None) -> dict:
    """{name: (fwd ms, fwd+bwd ms)} for each attention variant on the same inputs; ``after(name)``
    runs once a variant is timed (used to read the autotuner's per-config timings)."""
    out = {}
    for name, fn in variants.items():
        with torch.no_grad():
            fwd = timer(lambda fn=fn: fn(q, k, v), repeats)
        out[name] = (fwd, timer(_fwd_bwd(fn, q, k, v, g), repeats))
        if after is not None:
            after(name)
    return out


def _measure_without_host_gaps(variants: dict, q, k, v, g, repeats: int) -> dict:
    """{name: {"fwd_bwd_b2b_ms", "fwd_bwd_graph_ms"}}: fwd+bwd timed with calls issued back to
    back (host launch work overlaps the GPU) and as CUDA-graph replays (no host work at all).
    ``time_cuda`` syncs after every call, so a path with more Python launch work per call (ours:
    autograd Function + 4 Triton launches) pays its host time there even when the GPU is idle;
    these two timings separate host cost from kernel cost. A variant that cannot be captured
    gets the error instead of a figure. Graphs only for ours and SDPA-flash (the target's pair):
    a failed capture can leave the CUDA context unusable for the rest of the run."""
    out: dict = {}
    for name, fn in variants.items():
        step = _fwd_bwd(fn, q, k, v, g)
        row: dict = {"fwd_bwd_b2b_ms": time_cuda_back_to_back(step, repeats)}
        if name in ("ours", "sdpa_flash"):
            try:
                row["fwd_bwd_graph_ms"] = time_cuda_graph(step, repeats)
            except Exception as exc:  # e.g. a backend that synchronises inside the capture
                row["fwd_bwd_graph_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
        out[name] = row
    return out


def _autotune_tables(top: int = 5) -> dict:
    """The fastest ``top`` configs each attention kernel's autotuner timed at its latest key
    (median ms), plus the config it chose: how the tile lists in ``kernels/attention.py`` were
    picked. Empty for a kernel that has not autotuned (one config, e.g. the interpreter)."""
    from amago_fast.kernels import attention as A

    def label(c):
        return f"M{c.kwargs['BLOCK_M']}_N{c.kwargs['BLOCK_N']}_w{c.num_warps}_s{c.num_stages}"

    def median(t):  # Triton records [median, p20, p80] per config
        return t[0] if isinstance(t, (list, tuple)) else t

    tables = {}
    for kind, kern in A.AUTOTUNED_KERNELS.items():
        timings = getattr(kern, "configs_timings", None)
        if not timings:
            continue
        ranked = sorted(timings.items(), key=lambda kv: median(kv[1]))
        tables[kind] = {
            "chosen": label(kern.best_config),
            "configs_timed": len(ranked),
            "fastest_ms": [[label(c), round(median(t), 4)] for c, t in ranked[:top]],
        }
    return tables


def _accuracy(q, k, v, g, mask) -> dict:
    """Max abs error of ours and of SDPA-flash (same dtype) vs an fp32 oracle, for the output and
    dq/dk/dv: the tolerance rule's two sides at the benchmark's own shapes and tiles."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def grads(fn, dtype):
        qq, kk, vv = (t.detach().to(dtype).requires_grad_() for t in (q, k, v))
        out = fn(qq, kk, vv)
        return [out.float(), *(t.float() for t in torch.autograd.grad(out, (qq, kk, vv),
                                                                       g.to(dtype)))]

    def sdpa_flash(q, k, v):
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            return _sdpa_causal(q, k, v)

    oracle = grads(lambda q, k, v: causal_attention_reference(q, k, v), torch.float32)
    ours = grads(lambda q, k, v: causal_attention(q, k, v, backend="triton"), q.dtype)
    flash = grads(sdpa_flash, q.dtype)
    masked_oracle = grads(lambda q, k, v: causal_attention_reference(q, k, v, mask), torch.float32)
    masked_ours = grads(lambda q, k, v: causal_attention(q, k, v, mask, backend="triton"), q.dtype)
    row = {}
    for i, name in enumerate(("out", "dq", "dk", "dv")):
        row[f"ours_{name}_max_err"] = (ours[i] - oracle[i]).abs().max().item()
        row[f"sdpa_flash_{name}_max_err"] = (flash[i] - oracle[i]).abs().max().item()
        row[f"ours_masked_{name}_max_err"] = (masked_ours[i] - masked_oracle[i]).abs().max().item()
    return row


def _cpu_variants(mask: torch.Tensor, window: int) -> dict:
    return {
        "sdpa_is_causal": _sdpa_causal,
        "reference_masked": lambda q, k, v: causal_attention_reference(q, k, v, mask),
        "reference_masked_window": lambda q, k, v: causal_attention_reference(
            q, k, v, mask, window=window
        ),
    }


def _gpu_variants(mask: torch.Tensor) -> dict:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def sdpa_flash(q, k, v):
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            return _sdpa_causal(q, k, v)

    return {
        "ours": lambda q, k, v: causal_attention(q, k, v, backend="triton"),
        "ours_masked": lambda q, k, v: causal_attention(q, k, v, mask, backend="triton"),
        "sdpa_flash": sdpa_flash,
        "reference_masked": lambda q, k, v: causal_attention_reference(q, k, v, mask),
    }


def _sdpa_causal(q, k, v):
    return F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
    ).transpose(1, 2)


def _inputs(B, L, H, D, dtype, device, grad):
    gen = torch.Generator(device=device).manual_seed(0)
    q, k, v, g = (
        torch.randn(B, L, H, D, generator=gen, device=device, dtype=dtype) for _ in range(4)
    )
    if grad:
        q, k, v = (t.requires_grad_() for t in (q, k, v))
    mask = torch.ones(B, L, dtype=torch.bool, device=device)
    mask[:, L - L // 8 :] = False  # a padded tail, as in sampled windows
    return q, k, v, g, mask


def _causal_flops(B: int, L: int, H: int, D: int) -> dict[str, float]:
    """Matmul FLOPs of causal attention: the causal half of the two (L x L x D) products in the
    forward; the backward counted as 2.5x the forward (FlashAttention's convention)."""
    fwd = 4 * B * H * L * L * D / 2
    return {"fwd": fwd, "fwd_bwd": 3.5 * fwd}


def _compile_one(job: tuple) -> str:
    """Worker (spawned process): compile one tile config of each attention kernel by running it
    once with that single config at the benchmark's specialisation (bf16/fp16, H heads, L a
    multiple of 16, with or without a mask). The binaries land in Triton's on-disk cache."""
    index, heads, head_dim, dtype_name, has_mask, device = job
    from amago_fast.kernels import attention as A

    for kern in A.AUTOTUNED_KERNELS.values():
        kern.configs = [kern.configs[index % len(kern.configs)]]
        kern.cache.clear()
    q, k, v, g, mask = _inputs(1, 256, heads, head_dim, getattr(torch, dtype_name), device, True)
    try:
        out = causal_attention(q, k, v, mask if has_mask else None, backend="triton")
        torch.autograd.grad(out, (q, k, v), g)
        if device == "cuda":
            torch.cuda.synchronize()
    except Exception as exc:  # a tile that does not fit is the autotuner's business, not ours
        return f"config {index} mask={has_mask}: {type(exc).__name__}: {str(exc)[:200]}"
    return ""


def precompile(workers: int, heads: int = 16, head_dim: int = 64,
               dtype: torch.dtype = torch.bfloat16, device: str = "cuda") -> dict:
    """Compile every autotune candidate of the three attention kernels in ``workers`` parallel
    processes before timing. Triton compiles autotune candidates one after another in the
    calling process (~1 s each, ~70 per dtype and head dim here); the autotuner then finds them
    in the on-disk cache. Returns the wall time and any per-config failures."""
    import concurrent.futures as cf
    import multiprocessing as mp
    import time

    from amago_fast.kernels import attention as A

    n = max(len(k.configs) for k in A.AUTOTUNED_KERNELS.values())
    name = str(dtype).removeprefix("torch.")
    jobs = [(i, heads, head_dim, name, m, device) for i in range(n) for m in (False, True)]
    t0 = time.perf_counter()
    with cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        errors = [e for e in pool.map(_compile_one, jobs) if e]
    return {"jobs": len(jobs), "workers": workers, "seconds": round(time.perf_counter() - t0, 1),
            "errors": errors}


def run_cpu(repeats: int = 7) -> dict:
    """Reference attention cost at the trainer's CPU shapes, vs plain SDPA(is_causal=True)."""
    results = []
    for B, L, H, D in CPU_SHAPES:
        q, k, v, g, mask = _inputs(B, L, H, D, torch.float32, "cpu", grad=True)
        row: dict = {"B": B, "L": L, "H": H, "D": D, "dtype": "float32"}
        timings = _measure(_cpu_variants(mask, L // 2), q, k, v, g, time_cpu, repeats)
        for name, (fwd, fwd_bwd) in timings.items():
            row[f"{name}_fwd_ms"] = fwd
            row[f"{name}_fwd_bwd_ms"] = fwd_bwd
        for name in ("reference_masked", "reference_masked_window"):
            for p in ("fwd", "fwd_bwd"):
                row[f"{name}_{p}_vs_sdpa"] = row[f"{name}_{p}_ms"] / row[f"sdpa_is_causal_{p}_ms"]
        results.append(row)
    decode = []
    N, H, D = 24, 4, 32
    for ctx in (128, 512, 2048):
        cache = RingKVCache(N, ctx, H, D)
        kv = torch.randn(N, H, D)
        for _ in range(ctx):
            cache.append(kv, kv)
        q = torch.randn(N, H, D)

        def step(cache=cache, q=q, kv=kv):
            cache.append(kv, kv)
            decode_attention(q, cache)

        decode.append({"N": N, "H": H, "D": D, "context": ctx,
                       "reference_step_ms": time_cpu(step, repeats * 3)})
    base = decode[0]["reference_step_ms"]
    for d in decode:
        d["vs_context_128"] = d["reference_step_ms"] / base
    return {
        "attention": results,
        "decode": decode,
        "note": "medians; ratios vs the same-run baseline (SDPA is_causal / context 128)",
    }


def run_gpu(
    repeats: int = 20,
    lengths: list[int] | None = None,
    tokens: int = 16384,
    heads: int = 16,
    decode_contexts: tuple[int, ...] = (128, 1024, 8192),
    device: str = "cuda",
    dtype: torch.dtype = torch.bfloat16,
    accuracy_max_len: int = 2048,
) -> dict:
    """Triton vs SDPA-flash vs reference, bf16 D=64; decode step latency vs context length.

    ``device``/``dtype`` other than CUDA/bf16 exist only to smoke-test this function on CPU under
    the Triton interpreter (tiny sizes); the figures are meaningful on a GPU only.
    """
    timer = time_cuda if device == "cuda" else time_cpu
    H, D = heads, 64
    results = []
    for L in lengths or GPU_LENGTHS:
        B = max(1, tokens // L)
        q, k, v, g, mask = _inputs(B, L, H, D, dtype, device, grad=True)
        flops = _causal_flops(B, L, H, D)
        row: dict = {"B": B, "L": L, "H": H, "D": D, "dtype": str(dtype)}
        tuned: dict = {}

        def read_autotune(name, tuned=tuned):
            if name in ("ours", "ours_masked"):
                tuned[name] = _autotune_tables()

        timings = _measure(_gpu_variants(mask), q, k, v, g, timer, repeats, read_autotune)
        for name, (fwd, fwd_bwd) in timings.items():
            row[f"{name}_fwd_ms"] = fwd
            row[f"{name}_fwd_tflops"] = flops["fwd"] / fwd / 1e9
            row[f"{name}_fwd_bwd_ms"] = fwd_bwd
            row[f"{name}_fwd_bwd_tflops"] = flops["fwd_bwd"] / fwd_bwd / 1e9
        for p in ("fwd", "fwd_bwd"):
            row[f"ours_vs_sdpa_flash_{p}_speedup"] = row[f"sdpa_flash_{p}_ms"] / row[f"ours_{p}_ms"]
            row[f"ours_vs_reference_{p}_speedup"] = (
                row[f"reference_masked_{p}_ms"] / row[f"ours_masked_{p}_ms"]
            )
        row["autotune"] = tuned
        if device == "cuda" and L <= accuracy_max_len:
            row["accuracy"] = _accuracy(q, k, v, g, mask)
        results.append(row)
        if device == "cuda":
            torch.cuda.empty_cache()

    decode = []
    try:
        _decode_rows(decode, decode_contexts, device, dtype, timer, repeats)
    except Exception as exc:  # keep the attention figures when the decode part fails
        decode.append({"error": f"{type(exc).__name__}: {exc}"})
    name = torch.cuda.get_device_name() if device == "cuda" else f"{device} (smoke test)"
    out = {"device": name, "attention": results, "decode": decode}
    if device == "cuda":
        # Last, and guarded: a failed graph capture can leave the CUDA context unusable, and
        # then only these figures are lost.
        try:
            _add_host_free_timings(results, H, D, dtype, repeats)
        except Exception as exc:
            out["host_free_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    return out


def _add_host_free_timings(results: list[dict], H: int, D: int, dtype, repeats: int) -> None:
    """Back-to-back and CUDA-graph fwd+bwd timings (see :func:`_measure_without_host_gaps`)
    for each length in ``results``, with ours-vs-SDPA-flash ratios and TFLOP/s."""
    for row in results:
        B, L = row["B"], row["L"]
        q, k, v, g, mask = _inputs(B, L, H, D, dtype, "cuda", grad=True)
        flops_fwd_bwd = _causal_flops(B, L, H, D)["fwd_bwd"]
        host_free = _measure_without_host_gaps(_gpu_variants(mask), q, k, v, g, repeats)
        for name, vals in host_free.items():
            for key, val in vals.items():
                row[f"{name}_{key}"] = val
        for mode in ("b2b", "graph"):
            ours, flash = (row.get(f"{n}_fwd_bwd_{mode}_ms") for n in ("ours", "sdpa_flash"))
            if ours and flash:
                row[f"ours_vs_sdpa_flash_fwd_bwd_{mode}_speedup"] = flash / ours
                row[f"ours_fwd_bwd_{mode}_tflops"] = flops_fwd_bwd / ours / 1e9
        del q, k, v, g, mask
        torch.cuda.empty_cache()


def _decode_rows(decode: list, decode_contexts, device, dtype, timer, repeats) -> None:
    """Decode step latency vs filled context, Triton vs the reference decode (rows appended)."""
    N, Hd, Dd = (64, 8, 64) if device == "cuda" else (2, 1, 64)
    for ctx in decode_contexts:
        cache = RingKVCache(N, ctx, Hd, Dd, dtype=dtype, device=device)
        kv = torch.randn(N, Hd, Dd, device=device, dtype=dtype)
        cache.counts.fill_(ctx)  # filled context (slot contents are irrelevant to the cost)
        q = torch.randn(N, Hd, Dd, device=device, dtype=dtype)
        row = {"N": N, "H": Hd, "D": Dd, "context": ctx, "dtype": str(dtype)}
        for backend in ("triton", "reference"):

            def step(cache=cache, q=q, kv=kv, backend=backend):
                cache.append(kv, kv)
                decode_attention(q, cache, backend=backend)

            row[f"{backend}_step_ms"] = timer(step, repeats * 5)
        row["triton_vs_reference_speedup"] = row["reference_step_ms"] / row["triton_step_ms"]
        decode.append(row)
    for d in decode:
        d["triton_vs_smallest_context"] = d["triton_step_ms"] / decode[0]["triton_step_ms"]


def run(gpu: bool = True, cpu: bool = True, repeats: int = 7, lengths: list[int] | None = None,
        precompile_workers: int = 0) -> dict:
    """Run the benchmark; returns a JSON-serialisable dict."""
    out: dict = {
        "benchmark": "attention",
        "torch": torch.__version__,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpu_threads": torch.get_num_threads(),
    }
    if cpu:
        out["cpu"] = run_cpu(repeats)
    if gpu:
        if torch.cuda.is_available():
            if precompile_workers > 0:
                out["precompile"] = precompile(precompile_workers)
            out["gpu"] = run_gpu(max(repeats, 20), lengths)
        else:
            out["gpu"] = {"skipped": True, "reason": "CUDA not available"}
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--no-gpu", action="store_true", help="skip the GPU part")
    parser.add_argument("--no-cpu", action="store_true", help="skip the CPU part")
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats per figure")
    parser.add_argument("--lengths", type=int, nargs="*", default=None,
                        help=f"GPU sequence lengths (default {GPU_LENGTHS})")
    parser.add_argument("--precompile", type=int, default=0, metavar="WORKERS",
                        help="compile the GPU autotune candidates in WORKERS processes first")
    args = parser.parse_args(argv)
    print(json.dumps(run(gpu=not args.no_gpu, cpu=not args.no_cpu, repeats=args.repeats,
                         lengths=args.lengths, precompile_workers=args.precompile), indent=2))


if __name__ == "__main__":
    main()
