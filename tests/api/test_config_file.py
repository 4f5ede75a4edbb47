"""`amago-fast train --config FILE.json`: an earlier run's config.json reproduces the run's
config, partial files set only what they name (over --preset), command-line overrides win,
and bad files are one clear line with nothing started."""

from __future__ import annotations

import json

import pytest

from amago_fast.cli import main
from amago_fast.config import overrides_to_args
from tests._tiny_run import TINY_TMAZE_RUN

pytestmark = pytest.mark.usefixtures("keep_torch_threads")


def _printed(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


def test_a_runs_config_json_starts_the_same_run_with_overrides_on_top(tmp_path, capsys):
    first = tmp_path / "first"
    args = overrides_to_args({**TINY_TMAZE_RUN, "checkpoint_interval": 0})
    assert main(["train", "--run-dir", str(first), *args]) == 0
    capsys.readouterr()
    saved = json.loads((first / "config.json").read_text())
    assert main(["train", "--config", str(first / "config.json"), "--print-config"]) == 0
    assert _printed(capsys) == saved
    assert main(["train", "--config", str(first / "config.json"), "--print-config",
                 "--learner.lr", "0.003", "--env.kwargs", '{"corridor_length": 4}']) == 0
    got = _printed(capsys)
    assert got["learner"]["lr"] == 0.003 and got["env"]["kwargs"] == {"corridor_length": 4}
    assert {k: v for k, v in got.items() if k not in ("learner", "env")} == \
        {k: v for k, v in saved.items() if k not in ("learner", "env")}
    # The file trains: a second run from it, in its own directory.
    second = tmp_path / "second"
    assert main(["train", "--config", str(first / "config.json"), "--run-dir", str(second),
                 "--total_env_steps", "32"]) == 0
    capsys.readouterr()
    again = json.loads((second / "config.json").read_text())
    assert again["total_env_steps"] == 32
    assert {k: v for k, v in again.items() if k != "total_env_steps"} == \
        {k: v for k, v in saved.items() if k != "total_env_steps"}
    # The same directory again is refused, not overwritten.
    assert main(["train", "--config", str(first / "config.json"), "--run-dir", str(first)]) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_a_partial_file_sets_only_what_it_names(tmp_path, capsys):
    f = tmp_path / "partial.json"
    f.write_text(json.dumps({"batch_size": 7, "agent": {"d_model": 48},
                             "env": {"kwargs": {"corridor_length": 9}}}))
    assert main(["train", "--preset", "tmaze", "--config", str(f), "--print-config"]) == 0
    got = _printed(capsys)
    assert main(["train", "--preset", "tmaze", "--print-config"]) == 0
    preset = _printed(capsys)
    assert got["batch_size"] == 7 and got["agent"]["d_model"] == 48
    assert got["env"]["kwargs"] == {"corridor_length": 9}
    assert got["env"]["name"] == preset["env"]["name"] == "tmaze-passive"
    assert got["learner"] == preset["learner"] and got["exploration"] == preset["exploration"]


@pytest.mark.parametrize("content, message", [
    (None, "cannot read it"),
    ("{not json", "not JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"batch_sizee": 3}', "invalid config: batch_sizee: no such config field"),
    ('{"agent": {"num_heads": 5}}', "invalid config: agent.num_heads"),
    ('{"batch_size": "many"}', "invalid config: batch_size"),
])
def test_bad_files_are_one_clear_line(tmp_path, capsys, content, message):
    f = tmp_path / "cfg.json"
    if content is not None:
        f.write_text(content)
    assert main(["train", "--config", str(f), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_config_with_resume_is_refused(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path / "x.json"), "--resume",
                 str(tmp_path)]) == 2
    assert "--config starts a new run" in capsys.readouterr().err
