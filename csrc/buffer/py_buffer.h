// Adapter between Python (amago_fast.buffer) and the pure C++ TrajectoryStore: checks and
// converts NumPy arrays (raising TypeError/ValueError that name the field, before anything is
// changed), keeps the caller-owned ring arrays alive, and releases the GIL around the core's
// work. RegisterBuffer adds `TrajectoryStore` to the module.
#ifndef AMAGO_FAST_BUFFER_PY_BUFFER_H_
#define AMAGO_FAST_BUFFER_PY_BUFFER_H_

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "buffer/py_store_handle.h"
#include "buffer/trajectory_store.h"

namespace amago {

namespace py = pybind11;

class PyTrajectoryStore {
 public:
  // ring: one (capacity, *shape) C-contiguous writeable array per field, in schema order.
  // goal_cfg: None or (goal, achieved, active, completed field indices, k, dim, dtype char,
  // tolerance, eps, goal_reward).
  PyTrajectoryStore(const std::vector<std::string>& names, py::list ring, int64_t capacity,
                    int num_envs, int64_t max_rows, uint64_t seed, int num_threads,
                    int reward_field, int terminated_field, int truncated_field,
                    const std::vector<int>& obs_fields, bool allow_nonfinite_rewards,
                    py::object goal_cfg)
      : names_(names),
        obs_fields_(obs_fields),
        reward_field_(reward_field) {
    if (static_cast<size_t>(py::len(ring)) != names.size()) {
      throw py::value_error("one ring array per field is required");
    }
    std::vector<FieldBuffer> fields;
    for (size_t f = 0; f < names.size(); ++f) {
      py::array arr = py::reinterpret_borrow<py::array>(ring[f]);
      if (!py::isinstance<py::array>(ring[f])) throw py::type_error("ring entries must be arrays");
      if (!(arr.flags() & py::array::c_style) || !arr.writeable() || arr.ndim() < 1 ||
          arr.shape(0) != capacity) {
        throw py::value_error("ring array '" + names[f] +
                              "' must be C-contiguous, writeable, with capacity rows");
      }
      ring_.push_back(arr);
      dtypes_.push_back(arr.dtype());
      shapes_.emplace_back(arr.shape() + 1, arr.shape() + arr.ndim());
      const size_t rb = capacity > 0 ? static_cast<size_t>(arr.nbytes() / capacity) : 0;
      row_bytes_.push_back(rb);
      fields.push_back({static_cast<uint8_t*>(arr.mutable_data()), rb});
      index_[names[f]] = static_cast<int>(f);
      key_objs_.push_back(py::str(names[f]));
    }
    is_obs_.assign(names.size(), false);
    for (int f : obs_fields_) is_obs_.at(f) = true;
    std::optional<GoalConfig> goals;
    if (!goal_cfg.is_none()) {
      auto t = goal_cfg.cast<py::tuple>();
      GoalConfig g;
      g.goal_field = t[0].cast<int>();
      g.achieved_field = t[1].cast<int>();
      g.active_field = t[2].cast<int>();
      g.completed_field = t[3].cast<int>();
      g.k = t[4].cast<int>();
      g.dim = t[5].cast<int>();
      std::string ch = t[6].cast<std::string>();
      if (ch.size() != 1) throw py::value_error("bad goal dtype");
      g.dtype = ch[0] == 'q' ? GoalDType::kInt64 : static_cast<GoalDType>(ch[0]);
      if (std::string("feBil?q").find(ch[0]) == std::string::npos) {
        throw py::type_error("unsupported goal dtype '" + ch + "'");
      }
      g.tolerance = t[7].cast<bool>();
      g.eps = t[8].cast<double>();
      g.goal_reward = t[9].cast<float>();
      goals = g;
      goal_dtype_ = py::dtype(ch);
      goal_field_ = g.goal_field;
      active_field_ = g.active_field;
      k_ = g.k;
    }
    store_ = std::make_unique<TrajectoryStore>(std::move(fields), capacity, num_envs, max_rows,
                                               seed, num_threads, reward_field, terminated_field,
                                               truncated_field, goals);
    handle_ = std::make_unique<StoreHandle>(names_, dtypes_, shapes_, obs_fields_,
                                            allow_nonfinite_rewards, active_field_, k_,
                                            store_.get());
  }

