"""Critic ensemble kernels vs the PyTorch reference (Triton under TRITON_INTERPRET=1 on CPU).

Tolerance rule (docs/CONTRIBUTING.md): the kernel's error against an fp64 oracle is at most twice
PyTorch's own error at the same input precision, plus a small atol.
"""

import os

import pytest
import torch

from amago_fast.kernels import _utils
from amago_fast.kernels.critic import (
    CriticParams,
    critic_ensemble,
    critic_ensemble_reference,
    critic_ensemble_tiled_reference,
)
from amago_fast.kernels.td_reduce import td_target_reduce, td_target_reduce_reference
from amago_fast.nets.critics import CriticEnsemble, StateCriticEnsemble
from tests._kernels import DEVICE, needs_triton, run_without_interpreter

ATOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def make_params(e, g, d_s, d_a, h, o, seed=0, device="cpu", margin=False):
    """Parameters at a scale where every layer matters (the module's output init is tiny).

    ``margin=True``: small weights and biases of magnitude in [0.6, 1] with random signs, so that
    (with unit-normal inputs) every pre-activation of layers 1 and 2 lies at least ~0.2 away from
    the leaky-ReLU kink while both branches are taken. At the kink the gradient jumps by
    (1 - slope) x upstream, so any implementation whose pre-activation differs from the oracle's
    by one rounding step (fp16: ~1e-3) can land on the other branch there; such flips would
    dominate a max-error comparison without saying anything about the kernel.
    """
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale):
        return (torch.randn(*shape, generator=gen) * scale).to(device)

    def bias(*shape):
        sign = torch.randint(0, 2, shape, generator=gen) * 2 - 1
        return (sign * (0.6 + 0.4 * torch.rand(*shape, generator=gen))).to(device)

    if margin:
        return CriticParams(
            rnd(e, d_s, h, scale=0.06 * d_s**-0.5),
            rnd(e, d_a, h, scale=0.06 * max(d_a, 1) ** -0.5),
            bias(e, g, h),
            rnd(e, h, h, scale=0.08 * h**-0.5),
            bias(e, h),
            rnd(e, h, o, scale=h**-0.5),
            rnd(e, o, scale=0.3),
        )
    return CriticParams(
        rnd(e, d_s, h, scale=d_s**-0.5),
        rnd(e, d_a, h, scale=max(d_a, 1) ** -0.5),
        rnd(e, g, h, scale=0.3),
        rnd(e, h, h, scale=h**-0.5),
        rnd(e, h, scale=0.3),
        rnd(e, h, o, scale=h**-0.5),
        rnd(e, o, scale=0.3),
    )


def make_inputs(n, g, d_s, d_a, seed=1, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n, d_s, generator=gen).to(device),
        torch.randn(n, g, d_a, generator=gen).to(device),
    )


def outputs_and_grads(fn, state, action, params, dq, dtype):
    """q and the grads of <q, dq> w.r.t. state, action and every parameter (params stay in their
    own dtype, the inputs are cast to ``dtype``)."""
    s = state.detach().to(dtype).requires_grad_(True)
    a = action.detach().to(dtype).requires_grad_(True)
    ps = [p.detach().clone().requires_grad_(True) for p in params]
    q = fn(s, a, CriticParams(*ps))
    # allow_unused: with action_dim 0 (the state-only critic) the reference never reads action.
    grads = torch.autograd.grad(q, [s, a, *ps], dq.to(q.dtype), allow_unused=True)
    grads = [torch.zeros_like(x) if g_ is None else g_ for g_, x in zip(grads, [s, a, *ps])]
    return [q.detach().double()] + [g_.double() for g_ in grads]


