"""Trajectory encoders: a sequence of timestep embeddings → a sequence of state embeddings.

Three encoders share one interface (training forward over windows, incremental ``step`` for
rollouts):

- :class:`TransformerTrajEncoder` — causal Transformer, pre-norm with NormFormer's extra norms
  (Shleifer et al. 2021: a LayerNorm after self-attention and one after the first FF linear),
  σ-reparam linears, leaky ReLU, sinusoidal or learned positions on the *global* time index,
  attention through ``amago_fast.kernels.attention`` with ``window`` = context capacity, so a
  rollout's ring KV cache of that capacity computes exactly what training computes.
- :class:`GRUTrajEncoder` — recurrent ablation (hidden state carried between steps).
- :class:`FFTrajEncoder` — memory-free ablation (each step on its own).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from amago_fast.kernels.attention import causal_attention
from amago_fast.kernels.decode import (
    DecodeStep,
    RingKVCache,
    decode_attention,
    decode_step_attention,
    to_cache_dtype,
)
from amago_fast.nets.layers import (
    Dropout,
    SigmaReparamLinear,
    make_linear,
    mlp,
    sinusoidal_embedding,
)


class TransformerLayer(nn.Module):
    """One pre-norm block: x + Drop(LN(Attn(LN(x)))) then x + Drop(W2 Drop(LN(act(W1 LN(x)))))."""

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        d_ff: int,
        dropout_ff: float,
        dropout_attn_out: float,
        sigma_reparam: bool,
        normformer_norms: bool,
    ) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} is not divisible by num_heads={num_heads}")
        self.num_heads, self.head_dim = num_heads, d_model // num_heads
        self.norm_attn_in = nn.LayerNorm(d_model)
        self.qkv = make_linear(d_model, 3 * d_model, sigma_reparam)
        self.attn_proj = make_linear(d_model, d_model, sigma_reparam)
        self.norm_attn_out = nn.LayerNorm(d_model) if normformer_norms else nn.Identity()
        self.drop_attn = Dropout(dropout_attn_out)
        self.norm_ff_in = nn.LayerNorm(d_model)
        self.ff1 = make_linear(d_model, d_ff, sigma_reparam)
        self.act = nn.LeakyReLU()
        self.norm_ff_mid = nn.LayerNorm(d_ff) if normformer_norms else nn.Identity()
        self.drop_ff_mid = Dropout(dropout_ff)
        self.ff2 = make_linear(d_ff, d_model, sigma_reparam)
        self.drop_ff_out = Dropout(dropout_ff)
        # The training attention op (swappable, e.g. for the materialising baseline in
        # amago_fast.bench.update); same signature as causal_attention.
        self.attention_fn = causal_attention
        # Set by the encoder when an attention-entropy measurement is requested.
        self.record_entropy = False
        self.last_entropy: torch.Tensor | None = None

    def _split_qkv(self, h: torch.Tensor):
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        shape = (*h.shape[:-1], self.num_heads, self.head_dim)
        return q.reshape(shape), k.reshape(shape), v.reshape(shape)

    def _feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm_ff_mid(self.act(self.ff1(self.norm_ff_in(x))))
        return x + self.drop_ff_out(self.ff2(self.drop_ff_mid(h)))

    def _attn_out(self, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        attn = attn.reshape(*attn.shape[:-2], -1)
        return x + self.drop_attn(self.norm_attn_out(self.attn_proj(attn)))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, window: int | None):
        q, k, v = self._split_qkv(self.norm_attn_in(x))
        if self.record_entropy:
            self.last_entropy = attention_entropy(q, k, mask, window)
        attn = self.attention_fn(q, k, v, valid_mask=mask, window=window)
        return self._feed_forward(self._attn_out(x, attn))

    def step(self, x: torch.Tensor, cache: RingKVCache) -> torch.Tensor:
        """One new timestep per env: x (N, d_model); appends its key/value to ``cache``."""
        q, k, v = self._split_qkv(self.norm_attn_in(x))
        dt = cache_dtype(cache)
        cache.append(to_cache_dtype(k, dt), to_cache_dtype(v, dt))
        attn = decode_attention(to_cache_dtype(q, dt), cache).to(x.dtype)
        return self._feed_forward(self._attn_out(x, attn))


def _linear_wt(lin: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(bias, effective Wᵀ) of a plain or σ-reparam linear layer, detached."""
    w = lin.effective_weight() if isinstance(lin, SigmaReparamLinear) else lin.weight
    # Contiguous Wᵀ: addmm on it measured ~15% faster than on the transposed view (8x64 @ 64x192).
    return lin.bias.detach(), w.detach().t().contiguous()


def _norm(m: nn.Module) -> tuple | None:
    if isinstance(m, nn.Identity):
        return None
    return (m.normalized_shape, m.weight.detach(), m.bias.detach(), m.eps)


