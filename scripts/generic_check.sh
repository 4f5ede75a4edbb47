#!/usr/bin/env bash
# Builds csrc/ without x86 intrinsics (-DAMAGO_FAST_GENERIC=ON: the portable baseline only, what
# an aarch64 / Grace-Hopper wheel compiles to) into build/generic — the installed amago_fast/_core
# is not touched — checks that the module holds no AVX (ymm) instruction and that its policy
# engine reports no AVX2 path, then runs the native buffer, relabel-table, policy and collector
# bookkeeping tests against it (amago_fast.buffer loads it through AMAGO_FAST_CORE_PATH).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
BUILD=build/generic
GEN=()
command -v ninja >/dev/null 2>&1 && GEN=(-G Ninja)
cmake -S . -B "$BUILD" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release -DAMAGO_FAST_GENERIC=ON \
  -DPython_EXECUTABLE="$PY" -Dpybind11_DIR="$("$PY" -m pybind11 --cmakedir)" >/dev/null
cmake --build "$BUILD" -j 2
SO=$(ls "$PWD/$BUILD"/_core*.so | head -n 1)
if command -v objdump >/dev/null 2>&1; then
  YMM=$(objdump -d --no-show-raw-insn "$SO" | grep -c "ymm" || true)
  echo "generic core: $YMM instructions on ymm registers"
  [ "$YMM" = 0 ] || { echo "generic_check: the generic build holds AVX instructions" >&2; exit 1; }
fi
export AMAGO_FAST_CORE_PATH="$SO"
"$PY" - "$SO" <<'PY'
import sys
import amago_fast._native as n
assert n.NATIVE_AVAILABLE and n.core.__file__ == sys.argv[1], n.core
from amago_fast.agent import Agent, AgentConfig
from amago_fast.envs import make_env
import numpy as np
env = make_env("tmaze-passive", 2, corridor_length=3)
agent = Agent(env.spec, AgentConfig(d_model=16, num_layers=1, num_heads=2, tstep_hidden=16,
                                    tstep_out=16, actor_hidden=16, critic_hidden=16))
state = agent.init_state(2)
rows = {**env.reset(), "action": np.zeros(2, np.int32), "reward": np.zeros(2, np.float32),
        "time_index": np.zeros(2, np.int64)}
agent.act(rows, state, sample=False)
eng = agent.native_step.engine(agent._rollout_plans())
assert eng is not None and not eng.avx2, "the generic build took an AVX2 path"
print("generic core:", n.core.__file__, "(policy engine: baseline build)")
PY
"$PY" -m pytest -q -p no:cacheprovider -m "not slow" \
  tests/buffer/test_trajectory_buffer.py tests/buffer/test_native_engine.py tests/buffer/test_stateful.py \
  tests/buffer/test_relabel_tables.py tests/nets/test_native_step.py \
  "tests/collector/test_collector.py::test_native_bookkeeping_equals_numpy_reference[tmaze-passive-kw3-25]" \
  "tests/collector/test_collector.py::test_native_bookkeeping_rejects_bad_arrays" "$@"
