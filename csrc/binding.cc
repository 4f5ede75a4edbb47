// Registers the private module amago_fast._core. Registration only: checks and conversions
// live in the adapter (buffer_adapter.h), the logic in the pure C++ headers (buffer/).
#include <pybind11/pybind11.h>

#include "buffer_adapter.h"
#include "collector_adapter.h"
#include "policy_adapter.h"

namespace py = pybind11;

PYBIND11_MODULE(_core, m) {
  m.doc() = "amago_fast native core (private; use amago_fast.buffer.TrajectoryBuffer)";
  m.attr("ABI_VERSION") = 3;
  py::class_<amago::PyTrajectoryStore>(m, "TrajectoryStore")
      .def(py::init<const std::vector<std::string>&, py::list, int64_t, int, int64_t, uint64_t,
                    int, int, int, int, const std::vector<int>&, bool, py::object>(),
           py::arg("names"), py::arg("ring"), py::arg("capacity"), py::arg("num_envs"),
           py::arg("max_rows"), py::arg("seed"), py::arg("num_threads"),
           py::arg("reward_field"), py::arg("terminated_field"), py::arg("truncated_field"),
           py::arg("obs_fields"), py::arg("allow_nonfinite_rewards"), py::arg("goal_cfg"))
      .def("reset", &amago::PyTrajectoryStore::Reset, py::arg("rows"), py::arg("env_ids"))
      .def("append", &amago::PyTrajectoryStore::Append, py::arg("rows"), py::arg("env_ids"))
      .def("write_step", &amago::PyTrajectoryStore::WriteStep, py::arg("rows"),
           py::arg("env_ids"), py::arg("starts"))
      .def("commit", &amago::PyTrajectoryStore::Commit, py::arg("rows"), py::arg("offset"))
      .def("sample", &amago::PyTrajectoryStore::Sample, py::arg("batch_size"),
           py::arg("length"), py::arg("mode"), py::arg("counter"), py::arg("relabel"),
           py::arg("match_cb"), py::arg("out"))
      .def("used_rows", &amago::PyTrajectoryStore::UsedRows)
      .def("num_pieces", &amago::PyTrajectoryStore::NumPieces)
      .def("num_threads", &amago::PyTrajectoryStore::NumThreads)
      .def("open_lengths", &amago::PyTrajectoryStore::OpenLengths)
      .def("pieces", &amago::PyTrajectoryStore::Pieces)
      .def("get_state", &amago::PyTrajectoryStore::GetState)
      .def("set_state", &amago::PyTrajectoryStore::SetState);
  amago::RegisterCollector(m);  // absorb_step: the collector's bookkeeping (collector_adapter.h)
  amago::RegisterPolicy(m);  // PolicyEngine: native CPU rollout step (policy_adapter.h)
}
