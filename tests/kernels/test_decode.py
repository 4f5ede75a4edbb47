"""Ring-buffer KV cache decode: Triton (interpreted on CPU) and reference vs full-sequence
windowed causal attention over rollouts longer than the cache, with envs reset at different
times; ring bookkeeping; bad input leaves the cache unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from amago_fast.kernels import decode as _decode
from amago_fast.kernels.attention import causal_attention, causal_attention_reference
from amago_fast.kernels.decode import (
    RingKVCache,
    decode_attention,
    decode_attention_reference,
    quantize_int8_rows,
)
from tests._kernels import (
    DEVICE,
    needs_cuda_compiler,
    needs_triton,
    run_without_interpreter,
)


def rollout(N, C, H, D, T, resets, dtype, backend, device=DEVICE, seed=0, with_cache=False):
    """Drive a cache of ``dtype`` through T steps (q/k/v drawn in its input dtype: float32 for
    int8). ``resets[n]`` = steps at which env n resets before its append. Returns (decode
    outputs (N, T, H, D), per-step segment starts, q, k, v), plus the cache if ``with_cache``."""
    gen = torch.Generator().manual_seed(seed)
    cache = RingKVCache(N, C, H, D, dtype=dtype, device=device)
    q, k, v = (torch.randn(N, T, H, D, generator=gen).to(device, cache.io_dtype)
               for _ in range(3))
    seg_start = np.zeros(N, dtype=np.int64)
    starts = np.zeros((N, T), dtype=np.int64)
    outs = []
    for t in range(T):
        ids = [n for n, ts in resets.items() if t in ts]
        if ids:
            cache.reset(np.array(ids))
            seg_start[ids] = t
        starts[:, t] = seg_start
        cache.append(k[:, t], v[:, t])
        outs.append(decode_attention(q[:, t], cache, backend=backend))
    out = (torch.stack(outs, 1), starts, q, k, v)
    return (*out, cache) if with_cache else out


def full_sequence_outputs(q, k, v, starts, C, backend):
    """For each env and step t: causal_attention(window=C) over the env's current segment
    [start, t], last position."""
    N, T = starts.shape
    out = torch.empty_like(q)
    for n in range(N):
        t = 0
        while t < T:  # one full-sequence call per segment; its every position is one decode step
            s = int(starts[n, t])
            e = t
            while e + 1 < T and starts[n, e + 1] == s:
                e += 1
            seg = slice(s, e + 1)
            full = causal_attention(q[n : n + 1, seg], k[n : n + 1, seg], v[n : n + 1, seg],
                                    window=C, backend=backend)[0]
            out[n, t : e + 1] = full[t - s :]
            t = e + 1
    return out


RESETS = {1: [5], 2: [3, 17], 3: [11, 12]}  # env 0 never resets; env 3 resets twice in a row


@pytest.mark.parametrize(
    "backend", ["reference", pytest.param("triton", marks=needs_triton)]
)
@pytest.mark.parametrize("D", [32, 64])
def test_decode_matches_full_sequence_fp32(backend, D):
    N, C, H, T = 4, 8, 2, 26  # rollout > 3x the cache capacity
    outs, starts, q, k, v = rollout(N, C, H, D, T, RESETS, torch.float32, backend)
    full = full_sequence_outputs(q, k, v, starts, C, "reference")
    torch.testing.assert_close(outs, full, atol=2e-6, rtol=1e-5)
    if backend == "triton":  # and vs the training kernel itself
        full_triton = full_sequence_outputs(q, k, v, starts, C, "triton")
        torch.testing.assert_close(outs, full_triton, atol=2e-6, rtol=1e-5)


@needs_triton
def test_decode_fp16_tolerance_rule():
    N, C, H, D, T = 3, 20, 1, 32, 45  # capacity not a multiple of the split tile
    resets = {0: [30], 2: [7]}
    outs, starts, q, k, v = rollout(N, C, H, D, T, resets, torch.float16, "triton", seed=1)
    ref16, *_ = rollout(N, C, H, D, T, resets, torch.float16, "reference", seed=1)
    oracle = full_sequence_outputs(q.float(), k.float(), v.float(), starts, C, "reference").double()
    err_kernel = (outs.double() - oracle).abs().max().item()
    err_torch = (ref16.double() - oracle).abs().max().item()
    assert err_kernel <= 2 * err_torch + 2e-3, (err_kernel, err_torch)


@needs_triton
def test_decode_large_capacity_split_path_and_determinism():
    """Capacity spanning several split chunks; partially filled and wrapped caches."""
    N, C, H, D = 2, 40, 2, 32
    gen = torch.Generator().manual_seed(3)
    cache = RingKVCache(N, C, H, D, device=DEVICE)
    for _ in range(50):
        cache.append(*(torch.randn(N, H, D, generator=gen).to(DEVICE) for _ in range(2)))
        if int(cache.counts[1]) == 23:
            cache.reset([1])
    q = torch.randn(N, H, D, generator=gen).to(DEVICE)
    a = decode_attention(q, cache, backend="triton")
    b = decode_attention(q, cache, backend="triton")
    assert torch.equal(a, b)
    torch.testing.assert_close(a, decode_attention_reference(q, cache), atol=2e-6, rtol=1e-5)


def test_ring_bookkeeping_no_shift():
    N, C, H, D = 2, 4, 1, 16
    cache = RingKVCache(N, C, H, D)
    for t in range(C + 3):
        step = torch.full((N, H, D), float(t))
        cache.append(step, -step)
    assert cache.counts.tolist() == [C + 3, C + 3]
    assert cache.lengths().tolist() == [C, C]
    # Step t lives in slot t % C: steps 4, 5, 6 overwrote slots 0, 1, 2; slot 3 still holds 3.
    assert cache.k[0, :, 0, 0].tolist() == [4.0, 5.0, 6.0, 3.0]
    assert cache.v[1, :, 0, 0].tolist() == [-4.0, -5.0, -6.0, -3.0]
    cache.reset(np.array([1]))
    assert cache.counts.tolist() == [C + 3, 0]
    assert (cache.k[1] == 0).all() and (cache.k[0] != 0).any()
    cache.append(torch.ones(N, H, D), torch.ones(N, H, D))
    assert cache.counts.tolist() == [C + 4, 1]
    assert cache.k[1, 0, 0, 0] == 1 and cache.k[0, (C + 3) % C, 0, 0] == 1
    cache.reset(torch.tensor([True, False]))  # bool masks accepted too
    assert cache.counts.tolist() == [0, 1]
    cache.reset([])  # no-op
    cache.reset_all()
    assert cache.counts.tolist() == [0, 0] and (cache.k == 0).all()


@pytest.mark.parametrize("backend", ["reference", pytest.param("triton", marks=needs_triton)])
def test_empty_cache_gives_zeros(backend):
    cache = RingKVCache(3, 8, 2, 32, device=DEVICE)
    cache.append(torch.ones(3, 2, 32, device=DEVICE), torch.ones(3, 2, 32, device=DEVICE))
    cache.reset([0, 2])
    out = decode_attention(torch.randn(3, 2, 32, device=DEVICE), cache, backend=backend)
    assert (out[0] == 0).all() and (out[2] == 0).all()
    torch.testing.assert_close(out[1], torch.ones(2, 32, device=DEVICE))


def snapshot(cache):
    return cache.k.clone(), cache.v.clone(), cache.counts.clone()


def assert_unchanged(cache, snap):
    k, v, c = snap
    assert torch.equal(cache.k, k) and torch.equal(cache.v, v) and torch.equal(cache.counts, c)


def test_bad_inputs_raise_and_leave_cache_unchanged():
    N, C, H, D = 3, 5, 2, 32
    cache = RingKVCache(N, C, H, D)
    for _ in range(7):
        cache.append(torch.randn(N, H, D), torch.randn(N, H, D))
    snap = snapshot(cache)
    good = torch.randn(N, H, D)
    with pytest.raises(ValueError, match="shape"):
        cache.append(torch.randn(N, H, D + 1), good)
    with pytest.raises(ValueError, match="shape"):
        cache.append(good, torch.randn(N - 1, H, D))
    with pytest.raises(ValueError, match="dtype"):
        cache.append(good.half(), good.half())
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        cache.reset([0, 3])
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        cache.reset(np.array([-1]))
    with pytest.raises(ValueError, match="integers"):
        cache.reset(np.array([0.5]))
    with pytest.raises(ValueError, match="bool env mask"):
        cache.reset(np.array([True, False]))
    with pytest.raises(ValueError, match="shape"):
        decode_attention(torch.randn(N, H + 1, D), cache)
    with pytest.raises(ValueError, match="dtype"):
        decode_attention(good.half(), cache)
    with pytest.raises(ValueError, match="backend"):
        decode_attention(good, cache, backend="fast")
    with pytest.raises(TypeError, match="RingKVCache"):
        decode_attention(good, "cache")
    assert_unchanged(cache, snap)
    for bad in (dict(num_envs=0), dict(capacity=-1), dict(head_dim=2.0), dict(num_heads=True)):
        kwargs = dict(num_envs=1, capacity=2, num_heads=1, head_dim=16) | bad
        with pytest.raises(ValueError):
            RingKVCache(**kwargs)
    with pytest.raises(ValueError, match="dtype"):
        RingKVCache(1, 2, 1, 16, dtype=torch.float64)


def test_reference_decode_equals_windowed_reference_attention_long_context():
    """Reference path only (fast on CPU): a long rollout with a large cache."""
    N, C, H, D, T = 2, 64, 2, 16, 150
    outs, starts, q, k, v = rollout(N, C, H, D, T, {1: [70]}, torch.float32, "reference",
                                    device="cpu")
    full = torch.stack(
        [causal_attention_reference(q[n : n + 1], k[n : n + 1], v[n : n + 1], window=C)[0]
         for n in range(N)]
    )
    torch.testing.assert_close(outs[0], full[0], atol=2e-6, rtol=1e-5)  # env 0 never reset
    seg = slice(70, T)
    full1 = causal_attention_reference(q[1:2, seg], k[1:2, seg], v[1:2, seg], window=C)[0]
    torch.testing.assert_close(outs[1, seg], full1, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize(
    "backend", ["reference", pytest.param("triton", marks=needs_triton)]
)
def test_async_env_subsets_match_per_env_full_sequence(backend):
    """Async collection: each step only a random subset of the envs (random order) appends and
    decodes (``env_ids``); envs reset at random times. Every output equals the windowed causal
    attention over that env's own current segment."""
    N, C, H, D, T = 5, 6, 2, 16, 40
    rng = np.random.default_rng(7)
    gen = torch.Generator().manual_seed(7)
    cache = RingKVCache(N, C, H, D, device=DEVICE)
    segs = {n: [] for n in range(N)}  # env -> list of segments, each a list of (q, k, v, out)
    for n in range(N):
        segs[n].append([])
    for _ in range(T):
        ids = rng.permutation(N)[: rng.integers(1, N + 1)]
        for n in ids:
            if rng.random() < 0.1:
                cache.reset([int(n)])
                segs[int(n)].append([])
        q, k, v = (torch.randn(len(ids), H, D, generator=gen).to(DEVICE) for _ in range(3))
        cache.append(k, v, env_ids=ids)
        out = decode_attention(q, cache, backend=backend, env_ids=ids)
        for j, n in enumerate(ids):
            segs[int(n)][-1].append((q[j], k[j], v[j], out[j]))
    checked = 0
    for n in range(N):
        for seg in segs[n]:
            if not seg:
                continue
            q, k, v, out = (torch.stack([s[i] for s in seg])[None] for i in range(4))
            full = causal_attention_reference(q, k, v, window=C)
            torch.testing.assert_close(out, full, atol=2e-6, rtol=1e-5)
            checked += len(seg)
    assert checked > T


