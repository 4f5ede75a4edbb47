"""Native (C++) rollout step of the stock networks on CPU, owned by the agent.

``Agent.act`` on CPU spends almost all its time in PyTorch's per-op dispatch (~40 aten ops of
10-25 µs each for the tiny agent: 1.9 ms per 8-env step). ``amago_fast._core.PolicyEngine``
runs the same network part of the step — timestep features and MLP, Transformer decode over
the ring KV caches (or a GRU over its hidden state, or the memory-free FF encoder), output
norm, the actor MLP of the main gamma — in one C++ call and returns the main gamma's
distribution parameters; sampling is shared with the PyTorch path (the agent turns parameters
into actions for both; discrete actions through :func:`sample_categorical`), so both paths
consume the same random numbers.

:class:`NativeStep` takes the encoders and the actor, and per call the rollout plans the agent
caches per parameter version (σ-reparam effective weights, softmax scale folded into the query
rows, normaliser constants): it reads the weights in place from those plans, so its engine is
rebuilt exactly when they are. It writes each step's keys/values into the *same*
``RingKVCache`` tensors the PyTorch path uses (zero-copy NumPy views) and increments their
counts, so ``init_state`` / ``reset_state`` / checkpoints keep working and the two paths can be
switched mid-rollout. It knows nothing of the agent (the agent imports this module, never the
reverse).

Used when ``_core`` has the engine and the networks are supported (see
:func:`unsupported_reason`): CPU, float32, float16 or int8 caches (``AgentConfig.kv_cache_dtype``;
"auto" picks float16 here), vector and image observations (stock CNNs run natively as im2col +
GEMM; others, or hooked ones, in PyTorch with the rest of the step native on their
embeddings), Transformer, GRU (the hidden state's rows updated in place, as the PyTorch path
does) or FF trajectory encoder, discrete, multi-discrete or continuous actions, stock module
types, an actor without hooks (the agent checks that before calling).
``AMAGO_FAST_NATIVE_POLICY=0`` in the environment, or ``agent.use_native_step = False``, forces
the PyTorch path.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import torch

from amago_fast._native import core as _core
from amago_fast.kernels.decode import RingKVCache
from amago_fast.nets.timestep import ImageEncoder, TimestepEncoder, mlp_plan
from amago_fast.nets.trajectory import FFTrajEncoder, GRUTrajEncoder, TransformerTrajEncoder

PolicyEngine = getattr(_core, "PolicyEngine", None) if _core is not None else None

ENABLED = os.environ.get("AMAGO_FAST_NATIVE_POLICY", "1") != "0"


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None


# Threads of the step's attention (the caller included; a shared team of persistent workers):
# AMAGO_FAST_POLICY_THREADS, default min(2, cores). Long contexts only: a layer is split once it
# reads enough cached keys to pay for the hand-off (PolicyEngine's parallel_min); the result
# is bit-identical whatever the count. Read at import; a bad value is a clear error.
THREADS = _env_int("AMAGO_FAST_POLICY_THREADS", 0) or min(2, os.cpu_count() or 1)
# Split threshold override for the engine (-1: the engine's measured default).
PARALLEL_MIN = _env_int("AMAGO_FAST_POLICY_PARALLEL_MIN", -1)

# Largest CNN work (multiply-adds of all image CNNs over the step's rows) the engine runs
# itself; above it PyTorch's convolutions (oneDNN) compute the embeddings and the engine takes
# them. Measured per 1-thread act on this 2-core VM with the stock CNN on 64x64x3 images
# (15.0M MACs an env): the engine's CNN 8.7 ms vs 9.8 ms with PyTorch's CNN feeding the engine
# at 8 envs (120M MACs), 75 vs 51 ms at 64 envs (960M); with the convolutions split over the
# 2-thread team, 52.6 vs 51.8 ms at 64 envs: equal here, and PyTorch's convolutions scale with
# its thread setting on bigger hosts. BENCHMARKS.md "Image observations".
NATIVE_CNN_MAX_MACS = _env_int("AMAGO_FAST_NATIVE_CNN_MAX_MACS", 250_000_000)

def available() -> bool:
    """The extension was built with the policy engine."""
    return PolicyEngine is not None


def _has_hooks(module: torch.nn.Module) -> bool:
    return any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())


def unsupported_reason(tstep_encoder: torch.nn.Module, traj_encoder: torch.nn.Module,
                       actor: torch.nn.Module, device: torch.device) -> str | None:
    """Why these networks on ``device`` cannot take the native step (None: they can). Static
    properties only; the per-call conditions (actor hooks, cache dtype) are checked per step."""
    if PolicyEngine is None:
        return "amago_fast._core was built without PolicyEngine"
    if device.type != "cpu":
        return f"device {device} (native step is CPU only)"
    enc = tstep_encoder
    if type(enc) is not TimestepEncoder or "rollout_forward" in vars(enc):
        return "custom timestep encoder"
    traj = traj_encoder
    if (type(traj) not in (TransformerTrajEncoder, GRUTrajEncoder, FFTrajEncoder)
            or "rollout_step" in vars(traj)):
        return f"trajectory encoder {type(traj).__name__} (custom: PyTorch path)"
    if isinstance(traj, (FFTrajEncoder, GRUTrajEncoder)) and _has_hooks(traj):
        # The PyTorch path calls these modules (the Transformer's runs from its plan).
        return f"hooks on the {type(traj).__name__}"
    if isinstance(traj, GRUTrajEncoder) and (
            type(traj.gru) is not torch.nn.GRU or not traj.gru.bias or traj.gru.bidirectional
            or traj.gru.proj_size or type(traj.in_proj) is not torch.nn.Linear
            or traj.in_proj.bias is None or type(traj.norm_out) is not torch.nn.LayerNorm
            or not traj.norm_out.elementwise_affine):
        return "a modified GRU encoder (stock nn.GRU with biases, Linear in_proj, LayerNorm)"
    if any(p.dtype != torch.float32 for m in (enc, traj, actor) for p in m.parameters()):
        return "non-float32 parameters"
    return None


def _conv_chain(cnn: ImageEncoder) -> list[tuple[torch.nn.Conv2d, float]] | None:
    """The (Conv2d, LeakyReLU slope) pairs of a stock image CNN the engine can run (square
    stride and padding, zero padding mode, no dilation or groups, biases, no hooks), else None
    (its module then runs in PyTorch and only its embedding enters the engine)."""
    if type(cnn) is not ImageEncoder or _has_hooks(cnn) or type(cnn.out) is not torch.nn.Linear:
        return None
    mods = list(cnn.convs)
    if len(mods) % 2 or not mods:
        return None
    chain = []
    for conv, act in zip(mods[::2], mods[1::2]):
        if (type(conv) is not torch.nn.Conv2d or type(act) is not torch.nn.LeakyReLU
                or conv.groups != 1 or conv.dilation != (1, 1) or conv.padding_mode != "zeros"
                or conv.bias is None or isinstance(conv.padding, str)
                or conv.stride[0] != conv.stride[1] or conv.padding[0] != conv.padding[1]):
            return None
        chain.append((conv, float(act.negative_slope)))
    return chain


def _image_configs(enc: TimestepEncoder) -> list[dict] | None:
    """The engine's CNN configs for every image key, or None when any CNN must run in PyTorch
    (then all do, and the engine takes their embeddings as raw fields)."""
    out = []
    for k in enc.image_keys:
        cnn = enc.image_encoders[k]
        chain = _conv_chain(cnn)
        if chain is None:
            return None
        h, w, c = enc.field_shapes[k]
        convs, macs = [], 0
        for conv, slope in chain:
            kh, kw = conv.kernel_size
            s, p = conv.stride[0], conv.padding[0]
            # (cout, cin, kh, kw) -> rows in the im2col order (ky, kx, ci).
            wt = conv.weight.detach().permute(2, 3, 1, 0).reshape(kh * kw * c, conv.out_channels)
            convs.append({"wt": _np(wt), "b": _np(conv.bias), "cin": c, "cout": conv.out_channels,
                          "kh": kh, "kw": kw, "stride": s, "pad": p, "slope": slope})
            h, w, c = (h + 2 * p - kh) // s + 1, (w + 2 * p - kw) // s + 1, conv.out_channels
            macs += h * w * wt.numel()
        # torch flattens (C, H, W); the engine's activations are (H, W, C).
        lin = cnn.out.weight.detach()
        wt_out = lin.reshape(lin.shape[0], c, h, w).permute(2, 3, 1, 0).reshape(h * w * c, -1)
        # "macs": multiply-adds per image (the engine ignores it; NATIVE_CNN_MAX_MACS reads it).
        out.append({"shape": tuple(enc.field_shapes[k]), "convs": convs, "wt_out": _np(wt_out),
                    "b_out": _np(cnn.out.bias), "macs": macs + wt_out.numel()})
    return out


def _np(t: torch.Tensor) -> np.ndarray:
    """A float32 C-contiguous NumPy array of ``t``: a view when it already is one."""
    a = t.detach().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
    return np.ascontiguousarray(a, dtype=np.float32)


def _ops(plan: list[tuple]) -> list[tuple]:
    """An ``mlp_plan`` in the engine's form (Wᵀ made C-contiguous: a copy for the views)."""
    out: list[tuple] = []
    for op in plan:
        if op[0] == "linear":
            out.append(("linear", _np(op[2]), _np(op[1])))
        elif op[0] == "norm":
            out.append(("norm", _np(op[2]), _np(op[3]), float(op[4])))
        else:
            out.append(("leaky", float(op[1])))
    return out