  void Reset(py::object rows, py::object env_ids) {
    std::vector<int64_t> ids = EnvIds(env_ids);
    std::vector<py::array> keep;
    auto ptrs = CheckRows(rows, true, static_cast<int64_t>(ids.size()), "reset_envs", &keep);
    std::vector<const uint8_t*> obs;
    for (int f : obs_fields_) obs.push_back(ptrs[f]);
    py::gil_scoped_release release;
    store_->Reset(ids.data(), static_cast<int64_t>(ids.size()), obs, obs_fields_);
  }

  int64_t Append(py::object rows, py::object env_ids) {
    std::vector<int64_t> ids = EnvIds(env_ids);
    std::vector<py::array> keep;
    auto ptrs = CheckRows(rows, false, static_cast<int64_t>(ids.size()), "append_step", &keep);
    py::gil_scoped_release release;
    store_->Append(ids.data(), static_cast<int64_t>(ids.size()), ptrs);
    return static_cast<int64_t>(ids.size());
  }

  // starts: (n,) bool — which rows open a new trajectory (their non-observation fields are
  // ignored); the others are appended. See TrajectoryStore::WriteStep.
  int64_t WriteStep(py::object rows, py::object env_ids, py::object starts) {
    std::vector<int64_t> ids = EnvIds(env_ids);
    const auto n = static_cast<int64_t>(ids.size());
    if (!py::isinstance<py::array>(starts)) {
      throw py::type_error("write_step: starts must be a NumPy bool array");
    }
    py::array s = py::reinterpret_borrow<py::array>(starts);
    if (s.dtype().kind() != 'b' || s.ndim() != 1 || s.shape(0) != n) {
      throw py::value_error("write_step: starts must be a bool array of shape (" +
                            std::to_string(n) + ",), got " +
                            py::str(s.dtype()).cast<std::string>() + " " +
                            py::str(s.attr("shape")).cast<std::string>());
    }
    // NumPy bools are one byte, 0 or 1: read in place (a view() call costs ~2 µs of a ~6 µs
    // call); only a strided mask is copied.
    if (!(s.flags() & py::array::c_style)) s = py::array::ensure(s, py::array::c_style);
    const auto* starts_data = static_cast<const uint8_t*>(s.data());
    std::vector<py::array> keep;
    auto ptrs = CheckRows(rows, false, n, "write_step", &keep);
    py::gil_scoped_release release;
    return store_->WriteStep(ids.data(), n, starts_data, ptrs, obs_fields_);
  }

  // Rows already validated by Python (add_trajectory / import_npz): contiguous, right dtypes.
  void Commit(py::list rows, int64_t offset) {
    std::vector<py::array> keep;
    std::vector<const uint8_t*> ptrs;
    int64_t n = -1;
    for (size_t f = 0; f < names_.size(); ++f) {
      py::array a = py::array::ensure(rows[f], py::array::c_style);
      if (!a || !a.dtype().equal(dtypes_[f]) || a.ndim() < 1) {
        throw py::type_error("commit: bad array for field '" + names_[f] + "'");
      }
      if (n < 0) n = a.shape(0);
      if (a.shape(0) != n) throw py::value_error("commit: fields have different lengths");
      keep.push_back(a);
      ptrs.push_back(static_cast<const uint8_t*>(a.data()));
    }
    py::gil_scoped_release release;
    store_->Commit(ptrs, n, offset);
  }

