"""Exponential moving average of target-network parameters: ``target += tau * (online - target)``.

The learner updates every target parameter after every gradient step. A Python loop over ~20-50
parameter tensors costs one launch (on GPU) and one dispatcher round-trip per tensor;
``torch._foreach_lerp_`` does all tensors in one call (on CUDA: multi-tensor-apply, a handful of
launches for the whole model). ``ema_update_reference`` is the per-parameter loop, the oracle.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

__all__ = ["ema_update_", "ema_update_reference", "EMA"]


def _as_tensor_list(params: Iterable[torch.Tensor] | torch.nn.Module, what: str) -> list:
    if isinstance(params, torch.nn.Module):
        params = params.parameters()
    if isinstance(params, torch.Tensor):
        raise TypeError(f"{what} must be an iterable of tensors (or an nn.Module), not one tensor")
    out = list(params)
    for i, t in enumerate(out):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{what}[{i}] is a {type(t).__name__}, not a torch.Tensor")
    return out


def _validate(
    target_params: Iterable[torch.Tensor] | torch.nn.Module,
    online_params: Iterable[torch.Tensor] | torch.nn.Module,
    tau: float,
) -> tuple[list[torch.Tensor], list[torch.Tensor], float]:
    """Check everything before anything is written, so a rejected call modifies nothing."""
    targets = _as_tensor_list(target_params, "target_params")
    onlines = _as_tensor_list(online_params, "online_params")
    if isinstance(tau, torch.Tensor):
        if tau.numel() != 1:
            raise ValueError(f"tau must be a scalar, got a tensor of shape {tuple(tau.shape)}")
        tau = float(tau.item())
    if isinstance(tau, bool) or not isinstance(tau, (int, float)):
        raise TypeError(f"tau must be a float, got {type(tau).__name__}")
    tau = float(tau)
    if not math.isfinite(tau) or not (0.0 < tau <= 1.0):
        raise ValueError(f"tau must satisfy 0 < tau <= 1, got {tau}")
    if len(targets) != len(onlines):
        raise ValueError(
            f"target has {len(targets)} tensors but online has {len(onlines)}: not the same network"
        )
    for i, (t, o) in enumerate(zip(targets, onlines)):
        if t.shape != o.shape:
            raise ValueError(
                f"tensor {i}: target shape {tuple(t.shape)} != online {tuple(o.shape)}"
            )
        if t.dtype != o.dtype:
            raise TypeError(f"tensor {i}: target dtype {t.dtype} != online dtype {o.dtype}")
        if t.device != o.device:
            raise ValueError(f"tensor {i}: target on {t.device} but online on {o.device}")
        if not t.is_floating_point():
            raise TypeError(f"tensor {i}: EMA needs floating-point tensors, got {t.dtype}")
        if t is o:
            raise ValueError(f"tensor {i}: target and online are the same tensor object")
    return targets, onlines, tau


@torch.no_grad()
def ema_update_reference(
    target_params: Iterable[torch.Tensor] | torch.nn.Module,
    online_params: Iterable[torch.Tensor] | torch.nn.Module,
    tau: float,
) -> None:
    """Per-parameter loop: ``t.mul_(1 - tau).add_(o, alpha=tau)`` for every pair (the oracle)."""
    targets, onlines, tau = _validate(target_params, online_params, tau)
    for t, o in zip(targets, onlines):
        t.mul_(1.0 - tau).add_(o, alpha=tau)


@torch.no_grad()
def ema_update_(
    target_params: Iterable[torch.Tensor] | torch.nn.Module,
    online_params: Iterable[torch.Tensor] | torch.nn.Module,
    tau: float,
) -> None:
    """In place: ``target = target + tau * (online - target)`` for all tensors in one call.

    Accepts two iterables of tensors (or two modules; their ``parameters()`` are used) with the
    same number, shapes, dtypes and devices, and ``0 < tau <= 1``; anything else raises before
    any tensor is written. Uses ``torch._foreach_lerp_`` (CPU and CUDA); ``tau = 1`` is an
    exact copy.
    """
    targets, onlines, tau = _validate(target_params, online_params, tau)
    if not targets:
        return
    if tau == 1.0:
        torch._foreach_copy_(targets, onlines)
        return
    torch._foreach_lerp_(targets, onlines, tau)


class EMA:
    """Holds the (target, online) tensor lists of two modules and updates them with ``tau``.

    Resolves the parameter lists once (the check that both networks match runs here), so the
    per-step call is one ``_foreach_lerp_``.
    """

    def __init__(self, target: torch.nn.Module, online: torch.nn.Module, tau: float) -> None:
        targets, onlines, tau = _validate(target, online, tau)
        self.targets, self.onlines, self.tau = targets, onlines, tau

    def update(self) -> None:
        """One EMA step of all target parameters toward the online ones."""
        ema_update_(self.targets, self.onlines, self.tau)