def test_env_ids_rejected_and_cache_unchanged():
    N, C, H, D = 3, 4, 1, 16
    cache = RingKVCache(N, C, H, D)
    cache.append(torch.randn(N, H, D), torch.randn(N, H, D))
    snap = snapshot(cache)
    two = torch.randn(2, H, D)
    with pytest.raises(ValueError, match="repeated"):
        cache.append(two, two, env_ids=np.array([1, 1]))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        cache.append(two, two, env_ids=np.array([0, 3]))
    with pytest.raises(ValueError, match="integers"):
        cache.append(two, two, env_ids=np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="shape"):
        cache.append(two, two, env_ids=np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="shape"):
        decode_attention(two, cache, env_ids=np.array([2]))
    assert_unchanged(cache, snap)
    # A subset's decode equals the same rows of the all-env decode.
    q = torch.randn(N, H, D)
    full = decode_attention(q, cache)
    sub = decode_attention(q[[2, 0]], cache, env_ids=np.array([2, 0]))
    torch.testing.assert_close(sub, full[[2, 0]])


def test_cache_deepcopy_keeps_views_and_counts_in_sync():
    import copy

    cache = RingKVCache(2, 3, 1, 16)
    for _ in range(4):
        cache.append(torch.randn(2, 1, 16), torch.randn(2, 1, 16))
    twin = copy.deepcopy(cache)
    assert_unchanged(twin, snapshot(cache))
    twin.append(torch.ones(2, 1, 16), torch.ones(2, 1, 16))
    assert twin.counts.tolist() == [5, 5] and cache.counts.tolist() == [4, 4]
    assert (twin.k[:, 4 % 3] == 1).all() and not (cache.k[:, 4 % 3] == 1).all()
    q = torch.randn(2, 1, 16)
    torch.testing.assert_close(decode_attention(q, twin),
                               decode_attention_reference(q, twin))


