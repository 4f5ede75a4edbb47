"""Presets whose sequence lengths must fit their env, and the learning-curve commands of
benchmarks/learning_curves.py resolving to the configs docs/LEARNING.md describes."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import pytest

from amago_fast.cli import main
from amago_fast.envs import make_env
from amago_fast.presets import get_preset


def _load_learning_curves():
    """benchmarks/learning_curves.py (a repository tool, not a package module), by path."""
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "learning_curves.py"
    spec = importlib.util.spec_from_file_location("learning_curves", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module while the class is built
    spec.loader.exec_module(module)
    return module


_curves = _load_learning_curves()
CURVES, command, final_result = _curves.CURVES, _curves.command, _curves.final_result
run_curves, summarize_run = _curves.run_curves, _curves.summarize_run


def _resolved(argv: list[str], capsys) -> dict:
    assert main([*argv[1:], "--print-config"]) == 0
    return json.loads(capsys.readouterr().out)


def _trial_len(name: str, kwargs: dict) -> int:
    env = make_env(name, 1, seed=0, **kwargs)
    try:
        return int(env.trial_max_steps)
    finally:
        env.close()


def test_key_to_door_preset_holds_a_whole_trial():
    cfg = get_preset("key-to-door")
    trial = _trial_len(cfg.env.name, cfg.env.kwargs)
    assert trial == 500  # the env's default the preset is sized for
    assert cfg.window_len >= trial and cfg.agent.context_len >= cfg.window_len + 1


@pytest.mark.parametrize("name", sorted(CURVES))
def test_curve_commands_resolve(name, capsys, tmp_path):
    cfg = _resolved(command(name, 3, tmp_path / "r"), capsys)
    assert cfg["seed"] == 3 and cfg["torch_threads"] == 1 and cfg["progress_bar"] is False
    assert cfg["agent"]["context_len"] >= cfg["window_len"]
    if name == "tmaze100":
        h = cfg["env"]["kwargs"]["corridor_length"] + 1
        assert (cfg["window_len"], cfg["agent"]["context_len"]) == (h, h + 1)
        assert cfg["exploration"]["horizon"] == h
    if name.startswith("ktd"):
        trial = _trial_len(cfg["env"]["name"], cfg["env"]["kwargs"])
        assert cfg["window_len"] == trial and cfg["agent"]["context_len"] == trial + 1
    if name.startswith("maze_k2"):
        want = "all" if name.endswith("relabel") else "none"
        assert cfg["buffer"]["relabel"] == want


def test_unknown_curve_is_rejected(tmp_path):
    with pytest.raises(KeyError, match="unknown curve"):
        command("nope", 0, tmp_path)
    with pytest.raises(KeyError, match="unknown curve"):
        run_curves(["nope"], tmp_path)
    with pytest.raises(ValueError, match="parallel"):
        run_curves(["tmaze100"], tmp_path, parallel=0)


@pytest.mark.slow
def test_runner_stops_at_the_limit_and_records_cpu(tmp_path):
    """A real T-Maze 100 run stopped after ~8 s by SIGTERM: the trainer exits cleanly and the
    meta file holds the command, the limit and the child's CPU time."""
    if os.name != "posix":
        pytest.skip("needs os.wait4")
    t0 = time.perf_counter()
    (meta,) = run_curves(["tmaze100"], tmp_path, seeds=(0,), parallel=1,
                         time_scale=8.0 / CURVES["tmaze100"].time_limit_s)
    assert meta["stopped_at_limit"] and meta["returncode"] == 0, meta
    assert meta["command"] == command("tmaze100", 0, tmp_path / "tmaze100_s0")
    assert 0 < meta["cpu_user_s"] and meta["wall_s"] <= time.perf_counter() - t0 + 1
    summary = summarize_run(tmp_path / "tmaze100_s0")
    assert summary["env_steps"] > 0 and summary["curve"] == "tmaze100"


def test_final_result_is_the_last_printed_json_block():
    text = 'warn {"x": 1}\n{\n  "env_steps": 5,\n  "eval": {\n    "return": 1.0\n  }\n}\n'
    text += "{\n  \"env_steps\": 64,\n  \"updates\": 7\n}\nalert: interrupted\n"
    assert final_result(text) == {"env_steps": 64, "updates": 7}
    assert final_result("no result\n{\n  broken\n}\n") is None
