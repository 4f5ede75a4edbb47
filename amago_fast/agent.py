"""The AMAGO agent: timestep encoder → trajectory encoder → actor and multi-gamma critics.

``Agent`` holds the online networks and implements the ``Policy`` protocol of docs/DESIGN.md
(``init_state`` / ``reset_state`` / ``act``) with incremental decoding: a ring KV cache per
Transformer layer (GRU: its hidden state), so a rollout step costs the same at step 10 and step
10 000. The learning update lives in ``amago_fast.learner``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch
from torch import nn

from amago_fast.nets.critics import CriticEnsemble, StateCriticEnsemble
from amago_fast.nets.heads import ActorHead, bounded_log_std
from amago_fast.nets.native_step import NativeStep, sample_categorical
from amago_fast.nets.timestep import TimestepEncoder, mlp_plan, run_mlp_plan
from amago_fast.nets.trajectory import FFTrajEncoder, GRUTrajEncoder, TransformerTrajEncoder
from amago_fast.spaces import EnvSpec

# Multi-gamma set: AMAGO public reference default for both action kinds, plus the main 0.999.
DEFAULT_GAMMAS = (0.1, 0.9, 0.95, 0.97, 0.99, 0.995, 0.999)


@dataclass
class AgentConfig:
    """Architecture of the agent. Defaults and their sources: docs/HYPERPARAMETERS.md."""

    traj_encoder: str = "transformer"
    """Sequence model: "transformer" (AMAGO), "gru" or "ff" (memory-free) for ablations."""
    d_model: int = 256
    """Width of the trajectory encoder and of the state embedding fed to the heads."""
    num_layers: int = 3
    """Transformer (or GRU / FF) layers."""
    num_heads: int = 8
    """Attention heads (d_model must be divisible by it)."""
    d_ff: int | None = None
    """Transformer feed-forward width; None means 4 * d_model."""
    context_len: int = 128
    """Attention window C = rollout KV-cache capacity: each step sees itself and C-1 before it."""
    kv_cache_dtype: str = "auto"
    """Storage of the rollout KV cache (``Agent.init_state``): "auto" (default), "float16",
    "float32" or "int8". "auto" is float16 where the native CPU step runs the agent
    (``amago_fast.nets.native_step``) and float32 otherwise (the PyTorch path: CPU half-precision
    ops there are slower than float32, and CUDA rollouts are launch-bound). A long-context CPU
    step is bound by the bytes attention reads (context 1024, 8 envs: ~8 MB per step for a
    d_model-64 model, ~50 MB for the default one in float32); float16 halves them and the
    cache's memory (measured 2-5x less attention time per step at context 1024, BENCHMARKS.md).
    Keys/values are rounded to float16 once when written (relative error <= 2^-11, saturating
    at ±65504); attention accumulates in float32; action parameters differ from a float32 cache
    by ~5e-4 relative. Why that is safe to default: only rollouts read the cache — training
    recomputes keys/values from the stored observations, and no loss uses the behaviour
    policy's probabilities (AMAGO is off-policy: critic and actor losses read the stored
    actions). "float32" makes rollouts match the training forward to float32 rounding.
    "int8" (opt-in) stores each key/value row of each head as int8 plus one float32 scale
    (symmetric, round-to-nearest: error per element ≤ the row's max |x| / 254; see
    ``kernels.decode.quantize_int8_rows``): 20 bytes a key per 16-d head instead of 32, for
    long contexts bound by memory bandwidth or memory size (the default model at context 1024:
    see BENCHMARKS.md). Every path reads it (native step, PyTorch, Triton)."""
    pos_emb: str = "sinusoidal"
    """Position embedding on the global time index: "sinusoidal" or "learned"."""
    max_time_index: int = 10_000
    """Rows of the learned position table (larger time indices share the last row)."""
    dropout_emb: float = 0.05
    """Dropout on the embedded input sequence."""
    dropout_ff: float = 0.05
    """Dropout inside and after the Transformer feed-forward block."""
    dropout_attn_out: float = 0.0
    """Dropout on the attention block's output."""
    sigma_reparam: bool = True
    """σ-reparam (Zhai et al. 2023) Transformer linears."""
    normformer_norms: bool = True
    """NormFormer's extra LayerNorms (after attention, inside the FF block)."""
    tstep_hidden: int = 256
    """Timestep-encoder MLP width."""
    tstep_out: int = 128
    """Timestep embedding width."""
    tstep_layers: int = 2
    """Timestep-encoder hidden layers."""
    normalize_inputs: bool = True
    """Running mean/std normalisation of vector observations (from valid training rows)."""
    image_features: int = 128
    """Embedding width of each image key's CNN."""
    actor_hidden: int = 256
    """Actor MLP width."""
    actor_layers: int = 2
    """Actor MLP hidden layers."""
    critic_hidden: int = 256
    """Critic MLP width (CriticEnsemble hidden size)."""
    num_critics: int = 4
    """Critic ensemble size E."""
    gammas: tuple[float, ...] = field(default_factory=lambda: DEFAULT_GAMMAS)
    """Discount factors trained in parallel; the last one is the one the policy acts with."""
    critic_type: str = "scalar"
    """"scalar" (AMAGO: regression + PopArt) or "twohot" (AMAGO-2: symlog two-hot classes)."""
    num_bins: int = 64
    """Classes of the two-hot critic."""
    twohot_range: float = 10.0
    """Bins span [-range, range] in symlog space (|value| up to e^range - 1)."""
    discrete_critic: str = "state"
    """Critic form for discrete action spaces: "state" — Q(s, ·) for every action from the state
    only (``StateCriticEnsemble``: N·E critic rows per pass, policy values by Σ_a π·Q without a
    second critic pass; the same function as the public AMAGO reference's discrete critic, which
    contracts G·A state outputs with the action vector) — or "action_input" — the critic reads
    (state, action, gamma) as for continuous actions (one-hot for buffer actions, the
    probability vector for the policy; ``CriticEnsemble``: N·G·E rows). Continuous and
    multi-discrete spaces always use "action_input"."""
    critic_model_input: bool = False
    """Action-input critics also read the learner's model prediction for the action they score
    (the dynamics head of ``LearnerConfig.dynamics_coeff``, which must be > 0): Q(s, a, m(s, a))
    with m the predicted next measured observation and symlog reward. A value learned where an
    action moves the state one way then carries over to contexts where the same action moves
    it the other way (the AIB sign flip), because the critic can score the predicted outcome
    instead of the raw action. The prediction reaches the critic without gradient into the
    head's parameters (the head is trained by the model loss only); the actor's DPG gradient
    flows through it to the action. Not part of AMAGO; off by default."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first invalid field."""
        def bad(name: str, why: str):
            raise ValueError(f"AgentConfig.{name}={getattr(self, name)!r}: {why}")

        if self.traj_encoder not in ("transformer", "gru", "ff"):
            bad("traj_encoder", "must be 'transformer', 'gru' or 'ff'")
        for name in ("d_model", "num_layers", "num_heads", "context_len", "max_time_index",
                     "tstep_hidden", "tstep_out", "image_features", "actor_hidden",
                     "critic_hidden", "num_critics"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                bad(name, "must be a positive integer")
        for name in ("tstep_layers", "actor_layers"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 0:
                bad(name, "must be a non-negative integer")
        if self.d_ff is not None and (not isinstance(self.d_ff, int) or self.d_ff < 1):
            bad("d_ff", "must be None or a positive integer")
        if self.traj_encoder == "transformer" and self.d_model % self.num_heads:
            bad("num_heads", f"must divide d_model={self.d_model}")
        if self.kv_cache_dtype not in ("auto", "float32", "float16", "int8"):
            bad("kv_cache_dtype", "must be 'auto', 'float32', 'float16' or 'int8'")
        if self.pos_emb not in ("sinusoidal", "learned"):
            bad("pos_emb", "must be 'sinusoidal' or 'learned'")
        for name in ("dropout_emb", "dropout_ff", "dropout_attn_out"):
            v = getattr(self, name)
            if not (0.0 <= v < 1.0):
                bad(name, "must be in [0, 1)")
        self.gammas = tuple(float(g) for g in self.gammas)
        if not self.gammas or not all(0.0 <= g < 1.0 for g in self.gammas):
            bad("gammas", "needs at least one discount factor, each in [0, 1)")
        if self.critic_type not in ("scalar", "twohot"):
            bad("critic_type", "must be 'scalar' or 'twohot'")
        if not isinstance(self.num_bins, int) or self.num_bins < 3:
            bad("num_bins", "must be an integer >= 3")
        if not (self.twohot_range > 0 and np.isfinite(self.twohot_range)):
            bad("twohot_range", "must be a positive finite number")
        if self.discrete_critic not in ("state", "action_input"):
            bad("discrete_critic", "must be 'state' or 'action_input'")
        if not isinstance(self.critic_model_input, bool):
            bad("critic_model_input", "must be true or false")

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class AgentState:
    """Rollout memory for ``num_envs`` envs: per-layer ring KV caches, a GRU hidden state or
    nothing (memory-free encoder)."""

    num_envs: int
    memory: Any


class Agent(nn.Module):
    """Online networks + the ``Policy`` protocol.

    Args:
        spec: the environment spec (observation keys, action space, goals).
        config: :class:`AgentConfig`.
    """

    use_native_step: bool = True
    """CPU ``act`` takes the native C++ step when supported (:attr:`native_step`,
    amago_fast.nets.native_step); set False on an instance to force the PyTorch rollout path."""

    def __init__(self, spec: EnvSpec, config: AgentConfig | None = None) -> None:
        super().__init__()
        config = config or AgentConfig()
        config.validate()
        self.spec, self.config = spec, config
        self.obs_keys = [f.name for f in spec.observation]
        self.tstep_encoder = TimestepEncoder(
            spec, config.tstep_hidden, config.tstep_out, config.tstep_layers,
            config.normalize_inputs, config.image_features,
        )
        d_in = config.tstep_out
        if config.traj_encoder == "transformer":
            self.traj_encoder: nn.Module = TransformerTrajEncoder(
                d_in, config.d_model, config.num_layers, config.num_heads,
                config.d_ff or 4 * config.d_model, config.context_len, config.pos_emb,
                config.max_time_index, config.dropout_emb, config.dropout_ff,
                config.dropout_attn_out, config.sigma_reparam, config.normformer_norms,
            )
        elif config.traj_encoder == "gru":
            self.traj_encoder = GRUTrajEncoder(d_in, config.d_model, config.num_layers,
                                               config.dropout_emb)
        else:
            self.traj_encoder = FFTrajEncoder(d_in, config.d_model, config.num_layers,
                                              config.dropout_ff)
        self.num_gammas = len(config.gammas)
        self.register_buffer("gammas", torch.tensor(config.gammas, dtype=torch.float32))
        self.actor = ActorHead(config.d_model, spec.action, self.num_gammas, config.actor_hidden,
                               config.actor_layers)
        out_dim = config.num_bins if config.critic_type == "twohot" else 1
        # True: ``critics(state) -> (N, E, G, A, out)``; False: ``critics(state, action)``.
        self.state_critic = spec.action.kind == "discrete" and config.discrete_critic == "state"
        if config.critic_model_input and self.state_critic:
            raise ValueError("AgentConfig.critic_model_input=True: the discrete state critic "
                             "reads no action; set discrete_critic='action_input'")
        if self.state_critic:
            self.critics: nn.Module = StateCriticEnsemble(
                config.d_model, spec.action.n, num_gammas=self.num_gammas,
                num_critics=config.num_critics, hidden_dim=config.critic_hidden, out_dim=out_dim,
            )
        else:
            # critic_model_input: the action input is [action, model prediction (measured + 1)]
            model_dim = self.tstep_encoder.measured_dim + 1 if config.critic_model_input else 0
            self.critics = CriticEnsemble(
                config.d_model, self.actor.critic_action_dim + model_dim,
                num_critics=config.num_critics,
                num_gammas=self.num_gammas, hidden_dim=config.critic_hidden, out_dim=out_dim,
            )
        if config.critic_type == "twohot":
            bins = torch.linspace(-config.twohot_range, config.twohot_range, config.num_bins)
        else:
            bins = torch.zeros(0)
        self.register_buffer("twohot_bins", bins)
        # Rollout (act) caches: see _rollout_plans / refresh_inference_cache.
        self._inference_plan: tuple | None = None
        self._inference_tensors: list[torch.Tensor] | None = None
        self._row_shapes: dict[str, tuple] | None = None
        self._act_low: torch.Tensor | None = None
        self._act_half_range: torch.Tensor | None = None
        # The native CPU step of these networks (its engine follows the rollout plans).
        self.native_step = NativeStep(self.tstep_encoder, self.traj_encoder, self.actor)

    @property
    def device(self) -> torch.device:
        return self.gammas.device

    # ----------------------------------------------------------------------------- training
    def encode(
        self, rows: dict[str, torch.Tensor], time_index: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Windows (B, L, …) → state embeddings (B, L, d_model)."""
        emb = self.tstep_encoder(rows, time_index)
        return self.traj_encoder(emb, time_index, mask)

    # ------------------------------------------------------------------------------- policy
    def init_state(self, num_envs: int) -> AgentState:
        """Empty rollout memory for ``num_envs`` envs."""
        if not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise ValueError(f"init_state: num_envs must be a positive integer, got {num_envs!r}")
        if self.config.traj_encoder == "transformer":
            memory = self.traj_encoder.init_state(int(num_envs), self.device,
                                                  self.rollout_kv_dtype())
        else:  # the GRU's hidden state / the FF encoder's None: no cache to store narrower
            memory = self.traj_encoder.init_state(int(num_envs), self.device)
        return AgentState(int(num_envs), memory)

    def rollout_kv_dtype(self) -> torch.dtype:
        """The dtype :meth:`init_state` gives the KV caches (``AgentConfig.kv_cache_dtype``
        with "auto" resolved: float16 when the native CPU step runs this agent, else float32).
        Either path reads either dtype, so a state outlives a switch of path."""
        kv = self.config.kv_cache_dtype
        if kv == "auto":
            kv = "float16" if self.runs_native_step() else "float32"
        return getattr(torch, kv)

    def reset_state(self, state: AgentState, env_ids: np.ndarray) -> AgentState:
        """Clear the memory of the envs in ``env_ids`` (a new rollout starts there)."""
        ids = np.asarray(env_ids).reshape(-1)
        if ids.size == 0:
            return state
        if not np.issubdtype(ids.dtype, np.integer) or ids.min() < 0 or ids.max() >= state.num_envs:
            raise ValueError(f"reset_state: env_ids must be integers in [0, {state.num_envs}), "
                             f"got {ids}")
        ids = ids.astype(np.int64, copy=False)
        # The Transformer's ring caches take the NumPy ids as they are (CPU resets are NumPy
        # assignments); the GRU state and custom encoders get a tensor.
        arg = (ids if type(self.traj_encoder) is TransformerTrajEncoder
               else torch.as_tensor(ids, device=self.device))
        state.memory = self.traj_encoder.reset_state(state.memory, arg)
        return state

    def _check_env_ids(self, env_ids: Any, state: AgentState) -> np.ndarray | None:
        """``env_ids`` of an ``act`` call → validated int64 array, or None for all envs."""
        if env_ids is None:
            return None
        ids = np.asarray(env_ids).reshape(-1)
        if ids.size and not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"act: env_ids must be integers, got {ids.dtype}")
        ids = ids.astype(np.int64, copy=False)
        if ids.size and (ids.min() < 0 or ids.max() >= state.num_envs):
            raise ValueError(f"act: env_ids must be in [0, {state.num_envs}), got {ids.tolist()}")
        if np.unique(ids).size != ids.size:
            raise ValueError(f"act: env_ids has repeated ids: {ids.tolist()}")
        return ids

    def _check_rows(self, rows: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
        """Validate the rows of an ``act`` call (keys, shapes, finite time_index) → NumPy dict."""
        shapes = self._row_shapes
        if shapes is None:
            shapes = {f.name: f.shape for f in self.spec.buffer_fields()}
            shapes["time_index"] = ()
            shapes = {k: shapes[k] for k in (*self.obs_keys, "action", "reward", "time_index")}
            self._row_shapes = shapes
        missing = [k for k in shapes if k not in rows]
        if missing:
            raise ValueError(f"act: rows are missing keys {missing}")
        out = {}
        for k, shape in shapes.items():
            arr = rows[k]
            if not isinstance(arr, np.ndarray):
                arr = np.asarray(arr.cpu() if isinstance(arr, torch.Tensor) else arr)
            if arr.shape[1:] != shape or arr.shape[0] != n:
                raise ValueError(f"act: rows[{k!r}] has shape {arr.shape}, expected "
                                 f"{(n, *shape)}")
            out[k] = arr
        ti = out["time_index"]
        if not np.issubdtype(ti.dtype, np.integer):
            raise ValueError(f"act: rows['time_index'] must be integers, got {ti.dtype}")
        if n and ti.min() < 0:
            raise ValueError("act: rows['time_index'] must be >= 0")
        out["time_index"] = ti.astype(np.int64, copy=False)
        return out

    def _rows_to_tensors(self, rows: dict[str, np.ndarray], n: int) -> dict[str, torch.Tensor]:
        """Validated rows as tensors on the agent's device (the generic, non-CPU path)."""
        return {k: torch.as_tensor(v, device=self.device)
                for k, v in self._check_rows(rows, n).items()}

    def _inference_key(self) -> tuple:
        """Identity of every tensor the policy step reads: (storage pointer, in-place version).
        Optimizer steps, ``load_state_dict`` and normaliser updates bump versions in place;
        ``.to()`` changes pointers. Computed per ``act`` (~10 µs for the default agent)."""
        tensors = self._inference_tensors
        if tensors is None:
            mods = (self.tstep_encoder, self.traj_encoder, self.actor)
            tensors = [t for m in mods for t in (*m.parameters(), *m.buffers())]
            self._inference_tensors = tensors
        # Versions of all (cheap attribute reads); one storage pointer catches ``.to()``, which
        # moves every tensor (it keeps the version counters).
        return (tensors[0].data_ptr(), *[t._version for t in tensors])

    def refresh_inference_cache(self) -> None:
        """Drop the cached rollout plans (parameter-derived tensors: σ-reparam effective weights,
        positions, normaliser constants). Needed only after *replacing* parameter objects
        (in-place changes — optimizer steps, ``load_state_dict``, normaliser updates, ``.to()``
        — are detected automatically)."""
        self._inference_plan = None
        self._inference_tensors = None
        self._act_low = self._act_half_range = None
        self.native_step = NativeStep(self.tstep_encoder, self.traj_encoder, self.actor)

    def _rollout_plans(self) -> tuple:
        key = self._inference_key()
        plan = self._inference_plan
        if plan is None or plan[0] != key:
            # Built outside inference mode: normal tensors, safe to deep-copy with the agent.
            with torch.inference_mode(False), torch.no_grad():
                actor = mlp_plan(self.actor.net)
                # Only the main (last) gamma's action parameters are needed at act time.
                P = self.actor.param_dim
                _, bias, wt = actor[-1]
                actor[-1] = ("linear", bias[-P:].contiguous(), wt[:, -P:].contiguous())
                plan = (key, self.tstep_encoder.rollout_plan(), self.traj_encoder.rollout_plan(),
                        actor)
            self._inference_plan = plan
        return plan

    def runs_native_step(self) -> bool:
        """``act`` takes the native step (enabled, supported, plain actor) — what
        ``kv_cache_dtype="auto"`` keys on."""
        return (self.use_native_step and self.native_step.enabled()
                and self.native_step.unsupported_reason() is None and self._actor_plain())

    def native_step_params(self, rows: dict[str, np.ndarray], state: AgentState,
                           ids: np.ndarray | None, use_simd: bool = True) -> np.ndarray | None:
        """The main gamma's distribution parameters (b, P) from the native step for checked
        ``rows`` of the envs ``ids`` (None: all), advancing ``state`` in place; None (nothing
        changed) when the native step does not apply (switched off, unsupported networks or
        state, an actor with hooks)."""
        if not (self.use_native_step and self._actor_plain()):
            return None
        return self.native_step.params(self._rollout_plans(), rows, state.memory, ids, use_simd)

    def _actor_plain(self) -> bool:
        """The actor is the stock ActorHead with no hooks or forward override (then act may
        run its MLP from the cached plan, main gamma only); else it is called as a module."""
        a = self.actor
        return (self.device.type == "cpu" and type(a) is ActorHead and "forward" not in vars(a)
                and not a._forward_hooks and not a._forward_pre_hooks)

    def _actor_rollout(self, h: torch.Tensor, sample: bool) -> np.ndarray:
        """Main-gamma action from the cached actor plan; the distribution math in NumPy on the
        (b, P) parameters (a few µs per op instead of torch's per-op dispatch)."""
        return self._actions_from_params(run_mlp_plan(self._inference_plan[3], h).numpy(),
                                         sample)

    def _actions_from_params(self, params: np.ndarray, sample: bool) -> np.ndarray:
        """Main-gamma distribution parameters (b, P) → actions (shared by the PyTorch and the
        native step, so both draw the same random numbers)."""
        spec = self.spec.action
        b = params.shape[0]
        if spec.kind == "discrete":
            if not sample:
                return params.argmax(-1).astype(np.int32)
            # Inverse CDF of softmax(params) at torch-drawn uniforms (torch.manual_seed
            # governs rollouts), one native call (native_step.sample_categorical).
            return sample_categorical(params, torch.rand(b, dtype=torch.float64).numpy())
        if spec.kind == "multidiscrete":
            # One categorical per component, its logits the next nvec[i] columns (ActorHead's
            # split); sampled component by component, each with its own uniforms.
            out = np.empty((b, len(spec.nvec)), np.int32)
            col = 0
            for i, n in enumerate(spec.nvec):
                logits = params[:, col:col + n]
                out[:, i] = (logits.argmax(-1) if not sample else sample_categorical(
                    np.ascontiguousarray(logits), torch.rand(b, dtype=torch.float64).numpy()))
                col += n
            return out
        d = spec.shape[0]
        mean = params[:, :d]
        if sample:
            log_std = bounded_log_std(torch.from_numpy(params[:, d:])).numpy()
            mean = mean + np.exp(log_std) * torch.randn(b, d).numpy()
        low = np.asarray(spec.low, np.float32)
        high = np.asarray(spec.high, np.float32)
        return (low + (np.tanh(mean) + 1.0) * 0.5 * (high - low)).astype(np.float32)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self.refresh_inference_cache()  # a copy has its own tensors: rebuild lazily

    def act(self, rows: dict[str, np.ndarray], state: AgentState, sample: bool,
            env_ids: np.ndarray | None = None):
        """One step: rows (b, …) as in a training row → (actions, state).

        ``env_ids`` (b,) names the envs the rows belong to (async collection); None means all
        ``state.num_envs`` envs in order. Actions are NumPy: int32 (b,) discrete, int32 (b, k)
        multi-discrete, float32 (b, d) continuous within the env's bounds; taken from the main
        (last) gamma's head. No critic is evaluated. A rejected call leaves ``state`` unchanged.

        Speed (CPU): the network part runs as one native C++ call when supported
        (``amago_fast.nets.native_step``: vector or image observations, Transformer/GRU/FF
        encoder, any action kind, float32;
        set ``use_native_step = False`` to force PyTorch), reading the same cached plans and
        writing the same ring KV caches. Otherwise (the PyTorch path) parameter-derived tensors
        are cached per parameter version (see :meth:`refresh_inference_cache`), features are
        assembled by NumPy into preallocated memory, and each layer runs ~15 aten ops over the
        filled prefix of its ring KV cache.
        """
        ids = self._check_env_ids(env_ids, state)
        n = state.num_envs if ids is None else ids.size
        r = self._check_rows(rows, n)
        if n == 0:
            return self._empty_actions(), state
        if self.device.type == "cpu":
            # One C++ call for the whole network part when supported (native_step); None: the
            # PyTorch rollout path below, unchanged. The native path runs no autograd op, so it
            # skips the inference-mode context (~10 µs a call as a decorator).
            params = self.native_step_params(r, state, ids)
            if params is not None:
                return self._actions_from_params(params, sample), state
        with torch.inference_mode():
            return self._act_torch(r, state, sample, ids)

    def _act_torch(self, r: dict[str, np.ndarray], state: AgentState, sample: bool,
                   ids: np.ndarray | None):
        """The PyTorch rollout path of :meth:`act` (validated rows; in inference mode)."""
        ti = r["time_index"]
        if self.device.type == "cpu":
            _, tplan, jplan, _ = self._rollout_plans()
            emb = self.tstep_encoder.rollout_forward(tplan, r, ti)
            h, state.memory = self.traj_encoder.rollout_step(jplan, emb, ti, state.memory, ids)
        else:
            _, _, jplan, _ = self._rollout_plans()
            t = {k: torch.as_tensor(v, device=self.device) for k, v in r.items()}
            emb = self.tstep_encoder(t, t["time_index"])
            h, state.memory = self.traj_encoder.rollout_step(jplan, emb, ti, state.memory, ids)
        if self._actor_plain():
            return self._actor_rollout(h, sample), state
        # Through the module call, so forward hooks/overrides on the actor see h.
        params = self.actor(h)[:, -1]
        action = self.actor.act(params, sample)
        spec = self.spec.action
        if spec.kind == "continuous":
            if self._act_low is None:
                self._act_low = torch.tensor(spec.low, device=action.device)
                self._act_half_range = 0.5 * (torch.tensor(spec.high, device=action.device)
                                              - self._act_low)
            action = self._act_low + (action + 1.0) * self._act_half_range
            return action.float().cpu().numpy(), state
        return action.to(torch.int32).cpu().numpy(), state

    def _empty_actions(self) -> np.ndarray:
        a = self.spec.action
        if a.kind == "continuous":
            return np.zeros((0, *a.shape), np.float32)
        if a.kind == "multidiscrete":
            return np.zeros((0, len(a.nvec)), np.int32)
        return np.zeros(0, np.int32)
