// The trajectory store as the collector's fused step write sees it: the field schema, the
// checks write_step applies to a step batch (each raising TypeError/ValueError that names the
// field, before anything changes) and the write itself on rows already checked. The buffer's
// adapter (py_buffer.h) owns one per store and checks its own write_step rows with it; the
// collector's adapter (collector/py_collector.h) reaches it through StoreHandleOf, so neither
// adapter includes the other. Skipping write_step's dict, env-id and key-set checks (the
// collector's own pass does them) saves a Python->C++ crossing and ~2 µs of a 32-row async
// CartPole step.
#ifndef AMAGO_FAST_BUFFER_PY_STORE_HANDLE_H_
#define AMAGO_FAST_BUFFER_PY_STORE_HANDLE_H_

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "buffer/trajectory_store.h"

namespace amago {

namespace py = pybind11;

class StoreHandle {
 public:
  // names / dtypes / shapes: the store's fields in schema order (per-row shapes);
  // active_field: the goal_active field (-1: no goals) whose values lie in [0, k].
  StoreHandle(std::vector<std::string> names, std::vector<py::dtype> dtypes,
              std::vector<std::vector<ssize_t>> shapes, std::vector<int> obs_fields,
              bool allow_nonfinite_rewards, int active_field, int k, TrajectoryStore* store)
      : names_(std::move(names)),
        dtypes_(std::move(dtypes)),
        shapes_(std::move(shapes)),
        obs_fields_(std::move(obs_fields)),
        allow_nonfinite_(allow_nonfinite_rewards),
        active_field_(active_field),
        k_(k),
        store_(store) {}

  size_t num_fields() const { return names_.size(); }
  int active_field() const { return active_field_; }  // -1: no goals
  bool IsScalarField(size_t f, const py::dtype& dt) const {
    return shapes_[f].empty() && dtypes_[f].equal(dt);
  }

  // Field f of a step batch of n rows: a NumPy array of the field's exact dtype and shape
  // (n, *shape); C-contiguous (a strided one is copied and kept alive in `keep`). Throws
  // TypeError/ValueError naming the field.
  const uint8_t* CheckField(size_t f, py::handle value, int64_t n, const char* what,
                            std::vector<py::array>* keep) const {
    const std::string& name = names_[f];
    py::array a;
    if (py::isinstance<py::array>(value)) {
      a = py::reinterpret_borrow<py::array>(value);
    } else {
      a = py::array::ensure(value);
      if (!a) {
        throw py::type_error(std::string(what) + ": field '" + name + "' must be a NumPy array");
      }
    }
    if (!a.dtype().equal(dtypes_[f])) {
      throw py::type_error(std::string(what) + ": field '" + name + "' has dtype " +
                           py::str(a.dtype()).cast<std::string>() + ", expected " +
                           py::str(dtypes_[f]).cast<std::string>());
    }
    bool ok = a.ndim() == static_cast<ssize_t>(shapes_[f].size()) + 1;
    for (size_t d = 0; ok && d < shapes_[f].size(); ++d) ok = a.shape(d + 1) == shapes_[f][d];
    if (!ok) {
      throw py::value_error(std::string(what) + ": field '" + name + "' has shape " +
                            py::str(a.attr("shape")).cast<std::string>() + ", expected (" +
                            std::to_string(n) + ", ...) per-row shape " + ShapeStr(shapes_[f]));
    }
    if (a.shape(0) != n) {
      throw py::value_error(std::string(what) + ": field '" + name + "' has " +
                            std::to_string(a.shape(0)) + " rows, expected " + std::to_string(n) +
                            " (one per env)");
    }
    if (!(a.flags() & py::array::c_style)) a = py::array::ensure(a, py::array::c_style);
    keep->push_back(a);
    return static_cast<const uint8_t*>(a.data());
  }

  // Rewards must be finite unless the buffer allows otherwise (no GIL needed: throws a C++
  // exception, which pybind11 raises as ValueError).
  void CheckRewards(const float* r, int64_t n, const char* what) const {
    if (allow_nonfinite_) return;
    for (int64_t i = 0; i < n; ++i) {
      if (!std::isfinite(r[i])) {
        throw std::invalid_argument(std::string(what) +
                                    ": field 'reward' contains NaN/inf "
                                    "(allow_nonfinite_rewards=False)");
      }
    }
  }

  // goal_active in [0, k] (buffers with goals; `active` null = the field was not given).
  void CheckGoalActive(const uint8_t* active, int64_t n, const char* what) const {
    if (active_field_ < 0 || active == nullptr) return;
    const int32_t* a = reinterpret_cast<const int32_t*>(active);
    for (int64_t i = 0; i < n; ++i) {
      if (a[i] < 0 || a[i] > k_) {
        throw py::value_error(std::string(what) + ": field '" + names_[active_field_] +
                              "' must be in [0, " + std::to_string(k_) + "]");
      }
    }
  }

  // TrajectoryStore::WriteStep on checked rows (one pointer per field, schema order); env ids
  // are range-checked and open trajectories verified there, before anything changes. The
  // caller has released the GIL.
  int64_t WriteChecked(const int64_t* ids, int64_t n, const uint8_t* starts,
                       const std::vector<const uint8_t*>& ptrs) {
    return store_->WriteStep(ids, n, starts, ptrs, obs_fields_);
  }

  static std::string ShapeStr(const std::vector<ssize_t>& s) {
    std::string out = "(";
    for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
    return out + (s.size() == 1 ? ",)" : ")");
  }

 private:
  std::vector<std::string> names_;
  std::vector<py::dtype> dtypes_;
  std::vector<std::vector<ssize_t>> shapes_;
  std::vector<int> obs_fields_;
  bool allow_nonfinite_;
  int active_field_, k_;
  TrajectoryStore* store_;  // owned by the buffer's adapter, which owns this handle too
};

// The handle of a Python `_core.TrajectoryStore` (pybind11's cast error for anything else).
// Declared here, defined by the buffer's adapter (py_buffer.h), which knows the Python type;
// the handle lives as long as that object (callers that keep it keep the object alive).
inline StoreHandle& StoreHandleOf(py::handle store);

}  // namespace amago

#endif  // AMAGO_FAST_BUFFER_PY_STORE_HANDLE_H_
