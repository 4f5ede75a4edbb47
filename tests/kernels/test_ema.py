"""Fused EMA of target parameters vs the per-parameter loop."""

import copy

import pytest
import torch

from amago_fast.kernels.ema import EMA, ema_update_, ema_update_reference


def make_pair(dtype=torch.float32, device="cpu"):
    torch.manual_seed(0)
    online = torch.nn.Sequential(
        torch.nn.Linear(13, 37), torch.nn.LayerNorm(37), torch.nn.Linear(37, 5)
    ).to(device=device, dtype=dtype)
    target = copy.deepcopy(online)
    with torch.no_grad():
        for p in online.parameters():
            p.add_(torch.randn_like(p))
    return target, online


def snapshot(module):
    return [p.detach().clone() for p in module.parameters()]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("tau", [0.005, 0.3, 1.0])
def test_matches_reference_loop(dtype, tau):
    target_a, online = make_pair(dtype)
    target_b = copy.deepcopy(target_a)
    before_online = snapshot(online)
    for _ in range(3):
        ema_update_(target_a.parameters(), online.parameters(), tau)
        ema_update_reference(target_b.parameters(), online.parameters(), tau)
    tol = {torch.float64: 1e-12, torch.float32: 1e-6, torch.float16: 2e-3, torch.bfloat16: 2e-2}
    for a, b in zip(target_a.parameters(), target_b.parameters()):
        torch.testing.assert_close(a, b, rtol=tol[dtype], atol=tol[dtype])
    # The online network is never written.
    for p, q in zip(online.parameters(), before_online):
        assert torch.equal(p, q)


def test_formula_and_tau_one_is_a_copy():
    t = [torch.tensor([0.0, 10.0]), torch.tensor([[1.0]])]
    o = [torch.tensor([1.0, 0.0]), torch.tensor([[3.0]])]
    ema_update_(t, o, 0.25)
    torch.testing.assert_close(t[0], torch.tensor([0.25, 7.5]))
    torch.testing.assert_close(t[1], torch.tensor([[1.5]]))
    ema_update_(t, o, 1.0)
    assert all(torch.equal(a, b) for a, b in zip(t, o))


def test_accepts_modules_and_leaf_params_requiring_grad():
    target, online = make_pair()
    assert all(p.requires_grad for p in target.parameters())
    expected = [t + 0.1 * (o - t) for t, o in zip(snapshot(target), snapshot(online))]
    ema_update_(target, online, 0.1)
    for p, e in zip(target.parameters(), expected):
        torch.testing.assert_close(p.detach(), e)
        assert p.grad_fn is None


def test_ema_helper_class():
    target, online = make_pair()
    ref = copy.deepcopy(target)
    ema = EMA(target, online, tau=0.01)
    for _ in range(2):
        ema.update()
        ema_update_reference(ref, online, 0.01)
    for a, b in zip(target.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b)


def test_empty_lists_are_fine():
    ema_update_([], [], 0.5)


@pytest.mark.parametrize("fn", [ema_update_, ema_update_reference])
def test_bad_input_raises_and_modifies_nothing(fn):
    target, online = make_pair()
    before = snapshot(target)
    tp, op = list(target.parameters()), list(online.parameters())
    cases = [
        ((tp, op, 0.0), ValueError, "tau"),
        ((tp, op, 1.5), ValueError, "tau"),
        ((tp, op, -0.1), ValueError, "tau"),
        ((tp, op, float("nan")), ValueError, "tau"),
        ((tp, op, "0.1"), TypeError, "tau"),
        ((tp, op, True), TypeError, "tau"),
        ((tp, op[:-1], 0.1), ValueError, "tensors"),
        ((tp, op[:-1] + [op[-1].double()], 0.1), TypeError, "dtype"),
        ((tp, op[:-1] + [op[-1][:2]], 0.1), ValueError, "shape"),
        ((tp, op[:-1] + [3.0], 0.1), TypeError, "torch.Tensor"),
        ((tp, tp, 0.1), ValueError, "same tensor"),
        ((tp[0], op[0], 0.1), TypeError, "iterable"),
        (([torch.zeros(2, dtype=torch.long)], [torch.ones(2, dtype=torch.long)], 0.1), TypeError,
         "floating"),
    ]  # fmt: skip
    for args, exc, match in cases:
        with pytest.raises(exc, match=match):
            fn(*args)
        for p, q in zip(target.parameters(), before):
            assert torch.equal(p, q), f"rejected call {match!r} modified the target"


def test_tau_as_scalar_tensor():
    t, o = [torch.zeros(3)], [torch.ones(3)]
    ema_update_(t, o, torch.tensor(0.5))
    torch.testing.assert_close(t[0], torch.full((3,), 0.5))
    with pytest.raises(ValueError, match="scalar"):
        ema_update_(t, o, torch.tensor([0.5, 0.5]))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_matches_reference():
    target_a, online = make_pair(device="cuda")
    target_b = copy.deepcopy(target_a)
    ema_update_(target_a, online, 0.005)
    ema_update_reference(target_b, online, 0.005)
    for a, b in zip(target_a.parameters(), target_b.parameters()):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="on"):
        ema_update_(list(target_a.parameters()), [p.cpu() for p in online.parameters()], 0.1)
