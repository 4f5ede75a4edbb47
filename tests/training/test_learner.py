"""Learner: n-step targets vs a loop oracle, masking, gradient routing, non-finite skips, bad
input, PopArt output preservation, EMA, variants, and bit-identical resume."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch

from amago_fast.agent import Agent, AgentConfig
from amago_fast.learner import Learner, LearnerConfig
from amago_fast.popart import PopArt
from amago_fast.spaces import ActionSpec, EnvSpec, FieldSpec
from amago_fast.td_targets import nstep_targets

pytestmark = pytest.mark.usefixtures("one_torch_thread")


SMALL = dict(d_model=32, num_layers=2, num_heads=4, tstep_hidden=32, tstep_out=32,
             actor_hidden=32, critic_hidden=32, context_len=16, gammas=(0.5, 0.9, 0.99))


def make_spec(kind: str = "discrete") -> EnvSpec:
    action = {
        "discrete": ActionSpec("discrete", n=3),
        "multidiscrete": ActionSpec("multidiscrete", nvec=(2, 3)),
        "continuous": ActionSpec("continuous", shape=(2,), low=(-2.0, -1.0), high=(2.0, 1.0)),
    }[kind]
    return EnvSpec("toy", (FieldSpec("obs", (5,), np.float32),), action)


def make_batch(spec: EnvSpec, B: int = 4, L: int = 12, seed: int = 0) -> dict[str, np.ndarray]:
    """A window batch in the DESIGN.md layout: row 0 of window 0 is a rollout start, window 0
    terminates at row 7 and is padded after it; window 1 is truncated-padded after row 9."""
    rng = np.random.default_rng(seed)
    b: dict[str, np.ndarray] = {
        "obs": rng.normal(size=(B, L + 1, 5)).astype(np.float32),
        "reward": rng.normal(size=(B, L + 1)).astype(np.float32),
        "terminated": np.zeros((B, L + 1), bool),
        "truncated": np.zeros((B, L + 1), bool),
    }
    act = spec.action
    if act.kind == "discrete":
        b["action"] = rng.integers(0, act.n, size=(B, L + 1)).astype(np.int32)
    elif act.kind == "multidiscrete":
        b["action"] = np.stack([rng.integers(0, n, size=(B, L + 1)) for n in act.nvec],
                               -1).astype(np.int32)
    else:
        b["action"] = rng.uniform(-2, 2, size=(B, L + 1, 2)).astype(np.float32)
        b["action"][..., 1] /= 2
    mask = np.ones((B, L + 1), bool)
    mask[0, 8:] = False
    b["terminated"][0, 7] = True
    mask[1, 10:] = False
    b["truncated"][1, 9] = True
    start = rng.integers(0, 50, size=B)
    start[0] = 0
    b["time_index"] = (start[:, None] + np.arange(L + 1)[None]).astype(np.int64)
    b["action"][:, 0][start == 0] = 0
    b["reward"][:, 0][start == 0] = 0
    for k in ("obs", "reward", "action"):
        b[k][~mask] = 0
    b["mask"] = mask
    return b


def make_learner(kind="discrete", agent_kw=None, **learner_kw) -> Learner:
    torch.manual_seed(0)
    agent = Agent(make_spec(kind), AgentConfig(**{**SMALL, **(agent_kw or {})}))
    return Learner(agent, LearnerConfig(**{"warmup_steps": 0, "lr": 1e-3, **learner_kw}))


def assert_resume_is_bit_identical(a: Learner, make_twin, batches: list, split: int) -> Learner:
    """Update `a` on batches[:split], checkpoint it and continue it on the rest; a twin built by
    `make_twin` under another process RNG state (everything must come from the state dict)
    loads the checkpoint and makes the same updates: equal metrics and equal weights. Returns
    the twin."""
    for b in batches[:split]:
        a.update(b)
    sd = copy.deepcopy(a.state_dict())
    ma = [a.update(b) for b in batches[split:]]
    torch.manual_seed(123)
    twin = make_twin()
    twin.load_state_dict(sd)
    mb = [twin.update(b) for b in batches[split:]]
    assert ma == mb
    for (k, v), v2 in zip(a.state_dict()["loss_module"].items(),
                          twin.state_dict()["loss_module"].values()):
        assert torch.equal(v, v2), k
    return twin


def nstep_oracle(reward, term, mask, value, gammas, n, mult):
    B, L1 = mask.shape
    out = np.zeros((B, L1 - 1, len(gammas)))
    for b in range(B):
        for t in range(L1 - 1):
            if not mask[b, t + 1]:
                continue
            for g, gamma in enumerate(gammas):
                y, j = 0.0, t + 1
                for i in range(n):
                    y += gamma**i * mult * reward[b, j]
                    if term[b, j]:
                        break
                    if i == n - 1 or j + 1 >= L1 or not mask[b, j + 1]:
                        y += gamma ** (i + 1) * value[b, j, g]
                        break
                    j += 1
                out[b, t, g] = y
    return out


@pytest.mark.parametrize("n", [1, 3])
def test_nstep_targets_match_loop_oracle(n):
    b = make_batch(make_spec(), B=3, L=9, seed=n)
    b["terminated"][2, 4] = True
    b["mask"][2, 5:] = False
    gammas = np.array([0.5, 0.9, 0.99])
    value = np.random.default_rng(0).normal(size=(3, 10, 3))
    got = nstep_targets(torch.from_numpy(b["reward"]), torch.from_numpy(b["terminated"]),
                        torch.from_numpy(b["mask"]), torch.from_numpy(value),
                        torch.tensor(gammas, dtype=torch.float64), n, 10.0)
    ref = nstep_oracle(b["reward"], b["terminated"], b["mask"], value, gammas, n, 10.0)
    valid = b["mask"][:, 1:]
    np.testing.assert_allclose(got.numpy()[valid], ref[valid], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", ["discrete", "multidiscrete", "continuous"])
def test_update_runs_and_logs(kind):
    learner = make_learner(kind, attention_entropy_every=2)
    batch = make_batch(learner.agent.spec)
    m0 = learner.update(batch)
    m1 = learner.update(batch)
    assert m0["skipped_nonfinite"] == 0.0 and learner.updates == 2
    for key in ("critic_loss", "actor_loss", "bc_accept_rate", "grad_norm", "q_mean", "q_std",
                "critic_loss/g2", "actor_dpg/g0", "actor_bc/g1", "popart/mu_g0",
                "popart/sigma_g2", "lr"):
        assert key in m0 and np.isfinite(m0[key]), key
    assert "attention_entropy/layer1" in m0 and "attention_entropy/layer1" not in m1
    assert m0["valid_transitions"] == 4 * 12 - 5 - 3
    assert 0.0 <= m0["bc_accept_rate"] <= 1.0


def test_critic_loss_decreases_on_a_fixed_batch():
    learner = make_learner(critic_loss_weight=10.0)
    batch = make_batch(learner.agent.spec)
    first = learner.update(batch)["critic_loss"]
    for _ in range(30):
        last = learner.update(batch)["critic_loss"]
    assert last < 0.8 * first


def test_padded_rows_do_not_change_the_loss():
    learner = make_learner()
    batch = make_batch(learner.agent.spec)
    other = copy.deepcopy(batch)
    pad = ~other["mask"]
    other["obs"][pad] = 123.0
    other["reward"][pad] = -7.0
    other["action"][pad] = 2
    losses = []
    for b in (batch, other):
        t = learner._to_tensors(b)
        learner.generator.manual_seed(5)
        with torch.no_grad():
            loss, aux = learner.loss_module(t, learner.generator)
        losses.append((loss, aux["critic_loss_per_gamma"], aux["bc_per_gamma"]))
    for a, b in zip(*losses):
        torch.testing.assert_close(a, b)


def _grads(learner: Learner, batch) -> dict[str, torch.Tensor | None]:
    learner.optimizer.zero_grad(set_to_none=True)
    loss, _ = learner.loss_module(learner._to_tensors(batch), learner.generator)
    loss.backward()
    return {n: p.grad for n, p in learner.agent.named_parameters()}


def test_dpg_does_not_train_the_critic_but_reaches_the_backbone():
    learner = make_learner(critic_loss_weight=0.0, bc_coeff=0.0, dpg_coeff=1.0)
    grads = _grads(learner, make_batch(learner.agent.spec))
    critic = [g for n, g in grads.items() if n.startswith("critics.")]
    assert all(g is None or torch.count_nonzero(g) == 0 for g in critic)
    backbone = [g for n, g in grads.items() if n.startswith("traj_encoder.layers.0.")]
    assert any(g is not None and torch.count_nonzero(g) > 0 for g in backbone)
    actor = [g for n, g in grads.items() if n.startswith("actor.")]
    assert any(g is not None and torch.count_nonzero(g) > 0 for g in actor)


def test_filtered_bc_and_critic_both_reach_the_backbone():
    for kw in (dict(critic_loss_weight=0.0, dpg_coeff=0.0, bc_coeff=1.0),
               dict(critic_loss_weight=1.0, dpg_coeff=0.0, bc_coeff=1e-12)):
        learner = make_learner(**kw)
        # Train the critic briefly so advantages are not all zero.
        grads = _grads(learner, make_batch(learner.agent.spec))
        g = grads["traj_encoder.layers.0.qkv.weight"]
        assert g is not None and torch.count_nonzero(g) > 0, kw


def test_nonfinite_loss_skips_the_step_and_changes_nothing():
    learner = make_learner()
    batch = make_batch(learner.agent.spec)
    learner.update(batch)
    with torch.no_grad():
        learner.agent.critics.w3.fill_(float("inf"))
    before = copy.deepcopy(learner.state_dict())
    m = learner.update(batch)
    assert m["skipped_nonfinite"] == 1.0
    after = learner.state_dict()
    assert after["updates"] == before["updates"] == 1
    for k, v in before["loss_module"].items():
        assert torch.equal(v, after["loss_module"][k]) or (
            torch.isnan(v).all() and torch.isnan(after["loss_module"][k]).all()), k


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda b: b.pop("reward"), "missing keys"),
        (lambda b: b.__setitem__("obs", b["obs"][:, :-1]), "obs"),
        (lambda b: b.__setitem__("action", b["action"] + 5), "discrete actions"),
        (lambda b: b["reward"].__setitem__((2, 3), np.nan), "non-finite reward"),
        (lambda b: b["obs"].__setitem__((2, 3, 0), np.inf), "non-finite values"),
        (lambda b: b.__setitem__("mask", b["mask"].astype(np.int8)), "mask"),
        (lambda b: b.__setitem__("time_index", b["time_index"].astype(np.float32)), "time_index"),
    ],
)
def test_bad_batches_raise_and_leave_state_unchanged(mutate, match):
    learner = make_learner()
    batch = make_batch(learner.agent.spec)
    learner.update(batch)
    before = copy.deepcopy(learner.state_dict())
    bad = copy.deepcopy(batch)
    mutate(bad)
    with pytest.raises(ValueError, match=match):
        learner.update(bad)
    after = learner.state_dict()
    for k, v in before["loss_module"].items():
        assert torch.equal(v, after["loss_module"][k]), k
    assert after["updates"] == before["updates"]


@pytest.mark.parametrize("kind,bad_action", [("continuous", np.nan), ("multidiscrete", 99),
                                             ("discrete", -1)])
@pytest.mark.parametrize("row", [(2, 4), (0, 9)])  # a valid row; padding (make_batch)
def test_bad_actions_are_refused_in_any_row(kind, bad_action, row):
    """Out-of-range or non-finite actions are refused wherever they are: the update reads
    padded rows too (NaN times a zero weight is NaN; -1 would index out of range)."""
    learner = make_learner(kind)
    batch = make_batch(learner.agent.spec)
    learner.update(batch)
    before = copy.deepcopy(learner.state_dict())
    batch["action"][row] = bad_action
    with pytest.raises(ValueError, match="actions"):
        learner.update(batch)
    for k, v in before["loss_module"].items():
        assert torch.equal(v, learner.state_dict()["loss_module"][k]), k


def test_popart_update_preserves_outputs_exactly():
    pop = PopArt(3, beta=0.3, init_nu=4.0)
    with torch.no_grad():
        pop.w.copy_(torch.tensor([0.5, 1.5, -2.0]))
        pop.b.copy_(torch.tensor([0.1, -0.2, 0.3]))
    raw = torch.randn(10, 3)
    before = pop.denormalize(pop.normalized(raw))
    pop.update(torch.tensor([5.0, -3.0, 100.0]), torch.tensor([30.0, 20.0, 10100.0]))
    after = pop.denormalize(pop.normalized(raw))
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    # Bias-corrected first step: β / (1 - (1-β)^2) = 0.3 / 0.51.
    assert pop.mu[0].item() == pytest.approx(0.3 / 0.51 * 5.0)
    disabled = PopArt(3, enabled=False)
    disabled.update(torch.ones(3), torch.ones(3))
    assert torch.equal(disabled.mu, torch.zeros(3)) and torch.equal(disabled.sigma, torch.ones(3))


@pytest.mark.parametrize("beta", [0.3, 5e-4])
def test_popart_bias_corrected_moments_are_discounted_averages(beta):
    """After k updates each moment is the (1-β)-discounted average of {initial value, batch
    1..k} (the initial value weighs like one batch), computed here directly in float64; without
    bias correction it is the plain EMA. Outputs stay preserved at every step."""
    G, init_nu = 2, 100.0
    pop = PopArt(G, beta=beta, init_nu=init_nu)
    plain = PopArt(G, beta=beta, init_nu=init_nu, bias_correction=False)
    gen = torch.Generator().manual_seed(0)
    means = torch.randn(6, G, generator=gen, dtype=torch.float64) * 3
    sqs = means**2 + torch.rand(6, G, generator=gen, dtype=torch.float64) * 5
    raw = torch.randn(7, G)
    for k in range(1, 7):
        before = pop.denormalize(pop.normalized(raw))
        pop.update(means[k - 1].float(), sqs[k - 1].float())
        plain.update(means[k - 1].float(), sqs[k - 1].float())
        torch.testing.assert_close(pop.denormalize(pop.normalized(raw)), before,
                                   rtol=1e-4, atol=1e-4)
        wts = (1 - beta) ** torch.arange(k, -1, -1, dtype=torch.float64)  # init first
        mu0 = torch.cat([torch.zeros(1, G, dtype=torch.float64), means[:k]])
        nu0 = torch.cat([torch.full((1, G), init_nu, dtype=torch.float64), sqs[:k]])
        exp_mu = (wts[:, None] * mu0).sum(0) / wts.sum()
        exp_nu = (wts[:, None] * nu0).sum(0) / wts.sum()
        torch.testing.assert_close(pop.mu.double(), exp_mu, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(pop.nu.double(), exp_nu, rtol=1e-5, atol=1e-4)
        assert pop.updates.item() == k
    ema_mu = torch.zeros(G, dtype=torch.float64)
    for m in means:
        ema_mu = (1 - beta) * ema_mu + beta * m
    torch.testing.assert_close(plain.mu.double(), ema_mu, rtol=1e-5, atol=1e-6)
    assert plain.step_size() == beta
    assert pop.step_size() > beta
    with pytest.raises(ValueError, match="beta"):
        PopArt(2, beta=0.0)


def test_resume_from_checkpoint_without_popart_step_count():
    """Checkpoints written before the bias correction (no ``popart.updates``) load, with the
    count taken from the learner's update counter."""
    learner = make_learner()
    batch = make_batch(learner.agent.spec)
    learner.update(batch)
    learner.update(batch)
    sd = learner.state_dict()
    del sd["loss_module"]["popart.updates"]
    fresh = make_learner()
    fresh.load_state_dict(sd)
    assert fresh.loss_module.popart.updates.item() == 2.0
    assert fresh.loss_module.popart.step_size() == learner.loss_module.popart.step_size()


