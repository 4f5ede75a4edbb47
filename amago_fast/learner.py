"""The AMAGO learning update: one gradient step on every timestep of every window in parallel.

Loss (computed in :class:`AMAGOLoss`, an ``nn.Module`` so a trainer can wrap it in
DistributedDataParallel):

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
- Total = actor + critic_loss_weight · critic. Target actor/critics follow the online ones by EMA.

The sequence model has no target copy: targets are computed from the (detached) online state
embeddings, one backbone pass per update.
"""

from __future__ import annotations

import copy
import ctypes
import math
import platform
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from amago_fast.agent import Agent
from amago_fast.kernels.critic import td_target_reduce
from amago_fast.kernels.ema import ema_update_
from amago_fast.nets.heads import twohot_encode, twohot_expectation
from amago_fast.popart import PopArt


@dataclass
class LearnerConfig:
    """Optimisation and RL-objective settings. Defaults and sources: docs/HYPERPARAMETERS.md."""

    lr: float = 1e-4
    """AdamW learning rate (after warm-up)."""
    weight_decay: float = 1e-3
    """AdamW decoupled weight decay."""
    warmup_steps: int = 500
    """Linear learning-rate warm-up over this many updates (0: none)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value."""
    tau: float = 0.003
    """EMA rate of the target actor/critics."""
    num_critics_td: int = 2
    """Random ensemble subset the TD target is reduced over (REDQ-style)."""
    dpg_coeff: float = 1.0
    """Weight of the DPG actor term −Q(s, a~π) ("online" term). 0 gives the AMAGO-2 actor."""
    bc_coeff: float = 0.1
    """Weight of the filtered behaviour-cloning term −1[A>0]·log π(a|s) ("offline" term)."""
    critic_loss_weight: float = 10.0
    """Weight of the critic loss relative to the actor loss."""
    reward_multiplier: float = 10.0
    """Rewards are scaled by this inside the loss only."""
    n_step: int = 1
    """TD target horizon n (truncated at terminals and at the window's end)."""
    popart: bool = True
    """PopArt normalisation of scalar critics, one set of statistics per gamma."""
    popart_beta: float = 5e-4
    """PopArt EMA step of the target moments (bias-corrected: early updates move further, see
    amago_fast/popart.py)."""
    popart_init_nu: float = 100.0
    """PopArt initial second moment (σ starts at 10)."""
    bf16: bool = False
    """Run the loss forward under bf16 autocast."""
    compile: bool = False
    """torch.compile the loss module. CUDA only: on CPU it warns and runs eagerly."""
    attention_entropy_every: int = 0
    """Log attention entropy every N updates (costs an L×L materialisation); 0 = never."""
    check_batch: bool = True
    """Validate batch keys/shapes/dtypes/finiteness before touching any state."""
    seed: int = 0
    """Seed of the learner's generator (critic subsets, continuous action noise)."""
    device: str = "cpu"
    """Device the agent lives on."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first invalid field."""
        def bad(name: str, why: str):
            raise ValueError(f"LearnerConfig.{name}={getattr(self, name)!r}: {why}")

        for name in ("lr", "grad_clip"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                bad(name, "must be a positive finite number")
        for name in ("weight_decay", "dpg_coeff", "bc_coeff", "critic_loss_weight"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                bad(name, "must be a non-negative finite number")
        if not (0.0 < self.tau <= 1.0):
            bad("tau", "must be in (0, 1]")
        if not (math.isfinite(self.reward_multiplier) and self.reward_multiplier != 0):
            bad("reward_multiplier", "must be finite and non-zero")
        for name in ("warmup_steps", "attention_entropy_every", "seed"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                bad(name, "must be a non-negative integer")
        for name in ("num_critics_td", "n_step"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                bad(name, "must be a positive integer")
        if not (0.0 < self.popart_beta <= 1.0):
            bad("popart_beta", "must be in (0, 1]")
        if not (self.popart_init_nu > 0 and math.isfinite(self.popart_init_nu)):
            bad("popart_init_nu", "must be positive and finite")
        if self.dpg_coeff == 0 and self.bc_coeff == 0:
            bad("bc_coeff", "dpg_coeff and bc_coeff are both 0: the actor would not learn")
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"LearnerConfig.device={self.device!r}: {e}") from None

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


_MALLOC_TUNED = False


def tune_cpu_malloc() -> bool:
    """Keep large freed CPU blocks in the heap for reuse instead of returning them to the OS.

    glibc serves large allocations (above a dynamic threshold, 128 KiB to 32 MiB) with ``mmap``
    and unmaps them on free, so every update's activations (tens of MB) are fresh pages that
    fault in on first touch: measured 3,000-19,000 minor faults and 14-46 ms of system time per
    small-bench update (1 thread), mostly inside the bias-broadcast copies of ``addmm`` /
    ``baddbmm``. With mmap off for blocks < 1 GiB and no heap trimming below 2 GiB, the same
    update takes 0-1 faults (CPU time ~610-790 → ~530 ms under load). The cost: the process
    keeps its peak heap (resident memory unchanged in that measurement, ~685 MB). Process-wide
    and idempotent; a no-op (False) outside glibc Linux. Called by :class:`Learner` on CPU.
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h> parameter numbers
    ok = libc.mallopt(m_mmap_threshold, 1 << 30) == 1
    ok = ok and libc.mallopt(m_trim_threshold, (1 << 31) - 1) == 1
    _MALLOC_TUNED = ok
    return ok


def _masked_mean(x: torch.Tensor, mask: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Mean of x over ``dims`` counting only positions where mask (broadcastable) is True."""
    m = mask.to(x.dtype).expand_as(x)
    return (x * m).sum(dims) / m.sum(dims).clamp_min(1.0)


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
        self.target_actor = copy.deepcopy(agent.actor).requires_grad_(False)
        self.target_critics = copy.deepcopy(agent.critics).requires_grad_(False)
        self.popart = PopArt(agent.num_gammas, config.popart_beta, config.popart_init_nu,
                             enabled=config.popart and not self.twohot)

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

        state_critic = agent.state_critic
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
                q_next = self.target_critics(h_det.reshape(B * L1, d),
                                             a_next.reshape(B * L1, G, -1).to(h.dtype))
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
            a_feat = agent.actor.buffer_critic_input(a_buf)  # (B, L, d_a)
            a_feat = a_feat.unsqueeze(-2).expand(B, L, G, a_feat.shape[-1])
            q_buf = agent.critics(h[:, :-1].reshape(B * L, d),
                                  a_feat.reshape(B * L, G, -1).to(h.dtype))
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
            a_pi = agent.actor.critic_input(params, generator)  # (B, L1, G, d_a)
            q_pi = agent.critics(h.detach().reshape(B * L1, d),
                                 a_pi.reshape(B * L1, G, -1).to(h.dtype), detach_params=True)
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
        actor_loss = actor_per_gamma.mean()
        loss = actor_loss + cfg.critic_loss_weight * critic_loss

        with torch.no_grad():
            ym = tmask_g.to(y.dtype)
            count = ym.sum((0, 1)).clamp_min(1.0)
            # Q statistics of the main gamma, in return units (after PopArt / two-hot decoding).
            if self.twohot:
                q_val = twohot_expectation(q_buf[:, :, :, -1], agent.twohot_bins)  # (B, L, E)
            else:
                q_val = self.popart.denormalize(self.popart.normalized(q_buf[..., 0].float()))
                q_val = q_val[..., -1]  # (B, L, E)
            qv = q_val[trans_valid.unsqueeze(-1).expand_as(q_val)]
            aux = {
                "critic_loss_per_gamma": critic_per_gamma.detach(),
                "dpg_per_gamma": dpg_per_gamma.detach(),
                "bc_per_gamma": bc_per_gamma.detach(),
                "accept_rate": _masked_mean(accept, tmask_g, (0, 1)).mean(),
                "td_target": y,
                "target_count": ym.sum((0, 1)),
                "target_mean": (y * ym).sum((0, 1)) / count,
                "target_sq_mean": (y.pow(2) * ym).sum((0, 1)) / count,
                "q_stats": torch.stack([qv.mean(), qv.std(), qv.min(), qv.max()])
                if qv.numel() > 1 else torch.zeros(4, device=h.device),
                "actor_entropy": _masked_mean(agent.actor.entropy(params[:, :, -1:].detach()),
                                              row_mask, (0, 1)).mean(),
                "critic_loss": critic_loss.detach(),
                "actor_loss": actor_loss.detach(),
                "valid_transitions": trans_valid.sum().to(torch.float32),
            }
        return loss, aux


def restore_cuda_rng_states(states: list | None) -> None:
    """Restore ``torch.cuda.get_rng_state_all()`` output, only onto the same number of GPUs
    (a run resumed or evaluated on another machine draws afresh there). The states may have
    been moved by ``torch.load``'s map_location; they must be CPU ByteTensors."""
    if not states or not torch.cuda.is_available() or len(states) != torch.cuda.device_count():
        return
    torch.cuda.set_rng_state_all([torch.as_tensor(t).to("cpu", torch.uint8) for t in states])


class Learner:
    """Owns the loss module, optimizer, LR schedule, PopArt and the update counter.

    Args:
        agent: the online :class:`Agent` (moved to ``config.device``).
        config: :class:`LearnerConfig`.
        wrap_module: optional callable applied to the loss module before use, e.g.
            ``lambda m: DistributedDataParallel(m)``; ``learner.loss_module`` stays the bare one.
    """

    def __init__(
        self,
        agent: Agent,
        config: LearnerConfig | None = None,
        wrap_module: Callable[[nn.Module], nn.Module] | None = None,
    ) -> None:
        config = config or LearnerConfig()
        config.validate()
        self.config = config
        self.device = torch.device(config.device)
        if self.device.type == "cpu":
            tune_cpu_malloc()
        self.agent = agent.to(self.device)
        self.loss_module = AMAGOLoss(self.agent, config).to(self.device)
        self.model: nn.Module = wrap_module(self.loss_module) if wrap_module else self.loss_module
        if config.compile:
            if self.device.type == "cpu":
                warnings.warn("LearnerConfig.compile: torch.compile is not used on CPU "
                              "(it crashes with this torch build); running eagerly.",
                              stacklevel=2)
            else:
                self.model = torch.compile(self.model)
        self.online_params = [p for p in self.agent.parameters() if p.requires_grad]
        self.trainable = self.online_params + [
            p for p in self.loss_module.popart.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.trainable, lr=config.lr,
                                           weight_decay=config.weight_decay)
        warm = config.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: min(1.0, (step + 1) / warm) if warm else 1.0)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(config.seed)
        self.updates = 0
        # Multi-discrete action sizes on the device, for the batch check (made once: a
        # host-to-device copy per update would be a sync of its own).
        action = agent.spec.action
        self._nvec = (torch.tensor(action.nvec, device=self.device)
                      if action.kind == "multidiscrete" else None)
        # Target-network EMA: one foreach call (swappable for the per-parameter baseline).
        self.ema_fn: Callable = ema_update_
        # Seconds spent in each phase of the last update (forward, backward, optimizer): wall
        # time on CPU; on CUDA the GPU time between CUDA events (no extra host syncs).
        self.last_timings: dict[str, float] = {}
        self._ema_pairs = (
            list(self.loss_module.target_actor.parameters())
            + list(self.loss_module.target_critics.parameters()),
            list(self.agent.actor.parameters()) + list(self.agent.critics.parameters()),
        )

    def _clock(self) -> float | torch.cuda.Event:
        """A phase mark: perf_counter on CPU; on CUDA an event recorded on the current stream.
        A synchronize here (as before) stalled the host at every mark, so it could not queue
        the backward while the forward ran; the events are read after the update's own sync."""
        if self.device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    @staticmethod
    def _seconds(start: float | torch.cuda.Event, end: float | torch.cuda.Event) -> float:
        if isinstance(start, float):
            return end - start
        end.synchronize()
        return start.elapsed_time(end) / 1e3

    # ------------------------------------------------------------------------------ batches
    def _to_tensors(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        out = {}
        for k, v in batch.items():
            if isinstance(v, np.ndarray) or isinstance(v, torch.Tensor):
                out[k] = torch.as_tensor(v).to(self.device, non_blocking=True)
        return out

    def _check_batch(self, batch: dict[str, torch.Tensor]) -> None:
        spec = self.agent.spec
        need = [f.name for f in spec.buffer_fields()] + ["mask", "time_index"]
        missing = [k for k in need if k not in batch]
        if missing:
            raise ValueError(f"Learner.update: batch is missing keys {missing}")
        mask = batch["mask"]
        if mask.dim() != 2 or mask.dtype != torch.bool or mask.shape[1] < 2:
            raise ValueError(f"Learner.update: mask must be bool (B, L+1) with L >= 1, got "
                             f"{tuple(mask.shape)} {mask.dtype}")
        B, L1 = mask.shape
        for f in spec.buffer_fields():
            t = batch[f.name]
            if tuple(t.shape) != (B, L1, *f.shape):
                raise ValueError(f"Learner.update: batch[{f.name!r}] has shape {tuple(t.shape)}, "
                                 f"expected {(B, L1, *f.shape)}")
        ti = batch["time_index"]
        if tuple(ti.shape) != (B, L1) or ti.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"Learner.update: time_index must be int (B, L+1), got "
                             f"{tuple(ti.shape)} {ti.dtype}")
        # Value checks as device flags read in one host sync (each `if tensor` would be a sync of
        # its own, and boolean indexing another): on a GPU every sync drains the launch queue.
        # Padded rows are checked too: the update reads them (a NaN there, times a zero weight,
        # is still NaN, and a negative discrete action there would index out of range).
        checks: list[tuple[torch.Tensor, str]] = []
        checks.append(((~torch.isfinite(batch["reward"])).any(),
                       "Learner.update: non-finite reward (padded rows included)"))
        for f in spec.observation:
            if np.issubdtype(f.dtype, np.floating):
                checks.append(((~torch.isfinite(batch[f.name])).any(),
                               f"Learner.update: non-finite values in observation {f.name!r}"))
        a = batch["action"]
        act = spec.action
        if act.kind == "discrete":
            checks.append((((a < 0) | (a >= act.n)).any(),
                           f"Learner.update: discrete actions outside [0, {act.n})"))
        elif act.kind == "multidiscrete":
            checks.append((((a < 0) | (a >= self._nvec)).any(),
                           f"Learner.update: multi-discrete actions outside nvec {act.nvec}"))
        elif act.kind == "continuous":
            checks.append(((~torch.isfinite(a)).any(),
                           "Learner.update: non-finite continuous actions"))
        flags = torch.stack([flag for flag, _ in checks]).tolist()
        for bad, (_, message) in zip(flags, checks):
            if bad:
                raise ValueError(message)

    # ------------------------------------------------------------------------------- update
    def update(self, batch: dict[str, Any]) -> dict[str, float]:
        """One gradient step on ``batch`` (a ``sample_windows`` dict, NumPy or torch).

        Returns float metrics; ``skipped_nonfinite`` is 1.0 when the loss or the gradients were
        not finite (then nothing — weights, targets, PopArt, optimizer — is changed).
        """
        cfg = self.config
        batch = self._to_tensors(batch)
        if cfg.check_batch:
            self._check_batch(batch)
        # Buffers the forward pass moves (σ-reparam power iteration, input statistics) are
        # restored if the step is skipped, so a skipped step changes nothing.
        buffers_before = [b.detach().clone() for b in self.agent.buffers()]
        self.agent.tstep_encoder.update_normalizer(batch, batch["mask"])
        traj = self.agent.traj_encoder
        want_entropy = (cfg.attention_entropy_every > 0
                        and self.updates % cfg.attention_entropy_every == 0
                        and hasattr(traj, "set_record_entropy"))
        if want_entropy:
            traj.set_record_entropy(True)
        self.model.train()
        t0 = self._clock()
        try:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                loss, aux = self.model(batch, self.generator)
        finally:
            if want_entropy:
                entropies = traj.recorded_entropy()
                traj.set_record_entropy(False)
        t1 = self._clock()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, cfg.grad_clip)
        finite_t = torch.isfinite(loss.detach()) & torch.isfinite(grad_norm)
        target_mean, target_sq_mean = aux["target_mean"], aux["target_sq_mean"]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # PopArt must move identically on every rank: all-reduce the batch moments
            # (weighted by each rank's valid-transition count, so the result is the moment of
            # the global batch) and the "skip this step" flag in one collective.
            count = aux["target_count"].float().expand_as(target_mean)
            packed = torch.cat([target_mean.float() * count, target_sq_mean.float() * count,
                                count, (~finite_t).float().reshape(1)])
            torch.distributed.all_reduce(packed)
            G = target_mean.numel()
            total = packed[2 * G:3 * G].clamp_min(1.0)
            target_mean, target_sq_mean = packed[:G] / total, packed[G:2 * G] / total
            finite_t = packed[-1] == 0
        finite = bool(finite_t)
        t2 = self._clock()
        metrics: dict[str, float] = {"skipped_nonfinite": 0.0 if finite else 1.0}
        if not finite:
            self.optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                for b, saved in zip(self.agent.buffers(), buffers_before):
                    b.copy_(saved)
            metrics["loss"] = float(loss.detach())
            metrics["grad_norm"] = float(grad_norm)
            return metrics
        self.optimizer.step()
        self.scheduler.step()
        self.ema_fn(*self._ema_pairs, cfg.tau)
        self.loss_module.popart.update(target_mean, target_sq_mean)
        self.updates += 1
        t3 = self._clock()

        G = self.agent.num_gammas
        per_gamma = torch.stack([aux["critic_loss_per_gamma"], aux["dpg_per_gamma"],
                                 aux["bc_per_gamma"]]).tolist()
        scalars = torch.stack([loss.detach().float(), aux["critic_loss"].float(),
                               aux["actor_loss"].float(), aux["accept_rate"].float(),
                               grad_norm.float(), aux["actor_entropy"].float(),
                               aux["valid_transitions"]]).tolist()
        q = aux["q_stats"].tolist()
        self.last_timings = {"forward": self._seconds(t0, t1), "backward": self._seconds(t1, t2),
                             "optimizer": self._seconds(t2, t3)}
        metrics.update({
            "loss": scalars[0], "critic_loss": scalars[1], "actor_loss": scalars[2],
            "bc_accept_rate": scalars[3], "grad_norm": scalars[4], "actor_entropy": scalars[5],
            "valid_transitions": scalars[6], "q_mean": q[0], "q_std": q[1], "q_min": q[2],
            "q_max": q[3], "lr": self.scheduler.get_last_lr()[0], "updates": float(self.updates),
        })
        for g in range(G):
            metrics[f"critic_loss/g{g}"] = per_gamma[0][g]
            metrics[f"actor_dpg/g{g}"] = per_gamma[1][g]
            metrics[f"actor_bc/g{g}"] = per_gamma[2][g]
        if self.loss_module.popart.enabled:
            metrics.update(self.loss_module.popart.stats())
        if want_entropy and entropies:
            for i, e in enumerate(entropies):
                metrics[f"attention_entropy/layer{i}"] = float(e)
        return metrics

    # ------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume bit-identically (on CPU)."""
        return {
            "loss_module": {
                k: v.detach().clone() for k, v in self.loss_module.state_dict().items()
            },
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "scheduler": self.scheduler.state_dict(),
            "updates": self.updates,
            "generator": self.generator.get_state(),
            "generator_device": self.generator.device.type,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "agent_config": self.agent.config.to_dict(),
            "learner_config": self.config.to_dict(),
        }

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; validated first, so a rejected one changes nothing."""
        need = ("loss_module", "optimizer", "scheduler", "updates", "generator", "torch_rng")
        missing = [k for k in need if k not in sd]
        if missing:
            raise ValueError(f"Learner.load_state_dict: missing entries {missing}")
        own = self.loss_module.state_dict()
        theirs = sd["loss_module"]
        key = "popart.updates"
        if key in own and key not in theirs:
            # Checkpoints from before PopArt's bias correction: it has applied exactly one
            # update per learner update (skipped steps touch neither).
            theirs = {**theirs, key: torch.tensor(float(sd["updates"]), dtype=torch.float64)}
        if set(own) != set(theirs):
            diff = sorted(set(own) ^ set(theirs))[:5]
            raise ValueError(f"Learner.load_state_dict: model keys differ, e.g. {diff}")
        for k, v in own.items():
            if tuple(v.shape) != tuple(theirs[k].shape):
                raise ValueError(f"Learner.load_state_dict: {k!r} has shape "
                                 f"{tuple(theirs[k].shape)}, expected {tuple(v.shape)}")
        opt_groups = sd["optimizer"].get("param_groups", [])
        if len(opt_groups) != 1 or len(opt_groups[0]["params"]) != len(self.trainable):
            raise ValueError("Learner.load_state_dict: optimizer state does not match the model")
        # RNG states are CPU ByteTensors whatever the device (torch.load's map_location may have
        # moved them), and their size depends on the generator's device (a CUDA generator's state
        # is 16 bytes, a CPU one's 5056): a run resumed or evaluated on another device type
        # restarts the sampling stream from the seed instead of failing.
        gen_state = torch.as_tensor(sd["generator"]).to("cpu", torch.uint8)
        torch_rng = torch.as_tensor(sd["torch_rng"]).to("cpu", torch.uint8)
        if torch_rng.numel() != torch.get_rng_state().numel():
            raise ValueError("Learner.load_state_dict: torch_rng is not a CPU RNG state "
                             f"({torch_rng.numel()} bytes)")
        gen_matches = (gen_state.numel() == self.generator.get_state().numel()
                       and sd.get("generator_device", self.generator.device.type)
                       == self.generator.device.type)
        self.loss_module.load_state_dict(theirs)
        self.optimizer.load_state_dict(sd["optimizer"])
        self.scheduler.load_state_dict(sd["scheduler"])
        self.updates = int(sd["updates"])
        if gen_matches:
            self.generator.set_state(gen_state)
        else:
            warnings.warn(
                f"Learner.load_state_dict: the checkpoint's sampling generator was on "
                f"{sd.get('generator_device', 'another device type')}, this learner's is on "
                f"{self.generator.device.type}; reseeding it with seed {self.config.seed} + "
                f"updates {self.updates} (the run continues, not bit-identically)",
                stacklevel=2,
            )
            self.generator.manual_seed(self.config.seed + self.updates)
        torch.set_rng_state(torch_rng)
        restore_cuda_rng_states(sd.get("cuda_rng"))
