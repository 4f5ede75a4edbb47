"""Fused critic ensemble × discount factors, and the TD-target reductions over the ensemble.

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
training runs) and the Triton path ``_critic_fwd_kernel`` / ``_critic_bwd_rows_kernel`` /
``_critic_bwd_weights_kernel`` → launchers → ``CriticEnsembleFunction`` → functional
``critic_ensemble`` + ``CriticEnsemble`` module. ``td_target_reduce`` has the same shape.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

__all__ = [
    "CriticParams",
    "CriticEnsemble",
    "critic_ensemble",
    "critic_ensemble_reference",
    "critic_ensemble_tiled_reference",
    "td_target_reduce",
    "td_target_reduce_reference",
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
    own dtype). Layout for speed on CPU: activations live as ``(E, N·G, H)`` so layers 2 and 3 are
    one batched GEMM each (``baddbmm``), and the state projection is one GEMM of
    ``(N, d_s) x (E, d_s, H)`` broadcast over critics, added to all G gammas by broadcasting.
    """
    _check_inputs(state, action, params)
    dtype = state.dtype
    ws, wa, b1, w2, b2, w3, b3 = (p.to(dtype) for p in params)
    n, g, d_a = action.shape
    e, _, h = ws.shape
    p_state = torch.matmul(state, ws)  # (E, N, H): shared by every gamma
    a_proj = torch.matmul(action.reshape(n * g, d_a), wa).view(e, n, g, h)  # (E, N, G, H)
    z1 = a_proj + p_state.unsqueeze(2) + b1.unsqueeze(1)
    h1 = torch.nn.functional.leaky_relu(z1, negative_slope).view(e, n * g, h)
    h2 = torch.nn.functional.leaky_relu(torch.baddbmm(b2.unsqueeze(1), h1, w2), negative_slope)
    q = torch.baddbmm(b3.unsqueeze(1), h2, w3)  # (E, N·G, O)
    return q.view(e, n, g, -1).permute(1, 0, 2, 3)


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


_BACKENDS = ("auto", "reference", "triton")


def critic_ensemble(
    state: torch.Tensor,
    action: torch.Tensor,
    params: CriticParams,
    negative_slope: float = 0.01,
    backend: str = "auto",
) -> torch.Tensor:
    """E critics × G gammas: ``q (N, E, G, O)``.

    ``backend``: ``"reference"`` (pure PyTorch), ``"triton"`` (the fused kernels) or ``"auto"``.
    """
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    if backend == "triton":
        raise NotImplementedError("the Triton critic path is not in this commit yet")
    return critic_ensemble_reference(state, action, params, negative_slope)


