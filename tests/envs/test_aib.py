"""The Actuator Inversion Benchmark as published: splits, DI / DI-Friction / ODE dynamics, the
warm-up rollout, per-sign evaluation and the `amago-fast aib` protocol command."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from amago_fast.envs import make_env
from amago_fast.envs.aib import (
    AIB_SPLITS,
    AIB_TASKS,
    ComplexODE,
    DoubleIntegrator,
    aib_instances,
    get_task,
)


# ----------------------------------------------------------------------------- splits
def test_published_check_values():
    """AIB_PROTOCOL.md's check values of the splits."""
    c = aib_instances("aib-cartpole", "train")
    assert c[0].tolist() == [0.3, -1.0] and c[1].tolist() == [0.3224, 1.0]
    assert c[-1].tolist() == [0.85, 1.0]
    c = aib_instances("aib-cartpole", "eval-out")
    assert c[0].tolist() == [0.1, -1.0] and c[1].tolist() == [0.1162, 1.0]
    assert c[-1].tolist() == [2.0, 1.0]
    c = aib_instances("aib-ballincup", "eval-out")
    assert c[0].tolist() == [1.0, 0.1] and c[-1].tolist() == [20.0, 0.5]
    assert aib_instances("aib-walker", "eval-in")[0].tolist() == [5.008, 0.51]
    for name, task in AIB_TASKS.items():
        for split in AIB_SPLITS:
            inst = aib_instances(name, split)
            assert inst.shape == (20, len(task.factor_names))
            if task.flip:  # 9 (+1) and 11 (-1) instances in every split
                assert (inst[:, -1] > 0).sum() == 9 and (inst[:, -1] < 0).sum() == 11


def _independent_split(lo, hi, out_lo, out_hi, split, flip):
    """The published rule written out with plain Python arithmetic: linspace's a + i * step
    (the last point exactly b) and NumPy's 4-decimal rounding (scale, round half to even,
    unscale), which the published lists were made with."""
    def lin(a, b, n):
        step = (b - a) / (n - 1)
        return [round((a + i * step if i < n - 1 else b) * 10_000) / 10_000 for i in range(n)]

    m = 0.01 * (hi - lo)
    if split == "train":
        grid = lin(lo, hi, 50)
    elif split == "eval-in":
        grid = lin(lo + m, hi - m, 50)
    else:
        grid = lin(out_lo, lo - m, 25) + lin(hi + m, out_hi, 25)
    return grid, ([-1.0, 1.0] if flip else None)


@pytest.mark.parametrize("split", AIB_SPLITS)
def test_full_lists_match_an_independent_computation(split):
    # DI: mass x sign; the mesh is sorted by (mass, sign).
    grid, signs = _independent_split(0.5, 1.5, 0.1, 2.0, split, True)
    mesh = sorted((m, s) for m in grid for s in signs)
    idx = [int((len(mesh) - 1) * i / 19) for i in range(20)]
    want = np.array([mesh[i] for i in idx])
    np.testing.assert_allclose(aib_instances("aib-di", split), want, atol=1e-9)
    # ODE: c0 x c1 over 2500 points.
    g0, _ = _independent_split(-5.0, 5.0, -10.0, 10.0, split, False)
    mesh = sorted((a, b) for a in g0 for b in g0)
    idx = [int((len(mesh) - 1) * i / 19) for i in range(20)]
    np.testing.assert_allclose(aib_instances("aib-ode", split), np.array([mesh[i] for i in idx]),
                               atol=1e-9)


def test_bad_names_and_splits():
    with pytest.raises(ValueError, match="unknown AIB env 'aib-nope'"):
        get_task("aib-nope")
    with pytest.raises(ValueError, match="unknown AIB split 'test'"):
        make_env("aib-di", 2, split="test")
    with pytest.raises(ValueError, match="instances"):
        make_env("aib-di", 2, instances=[[1.0, 0.5]])  # sign must be +-1
    with pytest.raises(ValueError, match="warmup_steps"):
        make_env("aib-di", 2, warmup_steps=-1)
    with pytest.raises(ValueError, match="episodes_per_trial"):
        make_env("aib-ode", 2, episodes_per_trial=0)


