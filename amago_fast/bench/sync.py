"""Counting the ops of a learner update that would make the host wait for a GPU, on any device.

A device read cannot be seen as a copy on a CPU-only machine, so the ops that make the host
wait on a GPU are the proxies: ``_local_scalar_dense`` (``.item()``, ``float(t)``, ``if t``),
``nonzero`` / ``masked_select`` / ``unique`` / boolean indexing (output size depends on the
data), ``lift_fresh`` (a tensor built from host data: a blocking host-to-device copy), and the
Python-level ``.tolist()`` / ``.cpu()`` (seen through a torch-function mode: on a CPU tensor they
dispatch no aten op). Used by tests/training/test_learner_sync.py and ``bench_update``'s op counts.
"""

from __future__ import annotations

import traceback

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

SYNC_OPS = frozenset({
    "_local_scalar_dense", "nonzero", "nonzero_static", "masked_select", "unique", "_unique",
    "_unique2", "unique_dim", "unique_consecutive", "equal", "is_nonzero", "lift_fresh",
    "repeat_interleave", "masked_scatter",
})
"""aten ops whose result (or whose output size) the host must wait for on a GPU."""
SYNC_METHODS = frozenset({"tolist", "cpu", "item", "__bool__", "__float__", "__int__",
                          "__index__"})
"""Tensor methods that read a tensor on the host (no aten op on a CPU tensor)."""


def _caller() -> str:
    frames = [f for f in traceback.extract_stack() if "amago_fast" in f.filename
              and not f.filename.endswith("bench/sync.py")]
    return " > ".join(f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno}" for f in frames[-3:])


class HostSyncDetector:
    """Context manager: ``events`` lists (op, amago_fast call site) of every op of the kinds
    above run inside it; ``ops`` counts all aten ops.

    ``F.one_hot`` is exempt: its class-range check reads the min/max on the host only for CPU
    tensors (ATen's one_hot; on CUDA a bad class is a device assert in its scatter)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.ops = 0
        self._exempt = 0
        detector = self

        class _Dispatch(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                detector.ops += 1
                name = func._schema.name.split("::")[-1]
                indices = args[1] if len(args) > 1 and isinstance(args[1], (list, tuple)) else ()
                bool_index = name in ("index", "index_put", "index_put_") and any(
                    isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices)
                if (name in SYNC_OPS or bool_index) and not detector._exempt:
                    detector.events.append((name, _caller()))
                return func(*args, **(kwargs or {}))

        class _Function(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                name = getattr(func, "__name__", "")
                if func is F.one_hot or name == "one_hot":
                    detector._exempt += 1
                    try:
                        return func(*args, **(kwargs or {}))
                    finally:
                        detector._exempt -= 1
                if name in SYNC_METHODS and not detector._exempt:
                    detector.events.append((name, _caller()))
                return func(*args, **(kwargs or {}))

        self._modes = (_Function(), _Dispatch())

    def __enter__(self) -> HostSyncDetector:
        for m in self._modes:
            m.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for m in reversed(self._modes):
            m.__exit__(*exc)