def _norm(n: tuple | None) -> tuple | None:
    return None if n is None else (_np(n[1]), _np(n[2]), float(n[3]))


def _width(enc: TimestepEncoder, key: str) -> int:
    return int(np.prod(enc.field_shapes[key]))


def engine_config(tstep_encoder: TimestepEncoder, traj_encoder: torch.nn.Module,
                  plan: tuple) -> dict[str, Any]:
    """The engine's constructor dict from the rollout ``plan`` (the agent's cached
    ``(key, timestep plan, trajectory plan, actor plan)``): arrays are views of the plan
    tensors where contiguous."""
    _, tplan, jplan, aplan = plan
    enc = tstep_encoder
    a = enc.spec.action
    cfg: dict[str, Any] = {
        "norm_widths": [_width(enc, k) for k in enc.norm_keys],
        "raw_widths": [_width(enc, k) for k in enc.raw_keys],
        "images": _image_configs(enc) if enc.image_keys else [],
        "norm_mean": None if tplan.norm_mean is None else _np(tplan.norm_mean),
        "norm_std": None if tplan.norm_std is None else _np(tplan.norm_std),
        "clip": None if tplan.clip is None else float(tplan.clip),
        "action_kind": a.kind,
        "action_dim": enc.action_dim,
        "action_nvec": [int(n) for n in a.nvec] if a.kind == "multidiscrete" else None,
        "tstep": _ops(tplan.mlp),
        "actor": _ops(aplan),
    }
    if cfg["images"] is None:
        # A CNN the engine cannot run: every image key enters as a raw field after the raw
        # keys (their place in the features), its embedding computed by PyTorch each step.
        cfg["raw_widths"] += [enc.image_features] * len(enc.image_keys)
    if a.kind == "continuous":
        low = np.asarray(a.low, np.float32)
        cfg["act_low"] = _np(low)
        cfg["act_range"] = _np(np.asarray(a.high, np.float32) - low)
    traj = traj_encoder
    if isinstance(traj, FFTrajEncoder):
        cfg["traj"] = "ff"
        cfg["ff"] = _ops(mlp_plan(traj.net))
        return cfg
    if isinstance(traj, GRUTrajEncoder):
        # Copies of the module's weights, transposed (the engine is rebuilt with the plan, i.e.
        # after every parameter change, so copies never go stale).
        g = traj.gru
        cfg.update(traj="gru", d_model=traj.d_model, wt_in=_np(traj.in_proj.weight.t()),
                   b_in=_np(traj.in_proj.bias), norm_out=_norm(
                       ("norm", traj.norm_out.weight, traj.norm_out.bias, traj.norm_out.eps)))
        cfg["gru_layers"] = [
            {f"wt_{w}": _np(getattr(g, f"weight_{w}_l{i}").t()) for w in ("ih", "hh")}
            | {f"b_{w}": _np(getattr(g, f"bias_{w}_l{i}")) for w in ("ih", "hh")}
            for i in range(g.num_layers)
        ]
        return cfg
    d = jplan.d_model
    cfg.update(traj="transformer", d_model=d, wt_in=_np(jplan.wt_in), b_in=_np(jplan.b_in))
    if jplan.learned:
        cfg.update(pos="learned", pos_table=_np(jplan.pos_np))
    else:
        # The frequencies exactly as nets.layers.sinusoidal_embedding computes them (float32).
        half = d // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
        cfg.update(pos="sinusoidal", freqs=_np(freqs))
    cfg["layers"] = [
        {
            "heads": p.num_heads, "head_dim": p.head_dim, "slope": float(p.slope),
            "norm_attn_in": _norm(p.norm_attn_in), "norm_attn_out": _norm(p.norm_attn_out),
            "norm_ff_in": _norm(p.norm_ff_in), "norm_ff_mid": _norm(p.norm_ff_mid),
            "wt_qkv": _np(p.wt_qkv), "b_qkv": _np(p.b_qkv),
            "wt_proj": _np(p.wt_proj), "b_proj": _np(p.b_proj),
            "wt_ff1": _np(p.wt_ff1), "b_ff1": _np(p.b_ff1),
            "wt_ff2": _np(p.wt_ff2), "b_ff2": _np(p.b_ff2),
        }
        for p in jplan.layers
    ]
    cfg["norm_out"] = _norm(jplan.norm_out)
    return cfg


