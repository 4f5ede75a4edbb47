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

import torch
from torch import nn

from amago_fast.kernels.attention import causal_attention
from amago_fast.kernels.decode import RingKVCache, decode_attention
from amago_fast.nets.layers import Dropout, make_linear, mlp, sinusoidal_embedding


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
        cache.append(k.to(cache_dtype(cache)), v.to(cache_dtype(cache)))
        attn = decode_attention(q.to(cache_dtype(cache)), cache).to(x.dtype)
        return self._feed_forward(self._attn_out(x, attn))


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

    def reset_state(self, state: list[RingKVCache], env_ids: torch.Tensor) -> list[RingKVCache]:
        for cache in state:
            cache.reset(env_ids)
        return state

    def step(self, x: torch.Tensor, time_index: torch.Tensor, state: list[RingKVCache]):
        """x (N, d_in), time_index (N,) → ((N, d_model), state). Cost is O(context_len)."""
        h = self._embed(x, time_index)
        for layer, cache in zip(self.layers, state):
            h = layer.step(h, cache)
        return self.norm_out(h), state


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
