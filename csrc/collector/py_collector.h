// Adapter between Python (amago_fast.collector) and the pure C++ step bookkeeping
// (collector/absorb.h): checks every array (dtype, C-contiguity, rows, row bytes, env ids)
// before anything is written, allocates the fresh per-batch outputs, releases the GIL. The
// fused buffer write goes through the store's handle (buffer/py_store_handle.h), not the
// buffer's adapter. RegisterCollector adds `absorb_step` and `AsyncAbsorber` to the module.
#ifndef AMAGO_FAST_COLLECTOR_PY_COLLECTOR_H_
#define AMAGO_FAST_COLLECTOR_PY_COLLECTOR_H_

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "buffer/py_store_handle.h"
#include "collector/absorb.h"

namespace amago {

namespace py = pybind11;

namespace collector_detail {

// rows < 0: any number of rows. A read-only input (writeable false) that is strided is copied
// to C order; a state array must already be C-contiguous (it is written in place).
inline py::array Checked(py::handle obj, const char* name, char kind, ssize_t itemsize,
                         ssize_t rows, bool writeable) {
  if (!py::isinstance<py::array>(obj)) {
    throw py::type_error(std::string("absorb_step: ") + name + " must be a NumPy array");
  }
  auto a = py::reinterpret_borrow<py::array>(obj);
  if (!writeable && !(a.flags() & py::array::c_style)) a = py::array::ensure(a, py::array::c_style);
  if (rows < 0 && a.ndim() >= 1) rows = a.shape(0);
  const bool ok_dtype = kind == 0 || (a.dtype().kind() == kind && a.itemsize() == itemsize);
  if (!ok_dtype || !(a.flags() & py::array::c_style) || a.ndim() < 1 || a.shape(0) != rows ||
      (writeable && !a.writeable())) {
    throw py::value_error(std::string("absorb_step: ") + name + " must be a C-contiguous" +
                          (writeable ? ", writeable" : "") + " array with " +
                          std::to_string(rows) + " rows" +
                          (kind ? std::string(" of kind '") + kind + "'" : std::string()) +
                          ", got " + py::str(a.dtype()).cast<std::string>() + " " +
                          py::str(a.attr("shape")).cast<std::string>());
  }
  return a;
}

inline ByteRows Rows(const py::array& a) {
  const size_t rows = static_cast<size_t>(a.shape(0));
  return {static_cast<uint8_t*>(const_cast<void*>(a.data())),
          rows ? static_cast<size_t>(a.nbytes()) / rows : 0};
}

// A fresh C-ordered array straight from NumPy's C API. pybind11's array constructor builds
// shape and stride vectors on the heap and computes the strides itself: ~1,000 of the ~2,000
// instructions a small output costs (callgrind, 32-row batch), and a step makes 3-9 of them.
inline py::array NewArray(const py::dtype& dt, int nd, const Py_intptr_t* dims) {
  auto& api = py::detail::npy_api::get();
  // PyArray_NewFromDescr steals the descriptor reference (on failure too).
  PyObject* a = api.PyArray_NewFromDescr_(api.PyArray_Type_, dt.inc_ref().ptr(), nd, dims,
                                          nullptr, nullptr, 0, nullptr);
  if (a == nullptr) throw py::error_already_set();
  return py::reinterpret_steal<py::array>(a);
}

inline py::array Like(const py::array& a, ssize_t rows) {
  constexpr int kMaxDims = 32;  // NumPy's own limit before 2.0
  const int nd = static_cast<int>(a.ndim());
  if (nd > kMaxDims) {
    std::vector<ssize_t> shape(a.shape(), a.shape() + nd);
    shape[0] = rows;
    return py::array(a.dtype(), shape);
  }
  Py_intptr_t dims[kMaxDims];
  for (int d = 0; d < nd; ++d) dims[d] = a.shape(d);
  dims[0] = rows;
  return NewArray(a.dtype(), nd, dims);
}

inline py::array Fresh(const py::dtype& dt, ssize_t rows) {
  const Py_intptr_t dims[1] = {rows};
  return NewArray(dt, 1, dims);
}

// Throws unless the m env ids are distinct and in [0, n_envs); seen: scratch, reused.
inline void CheckDistinctIds(const int64_t* id, ssize_t m, ssize_t n_envs,
                             std::vector<uint8_t>* seen) {
  seen->assign(static_cast<size_t>(n_envs), 0);
  for (ssize_t i = 0; i < m; ++i) {
    if (id[i] < 0 || id[i] >= n_envs || (*seen)[id[i]]) {
      throw py::value_error("absorb_step: env_ids must be distinct ids in [0, " +
                            std::to_string(n_envs) + "), got " + std::to_string(id[i]));
    }
    (*seen)[id[i]] = 1;
  }
}

// BatchFinite, with the GIL released only for a large batch: releasing and re-taking it costs
// more than the ~50 ns scan of a 32-env CartPole batch.
inline bool ScreenFinite(const RolloutState& st, const StepBatch& b) {
  size_t obs_bytes = 0;
  for (const auto& o : b.obs) obs_bytes += o.row_bytes * static_cast<size_t>(b.m);
  if (obs_bytes < (size_t{64} << 10)) return BatchFinite(st, b);
  py::gil_scoped_release release;
  return BatchFinite(st, b);
}

inline py::array IndexArray(const std::vector<int64_t>& v) {
  py::array a = Fresh(py::dtype::of<int64_t>(), static_cast<ssize_t>(v.size()));
  if (!v.empty()) std::memcpy(a.mutable_data(), v.data(), v.size() * sizeof(int64_t));
  return a;
}

}  // namespace collector_detail

// Where a buffer field's rows come from in a fused write (store_plan entries): an index >= 0
// into obs_batch, or one of these.
constexpr int kFromAction = -1;
constexpr int kFromReward = -2;  // the stored reward (reset rows' placeholder zeroed)
constexpr int kFromTerminated = -3;
constexpr int kFromTruncated = -4;

// Returns None (and changes nothing) when check_finite is set and a float32 observation or a
// non-reset row's reward is NaN/inf; else (reward, prev_reward, time_index, ep_return, done,
// prev_action, starts, start_rows, done_rows), and for an async batch (ids not None) the state
// arrays now hold the batch's rows.
//
// store (a TrajectoryStore, or None): the step's rows are also written to it, as
// write_step(rows, ids, starts) would with rows = the observations, `actions`, the returned
// reward, terminated, truncated (store_plan: the source of each store field, schema order).
// Every field is checked as write_step checks it; if the write fails (bad field, an appended env
// with no open trajectory) nothing changes — neither the store nor the state. One call instead
// of absorb_step + write_step saves the rows dict, a crossing and write_step's dict/env-id
// checks: ~3 µs of main-thread CPU per 32-env async CartPole step.
inline py::object AbsorbStepPy(py::object pending, py::object time_index, py::object ep_return,
                               py::object prev_reward, py::object prev_action,
                               py::list obs_state, py::object ids, py::object reward,
                               py::object terminated, py::object truncated, py::object actions,
                               py::list obs_batch, const std::vector<int>& float_obs,
                               bool check_finite, py::object store_obj,
                               const std::vector<int>& store_plan) {
  using collector_detail::Checked;
  using collector_detail::Rows;
  const bool async = !ids.is_none();
  py::array a_pending = Checked(pending, "pending_reset", 'b', 1, -1, async);
  const ssize_t n_envs = a_pending.shape(0);
  py::array a_time = Checked(time_index, "time_index", 'i', 8, n_envs, async);
  py::array a_ret = Checked(ep_return, "ep_return", 'f', 8, n_envs, async);
  py::array a_prev_r = Checked(prev_reward, "prev_reward", 'f', 4, n_envs, async);
  py::array a_prev_a = Checked(prev_action, "prev_action", 0, 0, n_envs, async);
  py::array a_ids;
  ssize_t m = n_envs;
  if (async) {
    a_ids = Checked(ids, "env_ids", 'i', 8, -1, false);
    m = a_ids.shape(0);
    std::vector<uint8_t> seen;
    collector_detail::CheckDistinctIds(static_cast<const int64_t*>(a_ids.data()), m, n_envs,
                                       &seen);
  }
  py::array a_reward = Checked(reward, "reward", 'f', 4, m, false);
  py::array a_term = Checked(terminated, "terminated", 'b', 1, m, false);
  py::array a_trunc = Checked(truncated, "truncated", 'b', 1, m, false);
  py::array a_act = Checked(actions, "actions", 0, 0, m, false);
  if (!a_act.dtype().equal(a_prev_a.dtype()) || Rows(a_act).row_bytes != Rows(a_prev_a).row_bytes) {
    throw py::value_error("absorb_step: actions and prev_action differ in dtype or row shape");
  }
  // Written only for an async batch, whose state arrays were checked writeable.
  auto mut = [](const py::array& a) { return const_cast<void*>(a.data()); };
  RolloutState st{static_cast<uint8_t*>(mut(a_pending)), static_cast<int64_t*>(mut(a_time)),
                  static_cast<double*>(mut(a_ret)), static_cast<float*>(mut(a_prev_r)),
                  Rows(a_prev_a),
                  {}};
  StepBatch b{m,
              async ? static_cast<const int64_t*>(a_ids.data()) : nullptr,
              static_cast<const float*>(a_reward.data()),
              static_cast<const uint8_t*>(a_term.data()),
              static_cast<const uint8_t*>(a_trunc.data()),
              Rows(a_act),
              {},
              float_obs};
  std::vector<py::array> keep;
  const size_t n_fields = py::len(obs_batch);
  if (async && py::len(obs_state) != n_fields) {
    throw py::value_error("absorb_step: obs_state and obs_batch differ in length");
  }
  for (size_t f = 0; f < n_fields; ++f) {
    py::array ob = Checked(obs_batch[f], "observation", 0, 0, m, false);
    keep.push_back(ob);
    b.obs.push_back(Rows(ob));
    if (async) {
      py::array os = Checked(obs_state[f], "observation state", 0, 0, n_envs, true);
      if (!os.dtype().equal(ob.dtype()) || Rows(os).row_bytes != Rows(ob).row_bytes) {
        throw py::value_error("absorb_step: observation " + std::to_string(f) +
                              " differs from its state array in dtype or row shape");
      }
      keep.push_back(os);
      st.obs.push_back(Rows(os));
    }
  }
  for (int f : float_obs) {
    if (f < 0 || static_cast<size_t>(f) >= n_fields ||
        !keep[async ? 2 * f : f].dtype().equal(py::dtype::of<float>())) {
      throw py::value_error("absorb_step: float_obs must name float32 observations");
    }
  }
  if (check_finite && !collector_detail::ScreenFinite(st, b)) return py::none();
  using collector_detail::Fresh;
  py::array o_reward = Fresh(py::dtype::of<float>(), m);
  py::array o_ret = Fresh(py::dtype::of<double>(), m);
  py::array o_done = Fresh(py::dtype::of<bool>(), m);
  py::array o_starts = Fresh(py::dtype::of<bool>(), m);
  py::array o_prev_r = Fresh(py::dtype::of<float>(), m);
  py::array o_time = Fresh(py::dtype::of<int64_t>(), m);
  py::array o_prev_a = collector_detail::Like(a_act, m);
  StepOutputs out{static_cast<float*>(mut(o_reward)), static_cast<float*>(mut(o_prev_r)),
                  static_cast<int64_t*>(mut(o_time)), static_cast<double*>(mut(o_ret)),
                  static_cast<uint8_t*>(mut(o_done)), Rows(o_prev_a),
                  static_cast<uint8_t*>(mut(o_starts)), {}, {}};
  StoreHandle* store = nullptr;
  std::vector<const uint8_t*> wptrs;
  std::vector<int64_t> all_ids;
  if (!store_obj.is_none()) {
    store = &StoreHandleOf(store_obj);
    if (store_plan.size() != store->num_fields()) {
      throw py::value_error("absorb_step: store_plan needs one entry per buffer field");
    }
    const char* what = "write_step";
    for (size_t f = 0; f < store_plan.size(); ++f) {
      const int src = store_plan[f];
      py::handle arr;
      if (src >= 0 && static_cast<size_t>(src) < n_fields) {
        arr = keep[async ? 2 * src : src];
      } else if (src == kFromAction) {
        arr = a_act;
      } else if (src == kFromReward) {
        // The stored reward is computed below (out.reward, m float32 values): the store's
        // field must be exactly that.
        if (!store->IsScalarField(f, py::dtype::of<float>())) {
          throw py::type_error("write_step: field 'reward' must be float32 with shape ()");
        }
        wptrs.push_back(nullptr);
        continue;
      } else if (src == kFromTerminated) {
        arr = a_term;
      } else if (src == kFromTruncated) {
        arr = a_trunc;
      } else {
        throw py::value_error("absorb_step: bad store_plan entry " + std::to_string(src));
      }
      wptrs.push_back(store->CheckField(f, arr, m, what, &keep));
    }
    const int active = store->active_field();
    store->CheckGoalActive(active >= 0 ? wptrs[active] : nullptr, m, what);
    if (!async) {
      all_ids.resize(static_cast<size_t>(m));
      for (ssize_t i = 0; i < m; ++i) all_ids[i] = i;
    }
  }
  {
    py::gil_scoped_release release;
    AbsorbCompute(st, b, &out);
    if (store != nullptr) {
      for (size_t f = 0; f < store_plan.size(); ++f) {
        if (store_plan[f] == kFromReward) wptrs[f] = reinterpret_cast<const uint8_t*>(out.reward);
      }
      store->CheckRewards(out.reward, m, "write_step");
      store->WriteChecked(async ? b.ids : all_ids.data(), m, out.starts, wptrs);
    }
    AbsorbCommit(&st, b, out);
  }
  return py::make_tuple(o_reward, o_prev_r, o_time, o_ret, o_done, o_prev_a, o_starts,
                        collector_detail::IndexArray(out.start_rows),
                        collector_detail::IndexArray(out.done_rows));
}

// The async collector's step with the per-env state arrays and the buffer bound once: the
// collector builds one per set of state arrays (again after start / load_state_dict, which
// replace them) and per step passes only the batch. Everything absorb_step checks about the
// state, and that the store accepts the state's row layout, is checked here once; per step the
// batch arrays are checked against the state (dtype, row bytes, rows, C order) and the env ids
// for range and duplicates. absorb_step's 17 arguments, state checks and store-field checks cost
// ~3 µs of a ~6 µs call on a 32-env CartPole batch (this machine, loaded).
class PyAsyncAbsorber {
 public:
  PyAsyncAbsorber(py::object pending, py::object time_index, py::object ep_return,
                  py::object prev_reward, py::object prev_action, py::object sent_action,
                  py::list obs_state, const std::vector<int>& float_obs, py::object store_obj,
                  const std::vector<int>& store_plan, py::list row_keys)
      : float_obs_(float_obs), store_plan_(store_plan) {
    using collector_detail::Checked;
    if (py::len(row_keys) != py::len(obs_state) + 3) {
      throw py::value_error("absorb_step: row_keys needs one key per observation field, then "
                            "the previous action, previous reward and time index keys");
    }
    for (py::handle k : row_keys) {
      if (!py::isinstance<py::str>(k)) throw py::type_error("absorb_step: row keys must be str");
      row_keys_.push_back(py::reinterpret_borrow<py::str>(k));
    }
    pending_ = Checked(pending, "pending_reset", 'b', 1, -1, true);
    n_envs_ = pending_.shape(0);
    time_ = Checked(time_index, "time_index", 'i', 8, n_envs_, true);
    ret_ = Checked(ep_return, "ep_return", 'f', 8, n_envs_, true);
    prev_r_ = Checked(prev_reward, "prev_reward", 'f', 4, n_envs_, true);
    prev_a_ = Checked(prev_action, "prev_action", 0, 0, n_envs_, true);
    sent_a_ = Checked(sent_action, "sent_action", 0, 0, n_envs_, true);
    if (!sent_a_.dtype().equal(prev_a_.dtype()) ||
        collector_detail::Rows(sent_a_).row_bytes != collector_detail::Rows(prev_a_).row_bytes) {
      throw py::value_error("absorb_step: sent_action and prev_action differ in dtype or shape");
    }
    for (size_t f = 0; f < py::len(obs_state); ++f) {
      obs_state_.push_back(Checked(obs_state[f], "observation state", 0, 0, n_envs_, true));
    }
    for (int f : float_obs_) {
      if (f < 0 || static_cast<size_t>(f) >= obs_state_.size() ||
          !obs_state_[f].dtype().equal(py::dtype::of<float>())) {
        throw py::value_error("absorb_step: float_obs must name float32 observations");
      }
    }
    for (const auto* a : {&pending_, &time_, &ret_, &prev_r_}) {
      if (collector_detail::Rows(*a).row_bytes != static_cast<size_t>(a->itemsize())) {
        throw py::value_error("absorb_step: per-env state arrays must be 1-d");
      }
    }
    if (store_obj.is_none()) return;
    store_ = &StoreHandleOf(store_obj);
    store_obj_ = store_obj;
    if (store_plan_.size() != store_->num_fields()) {
      throw py::value_error("absorb_step: store_plan needs one entry per buffer field");
    }
    // Each store field against the state array its rows come from (same dtype and per-row
    // shape as the batch rows, which are checked against the state every step).
    std::vector<py::array> keep;
    for (size_t f = 0; f < store_plan_.size(); ++f) {
      const int src = store_plan_[f];
      if (src >= 0 && static_cast<size_t>(src) < obs_state_.size()) {
        store_->CheckField(f, obs_state_[src], n_envs_, "write_step", &keep);
      } else if (src == kFromAction) {
        store_->CheckField(f, prev_a_, n_envs_, "write_step", &keep);
      } else if (src == kFromReward) {
        if (!store_->IsScalarField(f, py::dtype::of<float>())) {
          throw py::type_error("write_step: field 'reward' must be float32 with shape ()");
        }
      } else if (src == kFromTerminated || src == kFromTruncated) {
        if (!store_->IsScalarField(f, py::dtype::of<bool>())) {
          throw py::type_error("write_step: done flags must be bool with shape ()");
        }
      } else {
        throw py::value_error("absorb_step: bad store_plan entry " + std::to_string(src));
      }
    }
    const int active = store_->active_field();
    if (active >= 0) {
      if (store_plan_[active] < 0) {
        throw py::value_error("absorb_step: the goal_active field must be an observation");
      }
      active_obs_ = store_plan_[active];
    }
  }

