"""Causal attention: Triton kernel (interpreted on CPU, TRITON_INTERPRET=1 from conftest) and the
PyTorch reference, against an fp32 oracle written out explicitly here.

Tolerance rule: |kernel - fp32 oracle| <= 2 * |PyTorch same-precision - fp32 oracle| + atol, for
the output and for dq, dk, dv. Grids stay tiny (each interpreted program costs ~0.5 ms).
"""

from __future__ import annotations

import math
import textwrap

import pytest
import torch

from amago_fast.kernels import _utils
from amago_fast.kernels.attention import (
    CausalAttention,
    causal_attention,
    causal_attention_reference,
)
from tests._kernels import DEVICE, needs_cuda_compiler, needs_triton, run_without_interpreter

pytestmark = needs_triton

ATOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def naive_attention(q, k, v, valid_mask=None, window=None, scale=None):
    """Explicit masked-softmax oracle in fp64 (independent of SDPA and of the kernels)."""
    q, k, v = (t.double() for t in (q, k, v))
    B, L, H, D = q.shape
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    scores = torch.einsum("blhd,bmhd->bhlm", q, k) * scale
    i = torch.arange(L, device=q.device)[:, None]
    j = torch.arange(L, device=q.device)[None, :]
    allowed = (j <= i)[None, None].expand(B, H, L, L)
    if window is not None:
        allowed = allowed & (j > i - window)
    if valid_mask is not None:
        allowed = allowed & valid_mask[:, None, None, :] & valid_mask[:, None, :, None]
    scores = scores.masked_fill(~allowed, float("-inf"))
    any_row = allowed.any(-1, keepdim=True)
    probs = torch.softmax(torch.where(any_row, scores, torch.zeros_like(scores)), -1)
    probs = probs * any_row
    return torch.einsum("bhlm,bmhd->blhd", probs, v)


def make_inputs(B, L, H, D, seed=0, device=DEVICE):
    gen = torch.Generator().manual_seed(seed)
    q, k, v, g = (torch.randn(B, L, H, D, generator=gen).to(device) for _ in range(4))
    return q, k, v, g