# ----------------------------------------------------------------------------- dynamics
def _di_reference_step(pos, vel, action, mass, friction, sign):
    """One step of the authors' DI written per env in float32 (their equations)."""
    force = np.clip(np.asarray(action, np.float32) * np.float32(sign), -1, 1).astype(np.float32)
    pos = pos + vel * np.float32(0.1)
    vel = vel * np.float32(1 - 0.1 * friction / mass) + force / np.float32(mass) * np.float32(0.1)
    pos = np.clip(pos, -1, 1).astype(np.float32)
    vel = np.clip(vel, -1, 1).astype(np.float32)
    reward = float(np.linalg.norm(pos) <= 0.1)
    return pos, vel, reward


@pytest.mark.parametrize("friction", [False, True])
def test_di_matches_the_reference_equations(friction):
    n = 20
    env = DoubleIntegrator(n, seed=3, friction=friction, warmup_steps=0)
    obs = env.reset()["observation"]
    rng = np.random.default_rng(0)
    mass = env.factor("mass")
    fr = env.factor("friction") if friction else np.zeros(n)
    sign = env.action_sign
    assert (np.abs(obs[:, :2]) > 0.8).all() and (obs[:, 2:] == 0).all()  # corner starts
    pos, vel = obs[:, :2].copy(), obs[:, 2:].copy()
    total = 0.0
    for t in range(100):
        # steer toward the origin (so the sparse reward fires) plus noise
        a = np.clip(-pos * 2 * sign[:, None] - vel + rng.normal(0, 0.3, (n, 2)), -1, 1)
        a = a.astype(np.float32)
        obs, r, term, trunc, info = env.step(a)
        for i in range(n):
            pos[i], vel[i], want = _di_reference_step(pos[i], vel[i], a[i], mass[i], fr[i],
                                                      sign[i])
            assert r[i] == want
        np.testing.assert_allclose(obs["observation"], np.concatenate([pos, vel], 1), atol=2e-6)
        total += r.sum()
        assert not term.any() and trunc.all() == (t == 99)
    assert total > 0  # the check reached the goal region somewhere


def test_di_sign_flip_is_the_whole_action():
    inst = np.array([[1.0, 1.0], [1.0, -1.0]])
    env = DoubleIntegrator(2, seed=0, instances=inst, warmup_steps=0)
    env.reset()
    env.pos[:] = 0.9
    a = np.array([[0.5, -0.25], [-0.5, 0.25]], np.float32)  # slot 1 gets the negated action
    for _ in range(5):
        obs, *_ = env.step(a)
    np.testing.assert_array_equal(obs["observation"][0], obs["observation"][1])


def test_ode_matches_the_reference_equations():
    env = ComplexODE(20, seed=1, warmup_steps=0)
    x = env.reset()["observation"][:, 0].astype(np.float64)
    assert (np.abs(x) <= 1).all()
    x = env.x.copy()
    rng = np.random.default_rng(1)
    for _ in range(200):
        a = rng.uniform(-1, 1, (20, 2)).astype(np.float32)
        _, r, *_ = env.step(a)
        for i in range(20):
            z = complex(float(a[i, 0]), float(a[i, 1]))
            xdot = (env.c0[i] * z + env.c1[i] * z ** 2).real
            x[i] = min(max(x[i] + xdot * 0.01, -20), 20)
            s = abs(x[i])
            want = next((1 / (k + 1) for k, b in enumerate((0.05, 0.1, 0.2, 0.5)) if s < b),
                        0.05 if s < 2 else 0.0)
            assert math.isclose(r[i], want, rel_tol=1e-6), (i, s)
        np.testing.assert_allclose(env.x, x, rtol=1e-12)


# ----------------------------------------------------------------------------- rollouts
def test_warmup_rollout_structure():
    """A rollout = 24 warm-up steps (reward 0) then the 100-step episode in the same context;
    episode_start marks both starts; episode_returns hold the scored episode only."""
    env = make_env("aib-di", 4, seed=0)
    assert env.spec.max_episode_steps == 124
    obs = env.reset()
    assert (obs["episode_start"] == 1).all()
    ctx = env.context.copy()
    total = np.zeros(4)
    for t in range(1, 125):
        obs, r, term, trunc, info = env.step(np.zeros((4, 2), np.float32))
        if t <= 24:
            assert (r == 0).all()
        total += r
        assert (obs["episode_start"][:, 0] == 1).all() == (t == 24)
        assert term.all() == (t == 124)
    np.testing.assert_allclose(info["episode_returns"][:, 0], total)
    assert info["episode_returns"].shape == (4, 1) and "success" not in info
    np.testing.assert_array_equal(env.context, ctx)  # contexts are per slot, fixed


