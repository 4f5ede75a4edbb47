# Sourced by scripts/sanitize.sh and scripts/generic_check.sh: build csrc/ a second way into a
# build folder of its own (the installed amago_fast/_core is not touched) and run the native
# tests against that module. amago_fast._native loads it through AMAGO_FAST_CORE_PATH, and the
# buffer engine, the policy step and absorb_step all come through that one loader.
# Needs PY (the Python to build against and test with) and the repository root as working dir.

# build_alt_core BUILD_DIR CMAKE_OPTION...: configure and build; sets SO to the built module and
# exports AMAGO_FAST_CORE_PATH=$SO.
build_alt_core() {
  local build=$1
  shift
  local gen=()
  command -v ninja >/dev/null 2>&1 && gen=(-G Ninja)
  cmake -S . -B "$build" "${gen[@]}" "$@" \
    -DPython_EXECUTABLE="$PY" -Dpybind11_DIR="$("$PY" -m pybind11 --cmakedir)" >/dev/null
  cmake --build "$build" -j 2
  SO=$(ls "$PWD/$build"/_core*.so | head -n 1)
  export AMAGO_FAST_CORE_PATH="$SO"
}

# run_native_tests [PYTEST_ARG...]: the buffer, relabel-table, native policy step and collector
# bookkeeping tests (the default suite's cases; EnvPool's collector cases are left out: its own
# modules trip ASan on import, a mismatched free in envpool/jumanji).
run_native_tests() {
  "$PY" -m pytest -q -p no:cacheprovider -m "not slow" \
    tests/buffer/test_trajectory_buffer.py tests/buffer/test_native_engine.py \
    tests/buffer/test_stateful.py tests/buffer/test_relabel_tables.py tests/nets/test_native_step.py \
    "tests/collector/test_collector.py::test_native_bookkeeping_equals_numpy_reference[tmaze-passive-kw3-25]" \
    "tests/collector/test_collector.py::test_native_bookkeeping_rejects_bad_arrays" "$@"
}