def make_mask(B, L, seed=0, device=DEVICE):
    """Padding at the end of some rows and at the start of others (windows cut at a rollout
    start), plus one interior hole; at least one valid step per row."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, L, dtype=torch.bool)
    for b in range(B):
        cut = int(torch.randint(L // 2, L, (1,), generator=gen))
        if b % 2 == 0:
            mask[b, cut:] = False
        else:
            mask[b, : L - cut] = False
    if L > 4:
        mask[0, 1] = False
    return mask.to(device)


def fwd_bwd(fn, q, k, v, g, dtype, **kw):
    qq, kk, vv = (t.to(dtype).requires_grad_() for t in (q, k, v))
    out = fn(qq, kk, vv, **kw)
    grads = torch.autograd.grad(out, (qq, kk, vv), g.to(dtype))
    return [out] + list(grads)


def assert_tolerance_rule(kernel, torch_same, oracle, dtype, names=("out", "dq", "dk", "dv")):
    for name, a, b, o in zip(names, kernel, torch_same, oracle):
        err_kernel = (a.double() - o).abs().max().item()
        err_torch = (b.double() - o).abs().max().item()
        bound = 2 * err_torch + ATOL[dtype]
        assert err_kernel <= bound, f"{name}: kernel err {err_kernel:.3g} > {bound:.3g}"


CASES = [
    # (B, L, H, D, window, masked)
    (1, 37, 1, 32, None, False),  # B=1, H=1, L not a multiple of any block
    (2, 37, 2, 32, None, True),
    (2, 50, 1, 64, 7, False),  # window smaller than a block
    (2, 45, 2, 32, 20, True),  # window spanning blocks, masked
    (1, 33, 1, 128, None, True),
    (1, 16, 2, 64, 16, False),  # window == L behaves as no window
    (1, 120, 1, 32, 60, True),  # window wider than a block pair: unmasked interior blocks
]


@pytest.mark.parametrize("B,L,H,D,window,masked", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_triton_matches_fp32_oracle(B, L, H, D, window, masked, dtype):
    q, k, v, g = make_inputs(B, L, H, D, seed=L + D)
    mask = make_mask(B, L, seed=B + L) if masked else None
    kw = dict(valid_mask=mask, window=window)
    oracle = fwd_bwd(naive_attention, q, k, v, g, torch.float64, **kw)
    kernel = fwd_bwd(causal_attention, q, k, v, g, dtype, backend="triton", **kw)
    torch_same = fwd_bwd(causal_attention_reference, q, k, v, g, dtype, **kw)
    for t in kernel:
        assert t.dtype == dtype and torch.isfinite(t).all()
    assert_tolerance_rule(kernel, torch_same, oracle, dtype)


@pytest.mark.parametrize("window", [None, 6])
def test_padded_positions_exact_zero(window):
    B, L, H, D = 2, 40, 2, 32
    q, k, v, g = make_inputs(B, L, H, D, seed=3)
    mask = make_mask(B, L, seed=5)
    for fn, extra in ((causal_attention, {"backend": "triton"}), (causal_attention_reference, {})):
        out, dq, dk, dv = fwd_bwd(fn, q, k, v, g, torch.float32, valid_mask=mask, window=window,
                                  **extra)
        pad = ~mask
        assert (out[pad] == 0).all(), fn.__name__
        for name, grad in (("dq", dq), ("dk", dk), ("dv", dv)):
            assert (grad[pad] == 0).all(), f"{fn.__name__}: {name} nonzero at padded steps"
        # Valid positions do receive gradient.
        assert dq[mask].abs().sum() > 0 and dk[mask].abs().sum() > 0


def test_padded_values_do_not_leak():
    """Changing q/k/v at padded positions changes nothing at valid positions."""
    B, L, H, D = 2, 35, 1, 32
    q, k, v, g = make_inputs(B, L, H, D, seed=11)
    mask = make_mask(B, L, seed=2)
    noise = torch.randn_like(q) * 100 * (~mask)[:, :, None, None]
    a = causal_attention(q, k, v, mask, backend="triton")
    b = causal_attention(q + noise, k + noise, v + noise, mask, backend="triton")
    assert torch.equal(a, b)


def test_fully_padded_row_no_nan():
    B, L, H, D = 2, 20, 1, 32
    q, k, v, g = make_inputs(B, L, H, D, seed=4)
    mask = torch.ones(B, L, dtype=torch.bool, device=DEVICE)
    mask[1] = False
    for fn, extra in ((causal_attention, {"backend": "triton"}), (causal_attention_reference, {})):
        out, dq, dk, dv = fwd_bwd(fn, q, k, v, g, torch.float32, valid_mask=mask, **extra)
        for t in (out, dq, dk, dv):
            assert torch.isfinite(t).all()
            assert (t[1] == 0).all()


def test_reference_matches_oracle_fp32():
    B, L, H, D = 3, 29, 2, 16  # the reference takes any head dim
    q, k, v, g = make_inputs(B, L, H, D, seed=9)
    mask = make_mask(B, L, seed=9)
    for window in (None, 4):
        oracle = fwd_bwd(naive_attention, q, k, v, g, torch.float64, valid_mask=mask, window=window)
        ref = fwd_bwd(causal_attention_reference, q, k, v, g, torch.float32, valid_mask=mask,
                      window=window)
        for a, o in zip(ref, oracle):
            torch.testing.assert_close(a.double(), o, atol=1e-5, rtol=1e-5)


def test_softmax_scale_and_strided_inputs():
    """Non-default scale; q/k/v as strided views of one packed qkv tensor (what a Transformer's
    fused projection produces)."""
    B, L, H, D = 2, 24, 2, 32
    gen = torch.Generator().manual_seed(1)
    qkv = torch.randn(B, L, 3, H, D, generator=gen).to(DEVICE).requires_grad_()
    g = torch.randn(B, L, H, D, generator=gen).to(DEVICE)
    outs = []
    for fn, extra in ((causal_attention, {"backend": "triton"}), (naive_attention, {})):
        q, k, v = qkv.unbind(2)
        if fn is naive_attention:
            o = fn(q, k, v, scale=0.3).float()
        else:
            o = fn(q, k, v, softmax_scale=0.3, **extra)
        (grad,) = torch.autograd.grad(o, qkv, g)
        outs.append((o, grad))
    torch.testing.assert_close(outs[0][0], outs[1][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outs[0][1], outs[1][1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("L", [1, 2, 19])
def test_mixed_strides_and_tiny_lengths(L):
    """q a dense permuted view, k contiguous, v a strided slice: gradients land in the right
    places; L=1 and L=2 exercise single-key rows."""
    B, H, D = 2, 2, 32
    gen = torch.Generator().manual_seed(L)
    q = torch.randn(B, H, L, D, generator=gen).to(DEVICE).transpose(1, 2).requires_grad_()
    k = torch.randn(B, L, H, D, generator=gen).to(DEVICE).requires_grad_()
    v_packed = torch.randn(B, L, 2, H, D, generator=gen).to(DEVICE).requires_grad_()
    g = torch.randn(B, L, H, D, generator=gen).to(DEVICE)
    mask = torch.ones(B, L, dtype=torch.bool, device=DEVICE)
    mask[1, -1] = False
    results = []
    for fn, extra in ((causal_attention, {"backend": "triton"}), (naive_attention, {})):
        out = fn(q, k, v_packed[:, :, 1], mask, **extra)
        results.append([out.double()] + [
            t.double() for t in torch.autograd.grad(out, (q, k, v_packed), g.to(out.dtype))
        ])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert (results[0][3][:, :, 0] == 0).all()  # the unused half of the packed v gets no grad


def test_deterministic():
    B, L, H, D = 2, 40, 2, 32
    q, k, v, g = make_inputs(B, L, H, D, seed=21)
    mask = make_mask(B, L, seed=21)
    a = fwd_bwd(causal_attention, q, k, v, g, torch.float16, valid_mask=mask, window=9,
                backend="triton")
    b = fwd_bwd(causal_attention, q, k, v, g, torch.float16, valid_mask=mask, window=9,
                backend="triton")
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_auto_dispatch_and_module():
    B, L, H, D = 2, 12, 2, 32
    q, k, v, _ = make_inputs(B, L, H, D, seed=6, device="cpu")
    mask = make_mask(B, L, seed=6, device="cpu")
    auto = causal_attention(q, k, v, mask, window=5)
    ref = causal_attention_reference(q, k, v, mask, window=5)
    assert torch.equal(auto, ref)  # CPU tensors + auto -> the reference, bit for bit
    module = CausalAttention(window=5)
    assert torch.equal(module(q, k, v, mask), ref)
    assert "window=5" in repr(module)
    tri = CausalAttention(window=5, backend="triton")(q.to(DEVICE), k.to(DEVICE), v.to(DEVICE),
                                                      mask.to(DEVICE))
    torch.testing.assert_close(tri.cpu(), ref, atol=1e-5, rtol=1e-5)


def test_bad_inputs_raise():
    q, k, v, _ = make_inputs(1, 8, 1, 32, device="cpu")
    with pytest.raises(ValueError, match="same shape"):
        causal_attention(q, k[:, :4], v)
    with pytest.raises(ValueError, match="share a dtype"):
        causal_attention(q, k.half(), v)
    with pytest.raises(ValueError, match=r"\(B, L, H, D\)"):
        causal_attention(q[0], k[0], v[0])
    with pytest.raises(ValueError, match="dtype"):
        causal_attention(q.double(), k.double(), v.double())
    with pytest.raises(ValueError, match="valid_mask"):
        causal_attention(q, k, v, valid_mask=torch.ones(1, 7, dtype=torch.bool))
    with pytest.raises(ValueError, match="valid_mask"):
        causal_attention(q, k, v, valid_mask=torch.ones(1, 8))
    with pytest.raises(ValueError, match="window"):
        causal_attention(q, k, v, window=0)
    with pytest.raises(ValueError, match="softmax_scale"):
        causal_attention(q, k, v, softmax_scale=float("nan"))
    with pytest.raises(ValueError, match="backend"):
        causal_attention(q, k, v, backend="cuda")
    with pytest.raises(ValueError, match="head dims"):
        x = torch.randn(1, 8, 1, 48, device=DEVICE)
        causal_attention(x, x, x, backend="triton")
    with pytest.raises(ValueError, match="window"):
        CausalAttention(window=-1)


def test_triton_on_cpu_without_interpreter_raises():
    code = textwrap.dedent(
        """
        import os, torch
        os.environ.pop("TRITON_INTERPRET", None)
        from amago_fast.kernels.attention import causal_attention
        x = torch.randn(1, 8, 1, 32)
        assert torch.isfinite(causal_attention(x, x, x)).all()  # auto -> reference
        try:
            causal_attention(x, x, x, backend="triton")
        except ValueError as e:
            assert "TRITON_INTERPRET" in str(e), e
            print("OK")
        """
    )
    res = run_without_interpreter(code, timeout=120)
    assert res.returncode == 0 and "OK" in res.stdout, res.stderr


COMPILE_CHECK = textwrap.dedent(
    """
    import os, sys
    os.environ.pop("TRITON_INTERPRET", None)
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from amago_fast.kernels import attention as A

    dt, tt, D = sys.argv[1], sys.argv[2], int(sys.argv[3])
    ptrs = dict(Mask="*u8", Lse="*fp32", Delta="*fp32")
    tensors = {"Q", "K", "V", "DO", "Out", "DQ", "DK", "DV", *ptrs}
    for kern in (A._attn_fwd_kernel, A._attn_bwd_dkdv_kernel, A._attn_bwd_dq_kernel):
        fn = kern.fn
        # The smallest tile the autotuner keeps for this dtype/head dim.
        cfg = min(A._prune_configs(kern.configs, {}, DTYPE_KEY=dt, HEAD_DIM=D),
                  key=lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"])
        ce = dict(HEAD_DIM=D, HAS_MASK=True, HAS_WINDOW=True, DTYPE_KEY=dt,
                  DOT_PRECISION="ieee" if dt == "float32" else "tf32", **cfg.kwargs)
        sig = {n: "constexpr" if n in ce else ptrs.get(n, "*" + tt) if n in tensors
               else "fp32" if n.endswith("scale") else "i32" for n in fn.arg_names}
        k = triton.compile(ASTSource(fn, sig, ce), target=GPUTarget("cuda", 90, 32),
                           options=dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages))
        assert k.metadata.shared <= 227 * 1024, (fn.__name__, k.metadata.shared)
        print(fn.__name__, "smem", k.metadata.shared)
    print("COMPILED")
    """
)


@needs_cuda_compiler
@pytest.mark.parametrize("dtype", [("bfloat16", "bf16", 64)])
def test_kernels_compile_for_sm90(dtype):
    """Without a GPU: the real (non-interpreted) kernels lower through Triton's NVIDIA backend and
    ptxas for an H100 (sm_90) with every mask path on, within shared memory. Catches type and
    layout errors the interpreter does not."""
    res = run_without_interpreter(COMPILE_CHECK, *map(str, dtype))
    assert res.returncode == 0 and "COMPILED" in res.stdout, res.stderr[-3000:]


@pytest.mark.slow
@needs_cuda_compiler
@pytest.mark.parametrize("dtype", [("float16", "fp16", 32), ("float32", "fp32", 128),
                                   ("bfloat16", "bf16", 128)])
def test_kernels_compile_for_sm90_more_dtypes(dtype):
    test_kernels_compile_for_sm90(dtype)


# ------------------------------------------------------------------------------------------
# GPU-only: bf16 (the interpreter's bf16 tl.dot is wrong) and long sequences.
# ------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("L,window,masked", [(1000, None, True), (2048, None, False),
                                             (777, 128, True)])
@pytest.mark.parametrize("D", [32, 64, 128])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_low_precision_matches_oracle(L, window, masked, D, dtype):
    B, H = 2, 4
    q, k, v, g = make_inputs(B, L, H, D, seed=L, device="cuda")
    mask = make_mask(B, L, seed=L, device="cuda") if masked else None
    kw = dict(valid_mask=mask, window=window)
    oracle = fwd_bwd(naive_attention, q, k, v, g, torch.float64, **kw)
    kernel = fwd_bwd(causal_attention, q, k, v, g, dtype, backend="triton", **kw)
    torch_same = fwd_bwd(causal_attention_reference, q, k, v, g, dtype, **kw)
    assert_tolerance_rule(kernel, torch_same, oracle, dtype)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_fp32_and_determinism():
    B, L, H, D = 2, 1500, 2, 64
    q, k, v, g = make_inputs(B, L, H, D, seed=0, device="cuda")
    mask = make_mask(B, L, seed=0, device="cuda")
    oracle = fwd_bwd(naive_attention, q, k, v, g, torch.float64, valid_mask=mask)
    a = fwd_bwd(causal_attention, q, k, v, g, torch.float32, valid_mask=mask, backend="triton")
    b = fwd_bwd(causal_attention, q, k, v, g, torch.float32, valid_mask=mask, backend="triton")
    torch_same = fwd_bwd(causal_attention_reference, q, k, v, g, torch.float32, valid_mask=mask)
    assert_tolerance_rule(a, torch_same, oracle, torch.float32)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


@pytest.mark.slow
def test_benchmark_gpu_section_smoke_on_cpu():
    """The GPU benchmark's code path end to end on CPU (interpreter, tiny sizes): every figure
    and ratio key is produced and finite."""
    from amago_fast.bench.attention import run_gpu

    res = run_gpu(repeats=1, lengths=[32], tokens=32, heads=1, decode_contexts=(16, 32),
                  device=DEVICE, dtype=torch.float32)
    row = res["attention"][0]
    for key in ("ours_vs_sdpa_flash_fwd_bwd_speedup", "ours_vs_reference_fwd_speedup",
                "ours_fwd_bwd_tflops", "sdpa_flash_fwd_tflops"):
        assert math.isfinite(row[key]) and row[key] > 0, key
    assert [d["context"] for d in res["decode"]] == [16, 32]
    assert all(math.isfinite(d["triton_vs_reference_speedup"]) for d in res["decode"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("D", [16, 48])
def test_gpu_auto_takes_the_reference_for_head_dims_the_kernel_lacks(D):
    """A small model (d_model 64, 4 heads: D=16) on CUDA: backend="auto" runs the reference (it
    raised before, found on the H100); an explicit backend="triton" still says why it cannot."""
    q, k, v, _ = make_inputs(2, 40, 2, D, seed=D, device="cuda")
    mask = make_mask(2, 40, seed=D, device="cuda")
    auto = causal_attention(q, k, v, mask)
    assert torch.equal(auto, causal_attention_reference(q, k, v, mask))
    with pytest.raises(ValueError, match="head dims"):
        causal_attention(q, k, v, mask, backend="triton")


def test_autotune_pruning_keeps_small_tiles_for_float32(monkeypatch):
    """The GPU candidate lists (not the interpreter's single config): float32 keeps only tiles up
    to 64x32 at D=64 (its IEEE dots compile slowly, see ``_prune_configs``), half precision keeps
    them all, and every dtype/head dim keeps at least one candidate per kernel."""
    from amago_fast.kernels import attention as A

    monkeypatch.setattr(_utils, "INTERPRET", False)
    lists = {"fwd": A._fwd_configs(), "dkdv": A._dkdv_configs(), "dq": A._dq_configs()}
    area = lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"]  # noqa: E731
    for name, configs in lists.items():
        assert len(configs) > 1, name
        half = A._prune_configs(configs, {}, DTYPE_KEY="float16", HEAD_DIM=64)
        assert half == configs, name
        fp32 = A._prune_configs(configs, {}, DTYPE_KEY="float32", HEAD_DIM=64)
        assert fp32 and all(area(c) <= 64 * 32 for c in fp32), (name, fp32)
        assert len(fp32) < len(configs), name
        fp32_d128 = A._prune_configs(configs, {}, DTYPE_KEY="float32", HEAD_DIM=128)
        assert fp32_d128 and all(area(c) <= area(min(configs, key=area)) or area(c) <= 64 * 16
                                 for c in fp32_d128), (name, fp32_d128)
    assert [len(A._prune_configs(c, {}, DTYPE_KEY="float32", HEAD_DIM=64))
            for c in lists.values()] == [1, 3, 3]