class StepEngine:
    """The engine built for one rollout plan, plus the NumPy views of the last state's ring
    caches (rebuilt when the state's cache objects change)."""

    __slots__ = ("plan", "engine", "reason", "use_simd", "native_images", "cnn_macs", "memory",
                 "caches", "kv", "counts", "scales")

    def __init__(self, plan: tuple, engine: Any, reason: str | None, use_simd: bool,
                 native_images: bool = False, cnn_macs: int = 0) -> None:
        self.plan, self.engine, self.reason, self.use_simd = plan, engine, reason, use_simd
        self.native_images = native_images  # the engine can run the CNNs (else PyTorch does)
        self.cnn_macs = cnn_macs  # multiply-adds of the engine's CNNs per env row
        self.memory: Any = None
        self.caches: tuple = ()
        self.kv: list[np.ndarray] = []
        self.counts: list[np.ndarray] = []
        self.scales: list[np.ndarray] | None = None

    def bind_memory(self, memory: Any) -> bool:
        """Point at the NumPy views of ``memory``'s ring caches; False when the memory is not
        CPU ``RingKVCache`` objects of one dtype among float32, float16 and int8 (then the
        PyTorch path runs)."""
        caches = self.caches
        if (self.memory is memory and len(memory) == len(caches)
                and all(c is c0 and c.kv is k0 for c, (c0, k0) in zip(memory, caches))):
            return True
        if not isinstance(memory, list) or not all(
                type(c) is RingKVCache and c.dtype == memory[0].dtype
                and c.dtype in (torch.float32, torch.float16, torch.int8)
                and c.counts_np is not None
                for c in memory):
            return False
        self.memory = memory
        self.caches = tuple((c, c.kv) for c in memory)
        self.kv = [c.kv.numpy() for c in memory]
        self.counts = [c.counts_np for c in memory]
        self.scales = ([c.scales_np for c in memory] if memory and memory[0].scales is not None
                       else None)
        return True