def check_against_reference(e, g, o, d_s, d_a, h, n, dtype, device=DEVICE, margin=True):
    params = make_params(e, g, d_s, d_a, h, o, device=device, margin=margin)
    state, action = make_inputs(n, g, d_s, d_a, device=device)
    dq = torch.randn(n, e, g, o, generator=torch.Generator().manual_seed(2)).to(device)

    def ref(s, a, p):
        return critic_ensemble_reference(s, a, p)

    def kernel(s, a, p):
        return critic_ensemble(s, a, p, backend="triton")

    # The oracle sees the same rounded inputs as both implementations (inputs, weights and dq
    # in ``dtype``), so the comparison measures the computation's error, not the rounding of
    # the inputs (which would flip leaky-ReLU branches near 0 and dominate the gradients).
    def rounded(t):
        return t.to(dtype).double()

    oracle = outputs_and_grads(
        ref, rounded(state), rounded(action), [rounded(p) for p in params], rounded(dq),
        torch.float64,
    )  # fmt: skip
    torch_same = outputs_and_grads(ref, state, action, params, dq, dtype)
    ours = outputs_and_grads(kernel, state, action, params, dq, dtype)
    names = ["q", "d_state", "d_action", *CriticParams._fields]
    for name, x_oracle, x_torch, x_ours in zip(names, oracle, torch_same, ours):
        assert x_ours.shape == x_oracle.shape, name
        if x_oracle.numel() == 0:  # d_action / w_action with action_dim 0
            continue
        scale = x_oracle.abs().max().item()
        err_torch = (x_torch - x_oracle).abs().max().item()
        err_ours = (x_ours - x_oracle).abs().max().item()
        bound = 2 * err_torch + ATOL[dtype] * scale
        assert err_ours <= bound, (
            f"{name}: error {err_ours:.3g} > {bound:.3g} (torch {err_torch:.3g})"
        )


def test_reference_matches_tiled_formulation():
    params = make_params(3, 5, 9, 4, 24, 2)
    state, action = make_inputs(13, 5, 9, 4)
    a = critic_ensemble_reference(state.double(), action.double(), [p.double() for p in params])
    b = critic_ensemble_tiled_reference(
        state.double(), action.double(), [p.double() for p in params]
    )
    assert a.shape == (13, 3, 5, 2)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("slope", [0.0, 0.01, 0.3])
def test_reference_grads_match_tiled_formulation(slope):
    """The reference's in-place activations give the same grads as the out-of-place tiled one."""
    params = [p.double() for p in make_params(2, 3, 7, 2, 24, 3)]
    state, action = (t.double() for t in make_inputs(9, 3, 7, 2))
    results = []
    for fn in (critic_ensemble_reference, critic_ensemble_tiled_reference):
        leaves = [t.clone().requires_grad_() for t in (state, action, *params)]
        q = fn(leaves[0], leaves[1], CriticParams(*leaves[2:]), negative_slope=slope)
        results.append([q, *torch.autograd.grad((q * q).sum(), leaves)])
    for x, y in zip(*results):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)


def test_reference_matches_per_critic_per_gamma_mlp():
    """The reference against the definition, row by row, with explicit Python loops."""
    e, g, d_s, d_a, h, o, n = 2, 3, 5, 2, 8, 3, 4
    p = [t.double() for t in make_params(e, g, d_s, d_a, h, o)]
    state, action = (t.double() for t in make_inputs(n, g, d_s, d_a))
    q = critic_ensemble_reference(state, action, p, negative_slope=0.2)
    leaky = torch.nn.LeakyReLU(0.2)
    for i in range(n):
        for c in range(e):
            for k in range(g):
                h1 = leaky(state[i] @ p[0][c] + action[i, k] @ p[1][c] + p[2][c, k])
                h2 = leaky(h1 @ p[3][c] + p[4][c])
                torch.testing.assert_close(q[i, c, k], h2 @ p[5][c] + p[6][c])


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("e,g,o", [(1, 1, 1), (4, 7, 5), (1, 7, 1), (4, 1, 5)])
def test_triton_matches_reference(e, g, o, dtype):
    # Odd everything: N=37 (not a multiple of the row block), d_s=11, d_a=3, hidden 80
    # (padded to 128, two column chunks of 64, the second one partly masked).
    check_against_reference(e, g, o, d_s=11, d_a=3, h=80, n=37, dtype=dtype)


