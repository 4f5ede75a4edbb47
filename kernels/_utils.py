"""Shared dispatch helpers for the Triton kernels in :mod:`amago_fast.kernels`.

Every kernel module decides between its Triton kernel and its pure-PyTorch reference the same way:

* ``backend="auto"``: Triton for CUDA tensors, the reference for CPU tensors.
* ``backend="triton"``: CUDA tensors, or CPU tensors when ``TRITON_INTERPRET=1`` was set *before*
  the kernel module was imported (Triton reads the variable when a kernel is decorated, so setting
  it later has no effect). Anything else raises a ``ValueError`` that says why.
* ``backend="reference"``: always the PyTorch reference.

Autotuning: several configs on CUDA, exactly one under the interpreter (the interpreter cannot
benchmark configs, and each interpreted program costs ~0.5 ms).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from typing import Literal

import torch

Backend = Literal["auto", "triton", "reference"]
BACKENDS: tuple[str, ...] = ("auto", "triton", "reference")

#: Whether the Triton interpreter was requested when this module was first imported. Kernel
#: modules import this module before decorating their kernels, so this matches what Triton saw.
INTERPRET: bool = os.environ.get("TRITON_INTERPRET", "0") == "1"

try:  # Triton is optional at runtime: without it everything runs on the reference.
    import triton  # noqa: F401

    HAS_TRITON = True
except ImportError:  # pragma: no cover - triton ships with the test environment
    HAS_TRITON = False


def resolve_backend(backend: str, tensors: Sequence[torch.Tensor], op_name: str) -> str:
    """Return ``"triton"`` or ``"reference"`` for ``tensors`` under the requested ``backend``.

    Raises ``ValueError`` for an unknown backend, tensors on different devices, or a Triton request
    that cannot run (no triton, a CPU tensor without ``TRITON_INTERPRET=1`` set before import, or a
    device other than CPU/CUDA).
    """
    if backend not in BACKENDS:
        raise ValueError(f"{op_name}: unknown backend {backend!r}; expected one of {BACKENDS}")
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        raise ValueError(
            f"{op_name}: all tensors must be on one device, got {sorted(map(str, devices))}"
        )
    device = next(iter(devices))
    if backend == "reference":
        return "reference"
    if backend == "auto":
        return "triton" if device.type == "cuda" and HAS_TRITON else "reference"
    # backend == "triton"
    if not HAS_TRITON:
        raise ValueError(f"{op_name}: backend='triton' requested but triton is not installed")
    if device.type == "cuda":
        return "triton"
    if device.type == "cpu":
        if INTERPRET:
            return "triton"
        raise ValueError(
            f"{op_name}: backend='triton' on CPU tensors needs TRITON_INTERPRET=1 set before "
            "amago_fast.kernels is imported (Triton reads it when kernels are decorated); "
            "use backend='auto' or 'reference' on CPU"
        )
    raise ValueError(f"{op_name}: backend='triton' does not support device {device}")


def autotune_configs(cuda_configs: list, interpret_config) -> list:
    """The autotune config list: all ``cuda_configs`` on a GPU, only ``interpret_config`` when
    interpreting (the interpreter fails with 2+ configs)."""
    return [interpret_config] if INTERPRET else list(cuda_configs)


def cuda_sm_count(device: torch.device) -> int:
    """Number of streaming multiprocessors of a CUDA device (1 for anything else), used to size
    split-K grids."""
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


def launch_device(t: torch.Tensor) -> contextlib.AbstractContextManager:
    """Make ``t``'s CUDA device current around a Triton launch. Triton launches on the thread's
    current device and its stream, not on the tensors' device: without this a tensor on
    ``cuda:1`` in a thread whose current device is 0 (``--device cuda:1`` without torchrun, a
    DDP collector thread) would be read by a kernel running on GPU 0."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()
