// Registers the private module amago_fast._core. Registration only: checks and conversions
// live in the adapter, the logic in the pure C++ headers.
#include <pybind11/pybind11.h>

PYBIND11_MODULE(_core, m) {
  m.doc() = "amago_fast native core (private; use amago_fast.TrajectoryBuffer)";
  m.attr("ABI_VERSION") = 1;
}