@needs_triton
def test_triton_matches_reference_default_hidden():
    # The trainer's hidden size (256), d_s larger than one K block (70 > 64).
    # Unconstrained weights: in fp32 both implementations are ~1e-7 from the oracle, far too
    # little to flip a leaky-ReLU branch.
    check_against_reference(4, 2, 1, d_s=70, d_a=6, h=256, n=17, dtype=torch.float32, margin=False)


@needs_triton
def test_triton_is_deterministic():
    params = make_params(4, 3, 11, 3, 80, 5, device=DEVICE)
    state, action = make_inputs(37, 3, 11, 3, device=DEVICE)
    dq = torch.randn(37, 4, 3, 5).to(DEVICE)
    fn = lambda s, a, p: critic_ensemble(s, a, p, backend="triton")  # noqa: E731
    first = outputs_and_grads(fn, state, action, params, dq, torch.float32)
    second = outputs_and_grads(fn, state, action, params, dq, torch.float32)
    for x, y in zip(first, second):
        assert torch.equal(x, y)


@needs_triton
@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_detach_params_gives_state_and_action_grads_only(backend):
    torch.manual_seed(0)
    m = CriticEnsemble(11, 3, 2, num_critics=4, hidden_dim=80, out_dim=1, backend=backend)
    with torch.no_grad():
        m.w3.normal_(0, 0.1)
    m = m.to(DEVICE)
    state, action = make_inputs(21, 2, 11, 3, device=DEVICE)
    s1, a1 = state.clone().requires_grad_(), action.clone().requires_grad_()
    s2, a2 = state.clone().requires_grad_(), action.clone().requires_grad_()
    m(s1, a1, detach_params=True).sum().backward()
    assert all(p.grad is None for p in m.parameters())
    m(s2, a2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())
    torch.testing.assert_close(s1.grad, s2.grad)
    torch.testing.assert_close(a1.grad, a2.grad)


