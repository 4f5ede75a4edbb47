"""Causal (optionally sliding-window, optionally padded) multi-head attention for training.

Layout: q, k, v are ``(B, L, H, D)`` (batch, time, heads, head dim), the layout a Transformer gets
from ``Linear(d_model, 3 * H * D)`` without any transpose. Output has the same layout.

Semantics (shared by the Triton kernel and :func:`causal_attention_reference`):

* query ``i`` attends to keys ``j <= i`` (causal), and with ``window=C`` only to ``j > i - C``
  (the last ``C`` keys, itself included: what a ring KV cache of capacity ``C`` holds);
* with ``valid_mask`` ``(B, L)`` bool, padded queries attend to nothing (output exactly 0, so they
  send no gradient anywhere) and valid queries attend only to valid keys.

Structure (FlashAttention-2): ``_attn_fwd_kernel`` tiles over KV blocks with an online softmax and
saves the log-sum-exp (base 2); the backward runs ``_attn_bwd_preprocess_kernel``
(delta = rowsum(dO * O)), ``_attn_bwd_dkdv_kernel`` (one program per KV block, looping over the
query blocks that can see it) and ``_attn_bwd_dq_kernel`` (one program per query block, looping over
the KV blocks it sees). No atomics, so results are deterministic. Blocks that the causal/window
bounds mask out completely are never visited; blocks that are fully visible skip the position mask.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from amago_fast.kernels._launch import (
    block_divides,
    dot_precision,
    last_dim_contiguous,
    optional_operand,
    short_autotune_bench,
)
from amago_fast.kernels._utils import autotune_configs, launch_device, resolve_backend
from amago_fast.kernels.attention_reference import (
    causal_attention_reference,
    check_attention_inputs,
)

__all__ = [
    "CausalAttention",
    "CausalAttentionFunction",
    "causal_attention",
    "causal_attention_reference",
    "SUPPORTED_HEAD_DIMS",
]

#: Head dims the Triton kernels are compiled for (the reference accepts any).
SUPPORTED_HEAD_DIMS = (32, 64, 128)
_LOG2E = 1.4426950408889634
# Retune per sequence length, head dim, dtype and masking mode.
_AUTOTUNE_KEY = ["L", "HEAD_DIM", "HAS_MASK", "HAS_WINDOW", "DTYPE_KEY"]


# --------------------------------------------------------------------------------------------
# Triton kernels
# --------------------------------------------------------------------------------------------


@triton.jit
def _attn_fwd_inner(
    acc, l_i, m_i, q, offs_m, valid_q,
    K_base, V_base, Mask_base, stride_kl, stride_vl, stride_ml,
    L, WINDOW, qk_scale, start_n, end_n,
    POS_MASK: tl.constexpr, HAS_MASK: tl.constexpr, HAS_WINDOW: tl.constexpr,
    BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Online-softmax accumulation over KV blocks [start_n, end_n). POS_MASK: apply the causal,
    window and length masks (boundary blocks); otherwise the blocks are fully visible."""
    offs_d = tl.arange(0, HEAD_DIM)
    for n0 in range(start_n, end_n, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        in_len = offs_n < L
        if POS_MASK:
            k = tl.load(K_base + offs_n[:, None] * stride_kl + offs_d[None, :],
                        mask=in_len[:, None], other=0.0)
            v = tl.load(V_base + offs_n[:, None] * stride_vl + offs_d[None, :],
                        mask=in_len[:, None], other=0.0)
        else:
            k = tl.load(K_base + offs_n[:, None] * stride_kl + offs_d[None, :])
            v = tl.load(V_base + offs_n[:, None] * stride_vl + offs_d[None, :])
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        if POS_MASK:
            keep = (offs_n[None, :] <= offs_m[:, None]) & in_len[None, :]
            if HAS_WINDOW:
                keep = keep & (offs_n[None, :] > offs_m[:, None] - WINDOW)
            if HAS_MASK:
                valid_k = tl.load(Mask_base + offs_n * stride_ml, mask=in_len, other=0) != 0
                keep = keep & valid_k[None, :] & valid_q[:, None]
            qk = tl.where(keep, qk, float("-inf"))
        elif HAS_MASK:
            valid_k = tl.load(Mask_base + offs_n * stride_ml) != 0
            qk = tl.where(valid_k[None, :] & valid_q[:, None], qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        # Rows that have seen no visible key yet keep m = -inf; shift by 0 instead to avoid NaN.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.math.exp2(m_i - m_safe)
        p = tl.math.exp2(qk - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, l_i, m_i


def _prune_configs(configs, named_args, **kwargs):
    """Drop tiles too large for the operand width: fp32 operands (exact IEEE dots) take twice the
    shared memory and registers of bf16/fp16, and D=128 doubles the K/V tiles, so the largest
    tiles either exceed an H100's 228 KB of shared memory or spill and only cost compile time.

    float32 gets a 4x smaller budget: its IEEE dots run on the CUDA cores as unrolled FMAs, so
    compilation grows with the tile. On an H200 with 14 test processes compiling at
    once, a float32 test compiling the 16 candidates of the three kernels took 71-90 s, and the
    D=64 one passed pytest's 150 s limit; tensor-core dtypes compiled theirs in 8-27 s. The
    budget keeps 1 forward, 3 dK/dV and 3 dQ candidates at D=64 (64x32 tiles and smaller)."""
    if len(configs) <= 1:
        return configs
    fp32 = kwargs.get("DTYPE_KEY", named_args.get("DTYPE_KEY")) == "float32"
    bytes_per = 4 if fp32 else 2
    head_dim = kwargs.get("HEAD_DIM", named_args.get("HEAD_DIM", 64))
    # Largest tile product kept (BLOCK_M*BLOCK_N*D*bytes): bf16 128x128 at D=64; fp32 64x32.
    budget = 64 * 32 * 64 * 4 if fp32 else 128 * 128 * 64 * 2
    kept = [
        c for c in configs
        if c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] * head_dim * bytes_per <= budget
    ]
    return kept or [min(configs, key=lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"])]


_PRUNE = {"early_config_prune": _prune_configs}


# Tile lists: on an H100 (bf16, D=64, H=16, L in {512, 2048, 8192}; BENCHMARKS.md, the H100
# kernel section) the autotuner timed 12 forward, 11 dK/dV and 11 dQ candidates, with and
# without a mask; each list below keeps the configs that reached a top-5 there (the winner was
# 64x64, 4 warps, 3 stages for all three kernels at L >= 2048). Fewer candidates: each is ~1-3 s
# of compilation per new dtype/head-dim/mask specialisation the first time a process meets it.
def _fwd_configs():
    cuda = [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
        for bm, bn, w, s in [
            (64, 64, 4, 3), (128, 64, 8, 3), (64, 64, 4, 4), (128, 64, 4, 3), (64, 64, 4, 2),
            (64, 32, 4, 4),
        ]
    ]
    interp = triton.Config({"BLOCK_M": 32, "BLOCK_N": 16}, num_warps=4)
    return block_divides(autotune_configs(cuda, interp), "BLOCK_N", "BLOCK_M", "attention")


@triton.autotune(configs=_fwd_configs(), key=_AUTOTUNE_KEY, prune_configs_by=_PRUNE,
                 do_bench=short_autotune_bench)
@triton.jit
def _attn_fwd_kernel(
    Q, K, V, Mask, Out, Lse,
    stride_qb, stride_ql, stride_qh,
    stride_kb, stride_kl, stride_kh,
    stride_vb, stride_vl, stride_vh,
    stride_ob, stride_ol, stride_oh,
    stride_mb, stride_ml,
    H, L, WINDOW, qk_scale,
    HEAD_DIM: tl.constexpr, HAS_MASK: tl.constexpr, HAS_WINDOW: tl.constexpr,
    DTYPE_KEY: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    m0 = pid_m * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    q_in = offs_m < L
    Q_base = Q + b * stride_qb + h * stride_qh
    K_base = K + b * stride_kb + h * stride_kh
    V_base = V + b * stride_vb + h * stride_vh
    Mask_base = Mask + b * stride_mb
    q = tl.load(Q_base + offs_m[:, None] * stride_ql + offs_d[None, :],
                mask=q_in[:, None], other=0.0)
    if HAS_MASK:
        valid_q = tl.load(Mask_base + offs_m * stride_ml, mask=q_in, other=0) != 0
    else:
        valid_q = q_in

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    # KV range this query block can see: [lo, hi). Fully visible blocks: [full_lo, full_hi).
    hi = tl.minimum(m0 + BLOCK_M, L)
    # BLOCK_N divides BLOCK_M: every key block ending at or before m0 is <= all queries.
    full_hi = m0
    if HAS_WINDOW:
        lo = tl.maximum(m0 - WINDOW + 1, 0) // BLOCK_N * BLOCK_N
        full_lo = tl.cdiv(tl.maximum(m0 + BLOCK_M - WINDOW, 0), BLOCK_N) * BLOCK_N
        full_lo = tl.minimum(tl.maximum(full_lo, lo), full_hi)
    else:
        lo = 0
        full_lo = 0
    acc, l_i, m_i = _attn_fwd_inner(
        acc, l_i, m_i, q, offs_m, valid_q, K_base, V_base, Mask_base, stride_kl, stride_vl,
        stride_ml, L, WINDOW, qk_scale, lo, full_lo,
        True, HAS_MASK, HAS_WINDOW, BLOCK_N, HEAD_DIM, DOT_PRECISION,
    )
    acc, l_i, m_i = _attn_fwd_inner(
        acc, l_i, m_i, q, offs_m, valid_q, K_base, V_base, Mask_base, stride_kl, stride_vl,
        stride_ml, L, WINDOW, qk_scale, full_lo, full_hi,
        False, HAS_MASK, HAS_WINDOW, BLOCK_N, HEAD_DIM, DOT_PRECISION,
    )
    acc, l_i, m_i = _attn_fwd_inner(
        acc, l_i, m_i, q, offs_m, valid_q, K_base, V_base, Mask_base, stride_kl, stride_vl,
        stride_ml, L, WINDOW, qk_scale, full_hi, hi,
        True, HAS_MASK, HAS_WINDOW, BLOCK_N, HEAD_DIM, DOT_PRECISION,
    )
    seen = l_i > 0.0  # False only for padded queries
    out = acc / tl.where(seen, l_i, 1.0)[:, None]
    out = tl.where(seen[:, None], out, 0.0)
    # Base-2 log-sum-exp of the scaled scores; 0 for padded rows (their p is masked in backward).
    lse = tl.where(seen, m_i + tl.math.log2(tl.where(seen, l_i, 1.0)), 0.0)
    O_base = Out + b * stride_ob + h * stride_oh
    tl.store(O_base + offs_m[:, None] * stride_ol + offs_d[None, :], out.to(Out.dtype.element_ty),
             mask=q_in[:, None])
    tl.store(Lse + pid_bh * L + offs_m, lse, mask=q_in)


@triton.jit
def _attn_bwd_preprocess_kernel(
    Out, DO, Delta,
    stride_ob, stride_ol, stride_oh,
    stride_db, stride_dl, stride_dh,
    H, L,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    in_len = offs_m < L
    o = tl.load(Out + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_ol + offs_d[None, :],
                mask=in_len[:, None], other=0.0).to(tl.float32)
    do = tl.load(DO + b * stride_db + h * stride_dh + offs_m[:, None] * stride_dl + offs_d[None, :],
                 mask=in_len[:, None], other=0.0).to(tl.float32)
    tl.store(Delta + pid_bh * L + offs_m, tl.sum(o * do, 1), mask=in_len)


@triton.jit
def _attn_bwd_dkdv_inner(
    dk, dv, k, v, offs_n, valid_k,
    Q_base, DO_base, Lse_base, Delta_base, Mask_base, stride_ql, stride_dl, stride_ml,
    L, WINDOW, qk_scale, start_m, end_m,
    POS_MASK: tl.constexpr, HAS_MASK: tl.constexpr, HAS_WINDOW: tl.constexpr,
    BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    offs_d = tl.arange(0, HEAD_DIM)
    for m0 in range(start_m, end_m, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        in_len = offs_m < L
        if POS_MASK:
            q = tl.load(Q_base + offs_m[:, None] * stride_ql + offs_d[None, :],
                        mask=in_len[:, None], other=0.0)
            do = tl.load(DO_base + offs_m[:, None] * stride_dl + offs_d[None, :],
                         mask=in_len[:, None], other=0.0)
            lse = tl.load(Lse_base + offs_m, mask=in_len, other=0.0)
            delta = tl.load(Delta_base + offs_m, mask=in_len, other=0.0)
        else:
            q = tl.load(Q_base + offs_m[:, None] * stride_ql + offs_d[None, :])
            do = tl.load(DO_base + offs_m[:, None] * stride_dl + offs_d[None, :])
            lse = tl.load(Lse_base + offs_m)
            delta = tl.load(Delta_base + offs_m)
        # Transposed scores (keys x queries) so dk, dv accumulate without transposing back.
        qk_t = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * qk_scale
        p_t = tl.math.exp2(qk_t - lse[None, :])
        if POS_MASK:
            keep = (offs_m[None, :] >= offs_n[:, None]) & in_len[None, :]
            if HAS_WINDOW:
                keep = keep & (offs_m[None, :] < offs_n[:, None] + WINDOW)
            if HAS_MASK:
                valid_q = tl.load(Mask_base + offs_m * stride_ml, mask=in_len, other=0) != 0
                keep = keep & valid_q[None, :] & valid_k[:, None]
            p_t = tl.where(keep, p_t, 0.0)
        elif HAS_MASK:
            valid_q = tl.load(Mask_base + offs_m * stride_ml) != 0
            p_t = tl.where(valid_q[None, :] & valid_k[:, None], p_t, 0.0)
        dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=DOT_PRECISION)
        dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
        ds_t = p_t * (dp_t - delta[None, :])
        dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision=DOT_PRECISION)
    return dk, dv


def _dkdv_configs():
    cuda = [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
        for bm, bn, w, s in [
            (64, 64, 4, 3), (32, 64, 4, 4), (16, 64, 4, 4), (32, 64, 4, 3), (32, 128, 4, 3),
        ]
    ]
    interp = triton.Config({"BLOCK_M": 16, "BLOCK_N": 32}, num_warps=4)
    return block_divides(autotune_configs(cuda, interp), "BLOCK_M", "BLOCK_N", "attention")


@triton.autotune(configs=_dkdv_configs(), key=_AUTOTUNE_KEY, prune_configs_by=_PRUNE,
                 do_bench=short_autotune_bench)
@triton.jit
def _attn_bwd_dkdv_kernel(
    Q, K, V, DO, Mask, Lse, Delta, DK, DV,
    stride_qb, stride_ql, stride_qh,
    stride_kb, stride_kl, stride_kh,
    stride_vb, stride_vl, stride_vh,
    stride_db, stride_dl, stride_dh,
    stride_mb, stride_ml,
    stride_gb, stride_gl, stride_gh,
    H, L, WINDOW, qk_scale, sm_scale,
    HEAD_DIM: tl.constexpr, HAS_MASK: tl.constexpr, HAS_WINDOW: tl.constexpr,
    DTYPE_KEY: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """One program per KV block of BLOCK_N keys; loops over query blocks of BLOCK_M (which
    divides BLOCK_N). dK and dV share the (B, L, H, D) strides ``stride_g*``."""
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    n0 = pid_n * BLOCK_N
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    k_in = offs_n < L
    k = tl.load(K + b * stride_kb + h * stride_kh + offs_n[:, None] * stride_kl + offs_d[None, :],
                mask=k_in[:, None], other=0.0)
    v = tl.load(V + b * stride_vb + h * stride_vh + offs_n[:, None] * stride_vl + offs_d[None, :],
                mask=k_in[:, None], other=0.0)
    Mask_base = Mask + b * stride_mb
    if HAS_MASK:
        valid_k = tl.load(Mask_base + offs_n * stride_ml, mask=k_in, other=0) != 0
    else:
        valid_k = k_in
    Q_base = Q + b * stride_qb + h * stride_qh
    DO_base = DO + b * stride_db + h * stride_dh
    Lse_base = Lse + pid_bh * L
    Delta_base = Delta + pid_bh * L

    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    # Queries that can see this key block: [n0, hi). Diagonal blocks [n0, n0 + BLOCK_N) need the
    # causal mask; then blocks fully inside the window and the length are unmasked; the rest masked.
    if HAS_WINDOW:
        hi = tl.minimum(n0 + BLOCK_N - 1 + WINDOW, L)
        full_end = tl.minimum(n0 + WINDOW, L) // BLOCK_M * BLOCK_M
    else:
        hi = L
        full_end = L // BLOCK_M * BLOCK_M
    diag_end = tl.minimum(n0 + BLOCK_N, hi)
    full_end = tl.maximum(full_end, diag_end)
    full_end = tl.minimum(full_end, tl.cdiv(hi, BLOCK_M) * BLOCK_M)
    dk, dv = _attn_bwd_dkdv_inner(
        dk, dv, k, v, offs_n, valid_k, Q_base, DO_base, Lse_base, Delta_base, Mask_base,
        stride_ql, stride_dl, stride_ml, L, WINDOW, qk_scale, n0, diag_end,
        True, HAS_MASK, HAS_WINDOW, BLOCK_M, HEAD_DIM, DOT_PRECISION,
    )
    dk, dv = _attn_bwd_dkdv_inner(
        dk, dv, k, v, offs_n, valid_k, Q_base, DO_base, Lse_base, Delta_base, Mask_base,
        stride_ql, stride_dl, stride_ml, L, WINDOW, qk_scale, diag_end, full_end,
        False, HAS_MASK, HAS_WINDOW, BLOCK_M, HEAD_DIM, DOT_PRECISION,
    )
    dk, dv = _attn_bwd_dkdv_inner(
        dk, dv, k, v, offs_n, valid_k, Q_base, DO_base, Lse_base, Delta_base, Mask_base,
        stride_ql, stride_dl, stride_ml, L, WINDOW, qk_scale, full_end, hi,
        True, HAS_MASK, HAS_WINDOW, BLOCK_M, HEAD_DIM, DOT_PRECISION,
    )
    dk = dk * sm_scale
    g_off = b * stride_gb + h * stride_gh + offs_n[:, None] * stride_gl + offs_d[None, :]
    tl.store(DK + g_off, dk.to(DK.dtype.element_ty), mask=k_in[:, None])
    tl.store(DV + g_off, dv.to(DV.dtype.element_ty), mask=k_in[:, None])


@triton.jit
def _attn_bwd_dq_inner(
    dq, q, do, lse, delta, offs_m, valid_q,
    K_base, V_base, Mask_base, stride_kl, stride_vl, stride_ml,
    L, WINDOW, qk_scale, start_n, end_n,
    POS_MASK: tl.constexpr, HAS_MASK: tl.constexpr, HAS_WINDOW: tl.constexpr,
    BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    offs_d = tl.arange(0, HEAD_DIM)
    for n0 in range(start_n, end_n, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        in_len = offs_n < L
        if POS_MASK:
            k = tl.load(K_base + offs_n[:, None] * stride_kl + offs_d[None, :],
                        mask=in_len[:, None], other=0.0)
            v = tl.load(V_base + offs_n[:, None] * stride_vl + offs_d[None, :],
                        mask=in_len[:, None], other=0.0)
        else:
            k = tl.load(K_base + offs_n[:, None] * stride_kl + offs_d[None, :])
            v = tl.load(V_base + offs_n[:, None] * stride_vl + offs_d[None, :])
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        p = tl.math.exp2(qk - lse[:, None])
        if POS_MASK:
            keep = (offs_n[None, :] <= offs_m[:, None]) & in_len[None, :]
            if HAS_WINDOW:
                keep = keep & (offs_n[None, :] > offs_m[:, None] - WINDOW)
            if HAS_MASK:
                valid_k = tl.load(Mask_base + offs_n * stride_ml, mask=in_len, other=0) != 0
                keep = keep & valid_k[None, :] & valid_q[:, None]
            p = tl.where(keep, p, 0.0)
        elif HAS_MASK:
            valid_k = tl.load(Mask_base + offs_n * stride_ml) != 0
            p = tl.where(valid_k[None, :] & valid_q[:, None], p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PRECISION)
    return dq


def _dq_configs():
    cuda = [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
        for bm, bn, w, s in [
            (64, 64, 4, 3), (64, 32, 4, 3), (64, 32, 4, 4), (128, 32, 8, 3), (64, 16, 4, 4),
        ]
    ]
    interp = triton.Config({"BLOCK_M": 32, "BLOCK_N": 16}, num_warps=4)
    return block_divides(autotune_configs(cuda, interp), "BLOCK_N", "BLOCK_M", "attention")


@triton.autotune(configs=_dq_configs(), key=_AUTOTUNE_KEY, prune_configs_by=_PRUNE,
                 do_bench=short_autotune_bench)
@triton.jit
def _attn_bwd_dq_kernel(
    Q, K, V, DO, Mask, Lse, Delta, DQ,
    stride_qb, stride_ql, stride_qh,
    stride_kb, stride_kl, stride_kh,
    stride_vb, stride_vl, stride_vh,
    stride_db, stride_dl, stride_dh,
    stride_mb, stride_ml,
    stride_gb, stride_gl, stride_gh,
    H, L, WINDOW, qk_scale, sm_scale,
    HEAD_DIM: tl.constexpr, HAS_MASK: tl.constexpr, HAS_WINDOW: tl.constexpr,
    DTYPE_KEY: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """One program per query block of BLOCK_M; loops over the KV blocks (BLOCK_N divides BLOCK_M)
    it sees, with the same block ranges as the forward."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    m0 = pid_m * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    q_in = offs_m < L
    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_ql + offs_d[None, :],
                mask=q_in[:, None], other=0.0)
    do = tl.load(DO + b * stride_db + h * stride_dh + offs_m[:, None] * stride_dl + offs_d[None, :],
                 mask=q_in[:, None], other=0.0)
    lse = tl.load(Lse + pid_bh * L + offs_m, mask=q_in, other=0.0)
    delta = tl.load(Delta + pid_bh * L + offs_m, mask=q_in, other=0.0)
    Mask_base = Mask + b * stride_mb
    if HAS_MASK:
        valid_q = tl.load(Mask_base + offs_m * stride_ml, mask=q_in, other=0) != 0
    else:
        valid_q = q_in
    K_base = K + b * stride_kb + h * stride_kh
    V_base = V + b * stride_vb + h * stride_vh

    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    hi = tl.minimum(m0 + BLOCK_M, L)
    full_hi = m0
    if HAS_WINDOW:
        lo = tl.maximum(m0 - WINDOW + 1, 0) // BLOCK_N * BLOCK_N
        full_lo = tl.cdiv(tl.maximum(m0 + BLOCK_M - WINDOW, 0), BLOCK_N) * BLOCK_N
        full_lo = tl.minimum(tl.maximum(full_lo, lo), full_hi)
    else:
        lo = 0
        full_lo = 0
    dq = _attn_bwd_dq_inner(
        dq, q, do, lse, delta, offs_m, valid_q, K_base, V_base, Mask_base, stride_kl, stride_vl,
        stride_ml, L, WINDOW, qk_scale, lo, full_lo,
        True, HAS_MASK, HAS_WINDOW, BLOCK_N, HEAD_DIM, DOT_PRECISION,
    )
    dq = _attn_bwd_dq_inner(
        dq, q, do, lse, delta, offs_m, valid_q, K_base, V_base, Mask_base, stride_kl, stride_vl,
        stride_ml, L, WINDOW, qk_scale, full_lo, full_hi,
        False, HAS_MASK, HAS_WINDOW, BLOCK_N, HEAD_DIM, DOT_PRECISION,
    )
    dq = _attn_bwd_dq_inner(
        dq, q, do, lse, delta, offs_m, valid_q, K_base, V_base, Mask_base, stride_kl, stride_vl,
        stride_ml, L, WINDOW, qk_scale, full_hi, hi,
        True, HAS_MASK, HAS_WINDOW, BLOCK_N, HEAD_DIM, DOT_PRECISION,
    )
    dq = dq * sm_scale
    g_off = b * stride_gb + h * stride_gh + offs_m[:, None] * stride_gl + offs_d[None, :]
    tl.store(DQ + g_off, dq.to(DQ.dtype.element_ty), mask=q_in[:, None])


#: The autotuned kernels by phase: what `amago-fast bench attention` reads its autotune tables from
#: and pre-compiles every candidate of (``configs``, ``configs_timings``, ``best_config``).
AUTOTUNED_KERNELS = {
    "fwd": _attn_fwd_kernel, "bwd_dkdv": _attn_bwd_dkdv_kernel, "bwd_dq": _attn_bwd_dq_kernel,
}

# --------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------


def _kernel_flags(q: torch.Tensor, window: int | None, L: int):
    has_window = window is not None and window < L
    dtype_key = str(q.dtype).removeprefix("torch.")
    # fp32 inputs: exact fp32 products (PyTorch's fp32 matmul default), not TF32.
    return has_window, (window if has_window else L), dtype_key, dot_precision(q.dtype)


def _attn_fwd(q, k, v, valid_mask, window, scale):
    """Launch the forward. Returns (out (B, L, H, D), lse (B, H, L) fp32 base-2)."""
    B, L, H, D = q.shape
    if D not in SUPPORTED_HEAD_DIMS:
        raise ValueError(
            f"causal_attention: the Triton kernel supports head dims {SUPPORTED_HEAD_DIMS}, got {D}"
        )
    # Kernel offsets are int32: refuse inputs whose element offsets would overflow.
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.numel() >= 2**31 or max(t.stride(i) * (t.shape[i] - 1) for i in range(4)) >= 2**31:
            raise ValueError(f"causal_attention: {name} too large for the Triton kernel (>= 2**31 "
                             "elements); split the batch")
    out = torch.empty((B, L, H, D), device=q.device, dtype=q.dtype)
    lse = torch.empty((B, H, L), device=q.device, dtype=torch.float32)
    has_window, w, dtype_key, precision = _kernel_flags(q, window, L)
    mask, mstride = optional_operand(valid_mask, q, 2)  # q: unread when HAS_MASK is False
    grid = lambda meta: (triton.cdiv(L, meta["BLOCK_M"]), B * H)  # noqa: E731
    _attn_fwd_kernel[grid](
        q, k, v, mask, out, lse,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        *mstride,
        H, L, w, scale * _LOG2E,
        HEAD_DIM=D, HAS_MASK=valid_mask is not None, HAS_WINDOW=has_window,
        DTYPE_KEY=dtype_key, DOT_PRECISION=precision,
    )
    return out, lse


def _attn_bwd(do, q, k, v, out, lse, valid_mask, window, scale):
    B, L, H, D = q.shape
    do = last_dim_contiguous(do)
    delta = torch.empty_like(lse)
    _attn_bwd_preprocess_kernel[(triton.cdiv(L, 64), B * H)](
        out, do, delta,
        out.stride(0), out.stride(1), out.stride(2),
        do.stride(0), do.stride(1), do.stride(2),
        H, L, HEAD_DIM=D, BLOCK_M=64,
    )
    # Contiguous gradients whatever the input strides (dK and dV share one stride set).
    dq, dk, dv = (torch.empty((B, L, H, D), device=q.device, dtype=q.dtype) for _ in range(3))
    has_window, w, dtype_key, precision = _kernel_flags(q, window, L)
    mask, mstride = optional_operand(valid_mask, q, 2)
    common = (
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        do.stride(0), do.stride(1), do.stride(2),
        *mstride,
    )
    flags = dict(
        HEAD_DIM=D, HAS_MASK=valid_mask is not None, HAS_WINDOW=has_window,
        DTYPE_KEY=dtype_key, DOT_PRECISION=precision,
    )
    grid_kv = lambda meta: (triton.cdiv(L, meta["BLOCK_N"]), B * H)  # noqa: E731
    _attn_bwd_dkdv_kernel[grid_kv](
        q, k, v, do, mask, lse, delta, dk, dv, *common,
        dk.stride(0), dk.stride(1), dk.stride(2),
        H, L, w, scale * _LOG2E, scale, **flags,
    )
    grid_q = lambda meta: (triton.cdiv(L, meta["BLOCK_M"]), B * H)  # noqa: E731
    _attn_bwd_dq_kernel[grid_q](
        q, k, v, do, mask, lse, delta, dq, *common,
        dq.stride(0), dq.stride(1), dq.stride(2),
        H, L, w, scale * _LOG2E, scale, **flags,
    )
    return dq, dk, dv


# --------------------------------------------------------------------------------------------
# Autograd function, functional API, module
# --------------------------------------------------------------------------------------------


class CausalAttentionFunction(torch.autograd.Function):
    """Triton causal attention: forward saves (q, k, v, out, lse); backward recomputes P."""

    @staticmethod
    def forward(ctx, q, k, v, valid_mask, window, softmax_scale):
        q, k, v = (last_dim_contiguous(t) for t in (q, k, v))
        mask_u8 = valid_mask.to(torch.uint8).contiguous() if valid_mask is not None else None
        with launch_device(q):
            out, lse = _attn_fwd(q, k, v, mask_u8, window, softmax_scale)
        ctx.save_for_backward(q, k, v, out, lse, mask_u8)
        ctx.window = window
        ctx.softmax_scale = softmax_scale
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, do):
        q, k, v, out, lse, mask_u8 = ctx.saved_tensors
        with launch_device(q):
            dq, dk, dv = _attn_bwd(do, q, k, v, out, lse, mask_u8, ctx.window,
                                   ctx.softmax_scale)
        return dq, dk, dv, None, None, None


def causal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    valid_mask: torch.Tensor | None = None,
    window: int | None = None,
    softmax_scale: float | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Causal multi-head attention over ``(B, L, H, D)`` tensors.

    Args:
        q, k, v: ``(B, L, H, D)``, fp32/fp16/bf16 (one dtype), same device. The Triton kernel needs
            ``D`` in :data:`SUPPORTED_HEAD_DIMS`; accumulation is fp32.
        valid_mask: optional ``(B, L)`` bool; False marks padded steps: they attend to nothing
            (output exactly 0) and no gradient flows through them.
        window: optional ``C``: query ``i`` sees keys in ``(i - C, i]`` (matches a ring KV cache of
            capacity ``C``, see :mod:`amago_fast.kernels.decode`).
        softmax_scale: defaults to ``1 / sqrt(D)``.
        backend: ``"auto"`` (Triton on CUDA when ``D`` is in :data:`SUPPORTED_HEAD_DIMS`, else
            the reference), ``"triton"`` (an unsupported ``D`` is an error) or ``"reference"``.

    Returns:
        ``(B, L, H, D)`` output in the input dtype.
    """
    scale = check_attention_inputs(q, k, v, valid_mask, window, softmax_scale)
    tensors = [q, k, v] + ([valid_mask] if valid_mask is not None else [])
    chosen = resolve_backend(backend, tensors, "causal_attention")
    if chosen == "triton" and backend == "auto" and q.shape[-1] not in SUPPORTED_HEAD_DIMS:
        # Small models (d_model 64 with 4 heads: D=16) run on CUDA too; only an explicit
        # backend="triton" makes an unsupported head dim an error.
        chosen = "reference"
    if chosen == "reference":
        return causal_attention_reference(q, k, v, valid_mask, window, scale)
    if q.shape[-1] not in SUPPORTED_HEAD_DIMS:
        raise ValueError(
            f"causal_attention: the Triton kernel supports head dims {SUPPORTED_HEAD_DIMS}, "
            f"got {q.shape[-1]}; use backend='reference'"
        )
    return CausalAttentionFunction.apply(q, k, v, valid_mask, window, scale)


class CausalAttention(torch.nn.Module):
    """Module form of :func:`causal_attention`; holds ``softmax_scale``, ``window``, ``backend``."""

    def __init__(
        self, softmax_scale: float | None = None, window: int | None = None, backend: str = "auto"
    ) -> None:
        super().__init__()
        bad_window = isinstance(window, bool) or not isinstance(window, int) or window < 1
        if window is not None and bad_window:
            raise ValueError(
                f"CausalAttention: window must be a positive int or None, got {window!r}"
            )
        if softmax_scale is not None and not (math.isfinite(softmax_scale) and softmax_scale > 0):
            raise ValueError(
                f"CausalAttention: softmax_scale must be finite and > 0, got {softmax_scale}"
            )
        if backend not in ("auto", "triton", "reference"):
            raise ValueError(f"CausalAttention: unknown backend {backend!r}")
        self.softmax_scale = softmax_scale
        self.window = window
        self.backend = backend

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
        valid_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return causal_attention(q, k, v, valid_mask, self.window, self.softmax_scale, self.backend)

    def extra_repr(self) -> str:
        return f"softmax_scale={self.softmax_scale}, window={self.window}, backend={self.backend!r}"
