#!/usr/bin/env bash
# The GPU checks in one run, for a session that has a CUDA machine for a few minutes: the
# environment, the kernel benchmarks (JSON) and the kernel tests compiled for the GPU.
#
# Usage: bash scripts/gpu_session.sh [OUTDIR]        (default: $OUT, else /tmp/gpu_session)
#   PHASES="env bench_attention bench_critic critic_profile bench_update context_cuda tests_gpu
#           train_cuda tests_kernels"   phases to run, in order (default: all; ~15+ min in all)
#   BUDGET_S=400   stop starting phases once this many seconds have passed
#   DEADLINE_S=570 cut each phase's own limit so that the whole run ends ~20 s before this
#                  (the device tool stops a command at 600 s)
#   WORKERS=12     processes for pytest-xdist and for compiling the attention tile candidates
#   PYTHON=python3
#
# Runs from the source tree without building anything, so the GPU machine needs torch, triton,
# numpy, pytest (pytest-xdist optional) but not the C++ extension: the buffer falls back to NumPy
# there and no buffer test runs here. The kernels' source is the top-level kernels/ folder, which
# only an install places inside the package (amago_fast.kernels), so the script first installs
# the pure-Python part as links: a temporary import root holding amago_fast/ with each source
# entry linked and kernels/ linked in as amago_fast/kernels (the wheel's layout). TRITON_INTERPRET is forced to 0: tests/conftest.py would otherwise turn
# the interpreter on, and CUDA tensors would then run through it on the host.
set -u
OUTDIR=${1:-${OUT:-/tmp/gpu_session}}
mkdir -p "$OUTDIR"
cd "$(dirname "$0")/.."
IMPORT_ROOT=$(mktemp -d "${TMPDIR:-/tmp}/amago_import.XXXXXX")
trap 'rm -rf "$IMPORT_ROOT"' EXIT
mkdir "$IMPORT_ROOT/amago_fast"
for entry in "$PWD"/amago_fast/*; do ln -s "$entry" "$IMPORT_ROOT/amago_fast/"; done
ln -s "$PWD/kernels" "$IMPORT_ROOT/amago_fast/kernels"
export PYTHONPATH="$IMPORT_ROOT:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TRITON_INTERPRET=0
PY=${PYTHON:-python3}
WORKERS=${WORKERS:-12}
BUDGET_S=${BUDGET_S:-400}
DEADLINE_S=${DEADLINE_S:-570}
PHASES=${PHASES:-env bench_attention bench_critic critic_profile bench_update context_cuda tests_gpu \
  train_cuda tests_kernels}
KERNEL_TESTS="tests/kernels"
XDIST=""
$PY -c "import xdist" 2>/dev/null && XDIST="-n $WORKERS"
$PY -c "import pytest_timeout" 2>/dev/null && XDIST="$XDIST --timeout 150"
# Failures are written as they happen (scripts/_pytest_live.py), so a cut-off run still shows them.
PYTEST="env PYTHONPATH=$PWD/scripts:$PYTHONPATH LIVE_REPORT=$OUTDIR/tests_live.log $PY -m pytest \
  -p _pytest_live -p no:cacheprovider -p no:benchmark -q -rfE --tb=short $XDIST"

for f in session.log tests.log tests_live.log; do : >"$OUTDIR/$f"; done

run_phase() {  # name limit_s stdout_file stderr_file command...
  local name=$1 limit=$2 stdout=$3 stderr=$4
  shift 4
  if ((SECONDS >= BUDGET_S || DEADLINE_S - SECONDS < 40)); then
    echo "=== $name skipped: ${SECONDS}s used (budget ${BUDGET_S}s, deadline ${DEADLINE_S}s)"
    return
  fi
  ((limit > DEADLINE_S - SECONDS - 20)) && limit=$((DEADLINE_S - SECONDS - 20))
  echo "=== $name (limit ${limit}s, at ${SECONDS}s)"
  local start=$SECONDS
  # Logs are appended (several phases share one: the device tool returns at most 8 files).
  if [[ $stdout == "$stderr" ]]; then
    timeout -k 10 "$limit" "$@" >>"$stdout" 2>&1
  else
    timeout -k 10 "$limit" "$@" >"$stdout" 2>>"$stderr"
  fi
  echo "=== $name rc=$? after $((SECONDS - start))s"
  tail -25 "$stderr"
}

for phase in $PHASES; do
  case $phase in
    env)
      run_phase env 60 "$OUTDIR/session.log" "$OUTDIR/session.log" bash -c "nvidia-smi \
--query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw,memory.used \
--format=csv; $PY -c 'import sys, torch, triton, numpy; print(sys.version.split()[0], \
torch.__version__, triton.__version__, numpy.__version__, torch.cuda.get_device_name(), \
torch.cuda.get_device_properties(0).multi_processor_count)'"
      ;;
    bench_attention)
      run_phase bench_attention 240 "$OUTDIR/bench_attention.json" "$OUTDIR/session.log" \
        $PY benchmarks/bench_attention.py --no-cpu --precompile "$WORKERS" ;;
    bench_critic)
      run_phase bench_critic 150 "$OUTDIR/bench_critic.json" "$OUTDIR/session.log" \
        $PY benchmarks/bench_critic.py --no-cpu ;;
    critic_profile)
      run_phase critic_profile 90 "$OUTDIR/critic_profile.json" "$OUTDIR/session.log" \
        $PY benchmarks/bench_critic.py --profile ;;
    bench_update)  # issues 4/22: updates/s, ours eager and CUDA-graph vs the reference-style
      # baseline, issue 4's sizes then the AMAGO-like grid (timesteps/s, peak memory, ops per
      # update); rows are written as they finish, so a cut-off run keeps the first ones
      run_phase bench_update 300 /dev/null "$OUTDIR/session.log" \
        $PY benchmarks/bench_update.py --device cuda --cuda-graph --no-flops \
        --sizes small large amago_256x3_ctx512 amago_768x6_ctx256_g18 amago_512x4_ctx1024 \
        amago_384x4_ctx2048_g18 --json-out "$OUTDIR/bench_update.json" ;;
    context_cuda)  # issue 5: Agent.act per step at context 64 vs 1024, on the GPU
      run_phase context_cuda 200 "$OUTDIR/context_cuda.json" "$OUTDIR/session.log" \
        $PY benchmarks/bench_collect.py --context-only --context-device cuda ;;
    tests_gpu)  # the tests marked gpu: bf16, long sequences, the trainer's shapes
      run_phase tests_gpu 300 "$OUTDIR/tests.log" "$OUTDIR/tests.log" $PYTEST -m gpu \
        tests/kernels tests/training/test_learner.py tests/training/test_trainer_resume.py \
        tests/training/test_learner_sync.py ;;
    train_cuda)  # the default command on the GPU (--device auto): T-Maze, a short run
      rm -rf /tmp/gpu_session_run
      run_phase train_cuda 150 "$OUTDIR/session.log" "$OUTDIR/session.log" \
        $PY -m amago_fast train --total_env_steps 3000 --progress_bar false \
        --run-dir /tmp/gpu_session_run ;;
    tests_kernels)  # every kernel test, on CUDA tensors instead of the interpreter
      run_phase tests_kernels 240 "$OUTDIR/tests.log" "$OUTDIR/tests.log" \
        $PYTEST $KERNEL_TESTS ;;
    *) echo "unknown phase $phase" ;;
  esac
done

# Drop this script's empty outputs (the device tool returns at most 8 files); nothing else.
for f in session.log tests.log tests_live.log bench_attention.json bench_critic.json \
  critic_profile.json bench_update.json context_cuda.json; do
  [[ -s $OUTDIR/$f ]] || rm -f "$OUTDIR/$f"
done
# A short table last: the device tool returns the end of the output.
$PY - "$OUTDIR" <<'EOF'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
def load(name):
    try:
        return json.loads((out / name).read_text())
    except Exception as exc:
        print(f"{name}: {type(exc).__name__}")
        return {}
bench = load("bench_attention.json")
att = bench.get("gpu", {})
if "precompile" in bench:
    print("precompile", bench["precompile"])
for r in att.get("attention", []):
    print(f"L={r['L']:5d} B={r['B']:3d} fwd {r['ours_fwd_tflops']:6.1f} TF/s "
          f"(flash {r['sdpa_flash_fwd_tflops']:6.1f}) fwd+bwd {r['ours_fwd_bwd_tflops']:6.1f} "
          f"(flash {r['sdpa_flash_fwd_bwd_tflops']:6.1f}) ratio {r['ours_vs_sdpa_flash_fwd_bwd_speedup']:.2f}"
          f" | vs ref {r['ours_vs_reference_fwd_bwd_speedup']:.1f}x"
          f" | graph ratio {r.get('ours_vs_sdpa_flash_fwd_bwd_graph_speedup', float('nan')):.2f}"
          f" b2b ratio {r.get('ours_vs_sdpa_flash_fwd_bwd_b2b_speedup', float('nan')):.2f}")
    for v, t in r.get("autotune", {}).items():
        print("   ", v, {k: x["chosen"] for k, x in t.items()})
if "host_free_error" in att:
    print("graph/back-to-back timings failed:", att["host_free_error"])
for d in att.get("decode", []):
    if "error" in d:
        print("decode", d)
        continue
    print(f"decode ctx={d['context']:5d} triton {d['triton_step_ms']:.4f} ms ref "
          f"{d['reference_step_ms']:.4f} ms  x{d.get('triton_vs_smallest_context', float('nan')):.2f}")
cr = load("bench_critic.json").get("gpu", {})
for c in cr.get("cases", []):
    print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in c.items()
           if k.endswith("ratio_vs_reference_fwdbwd") or k.endswith("_ms") or k in ("dtype", "g", "G")})
def leaves(d, path=""):
    if isinstance(d, dict):
        for k, v in d.items():
            yield from leaves(v, f"{path}.{k}" if path else str(k))
    elif isinstance(d, (int, float)) and not isinstance(d, bool):
        yield path, d
if (out / "bench_update.json").exists():
    for k, v in leaves(load("bench_update.json")):
        if ("per_s" in k or "speedup" in k or "ratio" in k or k.endswith("_mb")
                or k.endswith("aten_ops") or k.endswith("host_sync_ops")):
            print("update", k, round(v, 3))
    for k, v in load("bench_update.json").items():
        if isinstance(v, dict) and "error" in v:
            print("update", k, "error:", v["error"][:300])
if (out / "context_cuda.json").exists():
    for k, v in leaves(load("context_cuda.json")):
        if k.endswith("ratio"):
            print("context", k, round(v, 3))
prof = load("critic_profile.json").get("profile", {})
for key, rows in prof.items():
    if isinstance(rows, list):
        print("profile", key, [(r[0][:40], r[1]) for r in rows[:4]])
live = out / "tests_live.log"
if live.exists():
    lines = live.read_text().splitlines()
    print("tests:", sum(x.startswith("passed") for x in lines), "passed,",
          sum(x.startswith("FAILED") for x in lines), "failed:",
          [x.split()[1] for x in lines if x.startswith("FAILED")])
for key in ("td_target_reduce", "ema"):
    if key in cr:
        print(key, {k: (round(v, 4) if isinstance(v, float) else v) for k, v in cr[key].items()})
EOF