class NativeStep:
    """The native rollout step of one agent's networks: the timestep encoder, the trajectory
    encoder and the actor (held, never called here except image CNNs the engine cannot run),
    and the engine for the current rollout plan (built on first use after a parameter change).

    The engine is a C++ object: copies and pickles of the owner carry the networks' references
    but not the engine, which the copy builds lazily for its own tensors.
    """

    def __init__(self, tstep_encoder: TimestepEncoder, traj_encoder: torch.nn.Module,
                 actor: torch.nn.Module) -> None:
        self.tstep_encoder, self.traj_encoder, self.actor = tstep_encoder, traj_encoder, actor
        self._built: StepEngine | None = None

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_built"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._built = None

    def unsupported_reason(self) -> str | None:
        """Why the networks cannot take the native step (None: they can); their device is the
        actor's (the owner moves its modules together)."""
        device = next(self.actor.parameters()).device
        return unsupported_reason(self.tstep_encoder, self.traj_encoder, self.actor, device)

    def enabled(self) -> bool:
        """Not switched off by ``AMAGO_FAST_NATIVE_POLICY=0`` and the core has the engine."""
        return ENABLED and PolicyEngine is not None

    def built(self, plan: tuple, use_simd: bool = True) -> StepEngine:
        """The engine for ``plan`` (built when the plan or ``use_simd`` changed)."""
        entry = self._built
        if entry is not None and entry.plan is plan and entry.use_simd == use_simd:
            return entry
        reason = self.unsupported_reason()
        engine = None
        native_images, cnn_macs = False, 0
        if reason is None:
            with torch.inference_mode(False), torch.no_grad():
                cfg = engine_config(self.tstep_encoder, self.traj_encoder, plan)
                engine = PolicyEngine(cfg, use_simd, THREADS, PARALLEL_MIN)
            native_images = bool(cfg["images"])
            cnn_macs = sum(c["macs"] for c in cfg["images"] or ())
        entry = StepEngine(plan, engine, reason, use_simd, native_images, cnn_macs)
        self._built = entry
        return entry

    def engine(self, plan: tuple, use_simd: bool = True):
        """The engine for ``plan``, or None when the networks are not supported."""
        return self.built(plan, use_simd).engine

    def params(self, plan: tuple, rows: dict[str, np.ndarray], memory: Any,
               ids: np.ndarray | None, use_simd: bool = True) -> np.ndarray | None:
        """The main gamma's distribution parameters (b, P) for validated ``rows`` (the agent's
        checked act rows) of the envs ``ids`` (None: all), advancing ``memory`` (ring caches /
        GRU hidden state) in place; None (nothing changed) when the native step does not apply.
        The caller has checked that the actor is the stock head without hooks."""
        if not self.enabled():
            return None
        entry = self.built(plan, use_simd)
        engine = entry.engine
        if engine is None:
            return None
        hidden = None
        if type(self.traj_encoder) is TransformerTrajEncoder:
            if not entry.bind_memory(memory):
                return None
            kv, counts, scales = entry.kv, entry.counts, entry.scales
        else:
            kv = counts = []
            scales = None
            if type(self.traj_encoder) is GRUTrajEncoder:
                if not (isinstance(memory, torch.Tensor) and memory.device.type == "cpu"
                        and memory.dtype == torch.float32 and memory.is_contiguous()):
                    return None  # the PyTorch path takes (or refuses) any other state
                hidden = memory.detach().numpy()  # a view: the engine updates the rows in place
        enc = self.tstep_encoder
        fields = [_contig(rows[k]) for k in enc.norm_keys]
        if enc.raw_keys:
            fields += [_contig(rows[k]) for k in enc.raw_keys]
        ti = rows["time_index"]
        images = None
        if entry.native_images:
            if any(_has_hooks(enc.image_encoders[k]) for k in enc.image_keys):
                return None  # hooked after the engine was built: they must see a module call
            if ti.shape[0] * entry.cnn_macs <= NATIVE_CNN_MAX_MACS:
                images = [np.ascontiguousarray(rows[k], dtype=np.uint8) for k in enc.image_keys]
            else:  # a large batch of large images: PyTorch's convolutions, then the engine
                with torch.inference_mode():
                    images = [e.numpy() for e in enc.image_embeddings(rows)]
        elif enc.image_keys:
            # CNNs the engine cannot run stay in PyTorch (called as modules: hooks see the
            # call); their embeddings enter as the last raw fields, the rest runs natively.
            with torch.inference_mode():
                fields += [e.numpy() for e in enc.image_embeddings(rows)]
        out = np.empty((ti.shape[0], engine.param_dim), np.float32)
        engine.step(fields, _contig(rows["action"]), _contig(rows["reward"]), _contig(ti), kv,
                    counts, None if ids is None else _contig(ids), out, scales, hidden, images)
        return out