def test_targets_follow_online_by_ema():
    learner = make_learner(tau=0.25)
    online0 = [p.detach().clone() for p in learner.agent.critics.parameters()]
    target0 = [p.detach().clone() for p in learner.loss_module.target_critics.parameters()]
    for a, b in zip(online0, target0):
        assert torch.equal(a, b)
    learner.update(make_batch(learner.agent.spec))
    for t0, t1, o1 in zip(target0, learner.loss_module.target_critics.parameters(),
                          learner.agent.critics.parameters()):
        torch.testing.assert_close(t1, t0 + 0.25 * (o1 - t0))


def test_amago2_twohot_bc_only_variant():
    learner = make_learner(agent_kw=dict(critic_type="twohot", num_bins=21), dpg_coeff=0.0,
                           bc_coeff=1.0)
    assert learner.agent.critics.out_dim == 21 and not learner.loss_module.popart.enabled
    batch = make_batch(learner.agent.spec)
    first = learner.update(batch)
    for _ in range(15):
        last = learner.update(batch)
    assert np.isfinite(last["q_mean"]) and last["critic_loss"] < first["critic_loss"]
    assert "popart/mu_g0" not in last


def test_other_encoders_nstep_bf16_and_wrap_module():
    wrapped = []

    def wrap(m):
        wrapped.append(m)
        return m

    for agent_kw in (dict(traj_encoder="gru"), dict(traj_encoder="ff")):
        learner = make_learner(agent_kw=agent_kw, n_step=3)
        assert learner.update(make_batch(learner.agent.spec))["skipped_nonfinite"] == 0.0
    torch.manual_seed(0)
    agent = Agent(make_spec(), AgentConfig(**SMALL))
    learner = Learner(agent, LearnerConfig(bf16=True), wrap_module=wrap)
    assert wrapped == [learner.loss_module]
    m = learner.update(make_batch(agent.spec))
    assert m["skipped_nonfinite"] == 0.0 and np.isfinite(m["loss"])