  void Sample(int64_t B, int64_t L, int mode, uint64_t counter, py::object relabel_cfg,
              py::object match_cb, py::dict out) {
    SampleOutputs o;
    auto get = [&](const std::string& key, const py::dtype& dt, std::vector<ssize_t> shape) {
      if (!out.contains(key)) throw py::value_error("out: missing key '" + key + "'");
      py::object obj = out[py::str(key)];
      if (!py::isinstance<py::array>(obj)) throw py::type_error("out['" + key + "'] must be a NumPy array");
      py::array a = py::reinterpret_borrow<py::array>(obj);
      if (!a.dtype().equal(dt)) {
        throw py::type_error("out['" + key + "'] has dtype " + py::str(a.dtype()).cast<std::string>() +
                             ", expected " + py::str(dt).cast<std::string>());
      }
      std::vector<ssize_t> have(a.shape(), a.shape() + a.ndim());
      if (have != shape) throw py::value_error("out['" + key + "'] has the wrong shape");
      if (!(a.flags() & py::array::c_style) || !a.writeable()) {
        throw py::value_error("out['" + key + "'] must be C-contiguous and writeable");
      }
      return static_cast<uint8_t*>(a.mutable_data());
    };
    if (py::len(out) != names_.size() + 4) {
      for (auto item : out) {
        std::string key = py::str(item.first);
        if (!index_.count(key) && key != "mask" && key != "time_index" &&
            key != "trajectory_id" && key != "start") {
          throw py::value_error("out: unknown key '" + key + "'");
        }
      }
    }
    for (size_t f = 0; f < names_.size(); ++f) {
      std::vector<ssize_t> shape{B, L + 1};
      shape.insert(shape.end(), shapes_[f].begin(), shapes_[f].end());
      o.fields.push_back(get(names_[f], dtypes_[f], shape));
    }
    o.mask = get("mask", py::dtype::of<bool>(), {B, L + 1});
    o.time_index = reinterpret_cast<int64_t*>(get("time_index", py::dtype::of<int64_t>(), {B, L + 1}));
    o.trajectory_id = reinterpret_cast<int64_t*>(get("trajectory_id", py::dtype::of<int64_t>(), {B}));
    o.start = reinterpret_cast<int64_t*>(get("start", py::dtype::of<int64_t>(), {B}));
    std::optional<RelabelParams> params;
    if (!relabel_cfg.is_none()) {
      auto t = relabel_cfg.cast<py::tuple>();
      RelabelParams p;
      int code = t[0].cast<int>();
      if (code < 0 || code > 4) throw py::value_error("unknown relabel strategy code");
      p.strategy = static_cast<Strategy>(code);
      p.probability = t[1].cast<double>();
      params = p;
    }
    std::optional<MatchMatrixFn> match;
    if (!match_cb.is_none()) {
      const int k = k_;
      const py::dtype gdt = goal_dtype_;
      if (goal_field_ < 0) throw py::value_error("relabel needs a goal config");
      const ssize_t dim = shapes_[goal_field_].back();
      match = MatchMatrixFn([match_cb, k, gdt, dim](const uint8_t* achieved,
                                                    const uint8_t* instruction, int64_t n,
                                                    uint8_t* result) {
        py::gil_scoped_acquire acquire;
        py::array a(gdt, std::vector<ssize_t>{n, dim});
        std::memcpy(a.mutable_data(), achieved, a.nbytes());
        py::array g(gdt, std::vector<ssize_t>{k, dim});
        std::memcpy(g.mutable_data(), instruction, g.nbytes());
        py::object res = match_cb(a, g);
        py::array_t<bool, py::array::c_style | py::array::forcecast> m(res);
        if (m.ndim() != 2 || m.shape(0) != n || m.shape(1) != k) {
          throw py::value_error("relabel match_fn must return a (n, k) bool array");
        }
        std::memcpy(result, m.data(), static_cast<size_t>(n * k));
      });
    }
    py::gil_scoped_release release;
    store_->Sample(B, L, static_cast<SampleMode>(mode), counter, params ? &*params : nullptr,
                   match ? &*match : nullptr, o);
  }