@needs_triton
def test_triton_input_grads_only_and_no_grad():
    """Only the grads that are asked for are computed (and they match the full computation)."""
    params = make_params(4, 2, 11, 3, 80, 1, device=DEVICE)
    state, action = make_inputs(21, 2, 11, 3, device=DEVICE)
    a = action.clone().requires_grad_()
    q = critic_ensemble(state, a, params, backend="triton")
    (d_action,) = torch.autograd.grad(q.sum(), [a])
    a_ref = action.clone().requires_grad_()
    (d_ref,) = torch.autograd.grad(critic_ensemble_reference(state, a_ref, params).sum(), [a_ref])
    torch.testing.assert_close(d_action, d_ref, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        q2 = critic_ensemble(state, action, params, backend="triton")
    torch.testing.assert_close(q2, q.detach())


def test_module_shapes_init_and_cpu_dispatch():
    m = CriticEnsemble(10, 2, 9, num_critics=4, hidden_dim=32, out_dim=51)
    assert m.w_state.shape == (4, 10, 32) and m.b1.shape == (4, 9, 32) and m.w3.shape == (4, 32, 51)
    assert m.w3.abs().max() <= 3e-3 and torch.all(m.b3 == 0)
    state, action = make_inputs(5, 9, 10, 2)
    q = m(state, action)
    assert q.shape == (5, 4, 9, 51)
    # backend="auto" on CPU tensors is exactly the reference.
    assert torch.equal(q, critic_ensemble_reference(state, action, m.params))
    assert "num_critics=4" in repr(m)


def test_bad_inputs_raise_clear_errors():
    params = make_params(2, 3, 5, 2, 16, 1)
    state, action = make_inputs(4, 3, 5, 2)
    with pytest.raises(ValueError, match="state must be"):
        critic_ensemble(state[0], action, params)
    with pytest.raises(ValueError, match="rows"):
        critic_ensemble(state[:3], action, params)
    with pytest.raises(ValueError, match="b1 has shape"):
        critic_ensemble(state, action[:, :2], params)
    with pytest.raises(ValueError, match="w_state has shape"):
        critic_ensemble(state[:, :4], action, params)
    with pytest.raises(TypeError, match="dtype"):
        critic_ensemble(state, action.double(), params)
    with pytest.raises(TypeError, match="floating"):
        critic_ensemble(state.long(), action.long(), params)
    with pytest.raises(TypeError, match="CriticParams"):
        critic_ensemble(state, action, params[:3])
    with pytest.raises(ValueError, match="unknown backend"):
        critic_ensemble(state, action, params, backend="cuda")
    with pytest.raises(ValueError, match="num_gammas"):
        CriticEnsemble(5, 2, 0)
    with pytest.raises(ValueError, match="backend"):
        CriticEnsemble(5, 2, 3, backend="fast")


def test_triton_on_cpu_without_interpreter_is_a_clear_error():
    """In a fresh process without TRITON_INTERPRET: auto → reference, triton → clear error."""
    code = (
        "import torch, sys\n"
        "sys.path.insert(0, 'tests/kernels')\n"
        "from test_critic import make_params, make_inputs\n"
        "from amago_fast.kernels.critic import critic_ensemble, critic_ensemble_reference\n"
        "p = make_params(2, 3, 5, 2, 16, 1); s, a = make_inputs(4, 3, 5, 2)\n"
        "assert torch.equal(critic_ensemble(s, a, p), critic_ensemble_reference(s, a, p))\n"
        "try:\n"
        "    critic_ensemble(s, a, p, backend='triton')\n"
        "except ValueError as e:\n"
        "    assert 'TRITON_INTERPRET' in str(e), e\n"
        "else:\n"
        "    raise AssertionError('no error')\n"
    )
    res = run_without_interpreter(code, in_repo=True)
    assert res.returncode == 0, res.stderr


def test_triton_limits_fall_back_or_raise():
    params = make_params(1, 1, 3, 2, 16, 200)  # out_dim beyond the Triton path's limit
    state, action = make_inputs(4, 1, 3, 2)
    q = critic_ensemble(state, action, params, backend="auto")
    assert q.shape == (4, 1, 1, 200)
    if _utils.INTERPRET:
        with pytest.raises(ValueError, match="out_dim"):
            critic_ensemble(state, action, params, backend="triton")


# ------------------------------------------------------------------------------------------------
# TD-target reductions
# ------------------------------------------------------------------------------------------------


def test_td_target_reduce_reference_semantics():
    q = torch.randn(6, 4, 7, 1, dtype=torch.float64)
    q_min, q_mean = td_target_reduce_reference(q, 2, torch.Generator().manual_seed(3))
    subset = torch.randperm(4, generator=torch.Generator().manual_seed(3))[:2]
    torch.testing.assert_close(q_min, q[:, subset].amin(1))
    torch.testing.assert_close(q_mean, q.mean(1))
    full_min, _ = td_target_reduce_reference(q, 4)
    torch.testing.assert_close(full_min, q.amin(1))
    # Same generator state → same subset; different draws eventually differ.
    draws = {
        tuple(td_target_reduce_reference(q, 2, torch.Generator().manual_seed(s))[0].flatten()[:3])
        for s in range(20)
    }
    assert len(draws) > 1


@needs_triton
@pytest.mark.parametrize("shape,subset", [((37, 4, 7, 1), 2), ((5, 1, 3, 1), 1), ((9, 5, 2, 3), 3)])
def test_td_target_reduce_triton_matches_reference(shape, subset):
    q = torch.randn(*shape, generator=torch.Generator().manual_seed(4)).to(DEVICE)
    q1 = q.clone().requires_grad_()
    q2 = q.clone().requires_grad_()
    ours = td_target_reduce(q1, subset, torch.Generator().manual_seed(7), backend="triton")
    ref = td_target_reduce_reference(q2, subset, torch.Generator().manual_seed(7))
    for x, y in zip(ours, ref):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-6)
    w_min, w_mean = torch.randn_like(ref[0]), torch.randn_like(ref[1])
    (g1,) = torch.autograd.grad((ours[0] * w_min).sum() + (ours[1] * w_mean).sum(), q1)
    (g2,) = torch.autograd.grad((ref[0] * w_min).sum() + (ref[1] * w_mean).sum(), q2)
    torch.testing.assert_close(g1, g2)
    # Only one of the two outputs used.
    (g3,) = torch.autograd.grad(
        td_target_reduce(q1, subset, torch.Generator().manual_seed(7), backend="triton")[0].sum(),
        q1,
    )
    (g4,) = torch.autograd.grad(
        td_target_reduce_reference(q2, subset, torch.Generator().manual_seed(7))[0].sum(), q2
    )
    torch.testing.assert_close(g3, g4)


