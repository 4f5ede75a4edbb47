"""scripts/gpu_session.sh: the summary it prints last must survive partial results (the device
tool returns only the end of the output, and a crash there hides everything before it)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results" / "h100-2026-11-26"


def _run_summary(outdir: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PHASES=" ", PYTHON=sys.executable)
    return subprocess.run(["bash", str(ROOT / "scripts" / "gpu_session.sh"), str(outdir)],
                          env=env, capture_output=True, text=True, timeout=120)


def test_summary_of_the_h100_results(tmp_path):
    for name in ("bench_attention.json", "bench_critic.json", "critic_profile.json"):
        shutil.copy(RESULTS / name, tmp_path / name)
    res = _run_summary(tmp_path)
    assert res.returncode == 0, res.stderr
    assert "L= 8192 B=  2" in res.stdout and "ratio 1.28" in res.stdout
    assert "decode ctx= 8192" in res.stdout and "_critic_fwd_kernel" in res.stdout


def test_summary_survives_a_partial_decode_table_and_missing_files(tmp_path):
    bench = json.loads((RESULTS / "bench_attention.json").read_text())
    decode = bench["gpu"]["decode"][:1]
    del decode[0]["triton_vs_smallest_context"]  # the ratio is added after the last context
    bench["gpu"]["decode"] = decode + [{"error": "RuntimeError: boom"}]
    bench["gpu"]["host_free_error"] = "RuntimeError: capture failed"
    (tmp_path / "bench_attention.json").write_text(json.dumps(bench))
    (tmp_path / "bench_critic.json").write_text("")  # a phase killed before printing
    res = _run_summary(tmp_path)
    assert res.returncode == 0, res.stderr
    assert "capture failed" in res.stdout and "boom" in res.stdout
    assert not (tmp_path / "bench_critic.json").exists()  # empty outputs are dropped


def test_summary_prints_the_update_rows_and_a_failed_size(tmp_path):
    """bench_update's JSON (written row by row by --json-out) is summarised with its ratios,
    op counts and a size that failed (e.g. out of GPU memory) by its error."""
    from amago_fast.bench.update import run

    out = tmp_path / "bench_update.json"
    run(("small",), iters=1, warmup=0, threads=1, count_flops=False, window=4, batch_size=2,
        json_out=str(out))
    rows = json.loads(out.read_text())
    rows["amago_384x4_ctx2048_g18"] = {"error": "OutOfMemoryError: CUDA out of memory"}
    out.write_text(json.dumps(rows))
    res = _run_summary(tmp_path)
    assert res.returncode == 0, res.stderr
    assert "update small.ratio" in res.stdout
    assert "update small.ops_per_update.ours.aten_ops" in res.stdout
    assert "amago_384x4_ctx2048_g18 error: OutOfMemoryError" in res.stdout
