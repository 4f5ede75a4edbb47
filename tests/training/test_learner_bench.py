"""The update benchmark's reference-style baseline computes the same thing as the fast path."""

from __future__ import annotations

import pytest
import torch

from amago_fast.bench.update import (
    SIZES,
    ReferenceDiscreteCritic,
    build,
    filled_buffer,
    gemm_gflops,
    materialized_attention,
    update_gflop,
)
from amago_fast.kernels.attention import causal_attention
from amago_fast.nets.critics import StateCriticEnsemble
from amago_fast.nets.layers import Dropout

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_materialized_attention_matches_causal_attention():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 9, 2, 4) for _ in range(3))
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 6:] = False
    for window in (None, 4):
        ref = causal_attention(q, k, v, valid_mask=mask, window=window)
        got = materialized_attention(q, k, v, valid_mask=mask, window=window)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def test_baseline_learner_matches_fast_learner(monkeypatch):
    monkeypatch.setitem(SIZES, "tiny", dict(num_layers=1, d_model=32, num_heads=2, window=8,
                                            batch=3))
    # Ours' state-only discrete critic and the reference's (state trunk contracted with the
    # one-hot / probability action, a trunk pass per call) are the same function.
    fast, base = build("tiny", False, "cpu"), build("tiny", True, "cpu")
    base.agent.load_state_dict(fast.agent.state_dict())
    buf = filled_buffer(fast.agent.spec, 8, 6, seed=0)
    batch = {k: torch.from_numpy(v) for k, v in buf.sample_windows(3, 8).items()}
    # Same dropout masks for both: the baseline uses F.dropout (as the reference), so ours does
    # here too (its NumPy-stream masks are tested in tests/nets/test_nets_fastpaths.py).
    for m in fast.agent.modules():
        if isinstance(m, Dropout):
            m.fast_cpu_mask = False
    torch.manual_seed(1)
    mf = fast.update(batch)
    torch.manual_seed(1)
    mb = base.update(batch)
    assert mf["loss"] == pytest.approx(mb["loss"], rel=1e-4)
    for (n, p), q in zip(fast.agent.named_parameters(), base.agent.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=n)


def test_bench_critic_forms(monkeypatch):
    monkeypatch.setitem(SIZES, "tiny", dict(num_layers=1, d_model=32, num_heads=2, window=8,
                                            batch=3))
    assert build("tiny", False, "cpu").agent.state_critic
    base = build("tiny", True, "cpu")
    assert isinstance(base.agent.critics, ReferenceDiscreteCritic)
    assert not base.agent.state_critic  # three trunk passes: buffer action, policy, target
    assert not build("tiny", False, "cpu", discrete_critic="action_input").agent.state_critic
    with pytest.raises(ValueError, match="fixed critic form"):
        build("tiny", True, "cpu", discrete_critic="state")


def test_reference_discrete_critic_contracts_the_state_critic_with_the_action():
    torch.manual_seed(0)
    ref = ReferenceDiscreteCritic(6, 3, 2, num_critics=2, hidden_dim=8).double()
    with torch.no_grad():
        ref.w3.normal_()
    state = torch.randn(5, 6, dtype=torch.float64)
    action = torch.softmax(torch.randn(5, 2, 3, dtype=torch.float64), -1)
    q_all = StateCriticEnsemble.forward(ref, state)  # (5, 2, 2, 3, 1)
    expected = (q_all[..., 0] * action.unsqueeze(1)).sum(-1, keepdim=True)
    torch.testing.assert_close(ref(state, action), expected)


def test_update_gflop_counts_the_fused_attention_causally(monkeypatch):
    """The FLOP count adds the fused attention's causal matmuls (7·B·H·L²·D per layer) that
    the counter cannot see; the materialising attention is counted by the counter itself
    (full square: forward 2 + backward 4 matmuls = 12·B·H·L²·D)."""
    monkeypatch.setitem(SIZES, "tiny", dict(num_layers=2, d_model=32, num_heads=2, window=8,
                                            batch=3))
    ours = build("tiny", False, "cpu")
    buf = filled_buffer(ours.agent.spec, 8, 6, seed=0)
    batch = {k: torch.from_numpy(v) for k, v in buf.sample_windows(3, 8).items()}
    fused = update_gflop(ours, batch)
    for layer in ours.agent.traj_encoder.layers:
        layer.attention_fn = materialized_attention
    full = update_gflop(ours, batch)
    B, L1, H, D = 3, 9, 2, 16
    assert (full - fused) * 1e9 == pytest.approx(2 * (12 - 7) * B * H * L1 * L1 * D)
    assert gemm_gflops(repeats=1) > 0


def test_realistic_grid_smoke_on_cpu():
    """The AMAGO-like grid (a GPU benchmark) runs end to end with its windows/batches shrunk:
    updates/s, timesteps/s, op counts per implementation; 18 gammas where the size says so."""
    from amago_fast.bench.update import REALISTIC, run

    size = "amago_256x3_ctx512"
    res = run((size,), iters=1, warmup=0, threads=1, count_flops=False, window=6,
              batch_size=2, num_gammas=18)
    for row in (res[size],):
        assert row["config"]["window"] == 6 and row["gammas"] == 18
        for name in ("ours", "baseline"):
            assert row[name]["timesteps_per_s"] == pytest.approx(
                12 * row[name]["updates_per_s"])
            assert row["ops_per_update"][name]["aten_ops"] > 100
        # Ours' host syncs on CPU: the metrics read and Dropout's CPU-only NumPy masks.
        sites = row["ops_per_update"]["ours"]["host_sync_sites"]
        assert all("layers.py" in x or "learner.py" in x for x in sites), sites
    assert REALISTIC["amago_256x3_ctx512"]["window"] == 512  # the grid itself is unchanged


def test_cuda_graph_bench_refuses_on_cpu():
    from amago_fast.bench.update import run

    with pytest.raises(ValueError, match="cuda_graph"):
        run(("small",), iters=1, warmup=0, count_flops=False, cuda_graph=True, window=4,
            batch_size=2)
