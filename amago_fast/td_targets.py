"""n-step TD targets for every transition of every window at once (pure PyTorch): the critic's
regression targets in the AMAGO loss (amago_fast.learner), tested against a per-transition loop
oracle."""

from __future__ import annotations

import torch

__all__ = ["nstep_targets"]


def _window_shift(x: torch.Tensor, start: int, length: int) -> torch.Tensor:
    """Rows [start, start+length) along dim 1, zero/False-padded past the window's end."""
    part = x[:, start:start + length]
    missing = length - part.shape[1]
    if missing > 0:
        pad = torch.zeros((x.shape[0], missing, *x.shape[2:]), dtype=x.dtype, device=x.device)
        part = torch.cat([part, pad], dim=1)
    return part


def nstep_targets(
    reward: torch.Tensor,
    terminated: torch.Tensor,
    mask: torch.Tensor,
    next_value: torch.Tensor,
    gammas: torch.Tensor,
    n_step: int,
    reward_multiplier: float,
) -> torch.Tensor:
    """n-step TD targets for every transition of every window (pure PyTorch).

    Args:
        reward, terminated, mask: (B, L+1) row fields; transition t uses row t+1.
        next_value: (B, L+1, G) bootstrap value V'(row j) (row 0 is never used).
        gammas: (G,).
    Returns:
        (B, L, G) targets; entries of invalid transitions are meaningless (mask them).
    A transition's sum stops early at a terminal row (no bootstrap) or at the last row that
    exists (bootstrap from it: a truncated rollout's final row holds its last observation).
    """
    B, L1 = mask.shape
    L = L1 - 1
    G = gammas.numel()
    y = torch.zeros(B, L, G, dtype=next_value.dtype, device=next_value.device)
    disc = torch.ones(B, L, G, dtype=next_value.dtype, device=next_value.device)
    alive = torch.ones(B, L, dtype=torch.bool, device=mask.device)
    for i in range(n_step):
        r = _window_shift(reward, i + 1, L).to(y.dtype)
        term = _window_shift(terminated, i + 1, L)
        valid = _window_shift(mask, i + 1, L)
        next_exists = _window_shift(mask, i + 2, L)
        v = _window_shift(next_value, i + 1, L)
        step = alive & valid
        y = y + (step.unsqueeze(-1) * disc) * (reward_multiplier * r).unsqueeze(-1)
        disc = torch.where(step.unsqueeze(-1), disc * gammas, disc)
        stop = step & (term | ~next_exists | (i == n_step - 1))
        y = y + (stop & ~term).unsqueeze(-1) * disc * v
        alive = step & ~stop
    return y