def test_multi_episode_trial_and_no_warmup():
    env = make_env("aib-ode", 3, seed=0, warmup_steps=0, episodes_per_trial=2)
    assert env.spec.max_episode_steps == 400
    env.reset()
    for _ in range(400):
        _, _, term, _, info = env.step(np.zeros((3, 2), np.float32))
    assert term.all() and info["episode_returns"].shape == (3, 2)
    env = make_env("aib-ode", 3, seed=0, warmup_steps=0)
    assert "episode_start" not in env.reset()


def test_state_dict_round_trip():
    a = make_env("aib-di-friction", 5, seed=4)
    a.reset()
    rng = np.random.default_rng(0)
    for _ in range(30):
        a.step(rng.uniform(-1, 1, (5, 2)).astype(np.float32))
    b = make_env("aib-di-friction", 5, seed=99)
    b.load_state_dict(a.state_dict())
    for _ in range(120):
        act = rng.uniform(-1, 1, (5, 2)).astype(np.float32)
        oa, ra, *_ = a.step(act)
        ob, rb, *_ = b.step(act)
        np.testing.assert_array_equal(oa["observation"], ob["observation"])
        np.testing.assert_array_equal(ra, rb)


def test_aib_preset_names_cover_every_task():
    from amago_fast.presets import PRESETS, get_preset

    for name in AIB_TASKS:
        assert name in PRESETS and f"{name}-ff" in PRESETS
    cfg = get_preset("aib-di")
    assert cfg.env.num_envs == 20 and cfg.eval_episodes == 100
    assert set(cfg.env.eval_sets) == set(AIB_SPLITS)
    assert cfg.total_env_steps == 105_000 * 20 and cfg.learning_starts == 100_000
    assert cfg.agent.context_len == 25 and cfg.window_len == 24 and not cfg.collect_sample
    assert get_preset("aib-di-ff").agent.traj_encoder == "ff"
    # DI / DI-Friction explore with AMAGO's schedule (1M steps per actor); ODE keeps its own
    amago = {"std_start": 1.0, "std_end": 0.05, "anneal_steps": 20_000_000}
    for name in ("aib-di-friction", "aib-di-friction-ff"):
        assert get_preset(name).exploration == amago, name
        assert get_preset(name).learner.dynamics_coeff == 0.0, name
    # DI: plus the protocol's 5k random vector steps and the model loss (fifth round); the ff
    # ablation differs from it only in the trajectory encoder
    for name in ("aib-di", "aib-di-ff"):
        assert get_preset(name).exploration == amago | {"uniform_steps": 100_000}, name
        assert get_preset(name).learner.dynamics_coeff == 10.0, name
    assert get_preset("aib-ode").exploration == {"std_start": 0.3, "std_end": 0.1,
                                                 "anneal_steps": 1_000_000}


# ----------------------------------------------------------------------------- protocol
@pytest.fixture(scope="module")
def di_runs(tmp_path_factory):
    """Two short aib-di runs (seeds) with two periodic evaluations each."""
    from amago_fast.config import apply_overrides
    from amago_fast.presets import get_preset
    from amago_fast.trainer import Trainer

    root = tmp_path_factory.mktemp("aib")
    dirs = []
    for seed in (0, 1):
        cfg = apply_overrides(get_preset("aib-di"), {
            "total_env_steps": 2_000, "learning_starts": 1_000, "eval_interval": 1_000,
            "checkpoint_interval": 0, "log_interval": 1_000, "updates_per_env_step": 0.005,
            "seed": seed, "progress_bar": False, "tensorboard": False,
            "buffer.capacity_steps": 10_000, "env.num_envs": 4})
        Trainer(cfg, root / f"s{seed}").train()
        dirs.append(root / f"s{seed}")
    return dirs


def test_training_evaluates_every_split_with_exact_counts(di_runs):
    from amago_fast.logger import read_csv

    cols = read_csv(di_runs[0] / "eval.csv")
    assert cols["env_steps"] == [1000.0, 2000.0]
    for split in AIB_SPLITS:
        assert cols[f"{split}/episodes"] == [100.0] * 2
        assert f"{split}/return/sign+1" in cols and f"{split}/return/sign-1" in cols