class LayerRolloutPlan:
    """One layer's parameter-derived tensors for rollouts: σ-reparam effective weights
    (transposed for ``addmm``), the softmax scale folded into the query rows of the fused qkv
    projection, LayerNorm parameters. Built once per parameter version."""

    def __init__(self, layer: TransformerLayer) -> None:
        d = layer.num_heads * layer.head_dim
        b_qkv, wt_qkv = _linear_wt(layer.qkv)
        scale = layer.head_dim ** -0.5
        self.wt_qkv = wt_qkv.clone()
        self.wt_qkv[:, :d] *= scale
        self.b_qkv = b_qkv.clone()
        self.b_qkv[:d] *= scale
        self.b_proj, self.wt_proj = _linear_wt(layer.attn_proj)
        self.b_ff1, self.wt_ff1 = _linear_wt(layer.ff1)
        self.b_ff2, self.wt_ff2 = _linear_wt(layer.ff2)
        self.norm_attn_in = _norm(layer.norm_attn_in)
        self.norm_attn_out = _norm(layer.norm_attn_out)
        self.norm_ff_in = _norm(layer.norm_ff_in)
        self.norm_ff_mid = _norm(layer.norm_ff_mid)
        self.slope = layer.act.negative_slope
        self.d, self.num_heads, self.head_dim = d, layer.num_heads, layer.head_dim


def _layer_rollout_step(
    p: LayerRolloutPlan, h: torch.Tensor, cache: RingKVCache, step: DecodeStep
) -> torch.Tensor:
    """``TransformerLayer.step`` for the envs of ``step``, one aten op per block part."""
    b, d = h.shape
    x = F.layer_norm(h, *p.norm_attn_in)
    qkv = torch.addmm(p.b_qkv, x, p.wt_qkv)
    cache.write(step, to_cache_dtype(qkv[:, d:], cache.dtype).view(b, 2, p.num_heads, p.head_dim))
    cache.commit(step)
    q = qkv[:, :d].view(b, p.num_heads, p.head_dim)
    if cache.device.type != "cpu":  # the Triton kernel reads q in the cache's io dtype
        q = to_cache_dtype(q, cache.dtype)
    attn = decode_step_attention(q, cache, step)
    a = torch.addmm(p.b_proj, attn.reshape(b, d).to(h.dtype), p.wt_proj)
    if p.norm_attn_out is not None:
        a = F.layer_norm(a, *p.norm_attn_out)
    h = h + a
    x = F.layer_norm(h, *p.norm_ff_in)
    x = F.leaky_relu_(torch.addmm(p.b_ff1, x, p.wt_ff1), p.slope)
    if p.norm_ff_mid is not None:
        x = F.layer_norm(x, *p.norm_ff_mid)
    return torch.addmm(h, x, p.wt_ff2).add_(p.b_ff2)


# Rows of the tabulated sinusoidal positions (16 MiB at d_model 256); later steps compute theirs.
SINUSOIDAL_TABLE_MAX = 16384


class TrajRolloutPlan:
    """The encoder's parameter-derived tensors for rollouts: the position table with the input
    projection's bias added (sinusoidal: computed for time indices < ``len``, grown on demand),
    the input projection Wᵀ, per-layer plans, the output norm."""

    def __init__(self, enc: TransformerTrajEncoder) -> None:
        self.wt_in = enc.in_proj.weight.detach().t().contiguous()
        self.b_in = enc.in_proj.bias.detach()
        self.learned = enc.pos_table is not None
        self.max_time_index = enc.max_time_index
        if self.learned:
            self.pos_np = (enc.pos_table.weight.detach() + self.b_in).cpu().numpy()
        else:
            self.pos_np = self._sinusoidal(1024, enc.d_model)
        self.d_model = enc.d_model
        self.layers = [LayerRolloutPlan(layer) for layer in enc.layers]
        self.norm_out = _norm(enc.norm_out)

    def _sinusoidal(self, length: int, d_model: int) -> np.ndarray:
        pos = sinusoidal_embedding(torch.arange(length, device=self.b_in.device), d_model)
        return (pos + self.b_in).cpu().numpy()

    def positions(self, time_index: np.ndarray) -> torch.Tensor:
        """(b,) int64 → (b, d_model) position embedding + input bias."""
        if self.learned:
            idx = np.clip(time_index, 0, self.max_time_index - 1)
        else:
            idx = time_index
            top = int(idx.max()) if idx.size else 0
            if top >= self.pos_np.shape[0]:
                if top >= SINUSOIDAL_TABLE_MAX:  # very long rollouts: compute, don't tabulate
                    ti = torch.from_numpy(idx).to(self.b_in.device)
                    return sinusoidal_embedding(ti, self.d_model) + self.b_in
                self.pos_np = self._sinusoidal(
                    min(max(2 * self.pos_np.shape[0], top + 1), SINUSOIDAL_TABLE_MAX),
                    self.d_model)
        return torch.from_numpy(self.pos_np[idx])


