"""CSV/TensorBoard logging and `amago-fast plot` on real files."""

from __future__ import annotations

import math

from amago_fast.cli import main
from amago_fast.logger import RunLogger, read_csv
from amago_fast.plot import load_curve


def _fake_run(path, scale):
    log = RunLogger(path, tensorboard=True)
    for i in range(1, 6):
        log.log("train", {"loss": 1.0 / i}, env_steps=100 * i, wall_time=0.5 * i)
        if i % 2 == 0:
            log.log("eval", {"return": scale * i, "success": 0.5}, env_steps=100 * i,
                    wall_time=0.5 * i)
    log.log("train", {"loss": 0.1, "new_metric": 3.0}, env_steps=600, wall_time=3.0)
    log.close()


def test_logger_widens_csv_and_writes_tensorboard(tmp_path):
    _fake_run(tmp_path, 1.0)
    cols = read_csv(tmp_path / "train.csv")
    assert cols["env_steps"] == [100, 200, 300, 400, 500, 600]
    assert math.isnan(cols["new_metric"][0]) and cols["new_metric"][-1] == 3.0
    assert list(cols)[:2] == ["env_steps", "wall_time"]
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb").iterdir())


def test_resumed_logger_drops_rows_after_checkpoint(tmp_path):
    _fake_run(tmp_path, 1.0)
    log = RunLogger(tmp_path, tensorboard=False, resume_env_steps=300)
    log.log("train", {"loss": 9.0}, env_steps=400, wall_time=2.0)
    log.close()
    cols = read_csv(tmp_path / "train.csv")
    assert cols["env_steps"] == [100, 200, 300, 400]
    assert cols["loss"][-1] == 9.0


def test_plot_command_writes_pngs(tmp_path, capsys):
    a, b = tmp_path / "run_a", tmp_path / "run_b"
    _fake_run(a, 1.0)
    _fake_run(b, 2.0)
    name, curve = load_curve(b)
    assert name == "return" and curve["value"] == [4.0, 8.0]
    out = tmp_path / "plots"
    assert main(["plot", str(a), str(b), "--out", str(out)]) == 0
    for fname in ("curves_env_steps.png", "curves_wall_clock.png"):
        data = (out / fname).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert main(["plot", str(tmp_path / "missing")]) == 2
    assert "no such run directory" in capsys.readouterr().err


def test_metric_named_like_the_index_does_not_overwrite_it(tmp_path):
    log = RunLogger(tmp_path, tensorboard=False)
    log.log("eval", {"env_steps": 336, "return": 1.0}, env_steps=4000, wall_time=1.0)
    log.close()
    cols = read_csv(tmp_path / "eval.csv")
    assert cols["env_steps"] == [4000] and cols["eval_env_steps"] == [336]


def test_wandb_is_only_imported_when_asked(tmp_path):
    import importlib.util
    import sys

    import pytest

    RunLogger(tmp_path / "a", tensorboard=False).close()
    assert "wandb" not in sys.modules
    if importlib.util.find_spec("wandb") is None:
        with pytest.raises(ImportError, match="pip install wandb"):
            RunLogger(tmp_path / "b", tensorboard=False, wandb=True)


def test_plot_draws_one_curve_per_evaluation_set(tmp_path):
    """A run with named evaluation sets (AIB's splits) gets one curve per set by default."""
    from amago_fast.plot import eval_set_returns, run_curves

    log = RunLogger(tmp_path, tensorboard=False)
    for i in (1, 2):
        log.log("eval", {"train/return": 1.0 * i, "eval-in/return": 2.0 * i,
                         "eval-out/return": 3.0 * i, "eval-out/return/sign+1": 0.0},
                env_steps=100 * i, wall_time=1.0 * i)
    log.close()
    assert eval_set_returns(tmp_path) == ["eval-in/return", "eval-out/return", "train/return"]
    curves = run_curves([tmp_path])
    assert [(c[0], c[1]) for c in curves] == [(tmp_path.name, n) for n in
                                              ("eval-in/return", "eval-out/return",
                                               "train/return")]
    assert curves[1][2]["value"] == [3.0, 6.0]
    assert [c[1] for c in run_curves([tmp_path], metric="train/return")] == ["train/return"]
    assert main(["plot", str(tmp_path), "--out", str(tmp_path / "p")]) == 0
    assert eval_set_returns(tmp_path / "p") == []  # no eval.csv: no sets