@needs_triton
def test_td_target_reduce_triton_nan_propagates_like_reference():
    q = torch.randn(3, 4, 2, 1).to(DEVICE)
    q[1, :, 0, 0] = float("nan")
    ours = td_target_reduce(q, 4, backend="triton")
    ref = td_target_reduce_reference(q, 4)
    for x, y in zip(ours, ref):
        torch.testing.assert_close(x, y, equal_nan=True)


def test_td_target_reduce_bad_input():
    q = torch.randn(3, 4, 2, 1)
    with pytest.raises(ValueError, match="subset_size"):
        td_target_reduce(q, 5)
    with pytest.raises(ValueError, match="subset_size"):
        td_target_reduce(q, 0)
    with pytest.raises(TypeError, match="subset_size"):
        td_target_reduce(q, 2.0)
    with pytest.raises(ValueError, match=r"\(N, E, G, O\)"):
        td_target_reduce(q[0], 2)
    with pytest.raises(TypeError, match="floating"):
        td_target_reduce(q.long(), 2)


# ------------------------------------------------------------------------------------------------
# GPU-only: bf16 (the interpreter's bf16 tl.dot is wrong) and the trainer's shapes
# ------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("e,g,o", [(4, 7, 1), (4, 18, 5), (1, 1, 1)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_gpu_triton_matches_reference(e, g, o, dtype):
    check_against_reference(e, g, o, d_s=131, d_a=7, h=256, n=3001, dtype=dtype, device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_triton_is_deterministic_at_scale():
    params = make_params(4, 7, 128, 6, 256, 1, device="cuda")
    state, action = make_inputs(24 * 128, 7, 128, 6, device="cuda")
    dq = torch.randn(24 * 128, 4, 7, 1, device="cuda")
    fn = lambda s, a, p: critic_ensemble(s, a, p, backend="triton")  # noqa: E731
    first = outputs_and_grads(fn, state, action, params, dq, torch.bfloat16)
    second = outputs_and_grads(fn, state, action, params, dq, torch.bfloat16)
    for x, y in zip(first, second):
        assert torch.equal(x, y)


# ---------------------------------------------------------------------------- state-only critic


def test_state_critic_matches_per_critic_mlp_loop():
    """StateCriticEnsemble against its definition: per critic one MLP over the state whose
    output units are (gamma, action, out), checked row by row with Python loops (fp64)."""
    torch.manual_seed(0)
    e, g, a, o, d_s, h, n = 2, 3, 4, 2, 5, 8, 6
    m = StateCriticEnsemble(d_s, a, g, num_critics=e, hidden_dim=h, out_dim=o,
                            negative_slope=0.2).double()
    with torch.no_grad():
        m.w3.normal_()
        m.b3.normal_()
    state = torch.randn(n, d_s, dtype=torch.float64)
    q = m(state)
    assert q.shape == (n, e, g, a, o)
    leaky = torch.nn.LeakyReLU(0.2)
    for i in range(n):
        for c in range(e):
            h1 = leaky(state[i] @ m.w_state[c] + m.b1[c, 0])
            h2 = leaky(h1 @ m.w2[c] + m.b2[c])
            out = (h2 @ m.w3[c] + m.b3[c]).reshape(g, a, o)
            torch.testing.assert_close(q[i, c], out)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("e,o", [(4, 28), (1, 5)])
def test_triton_state_only_matches_reference(e, o, dtype):
    """action_dim 0, one gamma slot: the fused kernels as a plain per-critic MLP (what
    StateCriticEnsemble runs); all grads, odd row count, same tolerance rule."""
    check_against_reference(e=e, g=1, o=o, d_s=24, d_a=0, h=32, n=37, dtype=dtype, device=DEVICE)


@needs_triton
@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_state_critic_module_grads_and_detach(backend):
    torch.manual_seed(1)
    m = StateCriticEnsemble(16, 3, 2, num_critics=2, hidden_dim=32, out_dim=1,
                            backend=backend).to(DEVICE)
    state = torch.randn(19, 16, device=DEVICE, requires_grad=True)
    w = torch.randn(19, 2, 2, 3, 1, device=DEVICE)
    (m(state) * w).sum().backward()
    assert all(p.grad is not None and torch.count_nonzero(p.grad) > 0 for p in m.parameters())
    for p in m.parameters():
        p.grad = None
    state.grad = None
    (m(state, detach_params=True) * w).sum().backward()
    assert all(p.grad is None for p in m.parameters())
    assert state.grad is not None and torch.count_nonzero(state.grad) > 0


def test_state_critic_bad_input():
    with pytest.raises(ValueError, match="num_actions"):
        StateCriticEnsemble(8, 0, 2)
    with pytest.raises(ValueError, match="backend"):
        StateCriticEnsemble(8, 3, 2, backend="cuda")
    m = StateCriticEnsemble(8, 3, 2, num_critics=2, hidden_dim=16)
    with pytest.raises(ValueError, match="state must be"):
        m(torch.randn(4, 2, 8))
    with pytest.raises(ValueError, match="w_state"):
        m(torch.randn(4, 7))


def test_env_flag_matches_utils():
    # conftest sets TRITON_INTERPRET before import; the dispatch helper must have seen it.
    assert _utils.INTERPRET == (os.environ.get("TRITON_INTERPRET") == "1")


@pytest.mark.slow
def test_kernels_compile_for_sm90_without_a_gpu():
    """The interpreter does not type-check like the compiler does: compile every kernel for
    sm_90 (ptxas ships with Triton; nothing runs) at the launcher's GPU tile sizes."""
    from amago_fast.bench.critic import run_ptxas

    report = run_ptxas(("bf16", "fp32"))
    for dtype, kernels in report["kernels"].items():
        assert isinstance(kernels, list), f"{dtype}: {kernels}"
        assert {k["kernel"] for k in kernels} == {
            "_critic_state_proj_kernel",
            "_critic_fwd_kernel",
            "_critic_bwd_rows_kernel",
            "_critic_bwd_weights_kernel",
            "_td_reduce_kernel",
        }
        assert all(k["registers"] is not None for k in kernels), kernels


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_auto_runs_the_reference():
    """On CUDA, backend="auto" is the reference for the critic and the TD reductions: on an H100
    the reference was faster (BENCHMARKS.md, GPU session 7)."""
    params = make_params(4, 7, 32, 6, 64, 1, device="cuda")
    state, action = make_inputs(100, 7, 32, 6, device="cuda")
    torch.testing.assert_close(critic_ensemble(state, action, params),
                               critic_ensemble_reference(state, action, params), rtol=0, atol=0)
    q = torch.randn(100, 4, 7, 1, device="cuda")
    ours = td_target_reduce(q, 2, torch.Generator().manual_seed(3))
    ref = td_target_reduce_reference(q, 2, torch.Generator().manual_seed(3))
    for a, b in zip(ours, ref):
        assert torch.equal(a, b)
