"""Host-side helpers the Triton launchers share: operands in the layout the kernels index, stand-in
pointers for absent operands, the ``tl.dot`` input precision, split-K grid sizes and autotuning.

Each op module (attention, critic, decode, ...) keeps its own kernels, launcher, autograd Function
and functional op; what is here is only what their launchers would otherwise each write again.
"""

from __future__ import annotations

import torch

from amago_fast.kernels._utils import cuda_sm_count

try:
    import triton
except ImportError:  # pragma: no cover - triton ships with the package on Linux
    triton = None


def last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when its last dim is dense (the kernels index the head/feature dim with unit
    stride and take every other stride as an argument), else a contiguous copy."""
    return t if t.stride(-1) == 1 else t.contiguous()


def pointer_or_stand_in(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself, or a one-element stand-in when ``t`` is empty (a zero-width operand: every
    access to it is masked off inside the kernel, but the launch still needs a valid pointer)."""
    return t if t.numel() else torch.zeros(1, dtype=t.dtype, device=t.device)


def optional_operand(t: torch.Tensor | None, stand_in: torch.Tensor,
                     ndim: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    """An optional operand and its first ``ndim`` strides; without one, ``stand_in`` (any tensor
    on the device: the kernel's constexpr flag keeps it unread) and zero strides."""
    if t is None:
        return stand_in, (0,) * ndim
    return t, tuple(t.stride(i) for i in range(ndim))


def dot_precision(dtype: torch.dtype, follow_matmul_setting: bool = False) -> str:
    """``input_precision`` for ``tl.dot`` on operands of ``dtype``. fp16/bf16 operands ignore it.
    fp32 operands get exact IEEE products (PyTorch's fp32 matmul default), or, with
    ``follow_matmul_setting``, TF32 wherever ``torch.set_float32_matmul_precision`` lets PyTorch's
    own matmuls use it (so a kernel's error stays within the tolerance rule against PyTorch at
    the same setting)."""
    if dtype != torch.float32:
        return "tf32"
    if follow_matmul_setting and torch.get_float32_matmul_precision() != "highest":
        return "tf32"
    return "ieee"


def pow2_at_least_16(x: int) -> int:
    """The smallest power of two >= max(x, 16): ``tl.arange`` and ``tl.dot`` tile sizes."""
    return max(16, 1 << (int(x) - 1).bit_length())


def split_count(device: torch.device, programs_per_split: int, max_splits: int, fill_gpu: bool,
                otherwise: int) -> int:
    """Splits of a split-K / split-rows grid. ``fill_gpu``: enough programs to cover the GPU's
    SMs ~4 times over, between 1 and ``max_splits`` — a pure function of shape and device, so the
    partial sums are reduced in the same order (with the same result) every run. Otherwise (the
    interpreter: no SMs to fill) ``min(max_splits, otherwise)``, still more than one split so
    tests exercise the split loop and the reduction of the partials."""
    if not fill_gpu:
        return min(max_splits, otherwise)
    return max(1, min(max_splits, triton.cdiv(4 * cuda_sm_count(device), programs_per_split)))


def short_autotune_bench(kernel_call, quantiles):
    """Time one candidate config: 10 ms warm-up and 40 ms of repeats instead of Triton's 25/100,
    so a new shape costs ~50 ms of GPU time per candidate rather than ~125 ms; the attention
    kernels ran 0.08-1.5 ms at the benchmark's shapes on an H100, so 40 ms still gives >= 25
    repeats."""
    return triton.testing.do_bench(kernel_call, warmup=10, rep=40, quantiles=quantiles)


def block_divides(configs: list, inner: str, outer: str, op: str) -> list:
    """``configs`` after checking that each one's ``inner`` block divides its ``outer`` block
    (block-range arithmetic such as "every key block ending at or before the query block's start
    is fully visible" needs it); a config that breaks it is a ``ValueError`` at import."""
    for c in configs:
        if c.kwargs[outer] % c.kwargs[inner]:
            raise ValueError(f"{op} autotune config {c.kwargs}: {inner} must divide {outer}")
    return configs