def test_compile_on_cpu_warns_and_runs_eagerly():
    agent = Agent(make_spec(), AgentConfig(**SMALL))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        learner = Learner(agent, LearnerConfig(compile=True))
    assert any("torch.compile" in str(x.message) for x in w)
    assert learner.model is learner.loss_module


def test_state_dict_resume_is_bit_identical():
    kw = dict(agent_kw=dict(dropout_ff=0.1, dropout_emb=0.1), warmup_steps=3)
    a = make_learner("continuous", **kw)
    batches = [make_batch(a.agent.spec, seed=s) for s in range(4)]
    assert_resume_is_bit_identical(a, lambda: make_learner("continuous", seed=7, **kw),
                                   batches, split=2)


def test_load_state_dict_rejects_mismatch_and_changes_nothing():
    a = make_learner()
    other = make_learner(agent_kw=dict(d_model=64, num_heads=4))
    before = copy.deepcopy(a.state_dict())
    with pytest.raises(ValueError, match="shape"):
        a.load_state_dict(other.state_dict())
    with pytest.raises(ValueError, match="missing"):
        a.load_state_dict({"loss_module": {}})
    for k, v in before["loss_module"].items():
        assert torch.equal(v, a.state_dict()["loss_module"][k])


@pytest.mark.parametrize(
    "field,value",
    [("lr", 0.0), ("tau", 1.5), ("num_critics_td", 0), ("n_step", 0), ("grad_clip", -1.0),
     ("warmup_steps", -1), ("device", "not-a-device"), ("reward_multiplier", 0.0),
     ("popart_beta", 0.0), ("adam_beta2", 1.0), ("adam_beta2", 0.0)],
)
def test_learner_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        LearnerConfig(**{field: value})


def test_subset_larger_than_ensemble_is_rejected():
    agent = Agent(make_spec(), AgentConfig(**SMALL, num_critics=2))
    with pytest.raises(ValueError, match="num_critics_td"):
        Learner(agent, LearnerConfig(num_critics_td=3))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_update_bf16_and_decode_match_full_forward():
    """On a GPU the Triton attention/critic/decode kernels run: the bf16 update stays finite
    and incremental decoding agrees with the full forward (within bf16-free fp32 tolerance)."""
    torch.manual_seed(0)
    agent = Agent(make_spec(), AgentConfig(**{**SMALL, "d_model": 64, "num_heads": 4}))
    learner = Learner(agent, LearnerConfig(device="cuda", bf16=True, warmup_steps=0))
    m = learner.update(make_batch(agent.spec))
    assert m["skipped_nonfinite"] == 0.0 and np.isfinite(m["loss"])
    rng = np.random.default_rng(0)
    T, N = 20, 2
    state = agent.init_state(N)
    rows_seq, outs = [], []
    orig = agent.actor.forward
    agent.actor.forward = lambda h: outs.append(h) or orig(h)
    for t in range(T):
        rows = {"obs": rng.normal(size=(N, 5)).astype(np.float32),
                "action": rng.integers(0, 3, size=N).astype(np.int32),
                "reward": rng.normal(size=N).astype(np.float32),
                "time_index": np.full(N, t, np.int64)}
        agent.act(rows, state, sample=False)
        rows_seq.append(rows)
    agent.actor.forward = orig
    inc = torch.stack(outs, 1)
    seq = {k: torch.as_tensor(np.stack([r[k] for r in rows_seq], 1), device="cuda")
           for k in rows_seq[0]}
    with torch.no_grad():
        full = agent.encode(seq, seq["time_index"], torch.ones(N, T, dtype=torch.bool,
                                                               device="cuda"))
    torch.testing.assert_close(inc, full, rtol=2e-3, atol=2e-3)


