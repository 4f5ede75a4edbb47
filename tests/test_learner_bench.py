"""The update benchmark's reference-style baseline computes the same thing as the fast path."""

from __future__ import annotations

import pytest
import torch

from amago_fast.bench.update import SIZES, build, filled_buffer, materialized_attention
from amago_fast.kernels.attention import causal_attention


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


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
    # Same critic form on both sides (the baseline's, action input); the default discrete
    # critic of "ours" (state only) is a different function and is checked below.
    fast = build("tiny", False, "cpu", discrete_critic="action_input")
    base = build("tiny", True, "cpu")
    base.agent.load_state_dict(fast.agent.state_dict())
    buf = filled_buffer(fast.agent.spec, 8, 6, seed=0)
    batch = {k: torch.from_numpy(v) for k, v in buf.sample_windows(3, 8).items()}
    torch.manual_seed(1)  # same dropout masks for both
    mf = fast.update(batch)
    torch.manual_seed(1)
    mb = base.update(batch)
    assert mf["loss"] == pytest.approx(mb["loss"], rel=1e-4)
    for (n, p), q in zip(fast.agent.named_parameters(), base.agent.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=n)


def test_bench_ours_uses_the_state_critic_and_baseline_the_action_input_one(monkeypatch):
    monkeypatch.setitem(SIZES, "tiny", dict(num_layers=1, d_model=32, num_heads=2, window=8,
                                            batch=3))
    assert build("tiny", False, "cpu").agent.state_critic
    assert not build("tiny", True, "cpu").agent.state_critic
    with pytest.raises(ValueError, match="action_input"):
        build("tiny", True, "cpu", discrete_critic="state")
