"""PopArt value normalisation, one set of statistics per discount factor.

van Hasselt et al. 2016, "Learning values across many orders of magnitude": the critic predicts a
normalised value ``q_n``; the value is ``σ·q_n + μ``. Critic targets are normalised with the
running (μ, σ); when the statistics move, the affine output layer (w, b) is rescaled so the
unnormalised outputs are preserved exactly ("Preserving Outputs Precisely").
"""

from __future__ import annotations

import torch
from torch import nn


class PopArt(nn.Module):
    """Per-gamma affine output layer + running target statistics.

    Args:
        num_gammas: number of discount factors G.
        beta: EMA step of the first/second moments of the targets.
        init_nu: initial second moment (σ starts at sqrt(init_nu)).
        sigma_min, sigma_max: clamp on σ for numerical safety.
        enabled: when False this is the identity (μ=0, σ=1, no updates, w=1, b=0 frozen).
    """

    def __init__(
        self,
        num_gammas: int,
        beta: float = 5e-4,
        init_nu: float = 100.0,
        sigma_min: float = 1e-4,
        sigma_max: float = 1e6,
        enabled: bool = True,
    ) -> None:
        super().__init__()
        self.enabled, self.beta = enabled, beta
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.w = nn.Parameter(torch.ones(num_gammas), requires_grad=enabled)
        self.b = nn.Parameter(torch.zeros(num_gammas), requires_grad=enabled)
        self.register_buffer("mu", torch.zeros(num_gammas))
        nu = init_nu if enabled else 1.0
        self.register_buffer("nu", torch.full((num_gammas,), float(nu)))

    @property
    def sigma(self) -> torch.Tensor:
        var = (self.nu - self.mu**2).clamp_min(0.0)
        return torch.sqrt(var).clamp(self.sigma_min, self.sigma_max)

    def normalized(self, raw: torch.Tensor) -> torch.Tensor:
        """Critic output (…, G) → normalised value (…, G) through the affine layer."""
        return self.w * raw + self.b

    def denormalize(self, value_n: torch.Tensor) -> torch.Tensor:
        return value_n * self.sigma + self.mu

    def normalize_target(self, target: torch.Tensor) -> torch.Tensor:
        return (target - self.mu) / self.sigma

    @torch.no_grad()
    def update(self, target_mean: torch.Tensor, target_sq_mean: torch.Tensor) -> None:
        """Move μ, ν toward the batch moments (G,) of the TD targets; rescale w, b to keep the
        unnormalised outputs unchanged. No-op when disabled."""
        if not self.enabled:
            return
        if not (torch.isfinite(target_mean).all() and torch.isfinite(target_sq_mean).all()):
            raise ValueError("PopArt.update: non-finite target statistics")
        old_mu, old_sigma = self.mu.clone(), self.sigma
        self.mu.mul_(1 - self.beta).add_(self.beta * target_mean.to(self.mu.dtype))
        self.nu.mul_(1 - self.beta).add_(self.beta * target_sq_mean.to(self.nu.dtype))
        new_sigma = self.sigma
        self.w.mul_(old_sigma / new_sigma)
        self.b.copy_((old_sigma * self.b + old_mu - self.mu) / new_sigma)

    def stats(self) -> dict[str, float]:
        """μ and σ for every gamma, for logging."""
        out = {}
        for g, (m, s) in enumerate(zip(self.mu.tolist(), self.sigma.tolist())):
            out[f"popart/mu_g{g}"] = m
            out[f"popart/sigma_g{g}"] = s
        return out
