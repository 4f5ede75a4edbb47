"""Defaults that learn: profile sizing from the env's episode limit (amago_fast/profiles.py),
typed values kept, hand-tuned presets untouched, evaluation intervals in eval.csv / the final
JSON, evaluation steps counted apart, the run directory printed first."""

from __future__ import annotations

import csv
import json
import math

import pytest

from amago_fast.cli import main
from amago_fast.config import ConfigError, apply_overrides, config_to_dict
from amago_fast.intervals import format_interval, interval_stats, mean_interval, wilson_interval
from amago_fast.presets import get_preset
from amago_fast.profiles import (
    default_torch_threads,
    episode_limit,
    resolve_profile,
    size_config,
    sized_overrides,
)


def _print_config(capsys, *args) -> dict:
    assert main(["train", *args, "--print-config"]) == 0
    return json.loads(capsys.readouterr().out)


def test_tmaze_is_sized_from_its_episode_limit(capsys):
    """The T-Maze rule (context H + 2, window H + 1, exploration over H + 1 steps) without
    typing it: corridor 10 -> 11-step episodes."""
    cfg = _print_config(capsys, "--env.name", "tmaze-passive", "--env.kwargs",
                        '{"corridor_length": 10}', "--device", "cpu")
    assert cfg["profile"] == "auto"
    assert cfg["agent"]["context_len"] == 12 and cfg["window_len"] == 11
    assert cfg["exploration"]["kind"] == "bilevel" and cfg["exploration"]["horizon"] == 11
    assert cfg["agent"]["d_model"] == 32 and cfg["torch_threads"] >= 1
    assert cfg["eval_episodes"] == 64
    # default corridor (50): 51-step episodes, the cpu update ratio 360 / (24 * 51)
    cfg = _print_config(capsys, "--env.name", "tmaze-passive", "--device", "cpu")
    assert (cfg["agent"]["context_len"], cfg["window_len"]) == (52, 51)
    assert cfg["updates_per_env_step"] == pytest.approx(360 / (24 * 51), abs=1e-4)
    assert cfg["learner"]["adam_beta2"] == 0.99  # the cpu profile's (torch's 0.999 on gpu)
    gpu = _print_config(capsys, "--env.name", "tmaze-passive", "--profile", "gpu")
    assert gpu["learner"]["adam_beta2"] == 0.999
    typed = _print_config(capsys, "--env.name", "tmaze-passive", "--learner.adam_beta2", "0.95")
    assert typed["learner"]["adam_beta2"] == 0.95


def test_typed_values_win_and_context_bounds_window(capsys):
    cfg = _print_config(capsys, "--env.name", "tmaze-passive", "--window_len", "7",
                        "--learner.lr", "0.002", "--eval_episodes", "10", "--device", "cpu")
    assert cfg["window_len"] == 7 and cfg["agent"]["context_len"] == 52
    assert cfg["learner"]["lr"] == 0.002 and cfg["eval_episodes"] == 10
    cfg = _print_config(capsys, "--env.name", "tmaze-passive", "--agent.context_len", "20",
                        "--device", "cpu")
    assert cfg["agent"]["context_len"] == 20 and cfg["window_len"] == 19
    ex = '{"eps_start": 1.0, "eps_end": 0.1, "anneal_steps": 10}'
    cfg = _print_config(capsys, "--env.name", "tmaze-passive", "--exploration", ex)
    assert cfg["exploration"] == json.loads(ex)


def test_hand_tuned_presets_keep_their_values(capsys):
    tuned = config_to_dict(get_preset("tmaze"))
    assert tuned["profile"] == "off"
    assert _print_config(capsys, "--preset", "tmaze") == tuned
    # asking for a profile sizes what was not typed, even on a tuned preset
    cfg = _print_config(capsys, "--preset", "tmaze", "--profile", "cpu")
    assert cfg["exploration"]["kind"] == "bilevel" and cfg["window_len"] == 21