def cache_dtype(cache: RingKVCache) -> torch.dtype:
    """The dtype a ring cache stores (attribute name per the kernels contract)."""
    return getattr(cache, "dtype", torch.float32)


@torch.no_grad()
def attention_entropy(
    q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None, window: int | None
) -> torch.Tensor:
    """Mean entropy (nats) of the causal attention distributions of valid queries.

    Materialises the (B, H, L, L) scores, so it is only run when a measurement is requested.
    """
    B, L, H, D = q.shape
    qf, kf = q.float().transpose(1, 2), k.float().transpose(1, 2)
    scores = qf @ kf.transpose(-1, -2) / D**0.5
    i = torch.arange(L, device=q.device)
    allowed = i[None, :] <= i[:, None]
    if window is not None:
        allowed = allowed & (i[:, None] - i[None, :] < window)
    allowed = allowed[None, None].expand(B, H, L, L)
    if mask is not None:
        allowed = allowed & mask[:, None, None, :] & mask[:, None, :, None]
    scores = scores.masked_fill(~allowed, float("-inf"))
    rows_ok = allowed.any(-1)
    p = torch.softmax(scores.masked_fill(~rows_ok[..., None], 0.0), dim=-1)
    logp = torch.log(p.clamp_min(1e-30))
    ent = -(p * logp).masked_fill(~allowed, 0.0).sum(-1)
    return ent[rows_ok].mean() if rows_ok.any() else torch.zeros((), device=q.device)


