"""The learner update makes no host synchronisation: on a GPU the host queues the whole update
(forward, backward, clip, AdamW, EMA, PopArt, metrics) without waiting for the device, which is
also what CUDA-graph capture needs. Metrics come back in one read every ``stats_every`` updates.

CPU-side proof: amago_fast.bench.sync.HostSyncDetector sees every aten op of the update and
records the ones that make the host wait on a GPU (its docstring lists the proxies).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from amago_fast.agent import Agent, AgentConfig
from amago_fast.bench.sync import HostSyncDetector
from amago_fast.learner import Learner, LearnerConfig, StaticBatch
from amago_fast.nets.layers import Dropout
from amago_fast.popart import PopArt
from tests.training.test_learner import SMALL, make_batch, make_spec

pytestmark = pytest.mark.usefixtures("one_torch_thread")

def gpu_like_learner(kind: str = "discrete", agent_kw=None, **learner_kw) -> Learner:
    """The small test learner with the code paths a GPU takes: Dropout's NumPy-stream masks are
    CPU-only (on a GPU it is F.dropout), so they are switched off here."""
    torch.manual_seed(0)
    agent = Agent(make_spec(kind), AgentConfig(**{**SMALL, **(agent_kw or {})}))
    for m in agent.modules():
        if isinstance(m, Dropout):
            m.fast_cpu_mask = False
    return Learner(agent, LearnerConfig(**{"warmup_steps": 5, "lr": 1e-3, **learner_kw}))


def device_batch(spec, seed: int = 0) -> dict[str, torch.Tensor]:
    """A batch already on the learner's device, as the trainer passes it."""
    return {k: torch.from_numpy(v) for k, v in make_batch(spec, seed=seed).items()}