class CriticEnsemble(nn.Module):
    """E critics over G discount factors with a state projection shared across gammas.

    Initialization (per critic, documented because it matters for early TD targets):
    ``w_state``, ``w_action``, ``b1`` ~ U(±1/sqrt(d_s + d_a + G)) — PyTorch's ``nn.Linear``
    default for the equivalent concatenated ``[state, action, onehot(gamma)]`` input;
    ``w2``, ``b2`` ~ U(±1/sqrt(H)); the output layer ``w3`` ~ U(±3e-3), ``b3 = 0`` so that
    initial Q-values (or two-hot logits: a near-uniform distribution over bins) are small and
    do not dominate the first TD targets.
    """

    def __init__(
        self,
        state_dim: int,
        action_dim: int,
        num_gammas: int,
        num_critics: int = 4,
        hidden_dim: int = 256,
        out_dim: int = 1,
        negative_slope: float = 0.01,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        for name, v in (
            ("state_dim", state_dim),
            ("action_dim", action_dim),
            ("num_gammas", num_gammas),
            ("num_critics", num_critics),
            ("hidden_dim", hidden_dim),
            ("out_dim", out_dim),
        ):
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not (0.0 <= negative_slope < 1.0):
            raise ValueError(f"negative_slope must be in [0, 1), got {negative_slope}")
        if backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
        self.state_dim, self.action_dim = state_dim, action_dim
        self.num_gammas, self.num_critics = num_gammas, num_critics
        self.hidden_dim, self.out_dim = hidden_dim, out_dim
        self.negative_slope, self.backend = negative_slope, backend
        e, h = num_critics, hidden_dim
        self.w_state = nn.Parameter(torch.empty(e, state_dim, h))
        self.w_action = nn.Parameter(torch.empty(e, action_dim, h))
        self.b1 = nn.Parameter(torch.empty(e, num_gammas, h))
        self.w2 = nn.Parameter(torch.empty(e, h, h))
        self.b2 = nn.Parameter(torch.empty(e, h))
        self.w3 = nn.Parameter(torch.empty(e, h, out_dim))
        self.b3 = nn.Parameter(torch.empty(e, out_dim))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Re-draw all parameters with the documented initialization."""
        bound1 = 1.0 / math.sqrt(self.state_dim + self.action_dim + self.num_gammas)
        for p in (self.w_state, self.w_action, self.b1):
            p.uniform_(-bound1, bound1)
        bound2 = 1.0 / math.sqrt(self.hidden_dim)
        self.w2.uniform_(-bound2, bound2)
        self.b2.uniform_(-bound2, bound2)
        self.w3.uniform_(-3e-3, 3e-3)
        self.b3.zero_()

    @property
    def params(self) -> CriticParams:
        """The parameters as a :class:`CriticParams` (live, autograd-connected)."""
        return CriticParams(
            self.w_state, self.w_action, self.b1, self.w2, self.b2, self.w3, self.b3
        )

    def forward(
        self, state: torch.Tensor, action: torch.Tensor, detach_params: bool = False
    ) -> torch.Tensor:
        """``q (N, E, G, out_dim)`` for ``state (N, d_s)`` and ``action (N, G, d_a)``.

        ``detach_params=True`` evaluates the same function with the parameters cut from autograd:
        gradients reach ``state`` and ``action`` only (the actor's DPG term through the critic).
        """
        params = self.params.detached() if detach_params else self.params
        return critic_ensemble(state, action, params, self.negative_slope, self.backend)

    def extra_repr(self) -> str:
        return (
            f"state_dim={self.state_dim}, action_dim={self.action_dim}, "
            f"num_gammas={self.num_gammas}, num_critics={self.num_critics}, "
            f"hidden_dim={self.hidden_dim}, out_dim={self.out_dim}"
        )


# ----------------------------------------------------------------------------------------------
# TD-target reductions over the ensemble
# ----------------------------------------------------------------------------------------------


def _draw_subset(num_critics: int, subset_size: int, generator: torch.Generator | None):
    """Sorted critic indices of one REDQ subset, drawn once per call on the generator's device."""
    if not isinstance(subset_size, int) or isinstance(subset_size, bool):
        raise TypeError(f"subset_size must be an int, got {type(subset_size).__name__}")
    if not 1 <= subset_size <= num_critics:
        raise ValueError(f"subset_size must be in [1, {num_critics}] (E), got {subset_size}")
    device = generator.device if generator is not None else torch.device("cpu")
    perm = torch.randperm(num_critics, generator=generator, device=device)
    return perm[:subset_size].sort().values


def _check_q_next(q_next: torch.Tensor) -> None:
    if not isinstance(q_next, torch.Tensor) or not q_next.is_floating_point():
        raise TypeError("q_next must be a floating-point torch.Tensor")
    if q_next.dim() != 4 or min(q_next.shape) == 0:
        raise ValueError(
            f"q_next must be a non-empty (N, E, G, O) tensor, got {tuple(q_next.shape)}"
        )


def td_target_reduce_reference(
    q_next: torch.Tensor, subset_size: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(min over a random subset of subset_size critics, mean over all E)``, each ``(N, G, O)``.

    The subset (REDQ-style, e.g. 2 of 4) is drawn once per call from ``generator`` (same generator
    state → same subset). Differentiable: the min's gradient goes to the chosen critic.
    """
    _check_q_next(q_next)
    subset = _draw_subset(q_next.shape[1], subset_size, generator).to(q_next.device)
    q_min = q_next.index_select(1, subset).min(dim=1).values
    q_mean = q_next.mean(dim=1)
    return q_min, q_mean


def td_target_reduce(
    q_next: torch.Tensor,
    subset_size: int,
    generator: torch.Generator | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused TD-target reductions; see :func:`td_target_reduce_reference` for the contract."""
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    if backend == "triton":
        raise NotImplementedError("the Triton td_target_reduce path is not in this commit yet")
    return td_target_reduce_reference(q_next, subset_size, generator)