class TransformerTrajEncoder(nn.Module):
    """Causal Transformer over timestep embeddings (see module docstring).

    Args:
        d_in: timestep embedding width.
        d_model, num_layers, num_heads, d_ff: Transformer sizes.
        context_len: attention window C (each step sees itself and the C-1 before it); also the
            capacity of the rollout ring KV cache.
        pos_emb: "sinusoidal" or "learned" (an embedding table of ``max_time_index`` rows; larger
            time indices share the last row).
        dropout_emb, dropout_ff, dropout_attn_out: dropout rates.
        sigma_reparam, normformer_norms: see :class:`TransformerLayer`.
    """

    def __init__(
        self,
        d_in: int,
        d_model: int,
        num_layers: int,
        num_heads: int,
        d_ff: int,
        context_len: int,
        pos_emb: str = "sinusoidal",
        max_time_index: int = 10_000,
        dropout_emb: float = 0.0,
        dropout_ff: float = 0.0,
        dropout_attn_out: float = 0.0,
        sigma_reparam: bool = True,
        normformer_norms: bool = True,
    ) -> None:
        super().__init__()
        if pos_emb not in ("sinusoidal", "learned"):
            raise ValueError(f"pos_emb must be 'sinusoidal' or 'learned', got {pos_emb!r}")
        self.d_model, self.d_out = d_model, d_model
        self.context_len, self.pos_emb_kind = context_len, pos_emb
        self.max_time_index = max_time_index
        self.num_heads, self.head_dim = num_heads, d_model // num_heads
        self.in_proj = nn.Linear(d_in, d_model)
        self.pos_table = nn.Embedding(max_time_index, d_model) if pos_emb == "learned" else None
        if self.pos_table is not None:
            nn.init.normal_(self.pos_table.weight, std=0.02)
        self.drop_emb = Dropout(dropout_emb)
        self.layers = nn.ModuleList(
            TransformerLayer(
                d_model, num_heads, d_ff, dropout_ff, dropout_attn_out, sigma_reparam,
                normformer_norms,
            )
            for _ in range(num_layers)
        )
        self.norm_out = nn.LayerNorm(d_model)

    def _embed(self, x: torch.Tensor, time_index: torch.Tensor) -> torch.Tensor:
        h = self.in_proj(x)
        if self.pos_table is not None:
            pos = self.pos_table(time_index.clamp(0, self.max_time_index - 1))
        else:
            pos = sinusoidal_embedding(time_index, self.d_model).to(h.dtype)
        return self.drop_emb(h + pos)

    def forward(
        self, x: torch.Tensor, time_index: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x (B, L, d_in), time_index (B, L) int64, mask (B, L) bool → (B, L, d_model)."""
        h = self._embed(x, time_index)
        for layer in self.layers:
            h = layer(h, mask, self.context_len)
        return self.norm_out(h)

    def set_record_entropy(self, on: bool) -> None:
        for layer in self.layers:
            layer.record_entropy = on
            layer.last_entropy = None

    def recorded_entropy(self) -> list[torch.Tensor]:
        return [layer.last_entropy for layer in self.layers if layer.last_entropy is not None]

    def init_state(self, num_envs: int, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32) -> list[RingKVCache]:
        return [
            RingKVCache(num_envs, self.context_len, self.num_heads, self.head_dim, dtype, device)
            for _ in self.layers
        ]

    def reset_state(self, state: list[RingKVCache],
                    env_ids: torch.Tensor | np.ndarray) -> list[RingKVCache]:
        for cache in state:
            cache.reset(env_ids)
        return state

    def step(self, x: torch.Tensor, time_index: torch.Tensor, state: list[RingKVCache]):
        """x (N, d_in), time_index (N,) → ((N, d_model), state). Cost is O(context_len)."""
        h = self._embed(x, time_index)
        for layer, cache in zip(self.layers, state):
            h = layer.step(h, cache)
        return self.norm_out(h), state

    def rollout_plan(self) -> TrajRolloutPlan:
        """Parameter-derived tensors for :meth:`rollout_step` (rebuild after any change)."""
        return TrajRolloutPlan(self)

    def rollout_step(
        self, plan: TrajRolloutPlan, x: torch.Tensor, time_index: np.ndarray,
        state: list[RingKVCache], env_ids: np.ndarray | None = None,
    ) -> tuple[torch.Tensor, list[RingKVCache]]:
        """Rollout step for the envs ``env_ids`` (validated; None = all, in order): x (b, d_in),
        time_index (b,) NumPy int64 → ((b, d_model), state); equal to :meth:`step`. The ring
        bookkeeping is planned once for all layers; per layer ~15 aten ops."""
        step = state[0].plan_step(env_ids)
        pos = plan.positions(time_index).to(x.device)
        h = torch.addmm(pos, x, plan.wt_in)
        for p, cache in zip(plan.layers, state):
            h = _layer_rollout_step(p, h, cache, step)
        return F.layer_norm(h, *plan.norm_out), state


class GRUTrajEncoder(nn.Module):
    """Recurrent ablation: a multi-layer GRU; the rollout state is its hidden state."""

    def __init__(self, d_in: int, d_model: int, num_layers: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.d_out, self.num_layers, self.d_model = d_model, num_layers, d_model
        self.in_proj = nn.Linear(d_in, d_model)
        self.gru = nn.GRU(d_model, d_model, num_layers, batch_first=True)
        self.drop = Dropout(dropout)
        self.norm_out = nn.LayerNorm(d_model)

    def forward(self, x, time_index, mask=None):
        """Windows come from one trajectory each and padding only trails, so no resets inside."""
        out, _ = self.gru(self.drop(self.in_proj(x)))
        return self.norm_out(out)

    def init_state(self, num_envs: int, device="cpu", dtype=torch.float32) -> torch.Tensor:
        return torch.zeros(self.num_layers, num_envs, self.d_model, device=device, dtype=dtype)

    def reset_state(self, state: torch.Tensor, env_ids: torch.Tensor) -> torch.Tensor:
        state[:, env_ids.to(state.device).long()] = 0.0
        return state

    def step(self, x, time_index, state):
        out, h = self.gru(self.in_proj(x).unsqueeze(1), state)
        return self.norm_out(out[:, 0]), h

    def rollout_plan(self) -> None:
        return None

    def rollout_step(self, plan, x, time_index, state, env_ids=None):
        """:meth:`step` for the envs ``env_ids`` (None = all); the hidden state is updated in
        place, so it stays a normal tensor whatever grad mode the step ran under."""
        if env_ids is None:
            out, h = self.gru(self.in_proj(x).unsqueeze(1), state)
            state.copy_(h)
        else:
            ids = torch.as_tensor(env_ids, device=state.device)
            out, h = self.gru(self.in_proj(x).unsqueeze(1), state[:, ids])
            state[:, ids] = h
        return self.norm_out(out[:, 0]), state


class FFTrajEncoder(nn.Module):
    """Memory-free ablation: an MLP applied to each timestep on its own."""

    def __init__(self, d_in: int, d_model: int, num_layers: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.d_out = d_model
        self.net = mlp(d_in, d_model, d_model, num_layers, dropout=dropout, out_norm=True)

    def forward(self, x, time_index, mask=None):
        return self.net(x)

    def init_state(self, num_envs: int, device="cpu", dtype=torch.float32) -> Any:
        return None

    def reset_state(self, state: Any, env_ids: torch.Tensor) -> Any:
        return state

    def step(self, x, time_index, state):
        return self.net(x), state

    def rollout_plan(self) -> None:
        return None

    def rollout_step(self, plan, x, time_index, state, env_ids=None):
        return self.net(x), state
