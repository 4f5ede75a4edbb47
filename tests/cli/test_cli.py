"""The `amago-fast` command: train (print-config, overrides, bad config), eval, presets, bench."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from amago_fast.bench.suite import format_table, table_rows
from amago_fast.cli import main
from amago_fast.config import overrides_to_args
from tests.training.test_trainer_resume import TINY

pytestmark = pytest.mark.usefixtures("keep_torch_threads")


def test_print_config_applies_preset_and_overrides(capsys):
    assert main(["train", "--preset", "tmaze-active", "--print-config",
                 "--learner.lr", "3e-4", "--env.kwargs", '{"corridor_length": 7}']) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["env"]["name"] == "tmaze-active"
    assert cfg["env"]["kwargs"] == {"corridor_length": 7}
    assert cfg["learner"]["lr"] == pytest.approx(3e-4)


def test_bad_config_exits_2_naming_the_field(capsys, tmp_path):
    assert main(["train", "--run-dir", str(tmp_path / "r"), "--batch_size", "0"]) == 2
    assert "batch_size" in capsys.readouterr().err
    assert main(["train", "--run-dir", str(tmp_path / "r"), "--agent.num_heads", "5"]) == 2
    assert "agent.num_heads" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["train", "--no.such.field", "1"])
    assert e.value.code == 2
    assert not (tmp_path / "r").exists()


def test_help_lists_every_field_with_its_docstring():
    out = subprocess.run([sys.executable, "-m", "amago_fast", "train", "--help"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    assert "--learner.lr" in out.stdout and "AdamW learning rate" in out.stdout
    assert "--env.num_envs" in out.stdout and "--resume" in out.stdout
    script = Path(sys.executable).parent / "amago-fast"
    if script.exists() or shutil.which("amago-fast"):
        out = subprocess.run([str(script) if script.exists() else "amago-fast", "presets"],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and "tmaze" in out.stdout


def test_train_then_eval_prints_json(tmp_path, capsys):
    run_dir = tmp_path / "run"
    args = ["train", "--run-dir", str(run_dir),
            *overrides_to_args({**TINY, "total_env_steps": 32, "checkpoint_interval": 0})]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["env_steps"] >= 32 and (run_dir / "config.json").is_file()
    assert main(["eval", str(run_dir), "--episodes", "3"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["episodes"] >= 3 and "return" in stats
    assert stats["checkpoint_env_steps"] == result["env_steps"]
    assert main(["eval", str(tmp_path / "nothing")]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert main(args) == 2  # the same run dir again: refused, nothing overwritten
    assert "--resume" in capsys.readouterr().err


def test_eval_env_kwargs_reach_the_eval_env_only(tmp_path, capsys):
    """env.eval_kwargs shape the training run's evaluation env (not the training env), and
    `amago-fast eval --env-kwargs` merges more on top; bad ones exit 2 naming the problem."""
    run_dir = tmp_path / "run"
    cfg = {**TINY, "total_env_steps": 32, "checkpoint_interval": 0,
           "env.kwargs": {"corridor_length": 6}, "env.eval_kwargs": {"corridor_length": 3}}
    assert main(["train", "--run-dir", str(run_dir), *overrides_to_args(cfg)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["eval"]["length"] == 4  # corridor 3: 4 steps (train episodes take 7)
    assert main(["eval", str(run_dir), "--episodes", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["length"] == 4
    assert main(["eval", str(run_dir), "--episodes", "2",
                 "--env-kwargs", '{"corridor_length": 9}']) == 0
    assert json.loads(capsys.readouterr().out)["length"] == 10
    assert main(["eval", str(run_dir), "--env-kwargs", '{"bogus": 1}']) == 2
    assert "bogus" in capsys.readouterr().err
    assert main(["eval", str(run_dir), "--env-kwargs", "[1]"]) == 2
    assert "JSON object" in capsys.readouterr().err


def test_env_build_errors_are_one_line_config_errors(tmp_path, capsys):
    """Errors found while building the envs (unknown env, bad kwargs, an eval env that cannot
    be built, relabeling without goals, unknown exploration keys) print one line naming the
    fields and exit 2; no run directory is left behind with a checkpoint."""
    cases = [
        (["--env.name", "no-such-env"], "env.name"),
        (["--env.kwargs", '{"bogus": 1}'], "env.kwargs"),
        (["--env.name", "envpool:CartPole-v1", "--env.num_envs", "16",
          "--env.kwargs", '{"batch_size": 12}'], "env.eval_num_envs="),
        (["--buffer.relabel", "some", "--buffer.relabel_prob", "0.5"], "buffer.relabel"),
        (["--exploration", '{"bogus": 1}'], "exploration"),
    ]
    for i, (extra, field) in enumerate(cases):
        rc = main(["train", "--run-dir", str(tmp_path / f"r{i}"),
                   *overrides_to_args({**TINY, "total_env_steps": 32}), *extra])
        err = capsys.readouterr().err
        assert rc == 2, extra
        assert "invalid config" in err and field in err, err
        assert "Traceback" not in err and err.strip().count("\n") <= 1, err


def test_changing_env_name_drops_the_presets_env_kwargs(capsys):
    """tmaze's corridor_length is not passed to key-to-door (a note says so); within an env
    family (another gym: id) a preset's env kwargs are kept; given explicitly, they win."""
    assert main(["train", "--preset", "tmaze", "--env.name", "key-to-door",
                 "--print-config"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["env"]["kwargs"] == {}
    assert "corridor_length" in out.err and "not passed" in out.err
    assert main(["train", "--preset", "minigrid", "--env.name", "gym:MiniGrid-Empty-5x5-v0",
                 "--print-config"]) == 0
    kept = json.loads(capsys.readouterr().out)["env"]["kwargs"]
    assert kept == {"ignore_keys": ["mission"], "flatten_keys": ["image"]}
    assert main(["train", "--env.name", "tmaze-active", "--env.kwargs",
                 '{"corridor_length": 5}', "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["env"]["kwargs"] == {"corridor_length": 5}


def test_aib_presets_evaluate_on_the_eval_in_split(tmp_path):
    from amago_fast.presets import get_preset
    from amago_fast.trainer import Trainer

    cfg = get_preset("actinv-cartpole")
    assert cfg.env.eval_kwargs == {"split": "eval-in"}
    cfg.env.num_envs = cfg.env.eval_num_envs = 2
    t = Trainer(cfg, tmp_path / "run")
    t.build()
    try:
        assert t.env.split == "train" and t.eval_env.split == "eval-in"
    finally:
        t.env.close()
        t.eval_env.close()


def test_bench_table_and_unknown_name(capsys):
    results = {"results": {
        "x": {"status": "ok", "result": {"cases": [
            {"case": "a", "ours": 2.0, "baseline": 1.0, "ratio": 2.0},
            {"env": "e", "fast_steps_per_s": 4.0, "raw_steps_per_s": 8.0,
             "fast_ratio_vs_raw": 0.5},
        ]}},
        "y": {"status": "missing", "reason": "not built"},
    }}
    rows = table_rows(results)
    assert ("x[case=a]", {"ours": 2.0, "baseline": 1.0}, 2.0) in rows
    assert ("x[env=e].fast", {"fast_steps_per_s": 4.0, "raw_steps_per_s": 8.0}, 0.5) in rows
    text = format_table(results)
    assert "missing" in text and "not built" in text
    assert main(["bench", "--only", "nope"]) == 2
    assert "unknown benchmarks" in capsys.readouterr().err


def test_readme_documents_every_command_and_train_option():
    from dataclasses import fields

    from amago_fast.agent import AgentConfig
    from amago_fast.config import BufferConfig, EnvConfig, TrainConfig
    from amago_fast.learner import LearnerConfig

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for cmd in ("amago-fast train", "amago-fast eval", "amago-fast bench", "amago-fast plot",
                "amago-fast presets", "amago-fast aib", "--resume", "--preset", "--print-config",
                "torchrun",
                "bash scripts/setup.sh && .venv/bin/amago-fast train", "bash scripts/test.sh"):
        assert cmd in readme, cmd
    for prefix, cls in (("", TrainConfig), ("env.", EnvConfig), ("buffer.", BufferConfig),
                        ("agent.", AgentConfig), ("learner.", LearnerConfig)):
        for f in fields(cls):
            if f.name in ("env", "buffer", "agent", "learner"):
                continue
            assert f"`--{prefix}{f.name}`" in readme, f"README misses --{prefix}{f.name}"