  // One async batch, as absorb_step(..., store, store_plan) — or None (nothing changed) when
  // check_finite is set and a value is NaN/inf — but returning only what the collector keeps
  // of an async step: (rows, rows appended, env ids of the rows that open a rollout or None,
  // positions of the rows that end one or None, their returns or None, the sum of their
  // lengths). `rows` is the policy's next input, a fresh dict {row_keys: the batch's
  // observations, then fresh prev_action / prev_reward / time_index arrays}; the finished
  // rollouts' positions and returns are lists (the collector only extends its episode log with
  // them), their lengths only a sum (the log keeps the mean). The outputs it does not keep
  // (stored reward, ep_return, done, starts) stay in scratch vectors instead of NumPy arrays
  // (~0.5 µs each to create on this machine).
  // obs: the batch's observations, a dict holding (at least) the observation row keys.
  // sent_ids / sent_actions: the envs that just acted and their actions. They are written
  // into sent_action (the last action sent to each env) and each row's transition carries
  // its env's entry: the returned batch need not be the envs that just acted. (The NumPy
  // scatter + gather cost ~1 µs a step.) None returned or an error: sent_action is not
  // updated either.
  py::object Step(py::object ids, py::object reward, py::object terminated, py::object truncated,
                  py::object sent_ids, py::object sent_actions, py::dict obs,
                  bool check_finite) {
    using collector_detail::Checked;
    using collector_detail::Rows;
    py::array a_ids = Checked(ids, "env_ids", 'i', 8, -1, false);
    const ssize_t m = a_ids.shape(0);
    const auto* id = static_cast<const int64_t*>(a_ids.data());
    collector_detail::CheckDistinctIds(id, m, n_envs_, &seen_);
    py::array a_reward = Checked(reward, "reward", 'f', 4, m, false);
    py::array a_term = Checked(terminated, "terminated", 'b', 1, m, false);
    py::array a_trunc = Checked(truncated, "truncated", 'b', 1, m, false);
    if (m > 0 && (Rows(a_reward).row_bytes != 4 || Rows(a_term).row_bytes != 1 ||
                  Rows(a_trunc).row_bytes != 1)) {
      throw py::value_error("absorb_step: reward and done flags must have one value per row");
    }
    py::array a_sent_ids = Checked(sent_ids, "sent env_ids", 'i', 8, -1, false);
    const ssize_t k = a_sent_ids.shape(0);
    const auto* sid = static_cast<const int64_t*>(a_sent_ids.data());
    for (ssize_t i = 0; i < k; ++i) {
      if (sid[i] < 0 || sid[i] >= n_envs_) {
        throw py::value_error("absorb_step: sent env_ids must be in [0, " +
                              std::to_string(n_envs_) + "), got " + std::to_string(sid[i]));
      }
    }
    py::array a_act = Checked(sent_actions, "actions", 0, 0, k, false);
    const size_t ab = Rows(prev_a_).row_bytes;
    if (!a_act.dtype().equal(prev_a_.dtype()) || (k > 0 && Rows(a_act).row_bytes != ab)) {
      throw py::value_error("absorb_step: actions and prev_action differ in dtype or row shape");
    }
    const size_t n_fields = obs_state_.size();
    auto mut = [](const py::array& a) { return const_cast<void*>(a.data()); };
    RolloutState st{static_cast<uint8_t*>(mut(pending_)), static_cast<int64_t*>(mut(time_)),
                    static_cast<double*>(mut(ret_)), static_cast<float*>(mut(prev_r_)),
                    Rows(prev_a_),
                    {}};
    acts_.resize(static_cast<size_t>(m) * ab);
    StepBatch b{m,
                id,
                static_cast<const float*>(a_reward.data()),
                static_cast<const uint8_t*>(a_term.data()),
                static_cast<const uint8_t*>(a_trunc.data()),
                ByteRows{acts_.data(), ab},
                {},
                float_obs_};
    std::vector<py::array> keep;
    keep.reserve(n_fields);
    for (size_t f = 0; f < n_fields; ++f) {
      PyObject* item = PyDict_GetItemWithError(obs.ptr(), row_keys_[f].ptr());  // borrowed
      if (item == nullptr) {
        if (PyErr_Occurred()) throw py::error_already_set();
        throw py::key_error("absorb_step: the observations have no key '" +
                            row_keys_[f].cast<std::string>() + "'");
      }
      py::array ob = Checked(item, "observation", 0, 0, m, false);
      if (!ob.dtype().equal(obs_state_[f].dtype()) ||
          (m > 0 && Rows(ob).row_bytes != Rows(obs_state_[f]).row_bytes)) {
        throw py::value_error("absorb_step: observation " + std::to_string(f) +
                              " differs from its state array in dtype or row shape");
      }
      b.obs.push_back(Rows(ob));
      st.obs.push_back(Rows(obs_state_[f]));
      keep.push_back(std::move(ob));
    }
    if (store_ != nullptr && active_obs_ >= 0) {
      store_->CheckGoalActive(b.obs[active_obs_].data, m, "write_step");
    }
    if (check_finite && !collector_detail::ScreenFinite(st, b)) return py::none();
    // Each row's action: the env's entry of sent_action as it will be once the sent actions
    // are recorded (the last one sent to it wins), gathered without changing sent_action yet
    // — that happens with the state update, after the store write succeeded.
    auto* sent = static_cast<uint8_t*>(mut(sent_a_));
    const auto* sa = static_cast<const uint8_t*>(a_act.data());
    slot_.assign(static_cast<size_t>(n_envs_), -1);
    for (ssize_t j = 0; j < k; ++j) slot_[sid[j]] = j;
    for (ssize_t i = 0; i < m; ++i) {
      const int64_t j = slot_[id[i]];
      CopyRow(acts_.data() + i * ab, j >= 0 ? sa + j * ab : sent + id[i] * ab, ab);
    }
    reward_.resize(static_cast<size_t>(m));
    ret_out_.resize(static_cast<size_t>(m));
    done_.resize(static_cast<size_t>(m));
    starts_.resize(static_cast<size_t>(m));
    py::array o_prev_r = collector_detail::Fresh(py::dtype::of<float>(), m);
    py::array o_time = collector_detail::Fresh(py::dtype::of<int64_t>(), m);
    py::array o_prev_a = collector_detail::Like(prev_a_, m);
    StepOutputs out{reward_.data(), static_cast<float*>(mut(o_prev_r)),
                    static_cast<int64_t*>(mut(o_time)), ret_out_.data(), done_.data(),
                    Rows(o_prev_a), starts_.data(), {}, {}};
    if (store_ != nullptr && ptrs_.size() != store_plan_.size()) ptrs_.resize(store_plan_.size());
    for (size_t f = 0; store_ != nullptr && f < store_plan_.size(); ++f) {
      const int src = store_plan_[f];
      ptrs_[f] = src >= 0                 ? b.obs[src].data
                 : src == kFromAction     ? b.actions.data
                 : src == kFromReward     ? reinterpret_cast<const uint8_t*>(reward_.data())
                 : src == kFromTerminated ? b.terminated
                                          : b.truncated;
    }
    {
      py::gil_scoped_release release;  // the store write may wait for a sampler's lock
      AbsorbCompute(st, b, &out);
      if (store_ != nullptr) {
        store_->CheckRewards(out.reward, m, "write_step");
        store_->WriteChecked(id, m, out.starts, ptrs_);
      }
      AbsorbCommit(&st, b, out);
      for (ssize_t j = 0; j < k; ++j) CopyRow(sent + sid[j] * ab, sa + j * ab, ab);
    }
    const int64_t stored = static_cast<int64_t>(m) - static_cast<int64_t>(out.start_rows.size());
    py::object start_ids = py::none(), done_rows = py::none(), done_ret = py::none();
    int64_t done_len = 0;
    if (!out.start_rows.empty()) {
      std::vector<int64_t> v;
      for (int64_t i : out.start_rows) v.push_back(id[i]);
      start_ids = collector_detail::IndexArray(v);
    }
    if (!out.done_rows.empty()) {
      const auto nd = static_cast<ssize_t>(out.done_rows.size());
      py::list rows(nd), rets(nd);
      for (ssize_t j = 0; j < nd; ++j) {
        const int64_t i = out.done_rows[j];
        rows[j] = py::int_(i);
        rets[j] = py::float_(out.ep_return[i]);
        done_len += out.time_index[i];
      }
      done_rows = std::move(rows);
      done_ret = std::move(rets);
    }
    py::dict rows;
    for (size_t f = 0; f < n_fields; ++f) rows[row_keys_[f]] = keep[f];
    rows[row_keys_[n_fields]] = o_prev_a;
    rows[row_keys_[n_fields + 1]] = o_prev_r;
    rows[row_keys_[n_fields + 2]] = o_time;
    return py::make_tuple(std::move(rows), stored, start_ids, done_rows, done_ret, done_len);
  }

