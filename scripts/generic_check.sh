#!/usr/bin/env bash
# Builds csrc/ without x86 intrinsics (-DAMAGO_FAST_GENERIC=ON: the portable baseline only, what
# an aarch64 / Grace-Hopper wheel compiles to) into build/generic — the installed amago_fast/_core
# is not touched — checks that the module holds no AVX (ymm) instruction and that its policy
# engine reports no AVX2 path, then runs the native buffer, relabel-table, policy and collector
# bookkeeping tests against it (amago_fast.buffer loads it through AMAGO_FAST_CORE_PATH).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
source scripts/_alt_core.sh
build_alt_core build/generic -DCMAKE_BUILD_TYPE=Release -DAMAGO_FAST_GENERIC=ON
if command -v objdump >/dev/null 2>&1; then
  YMM=$(objdump -d --no-show-raw-insn "$SO" | grep -c "ymm" || true)
  echo "generic core: $YMM instructions on ymm registers"
  [ "$YMM" = 0 ] || { echo "generic_check: the generic build holds AVX instructions" >&2; exit 1; }
fi
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
run_native_tests "$@"
