"""The learner's settings (:class:`LearnerConfig`): a dataclass with a docstring per field,
validated on construction. Lives apart from :mod:`amago_fast.learner` (which re-exports it) so
the config layer reads it without the update's code."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

__all__ = ["LearnerConfig"]


@dataclass
class LearnerConfig:
    """Optimisation and RL-objective settings. Defaults and sources: docs/HYPERPARAMETERS.md."""

    lr: float = 1e-4
    """AdamW learning rate (after warm-up)."""
    weight_decay: float = 1e-3
    """AdamW decoupled weight decay."""
    adam_beta2: float = 0.999
    """AdamW's second-moment decay β2 (β1 is 0.9): how many updates (~1 / (1 − β2)) the
    per-parameter gradient scale remembers. 0.999 is torch's default."""
    optimizer_reset_interval: int = 0
    """Every this many update calls, AdamW's moment estimates and step counts are zeroed (the
    weights are kept), so the next steps are again bias-corrected, sign-sized ones (Asadi et al.
    2023, "Resetting the optimizer in deep RL"). Why: a network that has settled on a solution
    which ignores an input (T-Maze's cue, while the policy goes to one arm) leaves that plateau
    slowly under the accumulated moments; on one fixed T-Maze 50 buffer a run's own weights
    needed 1 750 to > 2 500 updates to tie the cue to the junction, the same weights with a
    fresh optimizer state 250–500. Online it did not raise the count of T-Maze 50 seeds solved
    within 8k env steps (11 of 16 at K = 500 and 1 000, as without), so it is off by default
    (docs/LEARNING.md, session 18). 0: never."""
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
    entropy_floor: float = 0.0
    """(Multi-)discrete actors: the least entropy each state's action distribution keeps, as a
    fraction of the uniform distribution's (ln n per component); below it the actor loss adds
    ``entropy_floor_coeff · (floor − H)``, above it nothing. Without a floor the DPG term drives
    the actor deterministic within a few hundred updates (T-Maze: entropy 0.02 nats of ln 4 at
    455 updates), after which sampled collection explores nothing. 0 disables; continuous
    actors refuse a floor (their exploration is the noise schedule)."""
    entropy_floor_coeff: float = 1.0
    """Slope of the entropy floor's hinge, in the actor loss's units (PopArt-normalised Q)."""
    entropy_coeff: float = 0.0
    """Weight α of a maximum-entropy bonus in the actor loss, ``α · E[log π(a|s)]`` per state
    (exact −H for (multi-)discrete actors; for continuous ones the log-density of the same
    reparametrised sample the DPG term feeds the critic, tanh's change of variables included),
    in the actor loss's units (PopArt-normalised Q per nat). The policy then tends to
    π ∝ exp(Q/α): states whose actions the critic cannot yet tell apart (the T-Maze junction
    before the cue is tied to the turn) keep exploring while states with a clear best action
    go deterministic, and a continuous actor cannot walk its mean into tanh's flat tails,
    where the change of variables makes log π large. The critic's targets are not made
    soft (no −α log π in the TD target). 0 disables."""
    dynamics_coeff: float = 0.0
    """Weight of an auxiliary model loss: from the shared sequence embedding of state t and
    the action taken there, an MLP head predicts the next measured observation (standardised,
    see ``TimestepEncoder.measured_observation``) and the symlog reward; its mean squared
    error is added to the loss and reaches the sequence model. It makes the memory encode the
    hidden dynamics (the AIB sign flip, a mass) before any reward has been found, as the
    decoders of meta-RL context encoders do; AMAGO itself has no such term. 0 disables (no
    head is built)."""
    dynamics_target: str = "next"
    """What the dynamics head predicts of the measured observation: ``"next"``, the next
    observation standardised by the encoder's input statistics; ``"delta"``, its change from
    the current one standardised by running statistics of the changes (model-based RL's usual
    target: an action's effect, e.g. a hidden sign times the force, is then most of the
    target's variance instead of a small part of the next observation's)."""
    dynamics_hidden: int = 128
    """Hidden width of the dynamics head (two hidden layers)."""
    mean_reg: float = 0.0
    """Continuous actors: adds ``mean_reg · ½·μ²`` (μ the tanh-Gaussian's pre-tanh mean, averaged
    over rows, gammas and action dims) to the actor loss, as the original SAC code's policy
    regulariser (1e-3 there). While the critic is nearly flat (a sparse goal not yet found),
    Adam turns its noise-level action gradients into full-size steps in one direction and the
    DPG term walks μ into tanh's flat tails, where its gradient vanishes: every failed DI /
    DI-Friction run of docs/AIB.md ended with one saturated action, ~(−1, −1) in every state,
    the point mass pinned in a corner. 0 disables."""
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
    """Validate every batch: keys/shapes/dtypes at once; values (finiteness, action ranges) as
    device flags — a bad batch changes no state and raises at the metrics read covering it."""
    seed: int = 0
    """Seed of the learner's generator (critic subsets, continuous action noise)."""
    device: str = "cpu"
    """Device the agent lives on."""
    stats_every: int = 1
    """Read the metrics back to the host every N updates: one device sync per read, the only
    one an update makes. ``Learner.update`` returns them on every N-th call (means over the
    applied updates since the last read; ``skipped_nonfinite`` counts the skipped ones) and {}
    in between; ``Learner.read_stats`` reads them at any time. 1: each update's own metrics."""
    cuda_graph: bool = False
    """Capture the whole update (checks, forward, backward, clip, AdamW, EMA, PopArt, metric
    accumulation) as one CUDA graph after ``cuda_graph_warmup`` eager updates and replay it
    for every later batch: a small model's update is bound by kernel launches, not FLOPs.
    CUDA only; batches must keep the captured shapes; not with ``compile``,
    ``attention_entropy_every`` or torch.distributed. Off until measured faster on a GPU."""
    cuda_graph_warmup: int = 3
    """Eager updates (on a side stream) before the capture: lazy initialisation — optimizer
    state, cuBLAS workspaces, Triton autotuning — must happen outside the graph."""

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
        if not (isinstance(self.entropy_floor, (int, float)) and 0 <= self.entropy_floor < 1):
            bad("entropy_floor", "must be a fraction in [0, 1) of the uniform entropy")
        for name in ("weight_decay", "dpg_coeff", "bc_coeff", "critic_loss_weight",
                     "entropy_floor_coeff", "mean_reg", "entropy_coeff", "dynamics_coeff"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                bad(name, "must be a non-negative finite number")
        if self.dynamics_target not in ("next", "delta"):
            bad("dynamics_target", 'must be "next" or "delta"')
        if not (isinstance(self.adam_beta2, (int, float)) and 0.0 < self.adam_beta2 < 1.0):
            bad("adam_beta2", "must be in (0, 1)")
        if not (0.0 < self.tau <= 1.0):
            bad("tau", "must be in (0, 1]")
        if not (math.isfinite(self.reward_multiplier) and self.reward_multiplier != 0):
            bad("reward_multiplier", "must be finite and non-zero")
        for name in ("warmup_steps", "attention_entropy_every", "seed",
                     "optimizer_reset_interval"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                bad(name, "must be a non-negative integer")
        for name in ("num_critics_td", "n_step", "stats_every", "cuda_graph_warmup",
                     "dynamics_hidden"):
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
            device = torch.device(self.device)
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"LearnerConfig.device={self.device!r}: {e}") from None
        if self.cuda_graph:
            if device.type != "cuda":
                bad("cuda_graph", f"needs a CUDA device; device is {self.device!r}")
            if self.compile:
                bad("cuda_graph", "and compile=True cannot be combined (choose one)")
            if self.attention_entropy_every:
                bad("cuda_graph", "cannot record attention entropy (attention_entropy_every=0)")

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}
