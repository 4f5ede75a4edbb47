"""Fused critic ensemble × discount factors: the op (its modules are amago_fast.nets.critics).

AMAGO evaluates E critics for every timestep and every one of G discount factors. Each critic is
an MLP ``(state, action, gamma) -> q`` with two hidden layers. Written naively, the state is tiled
G×E times and every (critic, gamma) pair pays the full first-layer cost of the state. Here layer 1
is split so the state half is computed once per (timestep, critic) and shared by all gammas::

    P[n, e]     = state[n] @ W_s[e]                                   (N, E, H)   once per n, e
    h1[n, e, g] = leaky(P[n, e] + action[n, g] @ W_a[e] + b1[e, g])   b1 carries the gamma
    h2[n, e, g] = leaky(h1[n, e, g] @ W2[e] + b2[e])
    q[n, e, g]  = h2[n, e, g] @ W3[e] + b3[e]                         (N, E, G, out_dim)

The per-gamma bias ``b1[e, g]`` is exactly a one-hot gamma input through layer 1, so this is the
same function class as concatenating (state, action, onehot(gamma)).

Module shape (see docs/CONTRIBUTING.md): ``critic_ensemble_reference`` (pure PyTorch, what CPU
training runs) and the Triton path ``_critic_state_proj_kernel`` / ``_critic_fwd_kernel`` /
``_critic_bwd_rows_kernel`` / ``_critic_bwd_weights_kernel`` → launchers →
``CriticEnsembleFunction`` → functional ``critic_ensemble`` + ``CriticEnsemble`` module.
``td_target_reduce`` has the same shape (``_td_reduce_kernel`` → ``TDTargetReduceFunction``).

``StateCriticEnsemble`` (the default critic for discrete actions) is the same computation with
``action_dim = 0`` and one gamma slot whose output units are all (gamma, action) pairs: Q(s, ·)
from the state, per critic one MLP over N rows instead of N·G.

GPU status (measured on an H100; BENCHMARKS.md, the H100 kernel section): the Triton path
is correct on the GPU (bf16/fp16/fp32 against the reference, deterministic) but slower than the
reference's cuBLAS matmuls: fwd+bwd at N=24*1024, E=4, hidden 256 ran at 0.65x (G=7) and 0.63x
(G=18) of the reference in bf16, and at 0.03x in fp32 (IEEE fp32 dots: the two backward kernels
took 470 and 225 ms, spilling as ptxas predicted). So ``backend="auto"`` runs the reference on
CUDA too, and the fused kernels are opt-in (``backend="triton"``) until they are rewritten.
``td_target_reduce`` likewise: the fused reduction took 0.22 ms vs the reference's 0.07 ms.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from amago_fast.kernels._launch import (
    dot_precision,
    pointer_or_stand_in,
    pow2_at_least_16,
    split_count,
)
from amago_fast.kernels._utils import INTERPRET, launch_device, resolve_backend

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton ships with the package on Linux
    triton = None

__all__ = [
    "BACKENDS",
    "CriticParams",
    "critic_ensemble",
    "critic_ensemble_reference",
    "critic_ensemble_tiled_reference",
]


class CriticParams(NamedTuple):
    """The stacked parameters of E critics over G gammas (H hidden units, O outputs).

    Shapes: ``w_state (E, d_s, H)``, ``w_action (E, d_a, H)``, ``b1 (E, G, H)``,
    ``w2 (E, H, H)``, ``b2 (E, H)``, ``w3 (E, H, O)``, ``b3 (E, O)``. Weights are stored
    input-major (``x @ W``), so a batch of rows times one critic's weights is one GEMM.
    """

    w_state: torch.Tensor
    w_action: torch.Tensor
    b1: torch.Tensor
    w2: torch.Tensor
    b2: torch.Tensor
    w3: torch.Tensor
    b3: torch.Tensor

    def detached(self) -> CriticParams:
        """The same parameters cut from autograd (gradients then reach only state and action)."""
        return CriticParams(*(p.detach() for p in self))


def _check_inputs(state: torch.Tensor, action: torch.Tensor, params: CriticParams) -> None:
    """Raise a clear error unless shapes, dtypes and devices agree; touches nothing."""
    if not isinstance(params, CriticParams):
        if isinstance(params, (tuple, list)) and len(params) == 7:
            params = CriticParams(*params)
        else:
            raise TypeError("params must be a CriticParams (w_state, w_action, b1, w2, b2, w3, b3)")
    for name, t in (("state", state), ("action", action), *params._asdict().items()):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
        if t.device != state.device:
            raise ValueError(f"{name} is on {t.device} but state is on {state.device}")
    if state.dim() != 2:
        raise ValueError(f"state must be (N, d_s), got shape {tuple(state.shape)}")
    if action.dim() != 3:
        raise ValueError(f"action must be (N, G, d_a), got shape {tuple(action.shape)}")
    if action.dtype != state.dtype:
        raise TypeError(f"action dtype {action.dtype} differs from state dtype {state.dtype}")
    n, d_s = state.shape
    if action.shape[0] != n:
        raise ValueError(f"action has {action.shape[0]} rows but state has {n}")
    _, g, d_a = action.shape
    ws, wa, b1, w2, b2, w3, b3 = params
    if ws.dim() != 3:
        raise ValueError(f"w_state must be (E, d_s, H), got {tuple(ws.shape)}")
    e, _, h = ws.shape
    expected = {
        "w_state": (e, d_s, h),
        "w_action": (e, d_a, h),
        "b1": (e, g, h),
        "w2": (e, h, h),
        "b2": (e, h),
        "w3": (e, h, w3.shape[-1] if w3.dim() == 3 else -1),
        "b3": (e, w3.shape[-1] if w3.dim() == 3 else -1),
    }
    for name, t in params._asdict().items():
        if tuple(t.shape) != expected[name]:
            raise ValueError(
                f"{name} has shape {tuple(t.shape)}, expected {expected[name]} for state "
                f"(N={n}, d_s={d_s}), action (G={g}, d_a={d_a}), E={e}, H={h}"
            )
    if n == 0 or g == 0:
        raise ValueError(f"empty batch: N={n}, G={g}")


def critic_ensemble_reference(
    state: torch.Tensor,
    action: torch.Tensor,
    params: CriticParams,
    negative_slope: float = 0.01,
) -> torch.Tensor:
    """Pure PyTorch: ``q (N, E, G, O)`` from ``state (N, d_s)``, ``action (N, G, d_a)``.

    Computes in the input dtype (parameters are cast to it, gradients flow back to them in their
    own dtype). Layout for speed on CPU: activations live as ``(E, N·G, H)`` so every layer is one
    batched GEMM. Layer 1 first writes the shared state projection plus the gamma bias,
    ``P[e, n] + b1[e, g]`` (one broadcast pass), then accumulates the action GEMM into it
    (``baddbmm``) and applies the activation in place: fewer full passes over the largest
    tensor than "GEMM, add, add, activation". Measured at N=768, E=4, G=7, d_s=128, hidden 256
    (1 thread, shared 2-core CPU): layer 1 alone 19.6 ms vs 59 ms for the add-then-activate
    order and 57 ms for the tiled formulation; whole fwd+bwd 222 ms vs 292 ms (previous order)
    and 277 ms (tiled).
    """
    _check_inputs(state, action, params)
    dtype = state.dtype
    ws, wa, b1, w2, b2, w3, b3 = (p.to(dtype) for p in params)
    n, g, d_a = action.shape
    e, _, h = ws.shape
    if g == 1:
        # One gamma slot (the state-only critic): bias + state GEMM in one batched call; the
        # broadcast-add-then-view path below costs two extra (E, N, H) copies in the backward.
        z1 = torch.baddbmm(b1, state.unsqueeze(0).expand(e, n, -1), ws)
    else:
        z1 = (torch.matmul(state, ws).unsqueeze(2) + b1.unsqueeze(1)).view(e, n * g, h)
    if d_a:  # d_a = 0: the state-only critic (StateCriticEnsemble), no action GEMM
        z1 = torch.baddbmm(z1, action.reshape(1, n * g, d_a).expand(e, -1, -1), wa)
    h1 = _activation_(z1, negative_slope)
    h2 = _activation_(torch.baddbmm(b2.unsqueeze(1), h1, w2), negative_slope)
    q = torch.baddbmm(b3.unsqueeze(1), h2, w3)  # (E, N·G, O)
    return q.view(e, n, g, -1).permute(1, 0, 2, 3)


def _activation_(x: torch.Tensor, negative_slope: float) -> torch.Tensor:
    """Leaky ReLU in place on a fresh intermediate (autograd keeps its output for the backward;
    PyTorch's in-place leaky ReLU backward needs a positive slope, so slope 0 uses relu_)."""
    if negative_slope > 0:
        return torch.nn.functional.leaky_relu_(x, negative_slope)
    return torch.relu_(x)


def critic_ensemble_tiled_reference(
    state: torch.Tensor,
    action: torch.Tensor,
    params: CriticParams,
    negative_slope: float = 0.01,
) -> torch.Tensor:
    """The naive formulation, kept as a benchmark baseline and a second oracle.

    Tiles the state G×E times and concatenates ``[state, action, onehot(gamma)]`` as every
    critic's input, i.e. what a plain "one MLP per (critic, gamma) row" implementation does.
    Mathematically identical to :func:`critic_ensemble_reference`.
    """
    _check_inputs(state, action, params)
    dtype = state.dtype
    ws, wa, b1, w2, b2, w3, b3 = (p.to(dtype) for p in params)
    n, g, d_a = action.shape
    e, d_s, h = ws.shape
    onehot = torch.eye(g, dtype=dtype, device=state.device)
    x = torch.cat(
        [
            state[:, None, :].expand(n, g, d_s),
            action,
            onehot[None].expand(n, g, g),
        ],
        dim=-1,
    )  # (N, G, d_s + d_a + G)
    x = x.reshape(1, n * g, -1).expand(e, n * g, -1)  # tiled for every critic
    w1 = torch.cat([ws, wa, b1], dim=1)  # (E, d_s + d_a + G, H)
    h1 = torch.nn.functional.leaky_relu(torch.bmm(x, w1), negative_slope)
    h2 = torch.nn.functional.leaky_relu(torch.baddbmm(b2.unsqueeze(1), h1, w2), negative_slope)
    q = torch.baddbmm(b3.unsqueeze(1), h2, w3)
    return q.view(e, n, g, -1).permute(1, 0, 2, 3)


BACKENDS = ("auto", "reference", "triton")  # same names as _utils.BACKENDS

# ----------------------------------------------------------------------------------------------
# Triton path
# ----------------------------------------------------------------------------------------------
#
# Work split (rows = timesteps n; every program owns one critic e):
#   forward          grid (cdiv(N, BLOCK_N), E): P = state @ W_s[e] once for the row block, then
#                    for each gamma g: z1 = a_g @ W_a[e] + P + b1[e, g] (W_a[e] stays in registers),
#                    and layer 2 in column chunks of BLOCK_H whose outputs feed layer 3 right away,
#                    so neither h1 nor h2 ever reaches memory. P (fp32) is saved for the backward.
#   backward, rows   grid (cdiv(N, BLOCK_N), E): recomputes z1, z2 per gamma, propagates dq to
#                    dz1; writes dP = sum_g dz1 (N, E, H), per-critic action grads, and per-block
#                    partial sums for dW_a and db1.
#   backward, W2/W3  grid (E, H / BLOCK_H, SPLITS): each program owns a column chunk of W2 (and
#                    the matching rows of W3) and a fixed, strided share of the row blocks;
#                    per-split partial sums.
#   host             sums of the partials over blocks/splits/critics (fixed order: deterministic,
#                    no atomics), and the two GEMMs dW_s = state^T dP, d_state = dP W_s^T.


# Triton-path limits: beyond them the per-program register tiles (rows x hidden) would spill;
# backend="triton" then raises.
_MAX_HIDDEN = 512
_MAX_ACTION_DIM = 128
_MAX_OUT_DIM = 128


if triton is not None:

    @triton.jit
    def _leaky(x, NEG_SLOPE: tl.constexpr):
        return tl.where(x > 0, x, x * NEG_SLOPE)

    @triton.jit
    def _tile(ptr, rows, row_stride, cols, row_ok, col_ok):
        """The (rows x cols) tile at ``ptr + rows * row_stride + cols``; 0 outside the masks."""
        return tl.load(ptr + rows[:, None] * row_stride + cols[None, :],
                       mask=row_ok[:, None] & col_ok[None, :], other=0.0)

    @triton.jit
    def _store_tile(ptr, rows, row_stride, cols, row_ok, col_ok, value):
        """``value`` into the (rows x cols) tile at ``ptr + rows * row_stride + cols``."""
        tl.store(ptr + rows[:, None] * row_stride + cols[None, :], value,
                 mask=row_ok[:, None] & col_ok[None, :])

    @triton.jit
    def _tile_at(ptr, rows, row_stride, off, cols, row_ok, col_ok):
        """The (rows x cols) tile at ``ptr + rows * row_stride + off + cols``; 0 outside."""
        return tl.load(ptr + rows[:, None] * row_stride + off + cols[None, :],
                       mask=row_ok[:, None] & col_ok[None, :], other=0.0)

    @triton.jit
    def _store_tile_at(ptr, rows, row_stride, off, cols, row_ok, col_ok, value):
        """``value`` into the (rows x cols) tile at ``ptr + rows * row_stride + off + cols``."""
        tl.store(ptr + rows[:, None] * row_stride + off + cols[None, :], value,
                 mask=row_ok[:, None] & col_ok[None, :])

    @triton.jit
    def _layer1(A, P, B1, wa, rows, row_ok, offs_a, a_ok, offs_h, h_ok, e, g, G, D_A, E,
                H: tl.constexpr, PRECISION: tl.constexpr):
        """Gamma g's action rows ``a`` and ``z1 = a @ W_a[e] + P[rows, e] + b1[e, g]`` in fp32:
        the first layer every kernel after the state projection starts from."""
        cd = A.dtype.element_ty
        a = _tile_at(A, rows, G * D_A, g * D_A, offs_a, row_ok, a_ok)
        b1 = tl.load(B1 + (e * G + g) * H + offs_h, mask=h_ok, other=0.0).to(cd).to(tl.float32)
        p = _tile_at(P, rows, E * H, e * H, offs_h, row_ok, h_ok)
        return a, tl.dot(a, wa, p + b1[None, :], input_precision=PRECISION)

    @triton.jit
    def _critic_state_proj_kernel(
        S, WS, P_OUT,
        N, D_S, E, H: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_DS: tl.constexpr, H_PAD: tl.constexpr,
        PRECISION: tl.constexpr,
    ):  # fmt: skip
        """One (row block, critic): P[rows, e] = state[rows] @ W_s[e] in fp32, once for all
        gammas (the sharing that replaces tiling the state G x E times)."""
        pid_n = tl.program_id(0)
        e = tl.program_id(1).to(tl.int64)
        cd = S.dtype.element_ty
        rows = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < N
        offs_h = tl.arange(0, H_PAD)
        h_ok = offs_h < H
        p = tl.zeros((BLOCK_N, H_PAD), dtype=tl.float32)
        for k0 in range(0, D_S, BLOCK_DS):
            offs_k = k0 + tl.arange(0, BLOCK_DS)
            k_ok = offs_k < D_S
            s = _tile(S, rows, D_S, offs_k, row_ok, k_ok)
            ws = _tile(WS + e * D_S * H, offs_k, H, offs_h, k_ok, h_ok).to(cd)
            p = tl.dot(s, ws, p, input_precision=PRECISION)
        _store_tile_at(P_OUT, rows, E * H, e * H, offs_h, row_ok, h_ok, p)

    @triton.jit
    def _critic_fwd_kernel(
        A, P, WA, B1, W2, B2, W3, B3, Q,
        N, G, D_A, O, E, H: tl.constexpr,
        NEG_SLOPE: tl.constexpr,
        BLOCK_N: tl.constexpr, D_A_PAD: tl.constexpr,
        H_PAD: tl.constexpr, BLOCK_H: tl.constexpr, O_PAD: tl.constexpr,
        PRECISION: tl.constexpr,
    ):  # fmt: skip
        """One (row block, critic): q[rows, e, :, :] for all gammas. All tensors contiguous.

        P is re-read for every gamma (from L2) rather than kept in registers: holding a
        (rows x hidden) fp32 tile across the gamma loop made ptxas spill (sm_90, 64 x 256)."""
        pid_n = tl.program_id(0)
        e = tl.program_id(1).to(tl.int64)
        cd = A.dtype.element_ty  # compute dtype of the tl.dot operands: the input dtype
        rows = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < N
        offs_h = tl.arange(0, H_PAD)
        h_ok = offs_h < H
        offs_a = tl.arange(0, D_A_PAD)
        a_ok = offs_a < D_A
        wa = _tile(WA + e * D_A * H, offs_a, H, offs_h, a_ok, h_ok).to(cd)
        offs_o = tl.arange(0, O_PAD)
        o_ok = offs_o < O
        b3 = tl.load(B3 + e * O + offs_o, mask=o_ok, other=0.0).to(cd).to(tl.float32)
        for g in range(0, G):
            _, z1 = _layer1(A, P, B1, wa, rows, row_ok, offs_a, a_ok, offs_h, h_ok, e, g, G, D_A,
                             E, H, PRECISION)
            h1 = _leaky(z1, NEG_SLOPE).to(cd)
            q = tl.zeros((BLOCK_N, O_PAD), dtype=tl.float32)
            for j0 in range(0, H_PAD, BLOCK_H):
                offs_j = j0 + tl.arange(0, BLOCK_H)
                j_ok = offs_j < H
                w2 = _tile(W2 + e * H * H, offs_h, H, offs_j, h_ok, j_ok).to(cd)
                b2 = tl.load(B2 + e * H + offs_j, mask=j_ok, other=0.0).to(cd).to(tl.float32)
                h2 = _leaky(tl.dot(h1, w2, input_precision=PRECISION) + b2[None, :], NEG_SLOPE)
                w3 = _tile(W3 + e * H * O, offs_j, O, offs_o, j_ok, o_ok).to(cd)
                q = tl.dot(h2.to(cd), w3, q, input_precision=PRECISION)
            q += b3[None, :]
            _store_tile_at(Q, rows, E * G * O, (e * G + g) * O, offs_o, row_ok, o_ok,
                           q.to(Q.dtype.element_ty))

    @triton.jit
    def _critic_bwd_rows_kernel(
        A, P, WA, B1, W2, B2, W3, DQ,
        DP, DA_PART, DWA_PART, DB1_PART,
        N, G, D_A, O, E, H: tl.constexpr,
        NEG_SLOPE: tl.constexpr,
        BLOCK_N: tl.constexpr, D_A_PAD: tl.constexpr, H_PAD: tl.constexpr,
        BLOCK_H: tl.constexpr, O_PAD: tl.constexpr, PRECISION: tl.constexpr,
    ):  # fmt: skip
        """One (row block, critic): dz1 for every gamma → dP, d_action (per critic), and the
        block's partial sums of dW_a and db1."""
        pid_n = tl.program_id(0)
        e = tl.program_id(1).to(tl.int64)
        cd = A.dtype.element_ty
        rows = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < N
        offs_h = tl.arange(0, H_PAD)
        h_ok = offs_h < H
        offs_a = tl.arange(0, D_A_PAD)
        a_ok = offs_a < D_A
        offs_o = tl.arange(0, O_PAD)
        o_ok = offs_o < O
        wa = _tile(WA + e * D_A * H, offs_a, H, offs_h, a_ok, h_ok).to(cd)
        dp = tl.zeros((BLOCK_N, H_PAD), dtype=tl.float32)
        dwa = tl.zeros((H_PAD, D_A_PAD), dtype=tl.float32)
        for g in range(0, G):
            a, z1 = _layer1(A, P, B1, wa, rows, row_ok, offs_a, a_ok, offs_h, h_ok, e, g, G, D_A,
                             E, H, PRECISION)
            h1 = _leaky(z1, NEG_SLOPE).to(cd)
            # Rows past N load dq = 0, so they contribute nothing below.
            dq = _tile_at(DQ, rows, E * G * O, (e * G + g) * O, offs_o, row_ok, o_ok).to(cd)
            dh1 = tl.zeros((BLOCK_N, H_PAD), dtype=tl.float32)
            for j0 in range(0, H_PAD, BLOCK_H):
                offs_j = j0 + tl.arange(0, BLOCK_H)
                j_ok = offs_j < H
                w2 = _tile(W2 + e * H * H, offs_h, H, offs_j, h_ok, j_ok).to(cd)
                b2 = tl.load(B2 + e * H + offs_j, mask=j_ok, other=0.0).to(cd).to(tl.float32)
                z2 = tl.dot(h1, w2, input_precision=PRECISION) + b2[None, :]
                w3t = tl.load(
                    W3 + e * H * O + offs_j[None, :] * O + offs_o[:, None],
                    mask=j_ok[None, :] & o_ok[:, None],
                    other=0.0,
                ).to(cd)
                dh2 = tl.dot(dq, w3t, input_precision=PRECISION)
                dz2 = tl.where(z2 > 0, dh2, dh2 * NEG_SLOPE).to(cd)
                dh1 = tl.dot(dz2, tl.trans(w2), dh1, input_precision=PRECISION)
            dz1 = tl.where(z1 > 0, dh1, dh1 * NEG_SLOPE)
            tl.store(
                DB1_PART + ((pid_n * E + e) * G + g) * H + offs_h, tl.sum(dz1, axis=0), mask=h_ok
            )
            dp += dz1
            dz1c = dz1.to(cd)
            # dW_a accumulated transposed, (H x d_a) += dz1^T a: as a^T dz1 it made ptxas
            # spill ~1.2 KB (sm_90, bf16, 32 rows / 8 warps); this way 16 B.
            dwa = tl.dot(tl.trans(dz1c), a, dwa, input_precision=PRECISION)
            da = tl.dot(dz1c, tl.trans(wa), input_precision=PRECISION)
            _store_tile_at(DA_PART + e * N * G * D_A, rows, G * D_A, g * D_A, offs_a, row_ok,
                           a_ok, da)
        _store_tile_at(DP, rows, E * H, e * H, offs_h, row_ok, h_ok, dp)
        tl.store(
            DWA_PART + (pid_n * E + e) * D_A * H + offs_a[None, :] * H + offs_h[:, None],
            dwa,
            mask=a_ok[None, :] & h_ok[:, None],
        )

    @triton.jit
    def _critic_bwd_weights_kernel(
        A, P, WA, B1, W2, B2, W3, DQ,
        DW2_PART, DW3_PART, DB2_PART,
        N, G, D_A, O, E, SPLITS, H: tl.constexpr,
        NEG_SLOPE: tl.constexpr,
        BLOCK_N: tl.constexpr, D_A_PAD: tl.constexpr, H_PAD: tl.constexpr,
        BLOCK_H: tl.constexpr, O_PAD: tl.constexpr, PRECISION: tl.constexpr,
    ):  # fmt: skip
        """One (critic, column chunk of W2, split): partial dW2[:, chunk], dW3[chunk, :], db2."""
        e = tl.program_id(0).to(tl.int64)
        pid_j = tl.program_id(1)
        pid_s = tl.program_id(2)
        cd = A.dtype.element_ty
        offs_h = tl.arange(0, H_PAD)
        h_ok = offs_h < H
        offs_a = tl.arange(0, D_A_PAD)
        a_ok = offs_a < D_A
        offs_o = tl.arange(0, O_PAD)
        o_ok = offs_o < O
        offs_j = pid_j * BLOCK_H + tl.arange(0, BLOCK_H)
        j_ok = offs_j < H
        wa = _tile(WA + e * D_A * H, offs_a, H, offs_h, a_ok, h_ok).to(cd)
        w2 = _tile(W2 + e * H * H, offs_h, H, offs_j, h_ok, j_ok).to(cd)
        b2 = tl.load(B2 + e * H + offs_j, mask=j_ok, other=0.0).to(cd).to(tl.float32)
        w3t = tl.load(
            W3 + e * H * O + offs_j[None, :] * O + offs_o[:, None],
            mask=j_ok[None, :] & o_ok[:, None],
            other=0.0,
        ).to(cd)
        acc_w2 = tl.zeros((H_PAD, BLOCK_H), dtype=tl.float32)
        acc_w3 = tl.zeros((BLOCK_H, O_PAD), dtype=tl.float32)
        acc_b2 = tl.zeros((BLOCK_H,), dtype=tl.float32)
        num_blocks = tl.cdiv(N, BLOCK_N)
        for blk in range(pid_s, num_blocks, SPLITS):
            rows = (blk * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)  # N < 2**31
            row_ok = rows < N
            for g in range(0, G):
                _, z1 = _layer1(A, P, B1, wa, rows, row_ok, offs_a, a_ok, offs_h, h_ok, e, g, G,
                                D_A, E, H, PRECISION)
                h1 = _leaky(z1, NEG_SLOPE).to(cd)
                z2 = tl.dot(h1, w2, input_precision=PRECISION) + b2[None, :]
                h2 = _leaky(z2, NEG_SLOPE).to(cd)
                dq = _tile_at(DQ, rows, E * G * O, (e * G + g) * O, offs_o, row_ok, o_ok).to(cd)
                dh2 = tl.dot(dq, w3t, input_precision=PRECISION)
                dz2 = tl.where(z2 > 0, dh2, dh2 * NEG_SLOPE)
                acc_b2 += tl.sum(dz2, axis=0)
                acc_w2 = tl.dot(tl.trans(h1), dz2.to(cd), acc_w2, input_precision=PRECISION)
                acc_w3 = tl.dot(tl.trans(h2), dq, acc_w3, input_precision=PRECISION)
        base = pid_s * E + e
        _store_tile(DW2_PART + base * H * H, offs_h, H, offs_j, h_ok, j_ok, acc_w2)
        _store_tile(DW3_PART + base * H * O, offs_j, O, offs_o, j_ok, o_ok, acc_w3)
        tl.store(DB2_PART + base * H + offs_j, acc_b2, mask=j_ok)

    #: The Triton kernels by phase, for the static sm_90 register/spill check
    #: (``amago_fast.bench.critic.run_ptxas``).
    TRITON_KERNELS = {
        "state_proj": _critic_state_proj_kernel, "fwd": _critic_fwd_kernel,
        "bwd_rows": _critic_bwd_rows_kernel, "bwd_weights": _critic_bwd_weights_kernel,
    }


class _Config(NamedTuple):
    block_n_proj: int
    block_n_fwd: int
    block_n_rows: int
    block_n_weights: int
    block_ds: int
    d_a_pad: int
    h_pad: int
    block_h: int
    o_pad: int
    precision: str
    num_warps: int
    num_stages_fwd: int
    num_stages_bwd: int


def _config(state: torch.Tensor, action: torch.Tensor, params: CriticParams) -> _Config:
    """Tile sizes. Chosen by compiling for sm_90 (H100) with ptxas -v on a machine without a GPU
    (hidden 256, bf16, d_a <= 16, out_dim <= 16), not by timing: rows per program such that the
    (rows x hidden) fp32 tiles fit in registers. Spills at hidden 256: state projection 64 rows
    / 8 warps: none; forward 32 / 8 / 2 stages: none (64 rows: 316 B); weight backward 32 / 8:
    none; row backward 32 / 8 / 1 stage: 16 B. Larger hidden sizes halve the rows. Hidden is a
    compile-time constant so that the weight-tile masks fold away when hidden is a power of two
    (runtime masks on 256 x 64 tiles cost ~2 KB of spills)."""
    d_s = state.shape[1]
    d_a = action.shape[2]
    h = params.w2.shape[1]
    o = params.w3.shape[2]
    h_pad = pow2_at_least_16(h)
    # fp32 inputs: TF32 tensor cores only where PyTorch's own matmuls may use them too.
    precision = dot_precision(state.dtype, follow_matmul_setting=True)
    if INTERPRET:  # tiny blocks: many programs exercise the row masks and split loops
        rows = (16, 16, 16, 16)
    elif h_pad <= 256:
        rows = (64, 32, 32, 32)
    else:
        rows = (32, 16, 16, 16)
    return _Config(
        *rows,
        block_ds=min(64, pow2_at_least_16(d_s)),
        d_a_pad=pow2_at_least_16(d_a),
        h_pad=h_pad,
        block_h=min(h_pad, 64),
        o_pad=pow2_at_least_16(o),
        precision=precision,
        num_warps=4 if INTERPRET else 8,
        num_stages_fwd=2,
        num_stages_bwd=1,
    )


def _triton_supported(action: torch.Tensor, params: CriticParams) -> str | None:
    """Why the Triton path cannot take these shapes/dtypes (None if it can)."""
    if triton is None:
        return "triton is not installed"
    h = params.w2.shape[1]
    if h > _MAX_HIDDEN:
        return f"hidden_dim {h} > {_MAX_HIDDEN}"
    if action.shape[2] > _MAX_ACTION_DIM:
        return f"action dim {action.shape[2]} > {_MAX_ACTION_DIM}"
    if params.w3.shape[2] > _MAX_OUT_DIM:
        return f"out_dim {params.w3.shape[2]} > {_MAX_OUT_DIM}"
    if action.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return f"dtype {action.dtype} (fp32, fp16 or bf16 only)"
    return None


def _critic_forward_launch(
    state: torch.Tensor,
    action: torch.Tensor,
    params: CriticParams,
    negative_slope: float,
    save_p: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Launch the forward kernel: ``q (N, E, G, O)`` in the input dtype, and P (N, E, H) fp32."""
    cfg = _config(state, action, params)
    n, d_s = state.shape
    _, g, d_a = action.shape
    e, _, h = params.w_state.shape
    o = params.w3.shape[2]
    q = torch.empty((n, e, g, o), dtype=state.dtype, device=state.device)
    p = torch.empty((n, e, h), dtype=torch.float32, device=state.device)
    _critic_state_proj_kernel[(triton.cdiv(n, cfg.block_n_proj), e)](
        state, params.w_state, p, n, d_s, e, H=h,
        BLOCK_N=cfg.block_n_proj, BLOCK_DS=cfg.block_ds, H_PAD=cfg.h_pad,
        PRECISION=cfg.precision, num_warps=cfg.num_warps,
    )  # fmt: skip
    _critic_fwd_kernel[(triton.cdiv(n, cfg.block_n_fwd), e)](
        pointer_or_stand_in(action), p, pointer_or_stand_in(params.w_action), *params[2:], q,
        n, g, d_a, o, e, H=h,
        NEG_SLOPE=negative_slope,
        BLOCK_N=cfg.block_n_fwd, D_A_PAD=cfg.d_a_pad,
        H_PAD=cfg.h_pad, BLOCK_H=cfg.block_h, O_PAD=cfg.o_pad,
        PRECISION=cfg.precision, num_warps=cfg.num_warps, num_stages=cfg.num_stages_fwd,
    )  # fmt: skip
    return q, (p if save_p else None)


def _critic_backward_launch(
    dq: torch.Tensor,
    state: torch.Tensor,
    action: torch.Tensor,
    params: CriticParams,
    p: torch.Tensor,
    negative_slope: float,
    needs: tuple[bool, ...],
) -> tuple[torch.Tensor | None, ...]:
    """Gradients for (state, action, *params); ``None`` where ``needs`` is False."""
    cfg = _config(state, action, params)
    n, d_s = state.shape
    _, g, d_a = action.shape
    e, _, h = params.w_state.shape
    o = params.w3.shape[2]
    dev = state.device
    f32 = torch.float32
    num_blocks = triton.cdiv(n, cfg.block_n_rows)
    need_state, need_action, need_ws, need_wa, need_b1, need_w2, need_b2, need_w3, need_b3 = needs
    grads: list[torch.Tensor | None] = [None] * 9
    a_ptr, wa_ptr = pointer_or_stand_in(action), pointer_or_stand_in(params.w_action)
    consts = dict(
        H=h, NEG_SLOPE=negative_slope, D_A_PAD=cfg.d_a_pad, H_PAD=cfg.h_pad,
        BLOCK_H=cfg.block_h, O_PAD=cfg.o_pad, PRECISION=cfg.precision, num_warps=cfg.num_warps,
        num_stages=cfg.num_stages_bwd,
    )  # fmt: skip
    if need_state or need_action or need_ws or need_wa or need_b1:
        dp = torch.empty((n, e, h), dtype=f32, device=dev)
        da_part = torch.empty((e, n, g, d_a), dtype=f32, device=dev)
        dwa_part = torch.empty((num_blocks, e, d_a, h), dtype=f32, device=dev)
        db1_part = torch.empty((num_blocks, e, g, h), dtype=f32, device=dev)
        _critic_bwd_rows_kernel[(num_blocks, e)](
            a_ptr, p, wa_ptr, params.b1, params.w2, params.b2, params.w3, dq, dp,
            pointer_or_stand_in(da_part), pointer_or_stand_in(dwa_part), db1_part,
            n, g, d_a, o, e, BLOCK_N=cfg.block_n_rows, **consts,
        )  # fmt: skip
        dp_flat = dp.view(n, e * h)
        if need_state:  # sum over critics happens inside the GEMM's K dimension
            ws_t = params.w_state.to(f32).transpose(1, 2).reshape(e * h, d_s)
            grads[0] = (dp_flat @ ws_t).to(state.dtype)
        if need_action:
            grads[1] = da_part.sum(0).to(action.dtype)
        if need_ws:
            dws = state.to(f32).t() @ dp_flat  # (d_s, E*H)
            grads[2] = dws.view(d_s, e, h).permute(1, 0, 2).to(params.w_state.dtype)
        if need_wa:
            grads[3] = dwa_part.sum(0).to(params.w_action.dtype)
        if need_b1:
            grads[4] = db1_part.sum(0).to(params.b1.dtype)
    if need_w2 or need_b2 or need_w3:
        num_chunks = triton.cdiv(cfg.h_pad, cfg.block_h)
        num_row_blocks = triton.cdiv(n, cfg.block_n_weights)
        # Deterministic split count (see split_count); up to 3 splits off the GPU.
        splits = split_count(dev, e * num_chunks, num_row_blocks, dev.type == "cuda", 3)
        dw2_part = torch.empty((splits, e, h, h), dtype=f32, device=dev)
        dw3_part = torch.empty((splits, e, h, o), dtype=f32, device=dev)
        db2_part = torch.empty((splits, e, h), dtype=f32, device=dev)
        _critic_bwd_weights_kernel[(e, num_chunks, splits)](
            a_ptr, p, wa_ptr, params.b1, params.w2, params.b2, params.w3, dq,
            dw2_part, dw3_part, db2_part,
            n, g, d_a, o, e, splits, BLOCK_N=cfg.block_n_weights, **consts,
        )  # fmt: skip
        if need_w2:
            grads[5] = dw2_part.sum(0).to(params.w2.dtype)
        if need_b2:
            grads[6] = db2_part.sum(0).to(params.b2.dtype)
        if need_w3:
            grads[7] = dw3_part.sum(0).to(params.w3.dtype)
    if need_b3:
        grads[8] = dq.to(f32).sum(dim=(0, 2)).to(params.b3.dtype)
    return tuple(grads)


class CriticEnsembleFunction(torch.autograd.Function):
    """Fused forward/backward of the critic ensemble (Triton). Inputs must be contiguous and
    validated (see :func:`critic_ensemble`); parameters may be in any float dtype (they are
    converted to the input dtype inside the kernels, gradients come back in their own dtype)."""

    @staticmethod
    def forward(ctx, state, action, w_state, w_action, b1, w2, b2, w3, b3, negative_slope):
        params = CriticParams(w_state, w_action, b1, w2, b2, w3, b3)
        needs_grad = any(ctx.needs_input_grad[:9])
        with launch_device(state):
            q, p = _critic_forward_launch(state, action, params, negative_slope,
                                          save_p=needs_grad)
        if needs_grad:
            ctx.save_for_backward(state, action, *params, p)
        ctx.negative_slope = negative_slope
        return q

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dq):
        state, action, *params, p = ctx.saved_tensors
        with torch.autocast(device_type=state.device.type, enabled=False), launch_device(state):
            grads = _critic_backward_launch(
                dq.contiguous(), state, action, CriticParams(*params), p,
                ctx.negative_slope, tuple(ctx.needs_input_grad[:9]),
            )  # fmt: skip
        return (*grads, None)


def critic_ensemble(
    state: torch.Tensor,
    action: torch.Tensor,
    params: CriticParams,
    negative_slope: float = 0.01,
    backend: str = "auto",
) -> torch.Tensor:
    """E critics × G gammas: ``q (N, E, G, O)`` for ``state (N, d_s)``, ``action (N, G, d_a)``.

    ``backend``: ``"auto"`` (the reference on every device: on an H100 it beat the fused
    kernels, see the module docstring), ``"triton"`` (the fused kernels; on CPU only under
    ``TRITON_INTERPRET=1``; shapes beyond their limits raise), or ``"reference"``. Under
    autocast, fp32 state/action are cast to the autocast dtype first (what the reference's
    matmuls would do). Non-finite inputs are not checked here (that would cost a device sync per
    call); they propagate to q.
    """
    if not isinstance(params, CriticParams):
        if isinstance(params, (tuple, list)) and len(params) == 7:
            params = CriticParams(*params)
        else:
            raise TypeError("params must be a CriticParams (w_state, w_action, b1, w2, b2, w3, b3)")
    _check_inputs(state, action, params)
    if not (0.0 <= float(negative_slope) < 1.0):
        raise ValueError(f"negative_slope must be in [0, 1), got {negative_slope}")
    chosen = resolve_backend(backend, [state, action, *params], "critic_ensemble")
    if backend == "auto":
        chosen = "reference"  # faster on an H100 too, see the module docstring
    if chosen == "triton":
        why_not = _triton_supported(action, params)
        if why_not is not None:
            if backend == "triton":
                raise ValueError(f"critic_ensemble: the Triton path does not support {why_not}")
            chosen = "reference"
    if chosen == "reference":
        return critic_ensemble_reference(state, action, params, negative_slope)
    device_type = state.device.type
    if torch.is_autocast_enabled(device_type) and state.dtype == torch.float32:
        dtype = torch.get_autocast_dtype(device_type)
        state, action = state.to(dtype), action.to(dtype)
    return CriticEnsembleFunction.apply(
        state.contiguous(), action.contiguous(), *(t.contiguous() for t in params),
        float(negative_slope),
    )  # fmt: skip
