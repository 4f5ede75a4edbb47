"""The one place that loads the compiled core, ``amago_fast._core``, and checks its ABI.

Every Python module that calls C++ (the buffer's store, the collector's absorb pass, the
policy step) imports ``core`` from here. The core and the Python sources always ship together
(the wheel holds both; an editable install rebuilds it with `pip install -e .`), so one ABI
number is the whole compatibility check: a core built from other sources (a stale
build folder, a wheel from another version) is refused as a unit and every subsystem uses its
NumPy / PyTorch path.

If the extension is missing or has another ABI, importing this module warns once and ``core``
is None. ``AMAGO_FAST_CORE_PATH=/path/to/_core*.so`` loads the core from that file instead
(scripts/sanitize.sh uses it for the ASan/UBSan build). Only one build of the core can live in
a process (a second load of the same module name fails), hence one loader.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import warnings
from types import ModuleType

__all__ = ["ABI", "NATIVE_AVAILABLE", "core"]

# Must equal ``ABI_VERSION`` in csrc/binding.cc; bumped there with every change to a binding.
ABI = 3


def _load() -> ModuleType | None:
    path = os.environ.get("AMAGO_FAST_CORE_PATH")
    try:
        if path:
            loader = importlib.machinery.ExtensionFileLoader("amago_fast._core", path)
            spec = importlib.util.spec_from_file_location("amago_fast._core", path, loader=loader)
            if spec is None:
                raise ImportError(f"cannot load {path}")
            mod = importlib.util.module_from_spec(spec)
            loader.exec_module(mod)
        else:
            from amago_fast import _core as mod  # type: ignore[attr-defined]
    except ImportError as e:
        warnings.warn(
            f"amago_fast._core is not available ({e}); the buffer, collector and policy step "
            "use their NumPy reference / PyTorch paths (slow). Build it with "
            "`pip install --no-build-isolation -e .`.",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    abi = getattr(mod, "ABI_VERSION", None)
    if abi != ABI:
        warnings.warn(
            f"amago_fast._core has ABI {abi}, expected {ABI}: rebuild it "
            "(`pip install --no-build-isolation -e .`); using the NumPy reference / PyTorch paths",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    return mod


core: ModuleType | None = _load()
NATIVE_AVAILABLE = core is not None
