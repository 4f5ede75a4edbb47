"""PopArt value normalisation, one set of statistics per discount factor.

van Hasselt et al. 2016, "Learning values across many orders of magnitude": the critic predicts a
normalised value ``q_n``; the value is ``σ·q_n + μ``. Critic targets are normalised with the
running (μ, σ); when the statistics move, the affine output layer (w, b) is rescaled so the
unnormalised outputs are preserved exactly ("Preserving Outputs Precisely").

The moment EMAs are bias-corrected as in the paper's adaptive step size (its section on
reducing the reliance on initialisation, which the public AMAGO reference also uses): update
k (1-based) moves with ``β_k = β / (1 - (1 - β)^(k+1))``, so after k updates each moment is the
(1-β)-discounted *average* of {initial value, batch 1, …, batch k} — the initial value counts
as one observation instead of dominating for ~1/β updates (2,000 at the default β = 5e-4).
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
        bias_correction: adaptive step ``β_k`` (module docstring); False: constant β.
    """

    def __init__(
        self,
        num_gammas: int,
        beta: float = 5e-4,
        init_nu: float = 100.0,
        sigma_min: float = 1e-4,
        sigma_max: float = 1e6,
        enabled: bool = True,
        bias_correction: bool = True,
    ) -> None:
        super().__init__()
        if not 0.0 < beta <= 1.0:
            raise ValueError(f"PopArt: beta must be in (0, 1], got {beta}")
        self.enabled, self.beta, self.bias_correction = enabled, beta, bias_correction
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.w = nn.Parameter(torch.ones(num_gammas), requires_grad=enabled)
        self.b = nn.Parameter(torch.zeros(num_gammas), requires_grad=enabled)
        self.register_buffer("mu", torch.zeros(num_gammas))
        nu = init_nu if enabled else 1.0
        self.register_buffer("nu", torch.full((num_gammas,), float(nu)))
        # Updates applied so far (float64 scalar: exact for any realistic count; saved with the
        # state dict so a resumed run continues the same step-size schedule).
        self.register_buffer("updates", torch.zeros((), dtype=torch.float64))

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

    def step_size(self) -> float:
        """The EMA step the next :meth:`update` uses: ``β / (1 - (1-β)^(k+1))`` for update k
        (1-based) with bias correction (→ β as k grows), else β."""
        if not self.bias_correction:
            return self.beta
        k = float(self.updates) + 1.0
        return self.beta / (1.0 - (1.0 - self.beta) ** (k + 1.0))

    @torch.no_grad()
    def update(self, target_mean: torch.Tensor, target_sq_mean: torch.Tensor) -> None:
        """Move μ, ν toward the batch moments (G,) of the TD targets; rescale w, b to keep the
        unnormalised outputs unchanged. No-op when disabled."""
        if not self.enabled:
            return
        if not (torch.isfinite(target_mean).all() and torch.isfinite(target_sq_mean).all()):
            raise ValueError("PopArt.update: non-finite target statistics")
        old_mu, old_sigma = self.mu.clone(), self.sigma
        beta = self.step_size()
        self.mu.mul_(1 - beta).add_(beta * target_mean.to(self.mu.dtype))
        self.nu.mul_(1 - beta).add_(beta * target_sq_mean.to(self.nu.dtype))
        self.updates.add_(1.0)
        new_sigma = self.sigma
        self.w.mul_(old_sigma / new_sigma)
        self.b.copy_((old_sigma * self.b + old_mu - self.mu) / new_sigma)

    @torch.no_grad()
    def update_where(self, target_mean: torch.Tensor, target_sq_mean: torch.Tensor,
                     apply: torch.Tensor) -> None:
        """:meth:`update` without reading a tensor on the host, applied where ``apply`` (a
        0-dim bool tensor) is True and an exact no-op where it is False. Why: a learner step on
        a GPU that branches on "were the statistics finite?" waits for the whole forward and
        backward to finish before it can queue the next kernel; here the caller folds
        finiteness into ``apply`` and nothing leaves the device. No-op when disabled."""
        if not self.enabled:
            return
        k = self.updates + 1.0
        if self.bias_correction:
            beta = self.beta / (1.0 - (1.0 - self.beta) ** (k + 1.0))
        else:
            beta = torch.full_like(k, self.beta)
        # 1 - β rounded from float64, as update()'s Python-float arithmetic does.
        keep, beta = (1.0 - beta).to(self.mu.dtype), beta.to(self.mu.dtype)
        old_mu, old_sigma = self.mu.clone(), self.sigma
        mu = self.mu * keep + beta * target_mean.to(self.mu.dtype)
        nu = self.nu * keep + beta * target_sq_mean.to(self.nu.dtype)
        self.mu.copy_(torch.where(apply, mu, self.mu))
        self.nu.copy_(torch.where(apply, nu, self.nu))
        self.updates.add_(apply.to(self.updates.dtype))
        new_sigma = self.sigma
        w = self.w * (old_sigma / new_sigma)
        b = (old_sigma * self.b + old_mu - self.mu) / new_sigma
        self.w.copy_(torch.where(apply, w, self.w))
        self.b.copy_(torch.where(apply, b, self.b))

    def stats(self) -> dict[str, float]:
        """μ and σ for every gamma, for logging."""
        out = {}
        for g, (m, s) in enumerate(zip(self.mu.tolist(), self.sigma.tolist())):
            out[f"popart/mu_g{g}"] = m
            out[f"popart/sigma_g{g}"] = s
        return out
