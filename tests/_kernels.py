"""Shared helpers of the kernel tests: where the kernels run here, the skip markers, and fresh
processes without the Triton interpreter.

The kernels read TRITON_INTERPRET once, when amago_fast.kernels is imported (tests/conftest.py
sets it to 1 first), so a check of the non-interpreted behaviour (``backend="auto"`` falling back
to the reference, ``backend="triton"`` refusing CPU tensors, lowering the real kernels for sm_90)
has to run in a process of its own started without it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from amago_fast.kernels import _utils

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TRITON_OK = _utils.INTERPRET or torch.cuda.is_available()
needs_triton = pytest.mark.skipif(
    not TRITON_OK, reason="needs TRITON_INTERPRET=1 before import (tests/conftest.py) or a GPU")

ROOT = Path(__file__).resolve().parents[1]


def _can_compile_for_cuda() -> bool:
    """Whether Triton's NVIDIA backend (and with it ptxas) is installed: enough to lower the
    kernels for an H100 on a machine without one."""
    try:
        from triton.backends.nvidia.compiler import CUDABackend  # noqa: F401
    except Exception:
        return False
    return True


needs_cuda_compiler = pytest.mark.skipif(not _can_compile_for_cuda(),
                                         reason="triton's NVIDIA backend is missing")


def run_without_interpreter(code: str, *args: str, timeout: float = 600,
                            in_repo: bool = False) -> subprocess.CompletedProcess:
    """``python -c code *args`` with TRITON_INTERPRET removed from the environment; stdout and
    stderr captured as text. ``in_repo``: run from the repository root (so the snippet can put
    test folders on sys.path)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT if in_repo else None)
