#!/usr/bin/env bash
# Build the wheel, install it into a fresh venv, import it from there and run a short training.
#
# The fresh venv never resolves an open torch requirement:
#   default            the wheel is installed with --no-deps and the venv sees the dependencies
#                      (torch, numpy, gymnasium, ...) of the project's .venv through a .pth path
#                      entry; .pth files inside that directory are not executed, so the
#                      checkout's editable install stays invisible and `amago_fast` can only come
#                      from the wheel (checked below).
#   WHEEL_CHECK_FULL=1 torch==2.13.0 is installed explicitly first, then the wheel with its
#                      dependencies (slower: downloads the rest).
# Usage: bash scripts/wheel_check.sh   (after scripts/setup.sh; CI calls it from .ci/run)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PY:-$ROOT/.venv/bin/python}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/amago_wheel.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

echo "wheel_check: building the wheel"
"$PY" -m pip wheel . --no-deps --no-build-isolation -q -w "$WORK/dist"
WHEEL=$(ls "$WORK"/dist/amago_fast-*.whl)
echo "wheel_check: built $(basename "$WHEEL")"

# The wheel holds the native core and the kernels inside the amago_fast namespace only.
"$PY" - "$WHEEL" <<'EOF'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
core = [n for n in names if n.startswith("amago_fast/_core") and n.endswith(".so")]
kernels = [n for n in names if n.startswith("amago_fast/kernels/") and n.endswith(".py")]
tops = sorted({n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")})
assert core, "wheel has no amago_fast/_core*.so"
assert "amago_fast/kernels/attention.py" in kernels, f"kernels missing: {kernels}"
assert tops == ["amago_fast"], f"unexpected top-level entries in the wheel: {tops}"
assert "amago_fast/py.typed" in names, "wheel has no amago_fast/py.typed (PEP 561 marker)"
import re
meta = [n for n in names if n.endswith(".dist-info/METADATA")]
version = re.search(r"^Version: (.+)$", zipfile.ZipFile(sys.argv[1]).read(meta[0]).decode(),
                    re.M).group(1)
source = re.search(r'^__version__ = "(.+)"$', open("amago_fast/__init__.py").read(), re.M)
assert version == source.group(1), f"wheel version {version} != __version__ {source.group(1)}"
print(f"wheel_check: contents ok ({core[0]}, {len(kernels)} kernel modules, top level {tops})")
EOF

"$PY" -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
if [ "${WHEEL_CHECK_FULL:-0}" = 1 ]; then
  "$VPY" -m pip install -q --disable-pip-version-check "$TORCH_SPEC"
  "$VPY" -m pip install -q --disable-pip-version-check "$WHEEL"
else
  DEPS=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  SITE=$("$VPY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  echo "$DEPS" > "$SITE/zz_amago_wheel_check_deps.pth"
  "$VPY" -m pip install -q --disable-pip-version-check --no-deps "$WHEEL"
fi

# Import from a directory outside the checkout so only the installed wheel can be found.
cd "$WORK"
"$VPY" - "$WORK/venv" <<'EOF'
import importlib.util, sys, warnings
with warnings.catch_warnings(record=True) as caught:  # a missing/stale core warns, falls back
    warnings.simplefilter("always")
    import amago_fast, amago_fast._core, amago_fast.buffer, amago_fast.kernels.attention
core_warnings = [str(w.message) for w in caught if "_core" in str(w.message)]
assert not core_warnings, core_warnings
venv = sys.argv[1]
for mod in (amago_fast, amago_fast._core, amago_fast.kernels.attention):
    assert mod.__file__.startswith(venv), f"{mod.__name__} imported from {mod.__file__}"
assert importlib.util.find_spec("kernels") is None, "a top-level `kernels` module is installed"
assert amago_fast.buffer.NATIVE_AVAILABLE, "the wheel's native core did not load"
print("wheel_check: imports ok from", amago_fast.__file__)
EOF

"$WORK/venv/bin/amago-fast" train --preset tmaze --run-dir "$WORK/run" \
  --env.kwargs '{"corridor_length": 3}' --env.num_envs 2 --env.eval_num_envs 2 \
  --agent.d_model 16 --agent.num_layers 1 --agent.num_heads 2 --agent.tstep_hidden 16 \
  --agent.tstep_out 16 --agent.actor_hidden 16 --agent.critic_hidden 16 --agent.context_len 8 \
  --window_len 6 --batch_size 4 --total_env_steps 64 --learning_starts 16 \
  --collect_steps_per_iter 8 --updates_per_env_step 0.2 --eval_interval 0 --eval_episodes 2 \
  --checkpoint_interval 0 --progress_bar false --tensorboard false > "$WORK/train.json"
"$VPY" - "$WORK/train.json" "$WORK/run" <<'EOF'
import json, pathlib, sys
text = pathlib.Path(sys.argv[1]).read_text()
result = json.loads(text[text.index("{"):])
assert result["env_steps"] >= 64 and result["updates"] > 0, result
assert (pathlib.Path(sys.argv[2]) / "checkpoints" / "latest").is_file()
print(f"wheel_check: short train ok ({result['env_steps']} env steps, {result['updates']} updates)")
EOF
echo "wheel_check: passed"
