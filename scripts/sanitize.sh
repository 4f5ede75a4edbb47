#!/usr/bin/env bash
# Builds csrc/ with AddressSanitizer + UndefinedBehaviorSanitizer into build/sanitize (the
# installed amago_fast/_core is not touched) and runs the buffer, relabel-table, native policy and
# collector-bookkeeping tests against that module (amago_fast.buffer loads it through
# AMAGO_FAST_CORE_PATH; the policy engine and absorb_step come through the same loader). Any
# sanitizer report fails the run. (EnvPool's own modules trip ASan on import — a mismatched free
# in envpool/jumanji — so the EnvPool cases of the collector test are left out here.)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
BUILD=build/sanitize
GEN=()
command -v ninja >/dev/null 2>&1 && GEN=(-G Ninja)
cmake -S . -B "$BUILD" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Debug -DAMAGO_FAST_SANITIZE=ON \
  -DPython_EXECUTABLE="$PY" -Dpybind11_DIR="$("$PY" -m pybind11 --cmakedir)" >/dev/null
cmake --build "$BUILD" -j 2
SO=$(ls "$PWD/$BUILD"/_core*.so | head -n 1)

export AMAGO_FAST_CORE_PATH="$SO"
# The interpreter is not instrumented, so the runtimes must be loaded first.
export LD_PRELOAD="$(${CXX:-g++} -print-file-name=libasan.so) $(${CXX:-g++} -print-file-name=libubsan.so)"
export ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:abort_on_error=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
"$PY" -c "import amago_fast._native as n; assert n.NATIVE_AVAILABLE and n.core.__file__ == '$SO', n.core; print('sanitized core:', n.core.__file__)"
"$PY" -m pytest -q -p no:cacheprovider -m "not slow" \
  tests/buffer/test_trajectory_buffer.py tests/buffer/test_native_engine.py tests/buffer/test_stateful.py \
  tests/buffer/test_relabel_tables.py tests/nets/test_native_step.py \
  "tests/collector/test_collector.py::test_native_bookkeeping_equals_numpy_reference[tmaze-passive-kw3-25]" \
  "tests/collector/test_collector.py::test_native_bookkeeping_rejects_bad_arrays" "$@"
