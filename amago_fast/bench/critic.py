"""Critic-ensemble, TD-target and EMA benchmarks.

GPU part (skipped with a note when CUDA is absent): the fused Triton critic (fwd, fwd+bwd) vs the
PyTorch reference (einsum/bmm with the shared state projection) and vs the naive "tile the state
G x E times" formulation, E=4, G in {7, 18}, N = 24 x 1024, fp32 and bf16; fused TD-target
reduction vs the reference; EMA ``_foreach_lerp_`` vs the per-parameter loop.

CPU part (always): the reference path the CPU trainer runs, at the trainer's shapes (N = 24 x 128,
E=4, G=7, d_s=128, hidden 256), vs the tiled formulation in the same run; EMA foreach vs loop on
a ~2.3M-parameter model.

Optional (``--ptxas``, no GPU needed): compile every Triton kernel for sm_90 with the ptxas that
ships with Triton and report registers and spill bytes per kernel (how the tile sizes were
chosen on a machine without a GPU).

Every timing is a median over repeats and comes with its same-run baseline and ratio;
``<ours>_ratio_vs_<baseline>`` = baseline time / our time (> 1: ours is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time

import torch

from amago_fast.bench._timing import time_cpu, time_cuda
from amago_fast.kernels.critic import (
    critic_ensemble,
    critic_ensemble_reference,
    critic_ensemble_tiled_reference,
)
from amago_fast.kernels.ema import ema_update_, ema_update_reference
from amago_fast.kernels.td_reduce import td_target_reduce, td_target_reduce_reference
from amago_fast.nets.critics import CriticEnsemble


def _critic_case(n, g, d_s, d_a, e, h, dtype, device, seed=0):
    torch.manual_seed(seed)
    module = CriticEnsemble(d_s, d_a, g, num_critics=e, hidden_dim=h).to(device)
    state = torch.randn(n, d_s, device=device, dtype=dtype, requires_grad=True)
    action = torch.randn(n, g, d_a, device=device, dtype=dtype, requires_grad=True)
    return module, state, action


def _fwd_and_fwdbwd(fn, module, state, action):
    params = module.params

    def fwd():
        with torch.no_grad():
            fn(state, action, params)

    def fwdbwd():
        q = fn(state, action, params)
        torch.autograd.backward(q, torch.ones_like(q))  # grads for state, action, all params

    return fwd, fwdbwd


def _bench_critic(n, g, d_s, d_a, e, h, dtype, device, repeats, variants) -> dict:
    module, state, action = _critic_case(n, g, d_s, d_a, e, h, dtype, device)
    timer = time_cuda if device == "cuda" else time_cpu
    out: dict = {"N": n, "E": e, "G": g, "d_s": d_s, "d_a": d_a, "hidden": h, "dtype": str(dtype)}
    for name, fn in variants.items():
        fwd, fwdbwd = _fwd_and_fwdbwd(fn, module, state, action)
        out[f"{name}_fwd_ms"] = timer(fwd, repeats)
        out[f"{name}_fwdbwd_ms"] = timer(fwdbwd, repeats)
        module.zero_grad(set_to_none=True)
        state.grad = action.grad = None
    return out


def _ema_model(device: str) -> torch.nn.Module:
    """~2.3M parameters in ~40 tensors: 4 MLP blocks (256 -> 1024 -> 256, two LayerNorms)
    like a small Transformer's, plus a 4 x 7-gamma critic ensemble."""
    blocks = [
        torch.nn.Sequential(
            torch.nn.LayerNorm(256),
            torch.nn.Linear(256, 1024),
            torch.nn.Linear(1024, 256),
            torch.nn.LayerNorm(256),
        )
        for _ in range(4)
    ]
    critic = CriticEnsemble(128, 6, 7, num_critics=4, hidden_dim=256)
    return torch.nn.Sequential(*blocks, critic).to(device)


