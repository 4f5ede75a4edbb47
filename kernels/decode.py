"""Single-step attention decode for rollouts over a per-env ring-buffer KV cache.

Each attention layer keeps one :class:`RingKVCache`: keys/values ``(N, C, H, D)`` for ``N`` envs
and capacity ``C``, plus per-env step counts. Step ``t`` of env ``n`` (counted since its last reset)
is written to slot ``t % C``: once the cache is full the oldest entry is overwritten in place, so
nothing is ever copied or shifted and the per-step cost stops growing at ``C``.

Per step the policy calls ``cache.append(k, v)`` and then ``decode_attention(q, cache)``: the new
query attends to the last ``min(count, C)`` steps, itself included. That is exactly what
``causal_attention(..., window=C)`` computes for the same position of the full sequence (attention
is invariant to the order of the keys, so the ring's slot order does not matter).

Triton path (flash-decoding): ``_decode_split_kernel`` gives each (env, head) ``S`` programs, each
reducing one chunk of the cache to a partial (max, sum, weighted values) triple;
``_decode_combine_kernel`` merges the ``S`` partials. Chunks beyond an env's filled length exit
without loading anything.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import triton
import triton.language as tl

from amago_fast.kernels._launch import last_dim_contiguous, split_count
from amago_fast.kernels._utils import INTERPRET, launch_device, resolve_backend

__all__ = [
    "DecodeStep",
    "RingKVCache",
    "decode_attention",
    "decode_attention_reference",
    "decode_step_attention",
    "quantize_int8_rows",
    "to_cache_dtype",
]

_SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.int8)
_LOG2E = 1.4426950408889634
_HALF_MAX = 65504.0  # largest finite float16
# scale = amax * _INV_127: one multiply by a float32 constant, the same operation in torch, the
# NumPy test oracle and C++ (policy/model.h kInv127), whichever way a backend implements a
# division by a scalar.
_INV_127 = float(np.float32(1.0) / np.float32(127.0))


def quantize_int8_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 quantisation of the last dim of ``x`` (one row = one key or value of one
    head): returns ``(q int8 x.shape, scale float32 x.shape[:-1])`` with ``q * scale`` ≈ ``x``.

    The rule (the native policy step stores with the same one, bit for bit): values saturate at
    ±65504 first (an infinite key would make its softmax NaN, as with float16); ``amax`` = the
    row's largest ``|x|``; ``scale = amax * float32(1/127)``; ``q = round_half_even(x / scale)``
    clamped to ±127. A zero row has scale 0 and q 0. A row holding NaN gets scale NaN and q 0,
    so it reads back as NaN (as a float cache would). Error per element ≤ scale / 2 ≈ amax/254.
    """
    x = x.float().clamp(-_HALF_MAX, _HALF_MAX)  # clamp keeps NaN
    amax = x.abs().amax(dim=-1)  # NaN propagates
    scale = amax * _INV_127
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))  # False for 0 and NaN
    q = torch.round(x / safe[..., None]).clamp_(-127, 127)
    q = torch.where((scale > 0)[..., None], q, torch.zeros_like(q))
    return q.to(torch.int8), scale


