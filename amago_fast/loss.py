"""The AMAGO loss over a batch of windows, as one ``nn.Module`` (:class:`AMAGOLoss`) so a trainer
can wrap it in DistributedDataParallel; :class:`amago_fast.learner.Learner` steps it.


- Critic: for every transition t of a window (valid iff ``mask[:, t+1]``) and every gamma g,
  regress Q_e,g(s_t, a_t) on the n-step TD target
  ``y = Σ_i γ^i·R·r_{t+i} + γ^k·(1 - terminal)·V'(s_{t+k})``, where V' is the target critics'
  value of the target actor's action, reduced over a random subset of the ensemble by min (by
  mean when the DPG term is off — the min then underestimates strongly), R the reward
  multiplier. Scalar critics regress in PopArt-normalised units; the AMAGO-2 variant
  (``critic_type="twohot"``) is a cross-entropy onto the symlog two-hot encoding of y.
- Actor, per gamma: ``dpg_coeff · (−Q(s, a~π))`` through the critic with ``detach_params=True``
  (the critic receives no gradient from it) + ``bc_coeff · (−1[A>0]·log π(a_buffer|s))`` with
  A = Q(s, a_buffer) − Q(s, a~π). Both terms reach the shared sequence model through the actor.
- Discrete actions with the default state-only critic (``AgentConfig.discrete_critic="state"``):
  one online pass gives Q(s, ·) for all actions; the critic loss reads Q(s, a_buffer); the
  bootstrap value is the expectation Σ_a π_target(a|s')·Q_target(s', a) per critic (then the
  subset min); the DPG term is −Σ_a π(a|s)·Q(s, a) with Q(s, ·) detached (no second critic pass)
  and the BC advantage Q(s, a_buffer) − Σ_a π(a|s)·Q(s, a).
- Under ``torch.distributed`` the TD-target moments PopArt moves with are all-reduced
  (count-weighted) in :meth:`Learner.update`, so PopArt stays identical on every rank.
- Optional model term (``dynamics_coeff``): a head on the state embedding and the action
  predicts the next standardised measured observation and the symlog reward (mean squared
  error over valid transitions that do not cross a rollout start).
- With ``AgentConfig.critic_model_input`` every critic call reads [a, m(s, a)], m the model
  head's prediction for that action (no gradient into the head; the DPG term's gradient passes
  through m to the action).
- Total = actor + critic_loss_weight · critic (+ dynamics_coeff · model). Target actor/critics
  follow the online ones by EMA.

The sequence model has no target copy: targets are computed from the (detached) online state
embeddings, one backbone pass per update.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from amago_fast.agent import Agent
from amago_fast.kernels.td_reduce import td_target_reduce
from amago_fast.learner_config import LearnerConfig
from amago_fast.nets.heads import twohot_encode, twohot_expectation
from amago_fast.nets.layers import RunningNorm, mlp
from amago_fast.nets.timestep import action_feature_dim, action_features, symlog
from amago_fast.popart import PopArt
from amago_fast.td_targets import nstep_targets

__all__ = ["AMAGOLoss", "NUM_LOSS_SCALARS"]


def _masked_mean(x: torch.Tensor, mask: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Mean of x over ``dims`` counting only positions where mask (broadcastable) is True."""
    m = mask.to(x.dtype).expand_as(x)
    return (x * m).sum(dims) / m.sum(dims).clamp_min(1.0)


NUM_LOSS_SCALARS = 12
"""Scalar metrics per update ahead of the per-gamma ones in the accumulator: loss, critic,
actor, accept rate, grad norm, entropy, valid transitions, Q mean/std/min/max, model loss."""


