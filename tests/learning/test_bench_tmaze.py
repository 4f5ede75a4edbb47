"""benchmarks/bench_tmaze.py logic: stops at the first perfect greedy evaluation or the limit."""

from __future__ import annotations

import json

import pytest

from amago_fast.bench import tmaze


def test_bench_tmaze_reports_time_to_solved_or_the_limit(tmp_path, capsys):
    # 45 s: at load ~8 on 2 cores, 15 s did not reach the first evaluation (256 env steps).
    tmaze.main(["--corridor", "3", "--seeds", "0", "--time-limit", "45", "--eval-interval", "256",
                "--eval-episodes", "8", "--log-dir", str(tmp_path),
                "--override", "learning_starts=256", "--override", "env.num_envs=4"])
    out = json.loads(capsys.readouterr().out)
    run = out["runs"][0]
    assert out["corridor_length"] == 3 and out["seeds"] == 1
    assert out["overrides"] == {"learning_starts": 256, "env.num_envs": 4}
    history = run["eval_history"]
    assert history and run["env_steps"] > 0
    if run["solved"]:  # stopped at the first evaluation with success 1.0, and said when
        assert history[-1]["success"] == 1.0
        assert all(h["success"] < 1.0 for h in history[:-1])
        assert run["env_steps_to_solved"] == history[-1]["env_steps"]
        assert out["median_seconds_to_solved"] == run["seconds_to_solved"]
    else:  # the time limit stopped it
        assert run["total_wall_seconds"] >= 45
        assert out["median_seconds_to_solved"] is None
    cfg = json.loads((tmp_path / "corridor3_seed0" / "config.json").read_text())
    assert cfg["window_len"] == 4 and cfg["agent"]["context_len"] == 5
    assert cfg["exploration"]["horizon"] == 4


@pytest.mark.parametrize("kwargs", [{"corridor_length": 0}, {"time_limit_s": 0}])
def test_bench_tmaze_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        tmaze.run(**kwargs)


def test_bench_tmaze_script_exits_cleanly(tmp_path):
    """The script as a process: JSON on stdout and exit status 0. When a run solved before its
    time limit, the cancelled timer thread used to outlive it holding the trainer, which was
    then freed during interpreter shutdown and aborted the process (rc 134) after the JSON."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_tmaze.py"
    out = subprocess.run(
        [sys.executable, str(script), "--corridor", "3", "--seeds", "0", "--time-limit", "120",
         "--eval-interval", "256", "--eval-episodes", "4", "--log-dir", str(tmp_path),
         "--override", "learning_starts=256", "--override", "env.num_envs=4"],
        capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout)["seeds"] == 1
