#!/usr/bin/env bash
# Set up amago_fast on a fresh Linux machine: system packages, a venv in .venv, torch (pinned
# explicitly so pip never resolves an open torch requirement into a multi-GB CUDA build), the
# package with its native extension, and the test tools. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

# EnvPool's Procgen suite links Qt5; the C++ build needs a compiler, cmake and ninja.
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  missing=()
  for pkg in libqt5gui5 g++ cmake ninja-build; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
fi

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
"${PIP[@]}" install --upgrade pip
"${PIP[@]}" install "$TORCH_SPEC"
"${PIP[@]}" install "scikit-build-core>=0.10" "pybind11>=2.12"
# Editable install: Python sources are used in place, csrc/ is compiled into amago_fast/_core.
"${PIP[@]}" install --no-build-isolation -e ".[test]"
"${PIP[@]}" install --no-deps "popgym>=1.0.7"  # POPGym (optional suite): pure Python; its deps numpy + gymnasium are ours
# MiniGrid (optional suite): pure Python; it imports pygame-ce (a PyPI wheel) for rendering.
"${PIP[@]}" install "minigrid>=2.3"
# AIB MuJoCo tasks (aib-walker ... aib-hoppergym): dm_control's suite on MuJoCo, gymnasium's
# MuJoCo envs (which import imageio); none of them requires torch or another numpy.
"${PIP[@]}" install "dm-control==1.0.50" "mujoco>=3.1,<4" "imageio>=2.9"
# `amago-fast eval --video` (the [video] extra): MP4 encoding; a pure wheel with its own ffmpeg
"${PIP[@]}" install --no-deps "imageio-ffmpeg>=0.4"
# Minari datasets in --data (the [minari] extra: minari + h5py; [create] adds jax for
# minari.DataCollector, which the tests write datasets with); none of them requires torch
"${PIP[@]}" install "minari[create]==0.5.4" "h5py>=3.8"
# ONNX export of the policy step (the [onnx] extra): onnx, onnxscript, onnxruntime (no torch)
"${PIP[@]}" install "onnx>=1.16" "onnxscript>=0.2" "onnxruntime>=1.18"
.venv/bin/python -c "import amago_fast, amago_fast._core; print('amago_fast', amago_fast.__version__, 'ready')"