def _bench_ema(device: str, repeats: int) -> dict:
    online = _ema_model(device)
    target = _ema_model(device)
    tp, op = list(target.parameters()), list(online.parameters())
    timer = time_cuda if device == "cuda" else time_cpu
    foreach_ms = timer(lambda: ema_update_(tp, op, 0.005), repeats)
    loop_ms = timer(lambda: ema_update_reference(tp, op, 0.005), repeats)
    return {
        "params": sum(p.numel() for p in op),
        "tensors": len(op),
        "foreach_ms": foreach_ms,
        "loop_ms": loop_ms,
        "foreach_ratio_vs_loop": loop_ms / foreach_ms,
    }


def _bench_td(n, e, g, device, repeats, backend) -> dict:
    q = torch.randn(n, e, g, 1, device=device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    timer = time_cuda if device == "cuda" else time_cpu
    ref_ms = timer(lambda: td_target_reduce_reference(q, 2, gen), repeats)
    if backend == "reference":  # CPU: the trainer runs the reference; nothing fused to compare
        return {"N": n, "E": e, "G": g, "reference_ms": ref_ms}
    fused_ms = timer(lambda: td_target_reduce(q, 2, gen, backend=backend), repeats)
    return {
        "N": n,
        "E": e,
        "G": g,
        "backend": backend,
        "fused_ms": fused_ms,
        "reference_ms": ref_ms,
        "fused_ratio_vs_reference": ref_ms / fused_ms,
    }


def run_cpu(quick: bool = False, repeats: int | None = None, threads: int | None = None) -> dict:
    """The reference path at the CPU trainer's shapes vs the tiled formulation; EMA on CPU.

    ``threads``: intra-op threads for this part (default: leave torch's setting). On a shared,
    oversubscribed machine 1 thread gives far steadier figures (a 2-thread parallel region
    waits for whichever thread is descheduled).
    """
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _run_cpu(quick, repeats)
    finally:
        torch.set_num_threads(previous_threads)


def _run_cpu(quick: bool, repeats: int | None) -> dict:
    repeats = repeats or (2 if quick else 7)
    n = 24 * (32 if quick else 128)
    case = _bench_critic(
        n, 7, 128, 6, 4, 256, torch.float32, "cpu", repeats,
        {"reference": critic_ensemble_reference, "tiled": critic_ensemble_tiled_reference},
    )  # fmt: skip
    case["reference_fwd_ratio_vs_tiled_fwd"] = case["tiled_fwd_ms"] / case["reference_fwd_ms"]
    case["reference_fwdbwd_ratio_vs_tiled_fwdbwd"] = (
        case["tiled_fwdbwd_ms"] / case["reference_fwdbwd_ms"]
    )
    return {
        "threads": torch.get_num_threads(),
        "critic": case,
        "td_target_reduce": _bench_td(n, 4, 7, "cpu", repeats * 5, "reference"),
        "ema": _bench_ema("cpu", repeats * 5),
    }


def run_gpu(quick: bool = False, repeats: int | None = None) -> dict:
    """Fused Triton critic vs the reference (and the tiled formulation) on a CUDA GPU."""
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device: the fused Triton critic was not measured"}
    repeats = repeats or (5 if quick else 20)
    n = 24 * (256 if quick else 1024)
    cases = []
    for dtype in (torch.float32, torch.bfloat16):
        for g in (7,) if quick else (7, 18):
            case = _bench_critic(
                n, g, 256, 8, 4, 256, dtype, "cuda", repeats,
                {
                    "triton": lambda s, a, p: critic_ensemble(s, a, p, backend="triton"),
                    "reference": critic_ensemble_reference,
                    "tiled": critic_ensemble_tiled_reference,
                },
            )  # fmt: skip
            case["triton_fwd_ratio_vs_reference_fwd"] = (
                case["reference_fwd_ms"] / case["triton_fwd_ms"]
            )
            case["triton_fwdbwd_ratio_vs_reference_fwdbwd"] = (
                case["reference_fwdbwd_ms"] / case["triton_fwdbwd_ms"]
            )
            case["target_fwdbwd_speedup"] = 2.0
            cases.append(case)
    return {
        "device": torch.cuda.get_device_name(0),
        "tf32_matmul": torch.get_float32_matmul_precision(),
        "cases": cases,
        "td_target_reduce": _bench_td(n, 4, 18, "cuda", repeats * 5, "triton"),
        "ema": _bench_ema("cuda", repeats * 5),
    }


def run_profile(g: int = 7, n: int = 24 * 1024, steps: int = 3) -> dict:
    """Where a fused-critic fwd+bwd spends its GPU time: torch.profiler's per-kernel device time
    (ms per step, top 8) for the Triton path and the reference, bf16 and fp32 inputs."""
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device"}
    from torch.profiler import ProfilerActivity, profile

    variants = {"triton": lambda s, a, p: critic_ensemble(s, a, p, backend="triton"),
                "reference": critic_ensemble_reference}
    out: dict = {"N": n, "G": g}
    for dtype in (torch.bfloat16, torch.float32):
        module, state, action = _critic_case(n, g, 256, 8, 4, 256, dtype, "cuda")
        for name, fn in variants.items():
            _, fwdbwd = _fwd_and_fwdbwd(fn, module, state, action)
            fwdbwd()
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(steps):
                    fwdbwd()
                torch.cuda.synchronize()
            rows = []
            for ev in prof.key_averages():
                dev_us = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0)
                on_gpu = "cuda" in str(getattr(ev, "device_type", "")).lower()
                if dev_us > 0 and on_gpu:
                    rows.append((ev.key[:90], round(dev_us / 1e3 / steps, 4), ev.count // steps))
            rows.sort(key=lambda r: -r[1])
            out[f"{name}_{str(dtype).removeprefix('torch.')}"] = rows[:8]
            module.zero_grad(set_to_none=True)
            state.grad = action.grad = None
    return out


# ------------------------------------------------------------------------------------------------
# Static check without a GPU: compile for sm_90 and read ptxas's register / spill report
# ------------------------------------------------------------------------------------------------


def _ptxas_worker(dtype: str = "bf16") -> list[dict]:
    """Compile each critic kernel at the launcher's GPU tile sizes (hidden 256) for sm_90.

    Must run in a process without TRITON_INTERPRET (interpreted kernels cannot be compiled).
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from amago_fast.kernels import critic as c
    from amago_fast.kernels import td_reduce as td

    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    prec = "ieee" if dtype == "fp32" else "tf32"
    x = f"*{dtype}"
    f = "*fp32"
    ints = dict.fromkeys(("N", "G", "D_S", "D_A", "O", "E", "SPLITS", "M", "TOTAL"), "i32")
    layer = dict(H=256, NEG_SLOPE=0.01, D_A_PAD=16, H_PAD=256, BLOCK_H=64, O_PAD=16)
    layer["PRECISION"] = prec
    bwd_ptrs = dict(A=x, P=f, WA=f, B1=f, W2=f, B2=f, W3=f, DQ=x)
    bwd_ptrs.update(DP=f, DA_PART=f, DWA_PART=f, DB1_PART=f, DW2_PART=f, DW3_PART=f, DB2_PART=f)
    # (kernel, pointer signature, constexprs, num_warps, num_stages): the launcher's GPU config.
    kernels = [
        (
            c.TRITON_KERNELS["state_proj"],
            dict(S=x, WS=f, P_OUT=f),
            dict(H=256, BLOCK_N=64, BLOCK_DS=64, H_PAD=256, PRECISION=prec),
            8,
            2,
        ),
        (
            c.TRITON_KERNELS["fwd"],
            dict(A=x, P=f, WA=f, B1=f, W2=f, B2=f, W3=f, B3=f, Q=x),
            dict(layer, BLOCK_N=32),
            8,
            2,
        ),
        (c.TRITON_KERNELS["bwd_rows"], bwd_ptrs, dict(layer, BLOCK_N=32), 8, 1),
        (c.TRITON_KERNELS["bwd_weights"], bwd_ptrs, dict(layer, BLOCK_N=32), 8, 1),
        (
            td.TRITON_KERNELS["td_reduce"],
            dict(Q=f, SUBSET="*i32", MIN_OUT=f, MEAN_OUT=f, ARG_OUT="*i32"),
            dict(E=4, BLOCK=1024),
            4,
            2,
        ),
    ]
    report = []
    with tempfile.TemporaryDirectory() as tmp:
        for fn, ptrs, consts, warps, stages in kernels:
            sig = {}
            for name in fn.arg_names:
                sig[name] = "constexpr" if name in consts else ptrs.get(name, ints.get(name))
            src = ASTSource(fn=fn, signature=sig, constexprs=consts)
            t0 = time.perf_counter()
            compiled = triton.compile(
                src,
                target=GPUTarget("cuda", 90, 32),
                options={"num_warps": warps, "num_stages": stages},
            )
            ptx_path = os.path.join(tmp, "k.ptx")
            with open(ptx_path, "w") as fh:
                fh.write(compiled.asm["ptx"])
            res = subprocess.run(
                [ptxas, "-v", "--gpu-name", "sm_90a", ptx_path, "-o", ptx_path + ".cubin"],
                capture_output=True,
                text=True,
            )
            regs = re.search(r"Used (\d+) registers", res.stderr)
            spill = re.search(r"(\d+) bytes spill stores", res.stderr)
            report.append(
                {
                    "kernel": fn.__name__,
                    "dtype": dtype,
                    "num_warps": warps,
                    "block_n": consts.get("BLOCK_N"),
                    "registers": int(regs.group(1)) if regs else None,
                    "spill_store_bytes": int(spill.group(1)) if spill else 0,
                    "compile_s": round(time.perf_counter() - t0, 1),
                }
            )
    return report


def run_ptxas(dtypes: tuple[str, ...] = ("bf16",)) -> dict:
    """Register/spill report per kernel for sm_90, compiled in a clean subprocess."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = {}
    for dtype in dtypes:
        code = (
            "import json, amago_fast.bench.critic as b; "
            f"print(json.dumps(b._ptxas_worker({dtype!r})))"
        )
        res = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=1200
        )
        if res.returncode != 0:
            out[dtype] = {"error": res.stderr.strip().splitlines()[-1:]}
        else:
            out[dtype] = json.loads(res.stdout.strip().splitlines()[-1])
    return {"target": "sm_90a (compiled without a GPU; nothing executed)", "kernels": out}


def run(
    quick: bool = False,
    gpu: bool = True,
    cpu: bool = True,
    ptxas: bool = False,
    repeats: int | None = None,
    threads: int | None = None,
) -> dict:
    """All parts; see the module docstring."""
    result: dict = {"machine": platform.platform(), "torch": torch.__version__}
    if gpu:
        result["gpu"] = run_gpu(quick=quick, repeats=repeats)
    if cpu:
        result["cpu"] = run_cpu(quick=quick, repeats=repeats, threads=threads)
    if ptxas:
        result["ptxas"] = run_ptxas()
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes, few repeats")
    parser.add_argument("--no-gpu", action="store_true")
    parser.add_argument("--no-cpu", action="store_true")
    parser.add_argument("--ptxas", action="store_true", help="sm_90 register/spill report")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--profile", action="store_true",
                        help="GPU: per-kernel device time of one fwd+bwd (torch.profiler)")
    parser.add_argument("--threads", type=int, default=None, help="CPU intra-op threads")
    args = parser.parse_args(argv)
    if args.profile:
        print(json.dumps({"profile": run_profile()}, indent=2))
        return
    result = run(
        quick=args.quick,
        gpu=not args.no_gpu,
        cpu=not args.no_cpu,
        ptxas=args.ptxas,
        repeats=args.repeats,
        threads=args.threads,
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