  // Every call that takes a store lock releases the GIL first: a thread blocked on a lock must
  // never hold the GIL that a match_fn callback (run under the read lock) needs.
  int64_t UsedRows() const {
    py::gil_scoped_release release;
    return store_->used_rows();
  }
  int64_t NumPieces() const {
    py::gil_scoped_release release;
    return store_->num_pieces();
  }
  int NumThreads() const { return store_->num_threads(); }

  py::array_t<int64_t> OpenLengths() const {
    std::vector<int64_t> v;
    {
      py::gil_scoped_release release;
      v = store_->open_lengths();
    }
    py::array_t<int64_t> a(static_cast<ssize_t>(v.size()));
    std::memcpy(a.mutable_data(), v.data(), v.size() * sizeof(int64_t));
    return a;
  }

  py::array_t<int64_t> Pieces() const {
    std::vector<Piece> ps;
    {
      py::gil_scoped_release release;
      ps = store_->pieces();
    }
    return PiecesArray(ps);
  }

  py::tuple GetState() const {
    StoreState s;
    {
      py::gil_scoped_release release;
      s = store_->GetState();
    }
    int64_t total_open = 0;
    for (int64_t v : s.open_len) total_open += v;
    py::list open_rows;
    for (size_t f = 0; f < names_.size(); ++f) {
      std::vector<ssize_t> shape{total_open};
      shape.insert(shape.end(), shapes_[f].begin(), shapes_[f].end());
      py::array a(dtypes_[f], shape);
      if (!s.open_rows[f].empty()) std::memcpy(a.mutable_data(), s.open_rows[f].data(), s.open_rows[f].size());
      open_rows.append(a);
    }
    return py::make_tuple(PiecesArray(s.pieces), Vec(s.open_len), Vec(s.open_offset),
                          s.write_pos, s.next_id, open_rows);
  }

  void SetState(py::array_t<int64_t, py::array::c_style | py::array::forcecast> pieces,
                py::array_t<int64_t, py::array::c_style | py::array::forcecast> open_len,
                py::array_t<int64_t, py::array::c_style | py::array::forcecast> open_offset,
                int64_t write_pos, int64_t next_id, py::list open_rows) {
    StoreState s;
    if (pieces.ndim() != 2 || pieces.shape(1) != 4) throw py::value_error("pieces must be (n, 4)");
    for (ssize_t i = 0; i < pieces.shape(0); ++i) {
      Piece p;
      p.id = pieces.at(i, 0);
      p.pos = pieces.at(i, 1);
      p.rows = pieces.at(i, 2);
      p.offset = pieces.at(i, 3);
      s.pieces.push_back(p);
    }
    s.open_len.assign(open_len.data(), open_len.data() + open_len.size());
    s.open_offset.assign(open_offset.data(), open_offset.data() + open_offset.size());
    s.write_pos = write_pos;
    s.next_id = next_id;
    if (static_cast<size_t>(py::len(open_rows)) != names_.size()) {
      throw py::value_error("set_state: one open-rows array per field");
    }
    for (size_t f = 0; f < names_.size(); ++f) {
      py::array a = py::array::ensure(open_rows[f], py::array::c_style);
      if (!a || !a.dtype().equal(dtypes_[f])) throw py::type_error("set_state: bad open rows");
      const auto* p = static_cast<const uint8_t*>(a.data());
      s.open_rows.emplace_back(p, p + a.nbytes());
    }
    py::gil_scoped_release release;
    store_->SetState(s);
  }

  // The store as the collector's fused step write sees it (py_store_handle.h).
  StoreHandle& handle() { return *handle_; }

 private:
  static py::array_t<int64_t> Vec(const std::vector<int64_t>& v) {
    py::array_t<int64_t> a(static_cast<ssize_t>(v.size()));
    if (!v.empty()) std::memcpy(a.mutable_data(), v.data(), v.size() * sizeof(int64_t));
    return a;
  }