def test_protocol_report(di_runs, tmp_path):
    from amago_fast.aib_protocol import aib_report, evaluate_protocol, markdown_table

    fresh = evaluate_protocol(di_runs[0])
    for split in AIB_SPLITS:
        assert len(fresh[split]["instances"]) == 20 and fresh[split]["episodes"] == 100
        sign = get_task("aib-di")  # 9 instances +1, 11 instances -1
        inst = np.array(fresh[split]["instances"])
        pos = aib_instances(sign.name, split)[:, -1] > 0
        assert math.isclose(fresh[split]["return/sign+1"], inst[pos].mean())
        assert math.isclose(fresh[split]["return"], inst.mean())
    rep = aib_report(di_runs, evaluate=False)
    assert rep["seeds"] == 2 and rep["env"] == "aib-di"
    from amago_fast.logger import read_csv

    for split in AIB_SPLITS:
        want = [max(read_csv(d / "eval.csv")[f"{split}/return"][-2:]) for d in di_runs]
        e = rep["splits"][split]
        assert e["per_seed"] == want
        assert math.isclose(e["aer_mean"], np.mean(want)) and math.isclose(e["aer_std"],
                                                                           np.std(want))
        assert e["evaluations_env_steps"] == [[1000, 2000], [1000, 2000]]
    assert rep["splits"]["train"]["amago"] == 66.0
    md = markdown_table([rep])
    assert md.count("| DI |") == 3


def test_figures_per_sign_and_suffix(di_runs, tmp_path, capsys, monkeypatch):
    """benchmarks/aib_figures.py on real runs: --per-sign draws each sign's curve (so the
    figure has twice the lines of the mean one) and --suffix keeps the main figure's name free;
    a suffix that could leave the folder is refused."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "aib_figures.py"
    spec = importlib.util.spec_from_file_location("aib_figures", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    import matplotlib.pyplot as plt

    lines = {}
    real_savefig = plt.Figure.savefig

    def count_lines(fig, fname, *a, **k):  # the real savefig, after counting the curves
        lines[Path(fname).name] = sum(len(ax.get_lines()) for ax in fig.axes)
        return real_savefig(fig, fname, *a, **k)

    monkeypatch.setattr(plt.Figure, "savefig", count_lines)
    assert mod.main(["--out", str(tmp_path), *map(str, di_runs)]) == 0
    assert mod.main(["--out", str(tmp_path), "--per-sign", "--suffix", "signs",
                     *map(str, di_runs)]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["figure"] for r in rows] == [str(tmp_path / "aib_di.png"),
                                          str(tmp_path / "aib_di_signs.png")]
    assert [r["per_sign"] for r in rows] == [False, True]
    for name in ("aib_di.png", "aib_di_signs.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # 2 seeds x 3 splits, one curve each or one per sign, plus AMAGO's line on the train split
    assert lines == {"aib_di.png": 2 * 3 + 1, "aib_di_signs.png": 2 * 2 * 3 + 1}
    with pytest.raises(SystemExit):
        mod.main(["--out", str(tmp_path), "--suffix", "../x", str(di_runs[0])])
    assert not (tmp_path.parent / "x.png").exists()


def test_protocol_cli(di_runs, tmp_path, capsys):
    from amago_fast.cli import main

    out = tmp_path / "di.json"
    assert main(["aib", *map(str, di_runs), "--json", str(out), "--markdown",
                 str(tmp_path / "di.md")]) == 0
    rep = json.loads(out.read_text())
    assert rep["fresh_checkpoints"] == ["ckpt-000000002000"] * 2
    assert "DI" in capsys.readouterr().out
    assert main(["aib", "--combine", str(out)]) == 0
    # bad input: one line each, exit 2
    bad = tmp_path / "other"
    bad.mkdir()
    for argv, msg in [
        (["aib", str(bad)], "not a run directory"),
        (["aib"], "run directories or --combine"),
        (["aib", "--combine", str(tmp_path / "di.md")], "not a readable AIB report"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1, err


def test_protocol_refuses_mixed_envs_and_missing_history(di_runs, tmp_path):
    import shutil

    from amago_fast.aib_protocol import aib_report

    other = tmp_path / "ode"
    shutil.copytree(di_runs[1], other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["env"]["name"] = "aib-ode"
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="different AIB envs"):
        aib_report([di_runs[0], other], evaluate=False)
    (other / "eval.csv").unlink()
    with pytest.raises(ValueError, match="no AIB evaluation history"):
        aib_report([other], evaluate=False)