CASES = {
    "default": ("discrete", {}, {}),  # PopArt on, REDQ subset 2 of 4
    "popart_off": ("discrete", {}, {"popart": False}),
    "redq_3_of_5_nstep3": ("discrete", {"num_critics": 5}, {"num_critics_td": 3, "n_step": 3}),
    "twohot": ("discrete", {"critic_type": "twohot", "num_bins": 16}, {}),
    "action_input_critic": ("discrete", {"discrete_critic": "action_input"}, {}),
    "continuous": ("continuous", {}, {}),
    "multidiscrete": ("multidiscrete", {}, {}),
    "gru": ("discrete", {"traj_encoder": "gru"}, {}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_update_makes_no_host_sync(case):
    kind, agent_kw, learner_kw = CASES[case]
    learner = gpu_like_learner(kind, agent_kw, stats_every=3, **learner_kw)
    spec = learner.agent.spec
    assert learner.update(device_batch(spec, 0)) == {}  # first update: lazy optimizer state
    batch = device_batch(spec, 1)
    with HostSyncDetector() as d:
        out = learner.update(batch)
    assert out == {}
    assert d.events == [], d.events
    assert d.ops > 100  # the detector saw the update
    m = learner.update(device_batch(spec, 2))  # the third: the read
    assert m["skipped_nonfinite"] == 0.0 and m["updates"] == 3.0 and math.isfinite(m["loss"])


def test_a_read_is_one_host_read():
    learner = gpu_like_learner(stats_every=2)
    learner.update(device_batch(learner.agent.spec))
    with HostSyncDetector() as d:
        m = learner.read_stats()
    assert [name for name, _ in d.events] == ["tolist"], d.events
    assert m["updates"] == 1.0


def test_detector_sees_each_kind_of_sync():
    """The proxies fire on the constructs the update must avoid (so the test above can fail)."""
    x = torch.randn(5)
    mask = x > 0
    for fn, expected in [
        (lambda: x.sum().item(), "_local_scalar_dense"),
        (lambda: float(x.max()), "_local_scalar_dense"),
        (lambda: bool((x > 0).all()), "_local_scalar_dense"),
        (lambda: x[mask], "index"),
        (lambda: torch.nonzero(x), "nonzero"),
        (lambda: x.tolist(), "tolist"),
        (lambda: torch.tensor([1.0, 2.0]), "lift_fresh"),
        (lambda: x.unique(), "_unique2"),
    ]:
        with HostSyncDetector() as d:
            fn()
        assert expected in [name for name, _ in d.events], (expected, d.events)
    with HostSyncDetector() as d:
        F.one_hot(torch.tensor([0, 2]).long(), 3)  # exempt (CPU-only range check)
    assert [n for n, _ in d.events] == ["lift_fresh"]


def test_update_op_count():
    """Aten ops in one update of the default small test learner (no read). Measured: 1998 per
    update with host syncs (boolean-index Q statistics, a PopArt step size read on the host, a
    foreach AdamW), ~1300 now (BENCHMARKS.md 'Sync-free update')."""
    learner = gpu_like_learner(stats_every=2)
    spec = learner.agent.spec
    learner.update(device_batch(spec, 0))
    batch = device_batch(spec, 1)
    with HostSyncDetector() as d:
        learner.update(batch)
    assert d.ops < 1500, d.ops


def _metrics_run(stats_every: int, batches, poison: int | None = None):
    learner = gpu_like_learner(stats_every=stats_every)
    out = []
    for i, b in enumerate(batches):
        if i == poison:
            with torch.no_grad():
                saved = learner.agent.critics.w3.clone()
                learner.agent.critics.w3.fill_(float("inf"))
        out.append(learner.update(b))
        if i == poison:
            with torch.no_grad():
                learner.agent.critics.w3.copy_(saved)
    return learner, out


def test_stats_every_gives_the_means_of_the_updates():
    spec = make_spec()
    batches = [device_batch(spec, s) for s in range(4)]
    one, single = _metrics_run(1, batches, poison=1)
    four, grouped = _metrics_run(4, batches, poison=1)
    assert grouped[:3] == [{}, {}, {}]
    m = grouped[3]
    assert [s["skipped_nonfinite"] for s in single] == [0.0, 1.0, 0.0, 0.0]
    assert m["skipped_nonfinite"] == 1.0 and m["updates"] == 3.0
    applied = [s for s in single if not s["skipped_nonfinite"]]
    for key in ("loss", "critic_loss", "grad_norm", "q_mean", "critic_loss/g1", "actor_bc/g0"):
        assert m[key] == pytest.approx(np.mean([s[key] for s in applied]), rel=1e-9), key
    for key in ("lr", "updates", "popart/mu_g0", "popart/sigma_g2"):
        assert m[key] == single[-1][key], key
    for p, q in zip(one.agent.parameters(), four.agent.parameters()):
        assert torch.equal(p, q)
    assert one.read_stats() == {}  # nothing since the last read


def test_skipped_only_window_reports_the_last_loss():
    spec = make_spec()
    learner = gpu_like_learner(stats_every=2)
    with torch.no_grad():
        learner.agent.critics.w3.fill_(float("nan"))
    learner.update(device_batch(spec, 0))
    m = learner.update(device_batch(spec, 1))
    assert m["skipped_nonfinite"] == 2.0 and math.isnan(m["loss"]) and "q_mean" not in m
    assert learner.updates == 0


def test_bad_batch_with_stats_every_raises_at_the_read_and_changes_nothing():
    learner = gpu_like_learner(stats_every=2)
    spec = learner.agent.spec
    batch = device_batch(spec)
    learner.update(batch)
    learner.read_stats()
    before = copy.deepcopy(learner.state_dict())
    bad = {k: v.clone() for k, v in batch.items()}
    bad["action"][1, 3] = 7  # out of range for n=3: clamped on the device, update skipped
    assert learner.update(bad) == {}
    for k, v in before["loss_module"].items():
        assert torch.equal(v, learner.state_dict()["loss_module"][k]), k
    with pytest.raises(ValueError, match="discrete actions outside"):
        learner.read_stats()
    assert learner.updates == before["updates"]
    assert learner.update(batch) == {}  # the flags were cleared by the read
    assert learner.update(batch)["updates"] == 3.0


def test_lr_warmup_on_the_device_matches_the_schedule():
    learner = gpu_like_learner()  # warmup_steps=5, lr=1e-3
    spec = learner.agent.spec
    seen = [learner.update(device_batch(spec, i))["lr"] for i in range(6)]
    expected = [1e-3 * min(1.0, (k + 1) / 5) for k in range(1, 7)]
    assert seen == pytest.approx(expected, rel=1e-6)
    assert learner.optimizer.param_groups[0]["lr"] is learner._lr


def test_popart_update_where_matches_update():
    torch.manual_seed(0)
    a, b = PopArt(3, beta=0.2, init_nu=4.0), PopArt(3, beta=0.2, init_nu=4.0)
    for _ in range(3):
        mean, sq = torch.randn(3), torch.rand(3) * 5 + 2
        a.update(mean, sq)
        b.update_where(mean, sq, torch.tensor(True))
        for (n, x), y in zip(a.state_dict().items(), b.state_dict().values()):
            torch.testing.assert_close(x, y, rtol=1e-6, atol=0, msg=n)
    before = copy.deepcopy(b.state_dict())
    b.update_where(torch.full((3,), float("nan")), torch.full((3,), float("inf")),
                   torch.tensor(False))
    for k, v in before.items():
        assert torch.equal(v, b.state_dict()[k]), k


def test_static_batch_copies_in_place_and_rejects_other_shapes():
    src = {"obs": torch.randn(2, 3, 4), "mask": torch.ones(2, 3, dtype=torch.bool)}
    static = StaticBatch(src)
    ptrs = {k: t.data_ptr() for k, t in static.tensors.items()}
    new = {"obs": torch.randn(2, 3, 4), "mask": torch.zeros(2, 3, dtype=torch.bool)}
    out = static.copy_in(new)
    assert {k: t.data_ptr() for k, t in out.items()} == ptrs
    assert all(torch.equal(out[k], new[k]) for k in new)
    kept = {k: t.clone() for k, t in out.items()}
    for bad, match in [
        ({**new, "obs": torch.randn(3, 3, 4)}, "obs"),
        ({**new, "mask": torch.zeros(2, 3, dtype=torch.int8)}, "mask"),
        ({"obs": new["obs"]}, "keys"),
    ]:
        with pytest.raises(ValueError, match=match):
            static.copy_in(bad)
        assert all(torch.equal(static.tensors[k], kept[k]) for k in kept)


@pytest.mark.parametrize("kw,match", [
    ({"cuda_graph": True}, "CUDA device"),
    ({"cuda_graph": True, "device": "cuda", "compile": True}, "compile"),
    ({"cuda_graph": True, "device": "cuda", "attention_entropy_every": 10}, "entropy"),
    ({"stats_every": 0}, "stats_every"),
    ({"cuda_graph_warmup": 0}, "cuda_graph_warmup"),
])
def test_cuda_graph_and_stats_options_refuse_clearly(kw, match):
    with pytest.raises(ValueError, match=match):
        LearnerConfig(**kw)


def _cuda_learner(**learner_kw) -> Learner:
    """A head-dim-16 model (d_model 64, 4 heads) with dropout off (so eager and captured
    updates draw the same random numbers only through the learner's generator)."""
    torch.manual_seed(0)
    cfg = {**SMALL, "d_model": 64, "num_heads": 4, "dropout_emb": 0.0, "dropout_ff": 0.0}
    agent = Agent(make_spec(), AgentConfig(**cfg))
    return Learner(agent, LearnerConfig(**{"device": "cuda", "warmup_steps": 5, "lr": 1e-3,
                                           **learner_kw}))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_update_does_not_synchronize():
    """On the GPU itself: CUDA's sync debug mode raises on any synchronising call (a device
    read, a pageable host-to-device copy) during an update that does not read its metrics."""
    learner = _cuda_learner(stats_every=3)
    spec = learner.agent.spec
    batches = [{k: v.cuda() for k, v in device_batch(spec, s).items()} for s in range(3)]
    learner.update(batches[0])
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        assert learner.update(batches[1]) == {}
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert learner.update(batches[2])["updates"] == 3.0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_update_matches_eager():
    """The captured update (capture after 2 eager warm-up updates, then replays) follows the
    eager one: same metrics and weights after 6 updates, up to kernel reduction order; a batch
    of another shape is refused and changes nothing."""
    spec = make_spec()
    batches = [{k: v.cuda() for k, v in device_batch(spec, s).items()} for s in range(6)]
    runs = []
    for graph in (False, True):
        learner = _cuda_learner(cuda_graph=graph, cuda_graph_warmup=2)
        runs.append((learner, [learner.update(b) for b in batches]))
    (eager, m_eager), (captured, m_graph) = runs
    assert captured._graph is not None
    for a, b in zip(m_eager, m_graph):
        assert b["updates"] == a["updates"] and b["skipped_nonfinite"] == 0.0
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-3, abs=1e-5)
    for (n, p), q in zip(eager.agent.named_parameters(), captured.agent.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-3, atol=1e-5, msg=n)
    before = [p.clone() for p in captured.agent.parameters()]
    short = {k: v[:, :-1].contiguous() for k, v in batches[0].items()}
    with pytest.raises(ValueError, match="captured"):
        captured.update(short)
    assert all(torch.equal(p, q) for p, q in zip(before, captured.agent.parameters()))