def test_gym_preset_is_profile_sized_for_the_task(capsys):
    pytest.importorskip("gymnasium")
    cfg = _print_config(capsys, "--preset", "gym", "--env.name", "gym:Pendulum-v1",
                        "--device", "cpu")
    assert cfg["window_len"] == 200 and cfg["agent"]["context_len"] == 201
    assert cfg["exploration"]["kind"] == "gaussian"
    assert 0.99 in cfg["agent"]["gammas"] and max(cfg["agent"]["gammas"]) >= 1 - 1 / 200
    # 1 224 rows per update: 6 windows of 200, and 360 rows replayed per env step
    assert cfg["batch_size"] == 6
    assert cfg["updates_per_env_step"] == pytest.approx(360 / (6 * 200), abs=1e-4)


def test_bad_profile_is_one_line(capsys):
    assert main(["train", "--profile", "laptop", "--print-config"]) == 2
    err = capsys.readouterr().err
    assert "invalid config" in err and "profile" in err and err.count("\n") == 1


def test_profile_rules():
    assert resolve_profile("auto", "cpu") == "cpu"
    assert resolve_profile("gpu", "cpu") == "gpu"
    assert resolve_profile("auto", "cuda:1") == "gpu"
    with pytest.raises(ConfigError, match="profile"):
        resolve_profile("off", "cpu")
    assert default_torch_threads(2) == 1 and default_torch_threads(4) == 1
    assert default_torch_threads(16) == 4 and default_torch_threads(64) == 4
    long = sized_overrides("cpu", 1001, True)
    assert long["window_len"] == 1001 and max(long["agent.gammas"]) == pytest.approx(0.999)
    # long episodes: the fewest windows per update (4), more updates rather than larger ones
    assert long["batch_size"] == 4
    assert long["updates_per_env_step"] == pytest.approx(360 / (4 * 1001), abs=1e-4)
    short = sized_overrides("cpu", 51, True)
    assert short["batch_size"] == 24 and short["window_len"] == 51
    assert sized_overrides("gpu", 1001, True)["batch_size"] == 8
    none = sized_overrides("gpu", None, True)
    assert none["window_len"] == 256 and none["exploration"]["kind"] == "epsilon_greedy"
    assert none["agent.d_model"] == 128
    cfg = apply_overrides(get_preset("auto"), {"env.name": "key-to-door"})
    assert episode_limit(cfg) == (500, True)  # a whole 500-step trial
    off = apply_overrides(cfg, {"profile": "off"})
    assert config_to_dict(size_config(off)) == config_to_dict(off)


def test_intervals():
    low, high = wilson_interval(0.0, 64)
    assert low == 0.0 and 0.05 < high < 0.06
    low, high = wilson_interval(1.0, 64)
    assert 0.94 < low < 0.95 and high == 1.0
    low, high = wilson_interval(0.25, 16)
    assert low < 0.11 and high > 0.49  # 16 episodes at chance 0.25 cannot exclude 0.5
    low, high = mean_interval(1.0, 2.0, 5)  # sample std 2 * sqrt(5/4)
    assert high - 1.0 == pytest.approx(1.959964 * 2.0 * math.sqrt(5 / 4) / math.sqrt(5))
    assert mean_interval(1.0, 0.0, 1) == (-math.inf, math.inf)
    s = {"episodes": 64, "return": 0.5, "return_std": 0.5, "success": 0.5}
    s |= interval_stats(s)
    assert s["success_ci_low"] < 0.5 < s["success_ci_high"]
    assert format_interval(s, "success").startswith("0.5 [0.")
    assert interval_stats({"episodes": 0}) == {}


