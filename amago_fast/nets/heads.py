"""Actor head (one action distribution per discount factor) and two-hot value utilities.

The critic ensemble itself is ``amago_fast.nets.critics.CriticEnsemble``; this module provides
the actor and the helpers that turn actions into critic inputs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from amago_fast.nets.layers import mlp
from amago_fast.nets.timestep import action_feature_dim, action_features
from amago_fast.spaces import ActionSpec

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0
# Keeps log(1 - a^2) finite.
TANH_EPS = 1e-5
# Buffer actions are clipped to this before log π(a): exploration noise puts many of them on the
# bounds, where atanh(1 - 1e-5) = 6.1 pulled the mean far outside and the std up to fit it;
# at 0.99 (atanh 2.65, AMAGO's choice) the BC target stays inside tanh's responsive range.
LOG_PROB_ACTION_CLIP = 0.99


def bounded_log_std(raw: torch.Tensor) -> torch.Tensor:
    """The actor's raw std output → log-std in [LOG_STD_MIN, LOG_STD_MAX], smoothly (a tanh
    rescaled to the range). A hard clamp has zero gradient outside the range: a std pushed to
    the upper bound by behaviour cloning of noisy actions stayed there for the whole run."""
    return LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (torch.tanh(raw) + 1.0)


class ActorHead(nn.Module):
    """MLP from the state embedding to G action distributions (one per gamma).

    Discrete: categorical logits (…, G, n). Multi-discrete: one categorical per entry (…, G, Σn).
    Continuous: tanh-squashed diagonal Gaussian, params (…, G, 2·d) = mean ‖ log-std.
    Actions produced here are in the normalised space: indices, or vectors in [-1, 1]; the
    agent rescales continuous actions to the env's bounds.
    """

    def __init__(
        self, d_in: int, spec: ActionSpec, num_gammas: int, hidden: int, num_layers: int,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.spec, self.num_gammas = spec, num_gammas
        if spec.kind == "continuous":
            self.param_dim = 2 * spec.shape[0]
        else:
            self.param_dim = action_feature_dim(spec)
        self.net = mlp(d_in, hidden, num_gammas * self.param_dim, num_layers, dropout=dropout)
        self.critic_action_dim = action_feature_dim(spec)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """(…, d_in) → distribution parameters (…, G, param_dim)."""
        return self.net(h).reshape(*h.shape[:-1], self.num_gammas, self.param_dim)

    def _split(self, params: torch.Tensor) -> list[torch.Tensor]:
        sizes = [self.spec.n] if self.spec.kind == "discrete" else list(self.spec.nvec)
        return list(params.split(sizes, dim=-1))

    def _gaussian(self, params: torch.Tensor):
        mean, raw_std = params.chunk(2, dim=-1)
        return mean, bounded_log_std(raw_std)

    def pre_tanh_mean(self, params: torch.Tensor) -> torch.Tensor:
        """The tanh-Gaussian's mean before the tanh (…, G, action_dim); continuous only."""
        if self.spec.kind != "continuous":
            raise ValueError("pre_tanh_mean: only continuous actors have a tanh-Gaussian")
        return self._gaussian(params)[0]

    def log_prob(self, params: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """log π(buffer action) for every gamma: params (…, G, P), action (…, *shape) → (…, G)."""
        if self.spec.kind == "continuous":
            a = action_features(action, self.spec).unsqueeze(-2)
            a = a.clamp(-LOG_PROB_ACTION_CLIP, LOG_PROB_ACTION_CLIP)
            u = torch.atanh(a)
            mean, log_std = self._gaussian(params)
            normal_lp = -0.5 * ((u - mean) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(
                2 * math.pi
            )
            return (normal_lp - torch.log1p(-a.pow(2) + TANH_EPS)).sum(-1)
        if self.spec.kind == "discrete":
            logp = F.log_softmax(params.float(), dim=-1)
            idx = action.long().unsqueeze(-1).unsqueeze(-1).expand(*logp.shape[:-1], 1)
            return logp.gather(-1, idx).squeeze(-1)
        total = 0.0
        for i, logits in enumerate(self._split(params)):
            logp = F.log_softmax(logits.float(), dim=-1)
            idx = action[..., i].long().unsqueeze(-1).unsqueeze(-1).expand(*logp.shape[:-1], 1)
            total = total + logp.gather(-1, idx).squeeze(-1)
        return total

    def critic_input(self, params: torch.Tensor, generator: torch.Generator | None = None):
        """The differentiable policy action fed to the critic (…, G, critic_action_dim):
        probability vectors for (multi-)discrete, a reparametrised tanh-Gaussian sample for
        continuous."""
        if self.spec.kind == "continuous":
            u, _, _ = self._pre_tanh_sample(params, generator)
            return torch.tanh(u)
        return torch.cat([F.softmax(p.float(), dim=-1) for p in self._split(params)], dim=-1)

    def _pre_tanh_sample(self, params: torch.Tensor, generator: torch.Generator | None):
        """One reparametrised Gaussian draw before the tanh: (u, the standard-normal noise,
        log-std), the random numbers taken from `generator`."""
        mean, log_std = self._gaussian(params)
        noise = torch.randn(mean.shape, device=mean.device, dtype=mean.dtype,
                            generator=generator)
        return mean + log_std.exp() * noise, noise, log_std

    def rsample_with_log_prob(
        self, params: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Continuous only: the reparametrised tanh-Gaussian sample :meth:`critic_input` draws
        (the same random numbers from `generator`) and its log-density (…, G), including tanh's
        change of variables, computed from the pre-tanh sample so that it stays finite and
        differentiable where the sample saturates."""
        if self.spec.kind != "continuous":
            raise ValueError("rsample_with_log_prob: only continuous actors sample a density")
        u, noise, log_std = self._pre_tanh_sample(params, generator)
        normal_lp = -0.5 * noise.pow(2) - log_std - 0.5 * math.log(2 * math.pi)
        # log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)), exact and stable for any u.
        log_det = 2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))
        return torch.tanh(u), (normal_lp - log_det).sum(-1)

    def buffer_critic_input(self, action: torch.Tensor) -> torch.Tensor:
        """Buffer actions → critic inputs (…, critic_action_dim): one-hot / scaled vectors."""
        return action_features(action, self.spec)

    def entropy(self, params: torch.Tensor) -> torch.Tensor:
        """Entropy per gamma (…, G); for continuous, that of the pre-tanh Gaussian."""
        if self.spec.kind == "continuous":
            _, log_std = self._gaussian(params)
            return (log_std + 0.5 * math.log(2 * math.pi * math.e)).sum(-1)
        total = 0.0
        for logits in self._split(params):
            logp = F.log_softmax(logits.float(), dim=-1)
            total = total - (logp.exp() * logp).sum(-1)
        return total

    @torch.no_grad()
    def act(self, params: torch.Tensor, sample: bool) -> torch.Tensor:
        """Actions from params (N, P) of one gamma: int64 (N,)/(N, k) or float (N, d) in [-1, 1]."""
        if self.spec.kind == "continuous":
            mean, log_std = self._gaussian(params)
            u = mean + log_std.exp() * torch.randn_like(mean) if sample else mean
            return torch.tanh(u)
        outs = []
        for logits in self._split(params):
            if sample:
                outs.append(torch.multinomial(F.softmax(logits.float(), -1), 1).squeeze(-1))
            else:
                outs.append(logits.argmax(-1))
        return outs[0] if self.spec.kind == "discrete" else torch.stack(outs, dim=-1)


def symlog(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.log1p(x.abs())


def symexp(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.expm1(x.abs())


def twohot_encode(value: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """Two-hot encoding of ``symlog(value)`` (…,) over sorted ``bins`` (K,) → (…, K).

    The two neighbouring bins share the mass so the expectation equals the (clipped) value.
    """
    y = symlog(value).clamp(bins[0], bins[-1])
    idx = torch.searchsorted(bins, y.contiguous(), right=True).clamp(1, bins.numel() - 1)
    lo, hi = bins[idx - 1], bins[idx]
    w_hi = ((y - lo) / (hi - lo)).clamp(0.0, 1.0)
    out = torch.zeros(*y.shape, bins.numel(), device=y.device, dtype=y.dtype)
    out.scatter_(-1, (idx - 1).unsqueeze(-1), (1.0 - w_hi).unsqueeze(-1))
    out.scatter_add_(-1, idx.unsqueeze(-1), w_hi.unsqueeze(-1))
    return out


def twohot_expectation(logits: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """Value of classification-critic logits (…, K): symexp(Σ softmax · bins) → (…)."""
    return symexp((F.softmax(logits.float(), dim=-1) * bins).sum(-1))
