"""The critic ensembles of the agent: E critics × G discount factors, one fused op underneath.

Both modules evaluate :func:`amago_fast.kernels.critic.critic_ensemble` (the PyTorch reference
on CPU; the opt-in Triton path on CUDA) on their parameters packed as a
:class:`~amago_fast.kernels.critic.CriticParams`:

- :class:`CriticEnsemble`: ``Q(s, a, gamma)`` per critic, the state projection shared across
  the gammas (continuous and multi-discrete actions, or discrete ones with
  ``discrete_critic="action_input"``).
- :class:`StateCriticEnsemble`: ``Q(s, ·)`` for every discrete action from the state alone,
  per critic one MLP over N rows instead of N·G (7× fewer at AMAGO's 7 gammas), and no second
  critic pass for a policy's value.

Their shared part (size checks, the two hidden layers and the small output layer, their
initialization) is :class:`_EnsembleMLP`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from amago_fast.kernels.critic import BACKENDS, CriticParams, critic_ensemble

__all__ = ["CriticEnsemble", "StateCriticEnsemble"]


class _EnsembleMLP(nn.Module):
    """E two-hidden-layer MLPs stored as stacked weights: ``w_state (E, d_s, H)``, with an
    ``action_dim`` also ``w_action (E, d_a, H)``, ``b1 (E, b1_rows, H)``, ``w2 (E, H, H)``,
    ``b2 (E, H)``, ``w3 (E, H, units)``, ``b3 (E, units)``. The output layer starts at
    U(±3e-3) with zero bias so that initial Q-values (or two-hot logits: a near-uniform
    distribution over bins) are small and do not dominate the first TD targets; the hidden
    layers use ``nn.Linear``'s default bounds."""

    def __init__(self, *, state_dim: int, num_gammas: int, num_critics: int, hidden_dim: int,
                 out_dim: int, negative_slope: float, backend: str, b1_rows: int, units: int,
                 action_dim: int | None = None, **other_dims: int) -> None:
        super().__init__()
        dims = {"state_dim": state_dim, **({} if action_dim is None else
                                           {"action_dim": action_dim}),
                **other_dims, "num_gammas": num_gammas, "num_critics": num_critics,
                "hidden_dim": hidden_dim, "out_dim": out_dim}
        for name, v in dims.items():
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not (0.0 <= negative_slope < 1.0):
            raise ValueError(f"negative_slope must be in [0, 1), got {negative_slope}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.state_dim, self.num_gammas, self.num_critics = state_dim, num_gammas, num_critics
        self.hidden_dim, self.out_dim = hidden_dim, out_dim
        self.negative_slope, self.backend = negative_slope, backend
        e, h = num_critics, hidden_dim
        self.w_state = nn.Parameter(torch.empty(e, state_dim, h))
        if action_dim is not None:  # registered here: the parameter order checkpoints hold
            self.action_dim = action_dim
            self.w_action = nn.Parameter(torch.empty(e, action_dim, h))
        self.b1 = nn.Parameter(torch.empty(e, b1_rows, h))
        self.w2 = nn.Parameter(torch.empty(e, h, h))
        self.b2 = nn.Parameter(torch.empty(e, h))
        self.w3 = nn.Parameter(torch.empty(e, h, units))
        self.b3 = nn.Parameter(torch.empty(e, units))

    def _first_layer_bound(self) -> float:
        raise NotImplementedError

    def _first_layer(self) -> tuple[nn.Parameter, ...]:
        return (self.w_state, self.b1)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Re-draw all parameters with the documented initialization."""
        bound1 = self._first_layer_bound()
        for p in self._first_layer():
            p.uniform_(-bound1, bound1)
        bound2 = 1.0 / math.sqrt(self.hidden_dim)
        self.w2.uniform_(-bound2, bound2)
        self.b2.uniform_(-bound2, bound2)
        self.w3.uniform_(-3e-3, 3e-3)
        self.b3.zero_()

    def _evaluate(self, state: torch.Tensor, action: torch.Tensor, params: CriticParams,
                  detach_params: bool) -> torch.Tensor:
        if detach_params:
            params = params.detached()
        return critic_ensemble(state, action, params, self.negative_slope, self.backend)


class CriticEnsemble(_EnsembleMLP):
    """E critics over G discount factors with a state projection shared across gammas.

    Initialization (per critic, documented because it matters for early TD targets):
    ``w_state``, ``w_action``, ``b1`` ~ U(±1/sqrt(d_s + d_a + G)) — PyTorch's ``nn.Linear``
    default for the equivalent concatenated ``[state, action, onehot(gamma)]`` input;
    ``w2``, ``b2`` ~ U(±1/sqrt(H)); the output layer ``w3`` ~ U(±3e-3), ``b3 = 0``.
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
        super().__init__(state_dim=state_dim, action_dim=action_dim, num_gammas=num_gammas,
                         num_critics=num_critics, hidden_dim=hidden_dim, out_dim=out_dim,
                         negative_slope=negative_slope, backend=backend, b1_rows=num_gammas,
                         units=out_dim)
        self.reset_parameters()

    def _first_layer_bound(self) -> float:
        return 1.0 / math.sqrt(self.state_dim + self.action_dim + self.num_gammas)

    def _first_layer(self) -> tuple[nn.Parameter, ...]:
        return (self.w_state, self.w_action, self.b1)

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
        return self._evaluate(state, action, self.params, detach_params)

    def extra_repr(self) -> str:
        return (
            f"state_dim={self.state_dim}, action_dim={self.action_dim}, "
            f"num_gammas={self.num_gammas}, num_critics={self.num_critics}, "
            f"hidden_dim={self.hidden_dim}, out_dim={self.out_dim}"
        )


class StateCriticEnsemble(_EnsembleMLP):
    """E discrete-action critics over G discount factors that read the state only:
    ``Q(s, ·)`` for every action at once, ``q (N, E, G, A, out_dim)`` from ``state (N, d_s)``.

    The standard discrete Q-network form: per critic one MLP trunk over the state (two hidden
    layers, leaky ReLU) whose output layer has one unit block per (gamma, action). Compared with
    :class:`CriticEnsemble` fed the action, the hidden layers run on N·E rows instead of N·G·E
    (7× fewer at AMAGO's 7 gammas), and a policy's value Σ_a π(a|s) Q(s, a) needs no second
    critic pass. It is computed by ``critic_ensemble`` with ``action_dim = 0`` and a single
    "gamma" slot whose outputs are all (gamma, action, out) units, so the Triton path and the
    PyTorch reference are the same ones the action-input critic uses (Triton limits: G·A·out_dim
    ≤ 128 output units; ``backend="auto"`` always takes the reference).

    Initialization: ``w_state``, ``b1`` ~ U(±1/sqrt(d_s)) (``nn.Linear``'s default), ``w2``,
    ``b2`` ~ U(±1/sqrt(H)), ``w3`` ~ U(±3e-3), ``b3 = 0`` (small initial values, as in
    :class:`CriticEnsemble`).
    """

    def __init__(
        self,
        state_dim: int,
        num_actions: int,
        num_gammas: int,
        num_critics: int = 4,
        hidden_dim: int = 256,
        out_dim: int = 1,
        negative_slope: float = 0.01,
        backend: str = "auto",
    ) -> None:
        super().__init__(state_dim=state_dim, num_actions=num_actions, num_gammas=num_gammas,
                         num_critics=num_critics, hidden_dim=hidden_dim, out_dim=out_dim,
                         negative_slope=negative_slope, backend=backend, b1_rows=1,
                         units=num_gammas * num_actions * out_dim)
        self.num_actions = num_actions
        self.reset_parameters()

    def _first_layer_bound(self) -> float:
        return 1.0 / math.sqrt(self.state_dim)

    @property
    def params(self) -> CriticParams:
        """The parameters as a :class:`CriticParams` with an empty ``w_action (E, 0, H)``."""
        w_action = self.w_state.new_zeros((self.num_critics, 0, self.hidden_dim))
        return CriticParams(self.w_state, w_action, self.b1, self.w2, self.b2, self.w3, self.b3)

    def forward(self, state: torch.Tensor, detach_params: bool = False) -> torch.Tensor:
        """``q (N, E, G, A, out_dim)`` for ``state (N, d_s)``.

        ``detach_params=True`` cuts the parameters from autograd (gradients reach ``state``
        only). To evaluate a policy without any critic gradient, detach the output instead.
        """
        if not isinstance(state, torch.Tensor) or state.dim() != 2:
            raise ValueError("StateCriticEnsemble: state must be a (N, d_s) tensor, got "
                             f"{getattr(state, 'shape', type(state).__name__)}")
        no_action = state.new_zeros((state.shape[0], 1, 0))
        q = self._evaluate(state, no_action, self.params, detach_params)
        return q.reshape(state.shape[0], self.num_critics, self.num_gammas, self.num_actions,
                         self.out_dim)

    def extra_repr(self) -> str:
        return (
            f"state_dim={self.state_dim}, num_actions={self.num_actions}, "
            f"num_gammas={self.num_gammas}, num_critics={self.num_critics}, "
            f"hidden_dim={self.hidden_dim}, out_dim={self.out_dim}"
        )