@pytest.mark.usefixtures("keep_torch_threads")
def test_run_reports_intervals_and_eval_steps(tmp_path, capsys):
    """eval.csv and the final JSON carry the 95% intervals; evaluation env steps are counted
    apart from the training env steps; the run directory is printed before training."""
    from amago_fast.config import overrides_to_args
    from tests._tiny_run import TINY_TMAZE_RUN

    run_dir = tmp_path / "run"
    args = {**TINY_TMAZE_RUN, "total_env_steps": 64, "eval_interval": 32, "eval_episodes": 4,
            "checkpoint_interval": 0}
    assert main(["train", "--run-dir", str(run_dir), *overrides_to_args(args)]) == 0
    out = capsys.readouterr()
    assert f"run directory {run_dir}" in out.err.splitlines()[0]
    result = json.loads(out.out)
    assert result["env_steps"] >= 64
    # corridor 3: 4-step episodes; 4 episodes per evaluation, two or three evaluations
    assert result["eval_env_steps"] >= 2 * 16 and result["eval_env_steps"] % 4 == 0
    ev = result["eval"]
    assert ev["success_ci_low"] <= ev["success"] <= ev["success_ci_high"]
    assert ev["return_ci_low"] <= ev["return"] <= ev["return_ci_high"]
    with open(run_dir / "eval.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and all(r["success_ci_low"] != "" and r["return_ci_high"] != "" for r in rows)


def test_plot_draws_interval_band_and_reference(tmp_path, capsys):
    """`amago-fast plot` reads the interval columns (one-episode rows' infinite bounds become
    gaps) and draws --reference lines; a malformed reference is one line, exit 2."""
    from amago_fast.logger import RunLogger
    from amago_fast.plot import load_curve

    run = tmp_path / "run"
    log = RunLogger(run, tensorboard=False)
    for step, (p, n) in enumerate([(0.25, 1), (0.5, 64), (1.0, 64)]):
        row = {"episodes": n, "success": p, "return": p, "return_std": 0.1}
        log.log("eval", row | interval_stats(row), (step + 1) * 1000, step * 10.0)
    log.close()
    name, curve = load_curve(run, "success")
    assert name == "success" and len(curve["ci_low"]) == 3
    assert curve["ci_low"][2] > 0.9 and curve["ci_high"][2] == 1.0
    assert main(["plot", str(run), "--metric", "success", "--reference", "chance=0.5",
                 "--reference", "a=b=0.25", "--out", str(tmp_path / "fig")]) == 0
    pngs = capsys.readouterr().out.split()
    assert len(pngs) == 2 and all((tmp_path / "fig" / p.split("/")[-1]).stat().st_size > 0
                                  for p in pngs)
    assert main(["plot", str(run), "--reference", "random"]) == 2
    err = capsys.readouterr().err
    assert "LABEL=VALUE" in err and err.count("\n") == 1


def test_typed_num_envs_sets_the_cadence(capsys):
    cfg = _print_config(capsys, "--env.name", "tmaze-passive", "--env.num_envs", "2",
                        "--device", "cpu")
    assert cfg["env"]["num_envs"] == 2 and cfg["collect_steps_per_iter"] == 16
    assert cfg["eval_interval"] == max(1_000, 4 * 2 * 51) and cfg["learning_starts"] == 500


def test_profiles_sample_discrete_evaluations_only():
    assert sized_overrides("cpu", 51, True)["eval_sample"] is True
    assert sized_overrides("gpu", None, True)["eval_sample"] is True
    assert sized_overrides("cpu", 200, False)["eval_sample"] is False


@pytest.mark.usefixtures("keep_torch_threads")
def test_eval_sample_reaches_eval_csv_and_evaluate_run(tmp_path, capsys):
    """The run's evaluations say whether they sampled; `evaluate_run` follows the run's setting
    unless told, and its greedy episodes repeat exactly for one env seed."""
    from amago_fast.config import overrides_to_args
    from amago_fast.evaluation import evaluate_run
    from tests._tiny_run import TINY_TMAZE_RUN

    run_dir = tmp_path / "run"
    args = {**TINY_TMAZE_RUN, "total_env_steps": 32, "eval_interval": 16, "eval_episodes": 4,
            "checkpoint_interval": 0, "eval_sample": True}
    assert main(["train", "--run-dir", str(run_dir), *overrides_to_args(args)]) == 0
    capsys.readouterr()
    with open(run_dir / "eval.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and all(float(r["sampled"]) == 1.0 for r in rows)
    assert evaluate_run(run_dir, episodes=8)["sampled"] == 1.0
    greedy = [evaluate_run(run_dir, episodes=8, sample=False, seed=3) for _ in range(2)]
    timing = ("seconds", "steps_per_second")
    same = [{k: v for k, v in g.items() if k not in timing} for g in greedy]
    assert greedy[0]["sampled"] == 0.0 and same[0] == same[1]
    with pytest.raises(ValueError, match="sample"):
        evaluate_run(run_dir, episodes=8, sample="yes")
    assert main(["eval", str(run_dir), "--episodes", "4", "--greedy"]) == 0
    assert json.loads(capsys.readouterr().out)["sampled"] == 0.0
    with pytest.raises(SystemExit):
        main(["eval", str(run_dir), "--sample", "--greedy"])
