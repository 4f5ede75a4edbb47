"""Attention benchmarks: training attention (fwd, fwd+bwd) and rollout decode.

GPU part (skipped with a note when CUDA is absent): bf16, D=64, L in {512, 2048, 8192}, B*H sized
to fill the GPU (B*L = 16384 tokens, H=16): our Triton kernel vs
``F.scaled_dot_product_attention`` pinned to the flash backend vs our reference (given a
``valid_mask``, i.e. SDPA with an explicit boolean mask), TFLOP/s and ratios; decode step latency
vs filled context length, Triton vs the reference decode.

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

from amago_fast.bench._timing import time_cpu, time_cuda
from amago_fast.kernels.attention import causal_attention, causal_attention_reference
from amago_fast.kernels.decode import RingKVCache, decode_attention

CPU_SHAPES = [(24, 128, 4, 32), (24, 512, 8, 32)]  # (B, L, H, D): trainer's CPU configs
GPU_LENGTHS = [512, 2048, 8192]


def _fwd_bwd(attn: Callable, q, k, v, g) -> Callable[[], None]:
    def step():
        out = attn(q, k, v)
        torch.autograd.grad(out, (q, k, v), g)

    return step


def _measure(variants: dict, q, k, v, g, timer: Callable, repeats: int) -> dict:
    """{name: (fwd ms, fwd+bwd ms)} for each attention variant on the same inputs."""
    out = {}
    for name, fn in variants.items():
        with torch.no_grad():
            fwd = timer(lambda fn=fn: fn(q, k, v), repeats)
        out[name] = (fwd, timer(_fwd_bwd(fn, q, k, v, g), repeats))
    return out


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
        flops_fwd = 4 * B * H * L * L * D / 2  # causal: half of the two (L x L x D) matmuls
        flops = {"fwd": flops_fwd, "fwd_bwd": 3.5 * flops_fwd}  # bwd = 2.5 x fwd matmul work
        row: dict = {"B": B, "L": L, "H": H, "D": D, "dtype": str(dtype)}
        timings = _measure(_gpu_variants(mask), q, k, v, g, timer, repeats)
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
        results.append(row)
        if device == "cuda":
            torch.cuda.empty_cache()

    decode = []
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
    name = torch.cuda.get_device_name() if device == "cuda" else f"{device} (smoke test)"
    return {"device": name, "attention": results, "decode": decode}


def run(gpu: bool = True, cpu: bool = True, repeats: int = 7, lengths: list[int] | None = None
        ) -> dict:
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
    args = parser.parse_args(argv)
    print(json.dumps(run(gpu=not args.no_gpu, cpu=not args.no_cpu, repeats=args.repeats,
                         lengths=args.lengths), indent=2))


if __name__ == "__main__":
    main()
