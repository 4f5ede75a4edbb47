"""benchmarks/random_baseline.py: the reference line of the learning tables, from real envs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "random_baseline.py"


def _module():
    spec = importlib.util.spec_from_file_location("random_baseline", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tmaze_random_play_never_succeeds_and_pays_corridor_penalties(capsys):
    mod = _module()
    assert mod.main(["tmaze-passive", "--episodes", "48", "--seed", "3"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["episodes"] == 48 and row["length"] == 51.0
    # 3 of 4 random actions in the corridor cost 1/50 each; the corridor is never walked.
    assert row["success"] == 0.0 and -0.85 < row["return"] < -0.65
    assert row["return_ci_low"] < row["return"] < row["return_ci_high"]
    assert row["success_ci_low"] == pytest.approx(0.0, abs=1e-12)
    assert 0.0 < row["success_ci_high"] < 0.1


def test_bad_episode_count_is_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        _module().main(["tmaze-passive", "--episodes", "0"])
    assert "--episodes must be >= 1" in capsys.readouterr().err


def test_unknown_env_is_a_one_line_usage_error(capsys):
    with pytest.raises(SystemExit):
        _module().main(["gym:NoSuchEnv-v9"])
    err = capsys.readouterr().err.strip().splitlines()
    assert "gym:NoSuchEnv-v9: unknown gymnasium id 'NoSuchEnv-v9'" in err[-1]