def _masked_stats(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(mean, unbiased std, min, max) of x where mask (broadcastable) is True, as a (4,) tensor;
    zeros when fewer than 2 entries are selected. Masked reductions, not a boolean index: an
    index's size depends on the data, so on a GPU it waits for the device."""
    x = x.float()
    m = mask.expand_as(x)
    n = m.sum().float()
    mean = torch.where(m, x, 0.0).sum() / n.clamp_min(1.0)
    var = torch.where(m, (x - mean) ** 2, 0.0).sum() / (n - 1.0).clamp_min(1.0)
    lo = torch.where(m, x, math.inf).min()
    hi = torch.where(m, x, -math.inf).max()
    stats = torch.stack([mean, var.sqrt(), lo, hi])
    return torch.where(n > 1, stats, 0.0)


class AMAGOLoss(nn.Module):
    """The whole AMAGO loss as one module: online agent, target actor/critics, PopArt.

    ``forward(batch, generator)`` returns ``(loss, aux)``; aux holds detached tensors for
    logging and the TD-target moments PopArt is updated with after the optimizer step.
    """

    def __init__(self, agent: Agent, config: LearnerConfig) -> None:
        super().__init__()
        self.agent, self.config = agent, config
        if config.num_critics_td > agent.config.num_critics:
            raise ValueError(
                f"LearnerConfig.num_critics_td={config.num_critics_td} exceeds "
                f"AgentConfig.num_critics={agent.config.num_critics}"
            )
        self.twohot = agent.config.critic_type == "twohot"
        action = agent.spec.action
        if config.mean_reg > 0 and action.kind != "continuous":
            raise ValueError(f"LearnerConfig.mean_reg={config.mean_reg}: only for continuous "
                             f"actions (this agent's are {action.kind})")
        if config.entropy_floor > 0 and action.kind == "continuous":
            raise ValueError(f"LearnerConfig.entropy_floor={config.entropy_floor}: only for "
                             f"discrete or multi-discrete actions (this agent's are continuous)")
        # The floor in nats: a fraction of the uniform distribution's entropy.
        nvec = [action.n] if action.kind == "discrete" else list(getattr(action, "nvec", ()))
        self.entropy_floor_nats = config.entropy_floor * sum(math.log(n) for n in nvec)
        self.target_actor = copy.deepcopy(agent.actor).requires_grad_(False)
        self.target_critics = copy.deepcopy(agent.critics).requires_grad_(False)
        self.popart = PopArt(agent.num_gammas, config.popart_beta, config.popart_init_nu,
                             enabled=config.popart and not self.twohot)
        # The model head (dynamics_coeff): [h_t, a_t] → [next measured obs, symlog r].
        self.dynamics_head: nn.Module | None = None
        self.delta_norm: RunningNorm | None = None
        # AgentConfig.critic_model_input: the critics read the head's prediction per action
        # (the Agent refuses it for the discrete state critic, which reads no action).
        self.model_critic = agent.config.critic_model_input
        if self.model_critic and config.dynamics_coeff <= 0:
            raise ValueError("AgentConfig.critic_model_input=True needs the model head: set "
                             "LearnerConfig.dynamics_coeff > 0")
        if config.dynamics_coeff > 0:
            measured = agent.tstep_encoder.measured_dim
            self.dynamics_head = mlp(agent.config.d_model + action_feature_dim(action),
                                     config.dynamics_hidden, measured + 1, 2)
            if config.dynamics_target == "delta" and measured:
                self.delta_norm = RunningNorm(measured)

    def model_buffers(self) -> list[torch.Tensor]:
        """Buffers the update moves outside the agent (the change statistics of
        ``dynamics_target="delta"``): the learner restores them with the agent's when an
        update is skipped."""
        return list(self.delta_norm.buffers()) if self.delta_norm is not None else []

    @staticmethod
    def _model_transitions(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, L) transitions t → t+1 the model loss counts: valid, and row t+1 not a rollout
        start (its observation does not follow from row t's)."""
        return batch["mask"][:, 1:] & (batch["time_index"][:, 1:] != 0)

    def _measured(self, batch: dict[str, torch.Tensor], standardize: bool) -> torch.Tensor | None:
        """The window's measured observations (B, L1, measured_dim), or None without any."""
        return self.agent.tstep_encoder.measured_observation(
            batch, torch.Size(batch["mask"].shape), standardize=standardize)

    def _observation_change(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Raw measured-observation changes (B, L, measured_dim) of transitions t → t+1."""
        x = self._measured(batch, standardize=False)
        return x[:, 1:] - x[:, :-1]

    @torch.no_grad()
    def update_model_normalizer(self, batch: dict[str, torch.Tensor]) -> None:
        """Fold the batch's observation changes into the delta statistics (no-op unless
        ``dynamics_target="delta"``); the learner calls it before the forward pass."""
        if self.delta_norm is not None:
            self.delta_norm.update(self._observation_change(batch).float(),
                                   self._model_transitions(batch), check_finite=False)

    def _model_prediction(self, batch: dict[str, torch.Tensor], h: torch.Tensor) -> torch.Tensor:
        """The dynamics head's prediction (B, L, measured_dim + 1) for every row's state and the
        buffer action taken there: the model loss's input, and (detached) the critic's model
        input for the buffer actions with ``critic_model_input``."""
        a_feat = action_features(batch["action"][:, 1:], self.agent.spec.action).to(h.dtype)
        return self.dynamics_head(torch.cat([h[:, :-1], a_feat], -1)).float()

    def _model_loss(self, batch: dict[str, torch.Tensor], pred: torch.Tensor) -> torch.Tensor:
        """Mean squared error of the prediction (:meth:`_model_prediction`) over
        :meth:`_model_transitions`."""
        with torch.no_grad():
            target = [symlog(batch["reward"][:, 1:].float()).unsqueeze(-1)]
            if self.delta_norm is not None:
                target.insert(0, self.delta_norm(self._observation_change(batch).float()))
            else:  # standardisation is per element, so the window's rows 1.. are the next ones
                obs = self._measured(batch, standardize=True)
                if obs is not None:
                    target.insert(0, obs[:, 1:].float())
            target = torch.cat(target, -1)
            valid = self._model_transitions(batch)
        return _masked_mean((pred - target).pow(2).mean(-1), valid, (0, 1))

    def _critic_action(self, h: torch.Tensor, a: torch.Tensor, grad_to_action: bool = False
                       ) -> torch.Tensor:
        """Critic action inputs (N, G, d_a) for states h (N, d): the actions themselves, or with
        ``critic_model_input`` [a, m(h, a)], m the dynamics head's prediction. The head's
        parameters never get a gradient from here (the model loss alone trains them);
        ``grad_to_action`` keeps the path from m back to ``a`` (the actor's DPG term)."""
        if not self.model_critic:
            return a
        x = torch.cat([h.unsqueeze(-2).expand(*a.shape[:-1], h.shape[-1]), a], -1)
        if grad_to_action:
            frozen = {k: v.detach() for k, v in self.dynamics_head.named_parameters()}
            pred = torch.func.functional_call(self.dynamics_head, frozen, (x,))
        else:
            with torch.no_grad():
                pred = self.dynamics_head(x)
        return torch.cat([a, pred.to(a.dtype)], -1)

    def _values(self, q: torch.Tensor, detach_popart: bool = False) -> torch.Tensor:
        """Critic outputs (N, E, G, out) → values (N, E, G): PopArt-normalised units for scalar
        critics, symlog units for two-hot critics (what actor/advantage compare)."""
        if self.twohot:
            return (F.softmax(q.float(), -1) * self.agent.twohot_bins).sum(-1)
        raw = q[..., 0].float()
        if detach_popart:
            return self.popart.w.detach() * raw + self.popart.b.detach()
        return self.popart.normalized(raw)

    @torch.no_grad()
    def _return_values(self, q: torch.Tensor) -> torch.Tensor:
        """Target-critic outputs (…, G, out) → values in return units (…, G): PopArt
        denormalised for scalar critics, the two-hot expectation for two-hot critics."""
        if self.twohot:
            return twohot_expectation(q, self.agent.twohot_bins)
        return self.popart.denormalize(self.popart.normalized(q[..., 0].float()))

    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None):
        cfg, agent = self.config, self.agent
        mask = batch["mask"]
        time_index = batch["time_index"]
        B, L1 = mask.shape
        L = L1 - 1
        G, E = agent.num_gammas, agent.config.num_critics
        gammas = agent.gammas
        trans_valid = mask[:, 1:]  # (B, L)

        h = agent.encode(batch, time_index, mask)  # (B, L1, d)
        d = h.shape[-1]
        params = agent.actor(h)  # (B, L1, G, P)
        model_pred = (self._model_prediction(batch, h) if self.dynamics_head is not None
                      else None)  # (B, L, measured_dim + 1)

        state_critic = agent.state_critic
        logp_pi = None  # log π of the DPG term's continuous sample, when the bonus needs it
        if state_critic:
            # Q(s, ·) for every row and action in one online pass: the critic loss reads the
            # buffer action's entry, the actor's DPG term and the BC advantage reuse it detached.
            A = agent.critics.num_actions
            q_all = agent.critics(h.reshape(B * L1, d))  # (B·L1, E, G, A, O)
            q_all = q_all.reshape(B, L1, E, G, A, -1).transpose(3, 4)  # (B, L1, E, A, G, O)

        # ---- TD targets (no gradient): target actor at every row, target critics.
        with torch.no_grad():
            h_det = h.detach()
            t_params = self.target_actor(h_det)
            if state_critic:
                q_next = self.target_critics(h_det.reshape(B * L1, d)).transpose(2, 3)
                v_next_a = self._return_values(q_next)  # (B·L1, E, A, G)
                probs_next = F.softmax(t_params.float(), -1).reshape(B * L1, 1, G, A)
                v_next = (v_next_a * probs_next.transpose(-1, -2)).sum(-2)  # (B·L1, E, G)
            else:
                a_next = self.target_actor.critic_input(t_params, generator)
                h_rows = h_det.reshape(B * L1, d)
                a_next = self._critic_action(h_rows, a_next.reshape(B * L1, G, -1).to(h.dtype))
                q_next = self.target_critics(h_rows, a_next)
                v_next = self._return_values(q_next)  # (B·L1, E, G)
            v_min, v_mean = td_target_reduce(v_next.unsqueeze(-1), cfg.num_critics_td, generator)
            v_boot = (v_min if cfg.dpg_coeff > 0 else v_mean).reshape(B, L1, G)
            y = nstep_targets(batch["reward"], batch["terminated"], mask, v_boot.float(),
                              gammas, cfg.n_step, cfg.reward_multiplier)  # (B, L, G)

        # ---- critic on buffer actions (transition t: state row t, action from row t+1).
        a_buf = batch["action"][:, 1:]
        if state_critic:
            q_rows = q_all[:, :-1]  # (B, L, E, A, G, O)
            idx = a_buf.long().reshape(B, L, 1, 1, 1, 1).expand(B, L, E, 1, G, q_rows.shape[-1])
            q_buf = q_rows.gather(3, idx).squeeze(3)  # (B, L, E, G, O)
        else:
            a_feat = agent.actor.buffer_critic_input(a_buf).to(h.dtype)  # (B, L, d_a)
            if self.model_critic:  # the model loss's own prediction for these actions, detached
                a_feat = torch.cat([a_feat, model_pred.detach().to(h.dtype)], -1)
            a_feat = a_feat.reshape(B * L, 1, -1).expand(B * L, G, a_feat.shape[-1])
            q_buf = agent.critics(h[:, :-1].reshape(B * L, d), a_feat)
            q_buf = q_buf.reshape(B, L, E, G, -1)
        tmask = trans_valid[:, :, None, None]  # (B, L, 1, 1)
        if self.twohot:
            target_dist = twohot_encode(y, agent.twohot_bins)  # (B, L, G, K)
            logp = F.log_softmax(q_buf.float(), -1)
            critic_elem = -(logp * target_dist.unsqueeze(2)).sum(-1)  # (B, L, E, G)
        else:
            q_n = self.popart.normalized(q_buf[..., 0].float())
            y_n = self.popart.normalize_target(y).unsqueeze(2)
            critic_elem = (q_n - y_n) ** 2
        critic_per_gamma = _masked_mean(critic_elem, tmask, (0, 1, 2))  # (G,)
        critic_loss = critic_per_gamma.mean()

        # ---- actor: DPG through a parameter-detached critic + filtered BC.
        if state_critic:
            # −Σ_a π(a|s)·Q(s, a) with Q detached: the gradient reaches the actor only.
            probs = F.softmax(params.float(), -1).transpose(-1, -2)  # (B, L1, A, G)
            q_vals = self._values(q_all.detach(), detach_popart=True).mean(2)  # (B, L1, A, G)
            v_pi = (probs * q_vals).sum(-2)  # (B, L1, G)
        else:
            if cfg.entropy_coeff > 0 and agent.spec.action.kind == "continuous":
                # the same draws as critic_input, plus their density (the entropy estimate)
                a_pi, logp_pi = agent.actor.rsample_with_log_prob(params, generator)
            else:
                a_pi = agent.actor.critic_input(params, generator)  # (B, L1, G, d_a)
            h_rows = h.detach().reshape(B * L1, d)
            a_pi = self._critic_action(h_rows, a_pi.reshape(B * L1, G, -1).to(h.dtype),
                                       grad_to_action=True)
            q_pi = agent.critics(h_rows, a_pi, detach_params=True)
            v_pi = self._values(q_pi, detach_popart=True).reshape(B, L1, E, G).mean(2)
        row_mask = mask.unsqueeze(-1)
        dpg_per_gamma = _masked_mean(-v_pi, row_mask, (0, 1))
        with torch.no_grad():
            adv = self._values(q_buf.detach()).mean(2) - v_pi[:, :-1].detach()  # (B, L, G)
            accept = (adv > 0).to(h.dtype)
        logp_buf = agent.actor.log_prob(params[:, :-1], a_buf)  # (B, L, G)
        tmask_g = trans_valid.unsqueeze(-1)
        bc_per_gamma = _masked_mean(-(accept * logp_buf), tmask_g, (0, 1))
        actor_per_gamma = cfg.dpg_coeff * dpg_per_gamma + cfg.bc_coeff * bc_per_gamma
        if self.entropy_floor_nats > 0:
            # Per state, so that no state (the T-Maze junction) goes deterministic while the
            # average stays above the floor.
            short = F.relu(self.entropy_floor_nats - agent.actor.entropy(params))  # (B, L1, G)
            floor_per_gamma = _masked_mean(short, row_mask, (0, 1))
            actor_per_gamma = actor_per_gamma + cfg.entropy_floor_coeff * floor_per_gamma
        if cfg.entropy_coeff > 0:
            if logp_pi is None:  # (multi-)discrete: exact
                neg_entropy = -agent.actor.entropy(params)  # (B, L1, G)
            else:
                neg_entropy = logp_pi.float()  # one-sample estimate, differentiable
            entropy_per_gamma = _masked_mean(neg_entropy, row_mask, (0, 1))
            actor_per_gamma = actor_per_gamma + cfg.entropy_coeff * entropy_per_gamma
        if cfg.mean_reg > 0:
            mu = agent.actor.pre_tanh_mean(params).float()  # (B, L1, G, D)
            mean_sq = _masked_mean(0.5 * mu.pow(2).mean(-1), row_mask, (0, 1))  # (G,)
            actor_per_gamma = actor_per_gamma + cfg.mean_reg * mean_sq
        actor_loss = actor_per_gamma.mean()
        loss = actor_loss + cfg.critic_loss_weight * critic_loss
        model_loss = torch.zeros((), device=h.device)
        if self.dynamics_head is not None:
            model_loss = self._model_loss(batch, model_pred)
            loss = loss + cfg.dynamics_coeff * model_loss

        with torch.no_grad():
            ym = tmask_g.to(y.dtype)
            count = ym.sum((0, 1)).clamp_min(1.0)
            # Q statistics of the main gamma, in return units (after PopArt / two-hot decoding).
            if self.twohot:
                q_val = twohot_expectation(q_buf[:, :, :, -1], agent.twohot_bins)  # (B, L, E)
            else:
                q_val = self.popart.denormalize(self.popart.normalized(q_buf[..., 0].float()))
                q_val = q_val[..., -1]  # (B, L, E)
            aux = {
                "critic_loss_per_gamma": critic_per_gamma.detach(),
                "dpg_per_gamma": dpg_per_gamma.detach(),
                "bc_per_gamma": bc_per_gamma.detach(),
                "accept_rate": _masked_mean(accept, tmask_g, (0, 1)).mean(),
                "td_target": y,
                "target_count": ym.sum((0, 1)),
                "target_mean": (y * ym).sum((0, 1)) / count,
                "target_sq_mean": (y.pow(2) * ym).sum((0, 1)) / count,
                "q_stats": _masked_stats(q_val, trans_valid.unsqueeze(-1)),
                "actor_entropy": _masked_mean(agent.actor.entropy(params[:, :, -1:].detach()),
                                              row_mask, (0, 1)).mean(),
                "critic_loss": critic_loss.detach(),
                "actor_loss": actor_loss.detach(),
                "model_loss": model_loss.detach(),
                "valid_transitions": trans_valid.sum().to(torch.float32),
            }
        return loss, aux