# ------------------------------------------------------- discrete critic Q(s, ·) from the state
NO_DROPOUT = dict(dropout_emb=0.0, dropout_ff=0.0)


def _eval_forward(learner, batch):
    """The loss in eval mode (no dropout, no power-iteration step: the oracle's encoder pass
    sees the same weights), the generator state before it, and the batch as tensors."""
    tb = learner._to_tensors(batch)
    learner.loss_module.eval()
    gen_state = learner.generator.get_state()
    loss, aux = learner.loss_module(tb, learner.generator)
    return loss, aux, gen_state, tb


def _trained_learner(**kw):
    learner = make_learner(agent_kw=dict(NO_DROPOUT), n_step=1, **kw)
    batch = make_batch(learner.agent.spec)
    for _ in range(3):  # PopArt statistics, w, b and the critics move away from their init
        learner.update(batch)
    return learner, batch


def test_default_discrete_critic_is_state_only_and_multidiscrete_is_not():
    from amago_fast.nets.critics import CriticEnsemble, StateCriticEnsemble

    assert isinstance(make_learner().agent.critics, StateCriticEnsemble)
    assert make_learner().agent.state_critic
    assert isinstance(make_learner(agent_kw=dict(discrete_critic="action_input")).agent.critics,
                      CriticEnsemble)
    for kind in ("multidiscrete", "continuous"):
        assert isinstance(make_learner(kind).agent.critics, CriticEnsemble)
    with pytest.raises(ValueError, match="discrete_critic"):
        AgentConfig(discrete_critic="onehot")