# ---- int8 cache: int8 rows times a float32 scale per (key or value, head, slot)


def _quantize_numpy(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The documented int8 rule in NumPy float32 (an oracle independent of torch)."""
    x = np.clip(x.astype(np.float32), -65504.0, 65504.0)  # NaN stays NaN
    amax = np.abs(x).max(-1)
    scale = (amax * np.float32(np.float32(1) / np.float32(127))).astype(np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        q = np.clip(np.rint(x / scale[..., None]), -127, 127)
    ok = (scale > 0)[..., None]
    return np.where(ok, q, 0).astype(np.int8), scale


def test_quantize_int8_rows_rule():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(300, 16, generator=gen) * torch.logspace(-6, 6, 300)[:, None]
    x[0] = 0.0
    x[1, 3] = float("nan")
    x[2, 0] = float("inf")
    x[3, :] = torch.tensor([1.0, -1.0] * 8) * 127  # max |x| maps to ±127
    x[4, :] = -3e5  # beyond float16: saturates like the float16 cache
    q, scale = quantize_int8_rows(x)
    assert q.dtype == torch.int8 and scale.dtype == torch.float32 and q.shape == x.shape
    q_np, s_np = _quantize_numpy(x.numpy())
    np.testing.assert_array_equal(q.numpy(), q_np)
    np.testing.assert_array_equal(scale.numpy(), s_np)  # NaN == NaN for this check
    assert scale[0] == 0 and (q[0] == 0).all()
    assert torch.isnan(scale[1]) and (q[1] == 0).all()  # reads back NaN, as a float cache would
    assert scale[2] == 65504.0 * _decode._INV_127 and q[2, 0] == 127
    assert (q[3].abs() == 127).all() and (q[4] == -127).all()
    finite = torch.isfinite(scale) & (scale > 0)
    finite[:5] = False
    deq = q[finite].float() * scale[finite, None]
    err = (deq - x[finite].clamp(-65504.0, 65504.0)).abs()  # big rows saturate first
    # Round to nearest: at most half a step (plus float32 rounding of x / scale).
    assert bool((err <= scale[finite, None] * (0.5 + 1e-5)).all())
    assert int(q[finite].abs().amax(-1).min()) == 127  # every row uses the full range


@pytest.mark.parametrize("backend", ["reference", pytest.param("triton", marks=needs_triton)])
def test_int8_cache_decode_matches_dequantized_full_sequence(backend):
    """The int8 cache computes exactly (float32 rounding) the attention over the dequantised
    keys/values of the whole rollout, past the capacity and across resets; vs the unquantised
    keys/values it is off by the quantisation error only."""
    C = 8
    outs, starts, q, k, v, cache = rollout(4, C, 2, 32, 26, RESETS, torch.int8, backend,
                                           with_cache=True)
    assert cache.io_dtype == torch.float32
    assert cache.kv.dtype == torch.int8 and outs.dtype == torch.float32
    kq, ks = quantize_int8_rows(k)
    vq, vs = quantize_int8_rows(v)
    k_deq, v_deq = kq.float() * ks[..., None], vq.float() * vs[..., None]
    full = full_sequence_outputs(q, k_deq, v_deq, starts, C, "reference")
    torch.testing.assert_close(outs, full, atol=2e-6, rtol=1e-5)
    exact = full_sequence_outputs(q, k, v, starts, C, "reference")
    err = float((outs - exact).abs().max())
    # 32-d heads, unit-normal keys/values: max|x| ~3 -> step ~0.024, element error <= ~0.012;
    # measured 2.4e-2 (both backends). A wrong slot or mask gives errors ~1.
    assert 1e-4 < err < 6e-2, err
    # The stored rows are the quantised ones of the last C steps (slot t % C).
    T = k.shape[1]
    for t in range(T - C, T):
        assert torch.equal(cache.k[0, t % C], kq[0, t]) and torch.equal(cache.v_scale[0, t % C],
                                                                        vs[0, t])


def test_int8_cache_state_bad_input_and_copies():
    import copy
    import pickle

    N, C, H, D = 3, 5, 2, 16
    cache = RingKVCache(N, C, H, D, dtype=torch.int8)
    for _ in range(7):
        cache.append(torch.randn(N, H, D), torch.randn(N, H, D))
    snap = (*snapshot(cache), cache.scales.clone())
    good = torch.randn(N, H, D)
    with pytest.raises(ValueError, match="input dtype torch.float32"):
        cache.append(good.half(), good.half())
    with pytest.raises(ValueError, match="input dtype torch.float32"):
        cache.append(good.to(torch.int8), good.to(torch.int8))
    with pytest.raises(ValueError, match="input dtype torch.float32"):
        decode_attention(good.half(), cache)
    assert_unchanged(cache, snap[:3])
    assert torch.equal(cache.scales, snap[3])
    for twin in (copy.deepcopy(cache), pickle.loads(pickle.dumps(cache))):
        assert torch.equal(twin.scales, cache.scales) and torch.equal(twin.kv, cache.kv)
        assert twin.k_scale.data_ptr() == twin.scales.data_ptr()  # views rebuilt, not copied
        torch.testing.assert_close(decode_attention(good, twin), decode_attention(good, cache),
                                   rtol=0, atol=0)
    cache.reset([1])
    assert (cache.scales[:, 1] == 0).all() and (cache.kv[:, 1] == 0).all()
    assert (cache.scales[:, 0] != 0).any()
    cache.reset_all()
    assert (cache.scales == 0).all()


COMPILE_CHECK = """
import os
os.environ.pop("TRITON_INTERPRET", None)
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from amago_fast.kernels import decode as M

target = GPUTarget("cuda", 90, 32)
base = dict(Q="*bf16", K="*bf16", V="*bf16", KS="*fp32", VS="*fp32", Counts="*i64",
            Ids="*i64", PartAcc="*fp32", PartM="*fp32", PartL="*fp32", Out="*bf16")
int8 = dict(base, Q="*fp32", K="*i8", V="*i8")
for fn, ce, ptrs in ((M._decode_split_kernel, dict(HEAD_DIM=64, BLOCK_N=64, QUANT=False), base),
                     (M._decode_split_kernel, dict(HEAD_DIM=32, BLOCK_N=64, QUANT=True), int8),
                     (M._decode_combine_kernel, dict(HEAD_DIM=64, BLOCK_S=8), base)):
    sig = {n: "constexpr" if n in ce else ptrs.get(n, "fp32" if n.endswith("scale") else "i32")
           for n in fn.arg_names}
    k = triton.compile(ASTSource(fn, sig, ce), target=target, options=dict(num_warps=4))
print("COMPILED")
"""


@needs_cuda_compiler
def test_decode_kernels_compile_for_sm90():
    """Without a GPU: the real decode kernels lower through Triton's NVIDIA backend and ptxas
    for sm_90 (bf16 cache, D=64; int8 cache with scales, D=32)."""
    res = run_without_interpreter(COMPILE_CHECK)
    assert res.returncode == 0 and "COMPILED" in res.stdout, res.stderr[-3000:]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_int8_decode_matches_dequantized_full():
    test_int8_cache_decode_matches_dequantized_full_sequence("triton")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_gpu_decode_matches_full(dtype):
    N, C, H, D, T = 16, 300, 4, 64, 700
    resets = {n: [50 * n + 13] for n in range(0, N, 3)}
    outs, starts, q, k, v = rollout(N, C, H, D, T, resets, dtype, "triton", device="cuda")
    ref, *_ = rollout(N, C, H, D, T, resets, dtype, "reference", device="cuda")
    oracle = full_sequence_outputs(q.float(), k.float(), v.float(), starts, C, "reference").double()
    err_kernel = (outs.double() - oracle).abs().max().item()
    err_torch = (ref.double() - oracle).abs().max().item()
    atol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}[dtype]
    assert err_kernel <= 2 * err_torch + atol


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_auto_takes_the_reference_for_head_dims_the_kernel_lacks():
    """D=24 (not a power of two) on CUDA: auto runs the reference, triton names the limit; the
    cache made with device="cuda" accepts tensors on "cuda:0" (failed on the H100 before)."""
    cache = RingKVCache(3, 8, 2, 24, device="cuda")
    kv = torch.randn(3, 2, 24, device="cuda")
    cache.append(kv, kv)
    q = torch.randn(3, 2, 24, device="cuda")
    torch.testing.assert_close(decode_attention(q, cache),
                               decode_attention(q, cache, backend="reference"))
    with pytest.raises(ValueError, match="power-of-two"):
        decode_attention(q, cache, backend="triton")


def test_unpickled_cache_lives_where_its_storage_was_loaded():
    """torch.load(map_location=...) remaps tensors but not a pickled torch.device: a cache saved
    on a GPU and loaded with map_location="cpu" must come back on the CPU (its storage's
    device), not try to allocate on the saved device."""
    import io

    cache = RingKVCache(2, 4, 1, 16)
    kv = torch.randn(2, 1, 16)
    cache.append(kv, kv)
    state = cache.__getstate__()
    state["device"] = torch.device("cuda", 3)  # what a GPU run pickled
    restored = RingKVCache.__new__(RingKVCache)
    restored.__setstate__(state)
    assert restored.device == torch.device("cpu")
    assert torch.equal(restored.kv, cache.kv) and torch.equal(restored.counts, cache.counts)
    buf = io.BytesIO()
    torch.save(cache, buf)
    buf.seek(0)
    again = torch.load(buf, map_location="cpu", weights_only=False)
    assert again.device == torch.device("cpu") and torch.equal(again.kv, cache.kv)