 private:
  py::array pending_, time_, ret_, prev_r_, prev_a_, sent_a_;
  std::vector<py::array> obs_state_;
  ssize_t n_envs_ = 0;
  std::vector<int> float_obs_;
  std::vector<int> store_plan_;
  std::vector<py::str> row_keys_;  // observation keys, then prev action / reward / time index
  py::object store_obj_;  // keeps store_ alive
  StoreHandle* store_ = nullptr;
  int active_obs_ = -1;
  // Per-step scratch, reused.
  std::vector<uint8_t> seen_, done_, starts_, acts_;
  std::vector<int64_t> slot_;
  std::vector<float> reward_;
  std::vector<double> ret_out_;
  std::vector<const uint8_t*> ptrs_;
};

inline void RegisterCollector(py::module_& m) {
  m.def("absorb_step", &AbsorbStepPy, py::arg("pending_reset"), py::arg("time_index"),
        py::arg("ep_return"), py::arg("prev_reward"), py::arg("prev_action"),
        py::arg("obs_state"), py::arg("env_ids"), py::arg("reward"), py::arg("terminated"),
        py::arg("truncated"), py::arg("actions"), py::arg("obs_batch"), py::arg("float_obs"),
        py::arg("check_finite"), py::arg("store") = py::none(),
        py::arg("store_plan") = std::vector<int>(),
        "One collector step's rollout bookkeeping (amago_fast.collector; private).");
  py::class_<PyAsyncAbsorber>(m, "AsyncAbsorber")
      .def(py::init<py::object, py::object, py::object, py::object, py::object, py::object,
                    py::list, const std::vector<int>&, py::object, const std::vector<int>&,
                    py::list>(),
           py::arg("pending_reset"), py::arg("time_index"), py::arg("ep_return"),
           py::arg("prev_reward"), py::arg("prev_action"), py::arg("sent_action"),
           py::arg("obs_state"), py::arg("float_obs"), py::arg("store"), py::arg("store_plan"),
           py::arg("row_keys"))
      .def("step", &PyAsyncAbsorber::Step, py::arg("env_ids"), py::arg("reward"),
           py::arg("terminated"), py::arg("truncated"), py::arg("sent_ids"),
           py::arg("sent_actions"), py::arg("obs"), py::arg("check_finite"),
           "absorb_step for an async batch, the state and store bound once (private).");
}

}  // namespace amago

#endif  // AMAGO_FAST_COLLECTOR_PY_COLLECTOR_H_