def to_cache_dtype(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x`` as ``dtype`` for a cache write; float16 saturates at ±65504 instead of rounding to
    ±inf (an infinite key would turn its head's softmax into NaN). NaN stays NaN. The native
    policy step stores with the same rule, so both paths write the same bits."""
    if dtype == torch.int8:  # an int8 cache takes float32 and quantises when it writes
        dtype = torch.float32
    if x.dtype == dtype:
        return x
    if dtype == torch.float16:
        return x.clamp(-_HALF_MAX, _HALF_MAX).to(dtype)
    return x.to(dtype)


class RingKVCache:
    """Per-env ring buffer of keys and values for one attention layer.

    Attributes:
        k, v: ``(num_envs, capacity, num_heads, head_dim)`` views of the storage (slot ``c`` of
            env ``n`` is ``k[n, c]``). The storage itself is one ``(2, N, H, C, D)`` tensor, so a
            step's keys and values are written by one indexed copy and each (env, head) reads a
            contiguous ``(C, D)`` block in the attention matmuls (no transposed copy).
        counts: ``(num_envs,)`` int64 on the cache device: steps appended since each env's last
            reset (not capped; the filled length is ``min(counts, capacity)``). On CPU it shares
            memory with a NumPy array, so per-step bookkeeping needs no torch op.
        scales: int8 caches only (else None): ``(2, N, H, C)`` float32, the scale of each
            stored key/value row (``quantize_int8_rows``); ``k_scale``/``v_scale`` are
            ``(N, C, H)`` views. Slot ``c`` of env ``n``, head ``h`` reads back as
            ``k[n, c, h] * k_scale[n, c, h]``.
        io_dtype: the dtype of the keys, values and queries passed in (and of decode's output):
            the storage dtype for float caches, float32 for int8.

    The filled slots of an env are always the prefix ``[0, min(counts, C))`` (step ``t`` goes to
    slot ``t % C`` and a reset empties the env), so attention only reads the first
    ``max(lengths)`` slots: per-step cost grows with the filled length up to ``C`` and is then
    constant however many steps were taken.
    """

    def __init__(
        self,
        num_envs: int,
        capacity: int,
        num_heads: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        for name, val in (
            ("num_envs", num_envs), ("capacity", capacity),
            ("num_heads", num_heads), ("head_dim", head_dim),
        ):
            if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val < 1:
                raise ValueError(f"RingKVCache: {name} must be a positive int, got {val!r}")
        if dtype not in _SUPPORTED_DTYPES:
            raise ValueError(
                f"RingKVCache: dtype {dtype} not supported; use fp32, fp16, bf16 or int8"
            )
        self.num_envs = int(num_envs)
        self.capacity = int(capacity)
        self.num_heads = int(num_heads)
        self.head_dim = int(head_dim)
        self.dtype = dtype
        self.io_dtype = torch.float32 if dtype == torch.int8 else dtype
        N, C, H, D = self.num_envs, self.capacity, self.num_heads, self.head_dim
        self.kv = torch.zeros((2, N, H, C, D), dtype=dtype, device=torch.device(device))
        # The allocated tensor's device, so "cuda" becomes "cuda:0" (the current device) and the
        # device checks compare like with like: tensors made with device="cuda" are on "cuda:0".
        self.device = self.kv.device
        self.k = self.kv[0].permute(0, 2, 1, 3)  # (N, C, H, D) view
        self.v = self.kv[1].permute(0, 2, 1, 3)
        self._kv_rows = self.kv.view(2 * N * H * C, D)
        if dtype == torch.int8:
            # One float32 scale per stored row, laid out like the rows: the step's row indices
            # address both. 16-d heads: 20 bytes a key per head vs 32 (float16), 64 (float32).
            self.scales: torch.Tensor | None = torch.zeros((2, N, H, C), dtype=torch.float32,
                                                           device=self.device)
            self.k_scale = self.scales[0].permute(0, 2, 1)  # (N, C, H) views
            self.v_scale = self.scales[1].permute(0, 2, 1)
            self._scale_rows = self.scales.view(-1)
        else:
            self.scales = self.k_scale = self.v_scale = self._scale_rows = None
        if self.device.type == "cpu":
            self._counts_np: np.ndarray | None = np.zeros(N, dtype=np.int64)
            self.counts = torch.from_numpy(self._counts_np)
        else:
            self._counts_np = None
            self.counts = torch.zeros(N, dtype=torch.int64, device=self.device)
        self._env_index = torch.arange(N, device=self.device)
        # Row of kv_rows for (env n, k|v j, head h) at slot 0, laid out (N, 2, H): a step's new
        # keys/values (N, 2, H, D) — the k and v thirds of a fused qkv projection — go to
        # base[n] + slot(n) in one index_copy_.
        base = ((np.arange(2)[None, :, None] * N + np.arange(N)[:, None, None]) * H
                + np.arange(H)[None, None, :]) * C
        self._row_base_np = base.astype(np.int64)
        self._row_base = torch.as_tensor(self._row_base_np, device=self.device)
        self._arange_c = np.arange(C, dtype=np.int64)
        # NumPy view of the storage for CPU resets (NumPy has no bfloat16: those use torch).
        self._kv_np = (self.kv.numpy() if self.device.type == "cpu" and dtype != torch.bfloat16
                       else None)
        self._scales_np = (self.scales.numpy()
                           if self.scales is not None and self._kv_np is not None else None)

    @property
    def counts_np(self) -> np.ndarray | None:
        """CPU caches: the per-env step counts as the NumPy array ``counts`` shares memory with
        (a native step writes the keys/values and increments these in place); None on GPU."""
        return self._counts_np

    @property
    def scales_np(self) -> np.ndarray | None:
        """CPU int8 caches: the row scales ``(2, N, H, C)`` as a NumPy view; None otherwise."""
        return self._scales_np

    def lengths(self) -> torch.Tensor:
        """``(num_envs,)`` number of filled slots, ``min(counts, capacity)``."""
        return self.counts.clamp(max=self.capacity)

    def __getstate__(self) -> dict:
        # Views and NumPy aliases are rebuilt on unpickling/deepcopy so they keep sharing memory.
        return {"kv": self.kv, "counts": self.counts, "dtype": self.dtype, "device": self.device,
                "scales": self.scales}

    def __setstate__(self, state: dict) -> None:
        kv = state["kv"]
        _, N, H, C, D = kv.shape
        # The storage tensor's device, not the pickled torch.device: torch.load's map_location
        # remaps tensors only, so a cache saved on a GPU and loaded with map_location="cpu"
        # comes back on the CPU (deepcopy keeps the device either way).
        self.__init__(N, C, H, D, state["dtype"], kv.device)
        self.kv.copy_(kv)
        self.counts.copy_(state["counts"])
        if self.scales is not None:
            self.scales.copy_(state["scales"])

    def dequantized(self) -> torch.Tensor:
        """The stored keys/values as ``(2, N, H, C, D)`` float32 (int8: times their scales)."""
        if self.scales is None:
            return self.kv.float()
        return self.kv.float() * self.scales[..., None]

    def _check_step(self, name: str, t: torch.Tensor, rows: int) -> None:
        expected = (rows, self.num_heads, self.head_dim)
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"RingKVCache: {name} must be a torch.Tensor, got {type(t)}")
        if tuple(t.shape) != expected:
            raise ValueError(
                f"RingKVCache: {name} shape {tuple(t.shape)} != (N, H, D) = {expected}"
            )
        if t.dtype != self.io_dtype:
            raise ValueError(f"RingKVCache: {name} dtype {t.dtype} != the cache's input dtype "
                             f"{self.io_dtype} (storage {self.dtype})")
        if t.device != self.device:
            raise ValueError(f"RingKVCache: {name} on {t.device}, cache on {self.device}")

    def check_env_ids(self, env_ids: np.ndarray | torch.Tensor | None) -> np.ndarray | None:
        """Validate ``env_ids`` (None = all envs in order) → int64 NumPy array or None.

        Raises ValueError for non-integers, out-of-range or repeated ids.
        """
        if env_ids is None:
            return None
        if isinstance(env_ids, torch.Tensor):
            env_ids = env_ids.detach().cpu().numpy()
        ids = np.asarray(env_ids).reshape(-1)
        if ids.size and not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"RingKVCache: env_ids must be integers, got {ids.dtype}")
        ids = ids.astype(np.int64, copy=False)
        if ids.size and (ids.min() < 0 or ids.max() >= self.num_envs):
            raise ValueError(
                f"RingKVCache: env_ids must be in [0, {self.num_envs}), got {ids.tolist()}"
            )
        if np.unique(ids).size != ids.size:
            raise ValueError(f"RingKVCache: env_ids has repeated ids: {ids.tolist()}")
        return ids

    def plan_step(self, env_ids: np.ndarray | None = None) -> DecodeStep:
        """Bookkeeping of one append+decode step for ``env_ids`` (validated; None = all envs),
        computed once and shared by every layer's cache (all layers hold the same counts)."""
        return DecodeStep(self, env_ids)

    @torch.no_grad()
    def write(self, step: DecodeStep, kv_new: torch.Tensor) -> None:
        """Store one step's keys and values ``kv_new`` ``(b, 2, H, D)`` (``[:, 0]`` keys,
        ``[:, 1]`` values; any strides) at the slots planned by ``step``. Unchecked fast path:
        :meth:`append` is the checked public form."""
        b = kv_new.shape[0]
        rows = kv_new.reshape(b * 2 * self.num_heads, self.head_dim)
        if self._scale_rows is not None:
            rows, scale = quantize_int8_rows(rows)
            self._scale_rows.index_copy_(0, step.rows, scale)
        self._kv_rows.index_copy_(0, step.rows, rows)

    @torch.no_grad()
    def commit(self, step: DecodeStep) -> None:
        """Count the step written by :meth:`write` (count += 1 for its envs)."""
        if self._counts_np is not None:
            if step.ids is None:
                self._counts_np += 1
            else:
                self._counts_np[step.ids] += 1
        elif step.ids is None:
            self.counts += 1
        else:
            self.counts[step.ids_t] += 1

    @torch.no_grad()
    def append(self, k_new: torch.Tensor, v_new: torch.Tensor,
               env_ids: np.ndarray | torch.Tensor | None = None) -> None:
        """Write one step ``(b, H, D)`` for the envs ``env_ids`` (None: all ``N`` envs, in order)
        at slot ``count % capacity``; their count += 1."""
        ids = self.check_env_ids(env_ids)
        rows = self.num_envs if ids is None else ids.size
        self._check_step("k_new", k_new, rows)
        self._check_step("v_new", v_new, rows)
        if rows == 0:
            return
        step = self.plan_step(ids)
        self.write(step, torch.stack([k_new, v_new], dim=1))
        self.commit(step)

    def reset(self, env_ids: np.ndarray | torch.Tensor | list[int]) -> None:
        """Empty the caches of ``env_ids`` (their next append is step 0 of a new context)."""
        ids = self._reset_ids(env_ids)
        if ids.size == 0:
            return
        if self._kv_np is not None:
            # CPU: two NumPy assignments (~3 µs) instead of torch's indexed writes (~70 µs a
            # call, measured: 0.6 resets per 8-env CartPole step with a tiny agent).
            self._counts_np[ids] = 0
            # Stale entries are never read (lengths mask them); zeroing keeps the state canonical.
            self._kv_np[:, ids] = 0
            if self._scales_np is not None:
                self._scales_np[:, ids] = 0
            return
        # (No @torch.no_grad on the method: the decorator alone cost ~15 µs a call, more than
        # the CPU path above; only these torch writes need it.)
        with torch.no_grad():
            ids_t = torch.as_tensor(ids, device=self.device)
            self.counts[ids_t] = 0
            self.kv[:, ids_t] = 0
            if self.scales is not None:
                self.scales[:, ids_t] = 0

    def _reset_ids(self, env_ids: np.ndarray | torch.Tensor | list[int]) -> np.ndarray:
        """``env_ids`` of :meth:`reset` (ints, or a bool mask over the envs) → validated int64
        NumPy indices. A 1-d int64 array (the policy's own resets, Agent.reset_state) needs
        only the range check."""
        ids = env_ids
        if not (type(ids) is np.ndarray and ids.dtype == np.int64 and ids.ndim == 1):
            if isinstance(ids, torch.Tensor):
                ids = ids.detach().cpu().numpy()
            ids = np.asarray(ids).reshape(-1)
            if ids.size == 0:
                return ids.astype(np.int64)
            if ids.dtype == np.bool_:
                if ids.size != self.num_envs:
                    raise ValueError(
                        f"RingKVCache.reset: bool env mask has {ids.size} entries, "
                        f"expected {self.num_envs}"
                    )
                return np.flatnonzero(ids)
            if not np.issubdtype(ids.dtype, np.integer):
                raise ValueError(f"RingKVCache.reset: env_ids must be integers, got {ids.dtype}")
            ids = ids.astype(np.int64, copy=False)
        if ids.size and (ids.min() < 0 or ids.max() >= self.num_envs):
            raise ValueError(
                f"RingKVCache.reset: env_ids must be in [0, {self.num_envs}), got "
                f"{ids.tolist()}"
            )
        return ids

    def reset_all(self) -> None:
        """Empty every env's cache."""
        self.counts.zero_()
        self.kv.zero_()
        if self.scales is not None:
            self.scales.zero_()

    def __repr__(self) -> str:
        return (
            f"RingKVCache(num_envs={self.num_envs}, capacity={self.capacity}, "
            f"num_heads={self.num_heads}, head_dim={self.head_dim}, dtype={self.dtype}, "
            f"device={self.device})"
        )


class DecodeStep:
    """One planned append+decode step of a set of envs (see :meth:`RingKVCache.plan_step`).

    Attributes:
        ids: NumPy int64 env ids, or None for all envs in order; ``ids_t`` the same on device.
        rows: ``(b * 2 * H,)`` int64 rows of the cache storage the new keys/values go to.
        length: (CPU) slots to read after the append, ``max(min(count + 1, C))`` over the envs.
        bias: (CPU) None when every env has ``length`` filled slots, else an additive
            ``(b, 1, 1, length)`` float mask (0 filled, -inf empty).
    """

    def __init__(self, cache: RingKVCache, ids: np.ndarray | None) -> None:
        self.ids = ids
        C = cache.capacity
        if cache._counts_np is not None:  # CPU: NumPy bookkeeping, tensors share its memory
            counts = cache._counts_np if ids is None else cache._counts_np[ids]
            base = cache._row_base_np if ids is None else cache._row_base_np[ids]
            self.ids_t = None if ids is None else torch.from_numpy(ids)
            self.rows = torch.from_numpy((base + (counts % C)[:, None, None]).reshape(-1))
            lens = np.minimum(counts + 1, C)
            self.length = int(lens.max()) if lens.size else 0
            if lens.size and int(lens.min()) != self.length:
                bias = np.where(cache._arange_c[None, : self.length] < lens[:, None],
                                np.float32(0.0), np.float32(-np.inf))
                self.bias = torch.from_numpy(bias).to(cache.io_dtype)[:, None, None, :]
            else:
                self.bias = None
        else:  # CUDA: device ops (the Triton kernel reads counts and ids itself)
            self.ids_t = None if ids is None else torch.as_tensor(ids, device=cache.device)
            counts = cache.counts if ids is None else cache.counts[self.ids_t]
            base = cache._row_base if ids is None else cache._row_base[self.ids_t]
            self.rows = (base + (counts % C)[:, None, None]).reshape(-1)
            self.length = C
            self.bias = None


def _check_decode(q: torch.Tensor, cache: RingKVCache, softmax_scale: float | None,
                  rows: int | None = None) -> float:
    if not isinstance(cache, RingKVCache):
        raise TypeError(f"decode_attention: cache must be a RingKVCache, got {type(cache)}")
    if not isinstance(q, torch.Tensor):
        raise TypeError(f"decode_attention: q must be a torch.Tensor, got {type(q)}")
    expected = (cache.num_envs if rows is None else rows, cache.num_heads, cache.head_dim)
    if tuple(q.shape) != expected:
        raise ValueError(f"decode_attention: q shape {tuple(q.shape)} != (N, H, D) = {expected}")
    if q.dtype != cache.io_dtype:
        raise ValueError(f"decode_attention: q dtype {q.dtype} != the cache's input dtype "
                         f"{cache.io_dtype} (storage {cache.dtype})")
    if q.device != cache.device:
        raise ValueError(f"decode_attention: q on {q.device}, cache on {cache.device}")
    if softmax_scale is None:
        return 1.0 / math.sqrt(cache.head_dim)
    softmax_scale = float(softmax_scale)
    if not math.isfinite(softmax_scale) or softmax_scale <= 0:
        raise ValueError(
            f"decode_attention: softmax_scale must be finite and > 0, got {softmax_scale}"
        )
    return softmax_scale


def _attend(q: torch.Tensor, cache: RingKVCache, ids_t: torch.Tensor | None, length: int,
            bias: torch.Tensor | None) -> torch.Tensor:
    """Softmax attention of pre-scaled ``q`` (b, H, D) over the first ``length`` slots of the
    envs ``ids_t`` (None: all), with the additive mask ``bias`` (b, 1, 1, length) or None when
    every env has ``length`` filled slots. Two ``bmm`` over (env, head) on views of the storage
    (the async subset gathers its ``length`` slots): O(length), not O(capacity)."""
    b, H, D = q.shape
    if ids_t is None:
        keys, vals = cache.kv[0, :, :, :length], cache.kv[1, :, :, :length]
    else:
        keys, vals = cache.kv[0, ids_t, :, :length], cache.kv[1, ids_t, :, :length]
    keys = keys.reshape(b * H, length, D)  # a view: (env, head) blocks are evenly strided
    vals = vals.reshape(b * H, length, D)
    if cache.scales is not None:  # int8: dequantise the read prefix (float32)
        if ids_t is None:
            ks, vs = cache.scales[0, :, :, :length], cache.scales[1, :, :, :length]
        else:
            ks, vs = cache.scales[0, ids_t, :, :length], cache.scales[1, ids_t, :, :length]
        keys = keys.to(q.dtype) * ks.reshape(b * H, length, 1).to(q.dtype)
        vals = vals.to(q.dtype) * vs.reshape(b * H, length, 1).to(q.dtype)
    elif keys.dtype != q.dtype:
        # float32 q over a float16 cache (the CPU policy step): widen the read prefix and
        # compute in float32, as the native step does. Computing in float16 instead also
        # rounds q and the scores, and was slower (tiny agent, context 1024: 6.3 vs 4.3 ms
        # per step; float32 cache 2.7-3.7 ms).
        keys, vals = keys.to(q.dtype), vals.to(q.dtype)
    scores = torch.bmm(q.reshape(b * H, 1, D), keys.transpose(1, 2))  # (b*H, 1, length)
    if bias is not None:
        scores = (scores.view(b, H, 1, length) + bias).view(b * H, 1, length)
    probs = torch.softmax(scores, dim=-1)
    return torch.bmm(probs, vals).view(b, H, D)


@torch.no_grad()
def decode_attention_reference(
    q: torch.Tensor, cache: RingKVCache, softmax_scale: float | None = None,
    env_ids: np.ndarray | torch.Tensor | None = None,
) -> torch.Tensor:
    """Pure-PyTorch decode: ``q`` ``(b, H, D)`` attends to the filled slots of the envs
    ``env_ids`` of ``cache`` (None: all ``N`` envs, in order).

    Computes in fp32 and returns ``q.dtype``. An env with an empty cache gets zeros. Reads only
    the first ``max(lengths)`` slots (the filled prefix of the ring).
    """
    if not isinstance(cache, RingKVCache):
        raise TypeError(f"decode_attention: cache must be a RingKVCache, got {type(cache)}")
    ids = cache.check_env_ids(env_ids)
    scale = _check_decode(q, cache, softmax_scale, None if ids is None else ids.size)
    ids_t = None if ids is None else torch.as_tensor(ids, device=cache.device)
    lens = cache.lengths() if ids_t is None else cache.lengths()[ids_t]
    if lens.numel() == 0:
        return torch.zeros_like(q)
    length = int(lens.max())
    if length == 0:
        return torch.zeros_like(q)
    filled = torch.arange(length, device=q.device)[None, :] < lens[:, None]
    bias = torch.zeros(filled.shape, device=q.device).masked_fill_(~filled, float("-inf"))
    has_any = lens > 0
    # Empty caches would give an all -inf row (NaN softmax): give them a zero row, zero output.
    bias = torch.where(has_any[:, None], bias, torch.zeros_like(bias))
    sub = RingKVCache.__new__(RingKVCache)  # an fp32 copy of the cache for the computation
    sub.kv = cache.dequantized()
    sub.scales = None
    out = _attend(q.float() * scale, sub, ids_t, length, bias[:, None, None, :])
    out = out * has_any[:, None, None].to(out.dtype)
    return out.to(q.dtype)


@torch.no_grad()
def decode_step_attention(q: torch.Tensor, cache: RingKVCache, step: DecodeStep) -> torch.Tensor:
    """Unchecked fast path for the policy step: ``q`` (b, H, D) *already scaled* by the softmax
    scale, after ``cache.write(step, ...)`` and ``cache.commit(step)``; returns (b, H, D) in
    ``q.dtype``. Triton on CUDA (q in the cache's ``io_dtype``), the reference formulation on
    CPU — in ``q.dtype``: a float32 q over a float16 (or int8) cache reads the keys/values
    widened (dequantised). On CUDA a head dim the kernel lacks (not a power of two >= 16, e.g.
    d_model 64 with 8 heads) takes the reference decode instead of raising."""
    if cache.device.type == "cuda":
        if not _triton_head_dim(cache.head_dim):
            return decode_attention_reference(q, cache, 1.0, step.ids)
        ids_t = cache._env_index if step.ids_t is None else step.ids_t
        return _decode_launch(q, cache, 1.0, ids_t)
    return _attend(q, cache, step.ids_t, step.length, step.bias)


@triton.jit
def _decode_split_kernel(
    Q, K, V, KS, VS, Counts, Ids, PartAcc, PartM, PartL,
    stride_qn, stride_qh,
    stride_kn, stride_kc, stride_kh,
    stride_vn, stride_vc, stride_vh,
    stride_sn, stride_sc, stride_sh,
    H, C, SPLIT_SIZE, NUM_SPLITS, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, QUANT: tl.constexpr,
):
    """Program (row*head, split): partial softmax over slots [split*SPLIT_SIZE, +SPLIT_SIZE) of
    env Ids[row]. QUANT: K/V are int8 rows times the float32 scales KS/VS (N, C, H)."""
    pid_nh = tl.program_id(0)
    pid_s = tl.program_id(1)
    row = pid_nh // H
    h = pid_nh % H
    n = tl.load(Ids + row)
    offs_d = tl.arange(0, HEAD_DIM)
    length = tl.minimum(tl.load(Counts + n), C).to(tl.int32)
    start = pid_s * SPLIT_SIZE
    end = tl.minimum(start + SPLIT_SIZE, length)
    q = tl.load(Q + row * stride_qn + h * stride_qh + offs_d).to(tl.float32)
    K_base = K + n * stride_kn + h * stride_kh
    V_base = V + n * stride_vn + h * stride_vh
    S_off = n * stride_sn + h * stride_sh
    m_i = tl.full([1], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([1], dtype=tl.float32)
    acc = tl.zeros([HEAD_DIM], dtype=tl.float32)
    for c0 in range(start, end, BLOCK_N):  # empty when this chunk is beyond the filled length
        offs_c = c0 + tl.arange(0, BLOCK_N)
        live = offs_c < end
        k = tl.load(K_base + offs_c[:, None] * stride_kc + offs_d[None, :],
                    mask=live[:, None], other=0.0).to(tl.float32)
        v = tl.load(V_base + offs_c[:, None] * stride_vc + offs_d[None, :],
                    mask=live[:, None], other=0.0).to(tl.float32)
        if QUANT:
            k = k * tl.load(KS + S_off + offs_c * stride_sc, mask=live, other=0.0)[:, None]
            v = v * tl.load(VS + S_off + offs_c * stride_sc, mask=live, other=0.0)[:, None]
        s = tl.sum(q[None, :] * k, 1) * qk_scale
        s = tl.where(live, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 0))
        alpha = tl.math.exp2(m_i - m_new)  # m_new is finite: every iteration has a live slot
        p = tl.math.exp2(s - m_new)
        l_i = l_i * alpha + tl.sum(p, 0)
        acc = acc * alpha + tl.sum(p[:, None] * v, 0)
        m_i = m_new
    part = pid_nh * NUM_SPLITS + pid_s
    tl.store(PartAcc + part * HEAD_DIM + offs_d, acc)
    tl.store(PartM + part + tl.arange(0, 1), m_i)
    tl.store(PartL + part + tl.arange(0, 1), l_i)


@triton.jit
def _decode_combine_kernel(
    PartAcc, PartM, PartL, Out,
    stride_on, stride_oh,
    H, NUM_SPLITS,
    HEAD_DIM: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """Program (env*head): merge the NUM_SPLITS partials (empty splits have m=-inf, l=0)."""
    pid_nh = tl.program_id(0)
    n = pid_nh // H
    h = pid_nh % H
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, HEAD_DIM)
    live = offs_s < NUM_SPLITS
    base = pid_nh * NUM_SPLITS
    m = tl.load(PartM + base + offs_s, mask=live, other=float("-inf"))
    l_part = tl.load(PartL + base + offs_s, mask=live, other=0.0)
    acc = tl.load(PartAcc + (base + offs_s)[:, None] * HEAD_DIM + offs_d[None, :],
                  mask=live[:, None], other=0.0)
    m_max = tl.max(m, 0)
    m_safe = tl.where(m_max == float("-inf"), 0.0, m_max)  # empty cache: everything is zero
    w = tl.math.exp2(m - m_safe)
    l_tot = tl.sum(l_part * w, 0)
    out = tl.sum(acc * w[:, None], 0) / tl.where(l_tot > 0.0, l_tot, 1.0)
    tl.store(Out + n * stride_on + h * stride_oh + offs_d, out.to(Out.dtype.element_ty))


def _triton_head_dim(head_dim: int) -> bool:
    """The decode kernel's head dims: powers of two >= 16 (tl.arange and tl.dot sizes)."""
    return head_dim >= 16 and head_dim & (head_dim - 1) == 0


def _decode_launch(q: torch.Tensor, cache: RingKVCache, scale: float,
                   ids_t: torch.Tensor) -> torch.Tensor:
    """q (b, H, D) for the envs ``ids_t`` (b,) int64 on the cache device."""
    N, H, D = q.shape
    if not _triton_head_dim(D):
        raise ValueError(
            f"decode_attention: the Triton kernel needs a power-of-two head_dim >= 16, got {D}"
        )
    C = cache.capacity
    q = last_dim_contiguous(q)
    block_n = 16 if INTERPRET else 64
    max_splits = triton.cdiv(C, block_n)
    # At most one split per BLOCK_N tile; 2 under the interpreter (the split/combine path).
    num_splits = split_count(q.device, N * H, max_splits, not INTERPRET, 2)
    split_size = triton.cdiv(triton.cdiv(C, num_splits), block_n) * block_n
    num_splits = triton.cdiv(C, split_size)
    part_acc = torch.empty((N * H * num_splits, D), device=q.device, dtype=torch.float32)
    part_m = torch.empty((N * H * num_splits,), device=q.device, dtype=torch.float32)
    part_l = torch.empty((N * H * num_splits,), device=q.device, dtype=torch.float32)
    out = torch.empty_like(q)
    quant = cache.scales is not None
    ks = cache.k_scale if quant else part_m  # unread when not quantised
    vs = cache.v_scale if quant else part_m
    s_strides = cache.k_scale.stride() if quant else (0, 0, 0)
    with launch_device(q):
        _decode_split_kernel[(N * H, num_splits)](
            q, cache.k, cache.v, ks, vs, cache.counts, ids_t, part_acc, part_m, part_l,
            q.stride(0), q.stride(1),
            cache.k.stride(0), cache.k.stride(1), cache.k.stride(2),
            cache.v.stride(0), cache.v.stride(1), cache.v.stride(2),
            s_strides[0], s_strides[1], s_strides[2],
            H, C, split_size, num_splits, scale * _LOG2E,
            HEAD_DIM=D, BLOCK_N=block_n, QUANT=quant, num_warps=4,
        )
        _decode_combine_kernel[(N * H,)](
            part_acc, part_m, part_l, out, out.stride(0), out.stride(1), H, num_splits,
            HEAD_DIM=D, BLOCK_S=max(2, triton.next_power_of_2(num_splits)), num_warps=4,
        )
    return out


@torch.no_grad()
def decode_attention(
    q: torch.Tensor,
    cache: RingKVCache,
    softmax_scale: float | None = None,
    backend: str = "auto",
    env_ids: np.ndarray | torch.Tensor | None = None,
) -> torch.Tensor:
    """One decode step: ``q`` ``(b, H, D)`` attends over the last ``min(count, C)`` cached steps
    of its env (append the step's k/v first). ``env_ids`` (b,) names the envs of the rows (async
    collection); None means all ``N`` envs in order. Returns ``(b, H, D)`` in ``q.dtype``; an env
    with an empty cache gets zeros. Inference only (no autograd).

    ``backend``: ``"auto"`` (Triton for CUDA when the head dim is a power of two >= 16, else the
    reference), ``"triton"`` or ``"reference"``.
    """
    if not isinstance(cache, RingKVCache):
        raise TypeError(f"decode_attention: cache must be a RingKVCache, got {type(cache)}")
    ids = cache.check_env_ids(env_ids)
    scale = _check_decode(q, cache, softmax_scale, None if ids is None else ids.size)
    chosen = resolve_backend(backend, [q, cache.k], "decode_attention")
    if chosen == "triton" and backend == "auto" and not _triton_head_dim(cache.head_dim):
        chosen = "reference"  # e.g. D=24; an explicit backend="triton" raises in the launcher
    if chosen == "reference":
        return decode_attention_reference(q, cache, scale, ids)
    if q.shape[0] == 0:
        return torch.empty_like(q)
    ids_t = cache._env_index if ids is None else torch.as_tensor(ids, device=cache.device)
    return _decode_launch(q, cache, scale, ids_t)