  static py::array_t<int64_t> PiecesArray(const std::vector<Piece>& ps) {
    py::array_t<int64_t> a(std::vector<ssize_t>{static_cast<ssize_t>(ps.size()), 4});
    auto m = a.mutable_unchecked<2>();
    for (size_t i = 0; i < ps.size(); ++i) {
      m(i, 0) = ps[i].id;
      m(i, 1) = ps[i].pos;
      m(i, 2) = ps[i].rows;
      m(i, 3) = ps[i].offset;
    }
    return a;
  }

  std::vector<int64_t> EnvIds(py::object env_ids) const {
    const int num_envs = store_->num_envs();
    std::vector<int64_t> ids;
    if (env_ids.is_none()) {
      ids.resize(num_envs);
      for (int i = 0; i < num_envs; ++i) ids[i] = i;
      return ids;
    }
    py::array a = py::array::ensure(env_ids);
    if (!a) throw py::type_error("env_ids must be a 1-d integer array");
    const char kind = a.dtype().kind();
    if (a.ndim() != 1 || (a.size() > 0 && kind != 'i' && kind != 'u')) {
      throw py::type_error("env_ids must be a 1-d integer array, got " +
                           py::str(a.dtype()).cast<std::string>() + " with " +
                           std::to_string(a.ndim()) + " dims");
    }
    auto a64 = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(a);
    ids.assign(a64.data(), a64.data() + a64.size());
    std::vector<bool> seen(num_envs, false);
    for (int64_t e : ids) {
      if (e < 0 || e >= num_envs) {
        throw py::value_error("env_ids out of range [0, " + std::to_string(num_envs) + "): " +
                              std::to_string(e));
      }
      if (seen[e]) throw py::value_error("env_ids contains duplicates");
      seen[e] = true;
    }
    return ids;
  }

  // Validates a rows dict: every allowed field present (obs_only: observation fields only),
  // exact dtype, shape (n, *shape), finite rewards, goal_active in [0, k]. Returns one data
  // pointer per field (nullptr for fields not given).
  std::vector<const uint8_t*> CheckRows(py::object rows_obj, bool obs_only, int64_t n,
                                        const char* what, std::vector<py::array>* keep) const {
    if (!py::isinstance<py::dict>(rows_obj)) {
      throw py::type_error(std::string(what) + ": rows must be a dict of arrays, got " +
                           py::str(rows_obj.attr("__class__").attr("__name__")).cast<std::string>());
    }
    py::dict rows = py::reinterpret_borrow<py::dict>(rows_obj);
    std::vector<const uint8_t*> ptrs(names_.size(), nullptr);
    std::vector<py::handle> values(names_.size());
    // Fast path (the collector's every step): exactly the expected number of keys and each
    // expected key found by a hash lookup means there is no unknown key either — no per-key
    // string conversion (~1 µs of a ~4 µs call). Anything else takes the checking loop below.
    const size_t want = obs_only ? obs_fields_.size() : names_.size();
    bool found_all = static_cast<size_t>(PyDict_Size(rows.ptr())) == want;
    for (size_t f = 0; found_all && f < names_.size(); ++f) {
      if (obs_only && !is_obs_[f]) continue;
      PyObject* v = PyDict_GetItemWithError(rows.ptr(), key_objs_[f].ptr());
      if (v == nullptr) {
        if (PyErr_Occurred()) throw py::error_already_set();
        found_all = false;
      }
      values[f] = v;
    }
    if (!found_all) values.assign(names_.size(), py::handle());
    for (auto item : found_all ? py::dict() : rows) {
      if (!py::isinstance<py::str>(item.first)) {
        throw py::value_error(std::string(what) + ": unknown field " +
                              py::repr(item.first).cast<std::string>());
      }
      std::string key = item.first.cast<std::string>();
      auto it = index_.find(key);
      if (it == index_.end()) {
        throw py::value_error(std::string(what) + ": unknown field '" + key + "'");
      }
      if (obs_only && !is_obs_[it->second]) {
        throw py::value_error(std::string(what) + ": field '" + key + "' is not accepted here");
      }
      values[it->second] = item.second;
    }
    std::string missing;
    for (size_t f = 0; f < names_.size(); ++f) {
      if ((!obs_only || is_obs_[f]) && !values[f]) missing += " '" + names_[f] + "'";
    }
    if (!missing.empty()) throw py::value_error(std::string(what) + ": missing fields" + missing);
    for (size_t f = 0; f < names_.size(); ++f) {
      if (!values[f]) continue;
      ptrs[f] = handle_->CheckField(f, values[f], n, what, keep);
    }
    if (ptrs[reward_field_] != nullptr) {
      handle_->CheckRewards(reinterpret_cast<const float*>(ptrs[reward_field_]), n, what);
    }
    if (active_field_ >= 0) handle_->CheckGoalActive(ptrs[active_field_], n, what);
    return ptrs;
  }