_SAMPLE_CATEGORICAL = getattr(_core, "sample_categorical", None) if _core is not None else None


def sample_categorical_reference(params: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Actions (b,) int32 drawn from softmax(``params`` (b, n)) by inverse CDF with the
    uniforms ``u`` (b,) float64 in [0, 1): the number of cumulative masses (float32) below
    ``u * total`` (float64), capped at n - 1. The NumPy oracle of ``sample_categorical``."""
    with np.errstate(invalid="ignore"):  # inf - inf in a +inf row: NaN, action 0 (documented)
        z = np.exp(params - params.max(-1, keepdims=True))
    cdf = np.cumsum(z, -1)
    target = u * cdf[:, -1]
    return np.minimum((cdf < target[:, None]).sum(-1), params.shape[-1] - 1).astype(np.int32)


def sample_categorical(params: np.ndarray, u: np.ndarray) -> np.ndarray:
    """:func:`sample_categorical_reference` in one native call (``_core.sample_categorical``:
    ~1 µs for 8 rows instead of ~20 µs of NumPy ops, measured in BENCHMARKS.md); the NumPy
    form when the extension lacks it. The two can differ only where the last bit of a float32
    exp moves a CDF boundary across ``u``."""
    if _SAMPLE_CATEGORICAL is None:
        return sample_categorical_reference(params, u)
    out = np.empty(params.shape[0], np.int32)
    _SAMPLE_CATEGORICAL(np.ascontiguousarray(params, np.float32),
                        np.ascontiguousarray(u, np.float64), out)
    return out


def _contig(a: np.ndarray) -> np.ndarray:
    """C-contiguous, float16 widened to float32 (exact; the engine reads no half floats)."""
    if a.dtype == np.float16:
        return np.ascontiguousarray(a, dtype=np.float32)
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)