def test_state_critic_td_targets_match_loop_oracle():
    """y = R·r + γ·(1 − term)·min_{e ∈ subset} Σ_a π_target(a|s')·Q_target,e(s', a), in return
    units (PopArt denormalised), checked with Python loops over windows, steps and gammas."""
    learner, batch = _trained_learner()
    _, aux, gen_state, tb = _eval_forward(learner, batch)
    agent, lm, cfg = learner.agent, learner.loss_module, learner.config
    gen = torch.Generator().manual_seed(0)
    gen.set_state(gen_state)
    subset = torch.randperm(agent.config.num_critics, generator=gen)[:cfg.num_critics_td].sort()
    subset = subset.values
    with torch.no_grad():
        h = agent.encode(tb, tb["time_index"], tb["mask"])
        B, L1, d = h.shape
        probs = torch.softmax(lm.target_actor(h), -1)  # (B, L1, G, A)
        q = lm.target_critics(h.reshape(-1, d))
        q = q.reshape(B, L1, *q.shape[1:])  # (B, L1, E, G, A, 1)
        pa = lm.popart
        y_oracle = torch.zeros(B, L1 - 1, agent.num_gammas)
        for b in range(B):
            for t in range(L1 - 1):
                for g in range(agent.num_gammas):
                    vals = (pa.w[g] * q[b, t + 1, :, g, :, 0] + pa.b[g]) * pa.sigma[g] + pa.mu[g]
                    v_e = (vals * probs[b, t + 1, g]).sum(-1)  # (E,)
                    v = v_e[subset].min()
                    r = cfg.reward_multiplier * tb["reward"][b, t + 1]
                    alive = 0.0 if bool(tb["terminated"][b, t + 1]) else 1.0
                    y_oracle[b, t, g] = r + agent.gammas[g] * alive * v
    valid = tb["mask"][:, 1:]
    torch.testing.assert_close(aux["td_target"][valid], y_oracle[valid], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("critic_type", ["scalar", "twohot"])
def test_state_critic_dpg_and_filtered_bc_match_oracle(critic_type):
    """DPG = −mean over rows of Σ_a π(a|s)·Q̄(s, a); BC advantage Q̄(s, a_buf) − Σ_a π·Q̄, with
    Q̄ the ensemble mean of the (PopArt-normalised / two-hot symlog) values."""
    kw = dict(agent_kw=dict(NO_DROPOUT, critic_type=critic_type, num_bins=21), n_step=1)
    learner = make_learner(**kw)
    batch = make_batch(learner.agent.spec)
    for _ in range(3):
        learner.update(batch)
    _, aux, _, tb = _eval_forward(learner, batch)
    agent, lm = learner.agent, learner.loss_module
    with torch.no_grad():
        h = agent.encode(tb, tb["time_index"], tb["mask"])
        B, L1, d = h.shape
        logp = torch.log_softmax(agent.actor(h).float(), -1)  # (B, L1, G, A)
        q = agent.critics(h.reshape(-1, d))
        q = q.reshape(B, L1, *q.shape[1:])  # (B, L1, E, G, A, O)
        if critic_type == "twohot":
            vals = (torch.softmax(q, -1) * agent.twohot_bins).sum(-1)
        else:
            vals = lm.popart.w[:, None] * q[..., 0] + lm.popart.b[:, None]
        q_bar = vals.mean(2)  # (B, L1, G, A)
        v_pi = (logp.exp() * q_bar).sum(-1)  # (B, L1, G)
        mask, valid = tb["mask"], tb["mask"][:, 1:]
        dpg = torch.stack([-(v_pi[..., g][mask]).mean() for g in range(agent.num_gammas)])
        a_buf = tb["action"][:, 1:].long()
        G = agent.num_gammas
        idx = a_buf[:, :, None, None].expand(B, L1 - 1, G, 1)
        adv = q_bar[:, :-1].gather(-1, idx)[..., 0] - v_pi[:, :-1]
        accept = (adv > 0).float()
        logp_buf = logp[:, :-1].gather(-1, idx)[..., 0]
        bc = torch.stack([-(accept[..., g] * logp_buf[..., g])[valid].mean() for g in range(G)])
    torch.testing.assert_close(aux["dpg_per_gamma"], dpg, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(aux["bc_per_gamma"], bc, rtol=1e-5, atol=1e-6)
    assert 0.0 < float(aux["accept_rate"]) < 1.0
    torch.testing.assert_close(aux["accept_rate"], accept[valid].mean(), rtol=1e-6, atol=1e-6)


def test_state_critic_dpg_gives_no_critic_gradient_and_bc_none_to_the_critic():
    for kw in (dict(critic_loss_weight=0.0, bc_coeff=0.0, dpg_coeff=1.0),
               dict(critic_loss_weight=0.0, bc_coeff=1.0, dpg_coeff=0.0)):
        learner = make_learner(**kw)
        assert learner.agent.state_critic
        grads = _grads(learner, make_batch(learner.agent.spec))
        critic = [g for n, g in grads.items() if n.startswith("critics.")]
        assert all(g is None or torch.count_nonzero(g) == 0 for g in critic), kw
        actor = [g for n, g in grads.items() if n.startswith("actor.")]
        assert any(g is not None and torch.count_nonzero(g) > 0 for g in actor), kw


@pytest.mark.parametrize("critic_type", ["scalar", "twohot"])
def test_action_input_discrete_critic_still_learns(critic_type):
    # PopArt off: its bias-corrected σ moves half-way to the batch's on the first update, which
    # rescales the normalised loss this test compares across updates.
    learner = make_learner(agent_kw=dict(discrete_critic="action_input", critic_type=critic_type,
                                         num_bins=21), popart=False)
    assert not learner.agent.state_critic
    grads = _grads(learner, make_batch(learner.agent.spec))
    assert grads["critics.w_action"] is not None
    batch = make_batch(learner.agent.spec)
    first = learner.update(batch)
    for _ in range(15):
        last = learner.update(batch)
    assert np.isfinite(last["q_mean"]) and last["critic_loss"] < first["critic_loss"]


def test_load_state_dict_from_another_device_type_reseeds_the_generator():
    """A checkpoint written on a GPU (16-byte CUDA generator state) resumed or evaluated on a
    CPU box: the weights load and the sampling generator restarts from the seed, with a warning
    (it raised "Expected a CPUGeneratorImplState of size 5056" before)."""
    a = make_learner()
    a.update(make_batch(a.agent.spec))
    sd = copy.deepcopy(a.state_dict())
    sd["generator"] = torch.zeros(16, dtype=torch.uint8)
    sd["generator_device"] = "cuda"
    b = make_learner(seed=5)
    with pytest.warns(UserWarning, match="sampling generator was on cuda"):
        b.load_state_dict(sd)
    for k, v in sd["loss_module"].items():
        assert torch.equal(v, b.state_dict()["loss_module"][k]), k
    expected = torch.Generator().manual_seed(5 + b.updates).get_state()
    assert torch.equal(b.generator.get_state(), expected)


def test_load_state_dict_rejects_a_bad_rng_state_before_changing_anything():
    a = make_learner()
    trained = make_learner()
    trained.update(make_batch(trained.agent.spec))  # differs from `a` in weights and counters
    sd = copy.deepcopy(trained.state_dict())
    sd["torch_rng"] = torch.zeros(7, dtype=torch.uint8)
    before = copy.deepcopy(a.state_dict())
    with pytest.raises(ValueError, match="torch_rng"):
        a.load_state_dict(sd)
    after = a.state_dict()
    assert after["updates"] == before["updates"] == 0
    assert after["optimizer"]["state"] == before["optimizer"]["state"] == {}
    assert torch.equal(after["generator"], before["generator"])
    for k, v in before["loss_module"].items():
        assert torch.equal(v, after["loss_module"][k]), k


@pytest.mark.parametrize("kind", ["discrete", "multidiscrete"])
def test_entropy_floor_lifts_a_deterministic_actor_to_the_floor(kind):
    """An actor made near-deterministic (logits 8 apart), the critic and BC terms weighted
    off and a negligible DPG weight (one of the two must be on): the floor lifts the entropy
    to at least itself (a fraction of ln n per component; Adam's momentum may carry it past,
    nothing pulls it back in this test); without it the entropy stays where it was."""
    spec = make_spec(kind).action
    uniform = float(np.log(spec.n)) if kind == "discrete" else float(sum(np.log(spec.nvec)))
    results = {}
    for floor in (0.0, 0.3):
        learner = make_learner(kind, dpg_coeff=1e-6, bc_coeff=0.0, critic_loss_weight=0.0,
                               entropy_floor=floor, lr=3e-2, weight_decay=0.0)
        last = learner.agent.actor.net[-1]
        with torch.no_grad():
            last.weight.zero_()
            bias = last.bias.view(learner.agent.num_gammas, -1)
            bias.zero_()
            bias[:, 0] = 8.0
            if kind == "multidiscrete":
                bias[:, spec.nvec[0]] = 8.0
        batch = make_batch(learner.agent.spec)
        first = learner.update(batch)["actor_entropy"]
        for _ in range(60):
            m = learner.update(batch)
        results[floor] = (first, m["actor_entropy"])
    assert results[0.0][0] < 0.02 * uniform and results[0.0][1] < 0.03 * uniform, results
    assert 0.28 * uniform < results[0.3][1] < 0.9 * uniform, results


def test_entropy_floor_is_refused_for_continuous_actions_and_out_of_range():
    with pytest.raises(ValueError, match="entropy_floor=0.2: only for discrete"):
        make_learner("continuous", entropy_floor=0.2)
    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(ValueError, match="entropy_floor"):
            LearnerConfig(entropy_floor=bad).validate()


def _mean_abs_pre_tanh(learner, rows) -> float:
    with torch.no_grad():
        h = learner.agent.encode(rows, rows["time_index"], rows["mask"])
        actor = learner.agent.actor
        return float(actor.pre_tanh_mean(actor(h)).abs().mean())


def _pull_back_from_saturation(**learner_kw) -> tuple[float, float]:
    """Mean |pre-tanh mean| before and after 60 updates of an actor whose pre-tanh mean sits
    at 4 in every state (tanh 0.9993: the saturated constant policy of the failed DI runs),
    critic and BC weighted off and a negligible DPG weight, plus ``learner_kw``."""
    learner = make_learner("continuous", dpg_coeff=1e-6, bc_coeff=0.0, critic_loss_weight=0.0,
                           lr=3e-2, weight_decay=0.0, **learner_kw)
    actor = learner.agent.actor
    dim = int(np.prod(learner.agent.spec.action.shape))
    with torch.no_grad():
        actor.net[-1].weight.zero_()
        bias = actor.net[-1].bias.view(learner.agent.num_gammas, -1)
        bias.zero_()
        bias[:, :dim] = 4.0
    batch = make_batch(learner.agent.spec)
    rows = {k: torch.as_tensor(v) for k, v in batch.items()}
    before = _mean_abs_pre_tanh(learner, rows)
    for _ in range(60):
        learner.update(batch)
    return before, _mean_abs_pre_tanh(learner, rows)


def test_mean_reg_pulls_a_saturated_continuous_actor_back():
    """The regulariser brings a saturated mean back toward 0; without it the mean stays."""
    results = {reg: _pull_back_from_saturation(mean_reg=reg) for reg in (0.0, 1e-2)}
    assert results[0.0][0] == pytest.approx(4.0, abs=1e-3), results
    assert results[0.0][1] > 3.9, results
    assert results[1e-2][1] < 2.0, results


def test_mean_reg_is_refused_for_discrete_actions_and_negative():
    with pytest.raises(ValueError, match="mean_reg=0.001: only for continuous"):
        make_learner("discrete", mean_reg=1e-3)
    for bad in (-1e-3, float("nan")):
        with pytest.raises(ValueError, match="mean_reg"):
            LearnerConfig(mean_reg=bad).validate()
    with pytest.raises(ValueError, match="pre_tanh_mean"):
        make_learner("discrete").agent.actor.pre_tanh_mean(torch.zeros(1, 2, 4))


# ----------------------------------------------------------------------------- entropy bonus
def test_rsample_with_log_prob_draws_critic_inputs_sample_and_its_density():
    """Same random numbers as critic_input; the density equals log_prob of that action (the
    atanh route) where the sample is not saturated, and stays finite with finite gradients
    where it is (pre-tanh mean 30: atanh of the rounded action would be inf)."""
    learner = make_learner("continuous")
    actor = learner.agent.actor
    G = learner.agent.num_gammas
    params = torch.randn(7, G, actor.param_dim) * 0.5
    a_ref = actor.critic_input(params, torch.Generator().manual_seed(5))
    a, logp = actor.rsample_with_log_prob(params, torch.Generator().manual_seed(5))
    assert torch.equal(a, a_ref)
    assert logp.shape == (7, G)
    scale = torch.tensor([2.0, 1.0])  # the spec's half-ranges: log_prob takes env actions
    inside = a.abs().amax(-1) < 0.98
    # log_prob scores one action per row for every gamma: score each gamma's own sample.
    for g in range(G):
        lp = actor.log_prob(params, a[:, g] * scale)[:, g]
        ok = inside[:, g]
        assert ok.any()
        torch.testing.assert_close(logp[ok, g], lp[ok], rtol=1e-4, atol=1e-4)
    sat = params.clone()
    sat[..., :2] = 30.0
    sat.requires_grad_(True)
    _, logp_sat = actor.rsample_with_log_prob(sat, torch.Generator().manual_seed(1))
    logp_sat.sum().backward()
    assert torch.isfinite(logp_sat).all() and torch.isfinite(sat.grad).all()
    assert (logp_sat > 50).all()  # saturation is very unlikely under max-entropy: a big log π
    with pytest.raises(ValueError, match="only continuous"):
        make_learner("discrete").agent.actor.rsample_with_log_prob(torch.zeros(1, G, 3))


def test_entropy_bonus_adds_alpha_times_negative_entropy_to_the_actor_loss():
    """Discrete: actor loss(α) − actor loss(0) = α · mean over gammas of the masked mean of
    −H(π(·|s)) over valid rows (everything else equal: same weights, same batch)."""
    batch = make_batch(make_spec("discrete"))
    losses, ent = {}, None
    for alpha in (0.0, 0.3):
        learner = make_learner("discrete", entropy_coeff=alpha)
        learner.model.eval()  # no dropout: both learners compute the same forward pass
        rows = {k: torch.as_tensor(v) for k, v in batch.items()}
        with torch.no_grad():
            _, aux = learner.loss_module(rows, torch.Generator().manual_seed(0))
            losses[alpha] = float(aux["actor_loss"])
            h = learner.agent.encode(rows, rows["time_index"], rows["mask"])
            H = learner.agent.actor.entropy(learner.agent.actor(h))  # (B, L1, G)
            m = rows["mask"].unsqueeze(-1).float()
            ent = float(((H * m).sum((0, 1)) / m.sum((0, 1))).mean())
    assert losses[0.3] - losses[0.0] == pytest.approx(-0.3 * ent, rel=1e-4, abs=1e-6)


def test_entropy_bonus_pulls_a_saturated_continuous_actor_back():
    """The DI collapse (docs/AIB.md): with α = 0.05 the tanh change of variables in log π
    brings a saturated mean back toward 0 within 60 updates; with α = 0 it stays."""
    results = {alpha: _pull_back_from_saturation(entropy_coeff=alpha) for alpha in (0.0, 0.05)}
    assert results[0.0][1] > 3.9, results
    assert results[0.05][1] < 2.0, results


def test_entropy_bonus_works_with_the_action_input_discrete_critic():
    """A discrete actor whose critic takes the action as input (no Q(s, ·) output) takes the
    exact entropy too; it used to ask the discrete head for a continuous sample's density."""
    learner = make_learner(agent_kw=dict(discrete_critic="action_input"), entropy_coeff=0.3)
    base = make_learner(agent_kw=dict(discrete_critic="action_input"))
    rows = {k: torch.as_tensor(v) for k, v in make_batch(learner.agent.spec).items()}
    for lrn in (learner, base):
        lrn.model.eval()
    with torch.no_grad():
        _, aux = learner.loss_module(rows, torch.Generator().manual_seed(0))
        _, aux0 = base.loss_module(rows, torch.Generator().manual_seed(0))
        h = learner.agent.encode(rows, rows["time_index"], rows["mask"])
        H = learner.agent.actor.entropy(learner.agent.actor(h))
        m = rows["mask"].unsqueeze(-1).float()
        ent = float(((H * m).sum((0, 1)) / m.sum((0, 1))).mean())
    assert float(aux["actor_loss"]) - float(aux0["actor_loss"]) == pytest.approx(
        -0.3 * ent, rel=1e-4, abs=1e-6)
    assert np.isfinite(learner.update(make_batch(learner.agent.spec))["actor_loss"])


def test_entropy_bonus_makes_the_discrete_policy_boltzmann_in_q():
    """With the critic fixed, −Σπ·Q + α·Σπ·log π is minimised by π = softmax(Q/α): a state
    whose actions the critic cannot tell apart stays uniform, one with a clear best action
    goes (near) deterministic. Checked on the loss's own formula via gradient descent."""
    q = torch.tensor([[1.0, 1.0, -1.0], [2.0, 0.0, 0.0]])
    alpha = 0.2
    logits = torch.zeros_like(q, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=0.1)
    head = make_learner("discrete").agent.actor
    for _ in range(2000):
        probs = torch.softmax(logits, -1)
        params = logits.unsqueeze(1)  # (N, G=1, n)
        loss = (-(probs * q).sum(-1) - alpha * head.entropy(params)[:, 0]).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.testing.assert_close(torch.softmax(logits, -1), torch.softmax(q / alpha, -1),
                               rtol=1e-3, atol=1e-3)


def test_entropy_coeff_rejects_negative_and_nan():
    for bad in (-1e-3, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="entropy_coeff"):
            LearnerConfig(entropy_coeff=bad).validate()


# ----------------------------------------------------------------------------- model loss
def _model_loss_oracle(learner, batch) -> float:
    """The dynamics head's loss written out from the batch: next standardised measured obs and
    symlog reward, squared error averaged over features, then over transitions whose row t+1
    is valid and not a rollout start."""
    rows = {k: torch.as_tensor(v) for k, v in batch.items()}
    agent, head = learner.agent, learner.loss_module.dynamics_head
    with torch.no_grad():
        h = agent.encode(rows, rows["time_index"], rows["mask"])
        norm = agent.tstep_encoder.normalizer
        obs_next = rows["obs"][:, 1:].float()
        obs_next = norm(obs_next) if norm is not None else obs_next
        r = rows["reward"][:, 1:].float()
        target = torch.cat([obs_next, (torch.sign(r) * torch.log1p(r.abs())).unsqueeze(-1)], -1)
        a = rows["action"][:, 1:].float()
        low = torch.tensor(agent.spec.action.low)
        high = torch.tensor(agent.spec.action.high)
        a = 2 * (a - low) / (high - low) - 1
        pred = head(torch.cat([h[:, :-1], a], -1))
        err = (pred - target).pow(2).mean(-1)
        valid = rows["mask"][:, 1:] & (rows["time_index"][:, 1:] != 0)
        return float(err[valid].mean())


def test_model_loss_matches_the_written_out_oracle_and_joins_the_total():
    batch = make_batch(make_spec("continuous"))
    batch["time_index"][2, 5:] -= batch["time_index"][2, 5]  # a rollout start inside window 2
    learner = make_learner("continuous", dynamics_coeff=0.5)
    learner.model.eval()
    rows = {k: torch.as_tensor(v) for k, v in batch.items()}
    with torch.no_grad():
        loss, aux = learner.loss_module(rows, torch.Generator().manual_seed(0))
    assert float(aux["model_loss"]) == pytest.approx(_model_loss_oracle(learner, batch), rel=1e-5)
    base = make_learner("continuous")
    base.model.eval()
    with torch.no_grad():
        loss0, aux0 = base.loss_module(rows, torch.Generator().manual_seed(0))
    assert float(loss) - float(loss0) == pytest.approx(0.5 * float(aux["model_loss"]), rel=1e-4)
    assert float(aux0["model_loss"]) == 0.0 and base.loss_module.dynamics_head is None


def test_model_loss_trains_the_head_and_the_sequence_model():
    """With every other term weighted off, updates on one batch cut the model loss, and its
    gradient reaches the shared sequence model (the point of the term)."""
    learner = make_learner("continuous", dynamics_coeff=1.0, dpg_coeff=1e-6, bc_coeff=0.0,
                           critic_loss_weight=0.0, weight_decay=0.0)
    batch = make_batch(learner.agent.spec)
    traj = learner.agent.traj_encoder
    before = [p.detach().clone() for p in traj.parameters()]
    first = learner.update(batch)["model_loss"]
    for _ in range(80):
        last = learner.update(batch)["model_loss"]
    assert last < 0.5 * first, (first, last)
    assert any(not torch.equal(b, p) for b, p in zip(before, traj.parameters()))
    assert "model_loss" not in make_learner("continuous").update(batch)


def test_model_head_is_saved_and_resumed_bit_identically():
    a = make_learner("discrete", dynamics_coeff=0.3)
    batches = [make_batch(a.agent.spec, seed=s) for s in range(4)]
    for b in batches[:2]:
        a.update(b)
    sd = copy.deepcopy(a.state_dict())
    assert any(k.startswith("dynamics_head.") for k in sd["loss_module"])
    ma = [a.update(b) for b in batches[2:]]
    b_ = make_learner("discrete", dynamics_coeff=0.3, seed=7)
    b_.load_state_dict(sd)
    assert [b_.update(b) for b in batches[2:]] == ma
    with pytest.raises(ValueError):  # a checkpoint without the head does not fit one with it
        b_.load_state_dict(make_learner("discrete").state_dict())


def test_dynamics_config_rejects_bad_values():
    for field, bad in (("dynamics_coeff", -0.1), ("dynamics_coeff", float("nan")),
                       ("dynamics_hidden", 0)):
        with pytest.raises(ValueError, match=field):
            LearnerConfig(**{field: bad}).validate()


def test_delta_model_target_is_the_standardised_observation_change():
    """``dynamics_target="delta"``: the head's observation target is (o_{t+1} − o_t)
    standardised by running statistics of exactly those changes (valid transitions, none into
    a rollout start), folded in by the update before its forward pass."""
    batch = make_batch(make_spec("continuous"))
    batch["time_index"][2, 5:] -= batch["time_index"][2, 5]
    learner = make_learner("continuous", dynamics_coeff=0.5, dynamics_target="delta")
    rows = {k: torch.as_tensor(v) for k, v in batch.items()}
    learner.loss_module.update_model_normalizer(rows)
    obs = rows["obs"].double()
    delta = obs[:, 1:] - obs[:, :-1]
    valid = rows["mask"][:, 1:] & (rows["time_index"][:, 1:] != 0)
    norm = learner.loss_module.delta_norm
    torch.testing.assert_close(norm.mean, delta[valid].mean(0))
    torch.testing.assert_close(norm.var, delta[valid].var(0, unbiased=False))
    learner.model.eval()
    agent, head = learner.agent, learner.loss_module.dynamics_head
    with torch.no_grad():
        _, aux = learner.loss_module(rows, torch.Generator().manual_seed(0))
        h = agent.encode(rows, rows["time_index"], rows["mask"])
        std_delta = ((delta - norm.mean) / torch.sqrt(norm.var + norm.eps)).float()
        r = rows["reward"][:, 1:].float()
        target = torch.cat([std_delta, (torch.sign(r) * torch.log1p(r.abs())).unsqueeze(-1)], -1)
        low, high = torch.tensor(agent.spec.action.low), torch.tensor(agent.spec.action.high)
        a = 2 * (rows["action"][:, 1:].float() - low) / (high - low) - 1
        err = (head(torch.cat([h[:, :-1], a], -1)) - target).pow(2).mean(-1)
    assert float(aux["model_loss"]) == pytest.approx(float(err[valid].mean()), rel=1e-5)


def test_a_refused_batch_leaves_the_delta_statistics_unchanged():
    learner = make_learner("continuous", dynamics_coeff=0.5, dynamics_target="delta")
    batch = make_batch(learner.agent.spec)
    learner.update(batch)
    before = copy.deepcopy(learner.state_dict())
    assert any(k.startswith("delta_norm.") for k in before["loss_module"])
    bad = copy.deepcopy(batch)
    bad["obs"][2, 3, 0] = np.inf
    with pytest.raises(ValueError, match="non-finite"):
        learner.update(bad)
    after = learner.state_dict()
    for k, v in before["loss_module"].items():
        assert torch.equal(v, after["loss_module"][k]), k


def test_dynamics_target_must_be_next_or_delta():
    with pytest.raises(ValueError, match="dynamics_target"):
        LearnerConfig(dynamics_target="future").validate()


# ------------------------------------------------------------ critic reading the model head
def test_critic_model_input_scores_the_heads_prediction_for_the_action():
    """``critic_model_input``: the critic's action input is [a, head(h, a)] (oracle written out
    from the batch), so the buffer Q statistics match a critic fed that input by hand."""
    batch = make_batch(make_spec("continuous"))
    learner = make_learner("continuous", agent_kw={"critic_model_input": True},
                           dynamics_coeff=0.5)
    agent, head, lm = learner.agent, learner.loss_module.dynamics_head, learner.loss_module
    measured = agent.tstep_encoder.measured_dim
    assert agent.critics.action_dim == agent.actor.critic_action_dim + measured + 1
    learner.model.eval()
    rows = {k: torch.as_tensor(v) for k, v in batch.items()}
    with torch.no_grad():
        _, aux = lm(rows, torch.Generator().manual_seed(0))
        h = agent.encode(rows, rows["time_index"], rows["mask"])[:, :-1]
        low, high = torch.tensor(agent.spec.action.low), torch.tensor(agent.spec.action.high)
        a = 2 * (rows["action"][:, 1:].float() - low) / (high - low) - 1
        x = torch.cat([a, head(torch.cat([h, a], -1))], -1)
        B, L, d = h.shape
        G = agent.num_gammas
        q = agent.critics(h.reshape(B * L, d), x.reshape(B * L, 1, -1).expand(B * L, G, -1))
        q = lm.popart.denormalize(lm.popart.normalized(q[..., 0].float()))[..., -1]
        valid = rows["mask"][:, 1:].reshape(B * L)
        q = q[valid]
    torch.testing.assert_close(aux["q_stats"][0], q.mean(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(aux["q_stats"][2], q.min(), rtol=1e-5, atol=1e-6)


def test_critic_model_input_trains_the_head_by_the_model_loss_only():
    """The head's gradient is dynamics_coeff · ∇(model loss) exactly: neither the critic loss
    nor the actor's DPG term (which differentiates through the prediction to the action)
    reaches its parameters. Doubling the coefficient doubles the head's gradient and leaves the
    actor head's gradient (DPG + BC) unchanged."""
    batch = make_batch(make_spec("continuous"))
    rows = {k: torch.as_tensor(v) for k, v in batch.items()}
    grads = []
    for coeff in (0.5, 1.0):
        learner = make_learner("continuous", agent_kw={"critic_model_input": True},
                               dynamics_coeff=coeff)
        learner.model.eval()
        loss, _ = learner.loss_module(rows, torch.Generator().manual_seed(0))
        loss.backward()
        head = [p.grad.clone() for p in learner.loss_module.dynamics_head.parameters()]
        actor = [p.grad.clone() for p in learner.agent.actor.parameters()]
        grads.append((head, actor))
    (h1, a1), (h2, a2) = grads
    assert any(g.abs().sum() > 0 for g in h1)
    for g1, g2 in zip(h1, h2):
        torch.testing.assert_close(2 * g1, g2, rtol=1e-4, atol=1e-7)
    for g1, g2 in zip(a1, a2):
        torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-7)
    assert any(g.abs().sum() > 0 for g in a1)


def test_critic_model_input_rejects_configs_without_a_head_or_an_action_input():
    with pytest.raises(ValueError, match="dynamics_coeff"):
        make_learner("continuous", agent_kw={"critic_model_input": True})
    with pytest.raises(ValueError, match="critic_model_input"):
        make_learner("discrete", agent_kw={"critic_model_input": True}, dynamics_coeff=0.5)
    with pytest.raises(ValueError, match="critic_model_input"):
        AgentConfig(critic_model_input="yes")
    # the discrete action-input critic reads it (one-hot action + prediction)
    learner = make_learner("discrete", agent_kw={"critic_model_input": True,
                                                 "discrete_critic": "action_input"},
                           dynamics_coeff=0.5)
    assert np.isfinite(learner.update(make_batch(learner.agent.spec))["loss"])


def _moments(learner: Learner) -> list[tuple[float, float, float]]:
    return [(float(s["exp_avg"].abs().sum()), float(s["exp_avg_sq"].abs().sum()),
             float(s["step"])) for s in learner.optimizer.state.values()]


def test_optimizer_reset_interval_zeroes_the_moments_on_schedule_and_keeps_the_weights():
    a = make_learner(optimizer_reset_interval=3)
    batches = [make_batch(a.agent.spec, seed=s) for s in range(7)]
    for b in batches[:2]:
        a.update(b)
    assert all(m > 0 and v > 0 and step == 2 for m, v, step in _moments(a))
    weights = {k: v.clone() for k, v in a.agent.state_dict().items()}
    # the third call steps (the weights move), then zeroes the moments and step counts
    a.update(batches[2])
    assert all(m == 0 and v == 0 and step == 0 for m, v, step in _moments(a))
    assert any(not torch.equal(v, a.agent.state_dict()[k]) for k, v in weights.items())
    moved = {k: v.clone() for k, v in a.agent.state_dict().items()}
    a.reset_optimizer_moments()  # the reset itself never touches a weight
    assert all(torch.equal(v, a.agent.state_dict()[k]) for k, v in moved.items())
    for b in batches[3:5]:
        a.update(b)
    assert all(step == 2 for *_, step in _moments(a))
    # without the option the moments keep accumulating
    plain = make_learner()
    for b in batches[:4]:
        plain.update(b)
    assert all(step == 4 and v > 0 for _, v, step in _moments(plain))


def test_optimizer_reset_schedule_resumes_bit_identically():
    """A checkpoint between two resets continues the schedule where it stood (from AdamW's own
    step count), so the resumed run resets on the same calls as the uninterrupted one."""
    a = make_learner(optimizer_reset_interval=3)
    batches = [make_batch(a.agent.spec, seed=s) for s in range(9)]
    # checkpoint after one reset (after call 3) and one more step; resets after calls 6 and 9
    b_ = assert_resume_is_bit_identical(
        a, lambda: make_learner(optimizer_reset_interval=3, seed=5), batches, split=4)
    assert _moments(a) == _moments(b_) and all(step == 0 for *_, step in _moments(b_))


@pytest.mark.parametrize("value", [-1, 2.5, True])
def test_optimizer_reset_interval_rejects_non_integers_and_negatives(value):
    with pytest.raises(ValueError, match="optimizer_reset_interval"):
        LearnerConfig(optimizer_reset_interval=value)


def test_adam_beta2_sets_adamws_second_moment_decay_and_survives_a_resume_with_another():
    """β2 reaches AdamW: after one step from zero moments, exp_avg_sq = (1 − β2)·g² exactly;
    a learner loading a checkpoint written with another β2 keeps its own config's value."""
    a = make_learner(adam_beta2=0.99, grad_clip=1e9)
    batch = make_batch(a.agent.spec)
    a.update(batch)
    grads = {id(p): p.grad.detach().clone() for p in a.trainable if p.grad is not None}
    for p in a.trainable:
        if id(p) in grads:
            sq = a.optimizer.state[p]["exp_avg_sq"]
            torch.testing.assert_close(sq, 0.01 * grads[id(p)] ** 2)
    assert a.optimizer.param_groups[0]["betas"] == (0.9, 0.99)
    b_ = make_learner()  # β2 0.999
    b_.load_state_dict(copy.deepcopy(a.state_dict()))
    assert b_.optimizer.param_groups[0]["betas"] == (0.9, 0.999)
