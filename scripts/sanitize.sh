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
source scripts/_alt_core.sh
build_alt_core build/sanitize -DCMAKE_BUILD_TYPE=Debug -DAMAGO_FAST_SANITIZE=ON

# The interpreter is not instrumented, so the runtimes must be loaded first.
export LD_PRELOAD="$(${CXX:-g++} -print-file-name=libasan.so) $(${CXX:-g++} -print-file-name=libubsan.so)"
export ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:abort_on_error=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
"$PY" -c "import amago_fast._native as n; assert n.NATIVE_AVAILABLE and n.core.__file__ == '$SO', n.core; print('sanitized core:', n.core.__file__)"
run_native_tests "$@"
