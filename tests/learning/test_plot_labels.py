"""plot_runs' legend labels and file-name stem (used by benchmarks/learning_curves.py)."""

from __future__ import annotations

import pytest

from amago_fast.logger import RunLogger
from amago_fast.plot import plot_runs


def _run(path, scale):
    log = RunLogger(path, tensorboard=False)
    for i in range(1, 5):
        log.log("eval", {"return": scale * i, "success": 0.25 * i}, env_steps=100 * i,
                wall_time=0.5 * i)
    log.close()


def test_stem_and_labels(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _run(a, 1.0)
    _run(b, 2.0)
    out = tmp_path / "fig"
    paths = plot_runs([a, b], out_dir=out, metric="success", labels=["x", "y"], stem="grp")
    assert [p.name for p in paths] == ["grp_env_steps.png", "grp_wall_clock.png"]
    for p in paths:
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert not list(out.glob("*.tmp.png")) and not (out / "curves_env_steps.png").exists()


def test_bad_labels_and_stem_raise(tmp_path):
    _run(tmp_path / "a", 1.0)
    with pytest.raises(ValueError, match="1 labels for 2 run"):
        plot_runs([tmp_path / "a", tmp_path / "a"], out_dir=tmp_path, labels=["x"])
    with pytest.raises(ValueError, match="stem"):
        plot_runs([tmp_path / "a"], out_dir=tmp_path, stem="")
    with pytest.raises(ValueError, match="stem"):
        plot_runs([tmp_path / "a"], out_dir=tmp_path, stem="d/x")
