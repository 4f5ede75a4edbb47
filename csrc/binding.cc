// Registers the private module amago_fast._core: one Register call per native subsystem, each
// defined by its adapter beside its core (checks and conversions there, the logic in the pure
// C++ headers of the same folder). Python loads the module through amago_fast._native.
#include <pybind11/pybind11.h>

#include "buffer/py_buffer.h"
#include "collector/py_collector.h"
#include "policy/py_policy.h"

namespace py = pybind11;

PYBIND11_MODULE(_core, m) {
  m.doc() = "amago_fast native core (private; use amago_fast.buffer.TrajectoryBuffer)";
  // Must equal amago_fast._native.ABI; bumped with every change to a binding.
  m.attr("ABI_VERSION") = 3;
  amago::RegisterBuffer(m);     // TrajectoryStore (buffer/py_buffer.h)
  amago::RegisterCollector(m);  // absorb_step, AsyncAbsorber (collector/py_collector.h)
  amago::RegisterPolicy(m);     // PolicyEngine, sample_categorical (policy/py_policy.h)
}