  std::vector<std::string> names_;
  std::vector<int> obs_fields_;
  std::vector<bool> is_obs_;
  int reward_field_;
  int goal_field_ = -1, active_field_ = -1, k_ = 0;
  py::dtype goal_dtype_ = py::dtype::of<float>();
  std::vector<py::array> ring_;
  std::vector<py::dtype> dtypes_;
  std::vector<std::vector<ssize_t>> shapes_;
  std::vector<size_t> row_bytes_;
  std::unordered_map<std::string, int> index_;
  std::vector<py::object> key_objs_;  // the field names as Python str, for dict lookups
  std::unique_ptr<TrajectoryStore> store_;
  std::unique_ptr<StoreHandle> handle_;  // points into store_
};

inline StoreHandle& StoreHandleOf(py::handle store) {
  return store.cast<PyTrajectoryStore&>().handle();
}

inline void RegisterBuffer(py::module_& m) {
  py::class_<PyTrajectoryStore>(m, "TrajectoryStore")
      .def(py::init<const std::vector<std::string>&, py::list, int64_t, int, int64_t, uint64_t,
                    int, int, int, int, const std::vector<int>&, bool, py::object>(),
           py::arg("names"), py::arg("ring"), py::arg("capacity"), py::arg("num_envs"),
           py::arg("max_rows"), py::arg("seed"), py::arg("num_threads"),
           py::arg("reward_field"), py::arg("terminated_field"), py::arg("truncated_field"),
           py::arg("obs_fields"), py::arg("allow_nonfinite_rewards"), py::arg("goal_cfg"))
      .def("reset", &PyTrajectoryStore::Reset, py::arg("rows"), py::arg("env_ids"))
      .def("append", &PyTrajectoryStore::Append, py::arg("rows"), py::arg("env_ids"))
      .def("write_step", &PyTrajectoryStore::WriteStep, py::arg("rows"), py::arg("env_ids"),
           py::arg("starts"))
      .def("commit", &PyTrajectoryStore::Commit, py::arg("rows"), py::arg("offset"))
      .def("sample", &PyTrajectoryStore::Sample, py::arg("batch_size"), py::arg("length"),
           py::arg("mode"), py::arg("counter"), py::arg("relabel"), py::arg("match_cb"),
           py::arg("out"))
      .def("used_rows", &PyTrajectoryStore::UsedRows)
      .def("num_pieces", &PyTrajectoryStore::NumPieces)
      .def("num_threads", &PyTrajectoryStore::NumThreads)
      .def("open_lengths", &PyTrajectoryStore::OpenLengths)
      .def("pieces", &PyTrajectoryStore::Pieces)
      .def("get_state", &PyTrajectoryStore::GetState)
      .def("set_state", &PyTrajectoryStore::SetState);
}

}  // namespace amago

#endif  // AMAGO_FAST_BUFFER_PY_BUFFER_H_
