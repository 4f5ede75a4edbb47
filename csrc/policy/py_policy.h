// Adapter between Python (amago_fast.nets.native_step) and the pure C++ policy engine: builds
// the Model from a dict of NumPy arrays (checked: dtype float32, C-contiguous, shapes chained; the
// arrays are kept alive and read in place), and checks every input of a step before anything
// is written — so a rejected call raises a TypeError/ValueError naming the input and leaves the
// caches and counts unchanged — then releases the GIL for the step.
#ifndef AMAGO_FAST_POLICY_PY_POLICY_H_
#define AMAGO_FAST_POLICY_PY_POLICY_H_

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "policy/engine.h"
#include "policy/sample.h"

namespace amago {

namespace py = pybind11;

class PyPolicyEngine {
 public:
  PyPolicyEngine(py::dict cfg, bool use_simd, int threads, int64_t parallel_min) {
    if (threads < 1 || threads > policy::Team::kMaxThreads) {
      throw py::value_error("policy engine: threads must be in [1, " +
                            std::to_string(policy::Team::kMaxThreads) + "], got " +
                            std::to_string(threads));
    }
    policy::Model m;
    m.norm_widths = cfg["norm_widths"].cast<std::vector<int64_t>>();
    m.raw_widths = cfg["raw_widths"].cast<std::vector<int64_t>>();
    for (int64_t w : m.norm_widths) m.norm_dim += w;
    int64_t raw_dim = 0;
    for (int64_t w : m.raw_widths) raw_dim += w;
    if (!cfg["norm_mean"].is_none()) {
      m.norm_mean = Vec(cfg["norm_mean"], m.norm_dim, "norm_mean");
      m.norm_std = Vec(cfg["norm_std"], m.norm_dim, "norm_std");
    }
    m.clip = !cfg["clip"].is_none();
    if (m.clip) m.clip_value = cfg["clip"].cast<float>();
    const std::string kind = cfg["action_kind"].cast<std::string>();
    if (kind != "discrete" && kind != "multidiscrete" && kind != "continuous") {
      throw py::value_error(
          "policy engine: action_kind must be 'discrete', 'multidiscrete' or 'continuous'");
    }
    m.discrete = kind != "continuous";
    m.action_dim = cfg["action_dim"].cast<int64_t>();
    if (kind == "discrete") m.nvec = {m.action_dim};
    if (kind == "multidiscrete") {
      if (!cfg.contains("action_nvec") || cfg["action_nvec"].is_none()) {
        throw py::value_error("policy engine: multidiscrete actions need action_nvec");
      }
      m.nvec = cfg["action_nvec"].cast<std::vector<int64_t>>();
      int64_t total = 0;
      for (int64_t n : m.nvec) {
        if (n < 1) throw py::value_error("policy engine: action_nvec entries must be >= 1");
        total += n;
      }
      if (m.nvec.empty() || total != m.action_dim) {
        throw py::value_error("policy engine: action_nvec must be non-empty and sum to action_dim");
      }
    }
    if (!m.discrete) {
      m.act_low = Vec(cfg["act_low"], m.action_dim, "act_low");
      m.act_range = Vec(cfg["act_range"], m.action_dim, "act_range");
    }
    if (cfg.contains("images") && !cfg["images"].is_none()) {
      for (py::handle item : cfg["images"].cast<py::list>()) m.images.push_back(ImageNetOf(item));
    }
    for (const policy::ImageNet& net : m.images) m.image_dim += net.out.out;
    m.in_dim = m.norm_dim + raw_dim + m.image_dim + m.action_dim + 2;
    int64_t w = m.in_dim;
    m.tstep = Ops(cfg["tstep"], &w, "tstep");
    const std::string traj = cfg["traj"].cast<std::string>();
    if (traj != "transformer" && traj != "gru" && traj != "ff") {
      throw py::value_error("policy engine: traj must be 'transformer', 'gru' or 'ff'");
    }
    m.traj = traj == "transformer" ? policy::TrajKind::kTransformer
             : traj == "gru"       ? policy::TrajKind::kGru
                                   : policy::TrajKind::kFF;
    if (m.traj == policy::TrajKind::kGru) {
      m.d_model = cfg["d_model"].cast<int64_t>();
      const int64_t d = m.d_model;
      if (d < 1) throw py::value_error("policy engine: d_model must be >= 1");
      m.in_proj = Lin(cfg["wt_in"], cfg["b_in"], w, d, "in_proj");
      for (py::handle item : cfg["gru_layers"].cast<py::list>()) {
        py::dict ld = py::reinterpret_borrow<py::dict>(item);
        policy::GruLayer G;
        G.ih = Lin(ld["wt_ih"], ld["b_ih"], d, 3 * d, "gru weight_ih");
        G.hh = Lin(ld["wt_hh"], ld["b_hh"], d, 3 * d, "gru weight_hh");
        m.gru_layers.push_back(G);
      }
      if (m.gru_layers.empty()) throw py::value_error("policy engine: gru_layers is empty");
      m.norm_out = NormOf(cfg["norm_out"], d, "norm_out", false);
      w = d;
    } else if (m.traj == policy::TrajKind::kFF) {
      m.ff = Ops(cfg["ff"], &w, "ff");
      m.d_model = w;
    } else {
      m.d_model = cfg["d_model"].cast<int64_t>();
      const int64_t d = m.d_model;
      m.in_proj = Lin(cfg["wt_in"], py::none(), w, d, "in_proj");
      m.b_in = Vec(cfg["b_in"], d, "b_in");
      const std::string pos = cfg["pos"].cast<std::string>();
      m.learned_pos = pos == "learned";
      if (m.learned_pos) {
        py::array t = Arr(cfg["pos_table"], "pos_table");
        if (t.ndim() != 2 || t.shape(1) != d || t.shape(0) < 1) {
          throw py::value_error("policy engine: pos_table must be (rows, d_model)");
        }
        m.pos_table = static_cast<const float*>(t.data());
        m.pos_rows = t.shape(0);
      } else {
        const float* f = Vec(cfg["freqs"], d / 2, "freqs");
        m.freqs.assign(f, f + d / 2);
      }
      for (py::handle item : cfg["layers"].cast<py::list>()) {
        py::dict ld = py::reinterpret_borrow<py::dict>(item);
        policy::Layer L;
        L.heads = ld["heads"].cast<int64_t>();
        L.head_dim = ld["head_dim"].cast<int64_t>();
        if (L.heads < 1 || L.head_dim < 1 || L.heads * L.head_dim != d) {
          throw py::value_error("policy engine: heads * head_dim must equal d_model");
        }
        L.attn_in = NormOf(ld["norm_attn_in"], d, "norm_attn_in", false);
        L.qkv = Lin(ld["wt_qkv"], ld["b_qkv"], d, 3 * d, "qkv");
        L.proj = Lin(ld["wt_proj"], ld["b_proj"], d, d, "attn_proj");
        L.attn_out = NormOf(ld["norm_attn_out"], d, "norm_attn_out", true);
        L.ff_in = NormOf(ld["norm_ff_in"], d, "norm_ff_in", false);
        py::array w1 = Arr(ld["wt_ff1"], "ff1");
        const int64_t f = w1.ndim() == 2 ? w1.shape(1) : -1;
        L.ff1 = Lin(ld["wt_ff1"], ld["b_ff1"], d, f, "ff1");
        L.ff_mid = NormOf(ld["norm_ff_mid"], f, "norm_ff_mid", true);
        L.ff2 = Lin(ld["wt_ff2"], ld["b_ff2"], f, d, "ff2");
        L.slope = ld["slope"].cast<float>();
        m.layers.push_back(L);
      }
      m.norm_out = NormOf(cfg["norm_out"], d, "norm_out", false);
      w = d;
    }
    m.actor = Ops(cfg["actor"], &w, "actor");
    m.param_dim = w;
    engine_ = std::make_unique<policy::PolicyEngine>(std::move(m), use_simd, threads,
                                                     parallel_min);
  }

  int64_t ParamDim() const { return engine_->model().param_dim; }
  int64_t NumLayers() const { return static_cast<int64_t>(engine_->model().layers.size()); }
  bool Avx2() const { return engine_->avx2(); }
  int Threads() const { return engine_->threads(); }
  int64_t SplitRuns() const { return engine_->split_runs(); }

  // fields: one array per normalised key then per raw key (leading dim b); action (b, ...);
  // reward (b,); time_index (b,) int64; kv / counts: one (2, N, H, C, D) float32 (or float16
  // or int8, the same for every layer) and one (N,) int64 array per layer (the ring caches,
  // written in place); kv_scales: with int8 caches one (2, N, H, C) float32 array of row
  // scales per layer (written in place), else None; env_ids: None or (b,) int64, distinct, in
  // [0, N); out: (b, P) float32, written; hidden: GRU encoders only (else None), the
  // (layers, N, d_model) float32 hidden state, rows of the stepped envs written in place (N
  // then comes from it; kv and counts are empty); images: one (b, H, W, C) uint8 array per
  // native image CNN of the model, or instead that CNN's (b, F) float32 output computed by the
  // caller (large batches of large images: PyTorch's convolutions are faster there); None when
  // the model has no image CNN.
  void Step(py::list fields, py::object action, py::object reward, py::object time_index,
            py::list kv, py::list counts, py::object env_ids, py::object out,
            py::object kv_scales, py::object hidden, py::object images) {
    const policy::Model& m = engine_->model();
    policy::StepIO io;
    py::array ti = Arr(time_index, "time_index", py::dtype::of<int64_t>());
    if (ti.ndim() != 1) throw py::value_error("policy step: time_index must be 1-D (b,)");
    io.b = ti.shape(0);
    io.time_index = static_cast<const int64_t*>(ti.data());
    for (int64_t r = 0; r < io.b; ++r) {
      if (io.time_index[r] < 0) throw py::value_error("policy step: time_index must be >= 0");
    }
    const size_t nf = m.norm_widths.size() + m.raw_widths.size();
    if (static_cast<size_t>(py::len(fields)) != nf) {
      throw py::value_error("policy step: expected " + std::to_string(nf) +
                            " observation arrays, got " + std::to_string(py::len(fields)));
    }
    for (size_t i = 0; i < nf; ++i) {
      const bool is_norm = i < m.norm_widths.size();
      const int64_t width = is_norm ? m.norm_widths[i] : m.raw_widths[i - m.norm_widths.size()];
      policy::Field f = FieldOf(fields[i], io.b, width, "observation " + std::to_string(i));
      (is_norm ? io.norm_fields : io.raw_fields).push_back(f);
    }
    const size_t ni = images.is_none() ? 0 : static_cast<size_t>(py::len(images));
    if (ni != m.images.size()) {
      throw py::value_error("policy step: expected " + std::to_string(m.images.size()) +
                            " image arrays, got " + std::to_string(ni));
    }
    for (size_t i = 0; i < ni; ++i) {
      const policy::ImageNet& net = m.images[i];
      const std::string name = "image " + std::to_string(i);
      py::handle obj = images.cast<py::list>()[i];
      const bool embedded = py::isinstance<py::array>(obj) &&
                            py::reinterpret_borrow<py::array>(obj).dtype().kind() == 'f';
      if (embedded) {  // the CNN's output, computed by the caller
        py::array a = Arr(obj, name + " embedding");
        if (a.ndim() != 2 || a.shape(0) != io.b || a.shape(1) != net.out.out) {
          throw py::value_error("policy step: " + name + " embedding must be (" +
                                std::to_string(io.b) + ", " + std::to_string(net.out.out) +
                                ") float32");
        }
        io.images.push_back(nullptr);
        io.image_embeddings.push_back(static_cast<const float*>(a.data()));
        continue;
      }
      py::array a = Arr(obj, name, py::dtype::of<uint8_t>());
      if (a.ndim() != 4 || a.shape(0) != io.b || a.shape(1) != net.h || a.shape(2) != net.w ||
          a.shape(3) != net.c) {
        throw py::value_error("policy step: " + name + " must be (" + std::to_string(io.b) +
                              ", " + std::to_string(net.h) + ", " + std::to_string(net.w) +
                              ", " + std::to_string(net.c) + ") uint8");
      }
      io.images.push_back(static_cast<const uint8_t*>(a.data()));
      io.image_embeddings.push_back(nullptr);
    }
    io.action = FieldOf(action, io.b,
                        m.discrete ? static_cast<int64_t>(m.nvec.size()) : m.action_dim, "action");
    io.reward = FieldOf(reward, io.b, 1, "reward");
    py::array o = Arr(out, "out");
    if (o.ndim() != 2 || o.shape(0) != io.b || o.shape(1) != m.param_dim || !o.writeable()) {
      throw py::value_error("policy step: out must be a writeable (b, " +
                            std::to_string(m.param_dim) + ") float32 array");
    }
    io.out = static_cast<float*>(o.mutable_data());
    py::array ids;
    if (m.traj == policy::TrajKind::kTransformer) {
      const size_t nl = m.layers.size();
      if (static_cast<size_t>(py::len(kv)) != nl || static_cast<size_t>(py::len(counts)) != nl) {
        throw py::value_error("policy step: one kv and one counts array per layer (" +
                              std::to_string(nl) + ")");
      }
      for (size_t l = 0; l < nl; ++l) {
        const policy::Layer& L = m.layers[l];
        const std::string name = "kv[" + std::to_string(l) + "]";
        if (l == 0) {
          // float32, float16 or int8 + scales (AgentConfig.kv_cache_dtype); the first layer's
          // dtype sets the type every layer must have.
          if (py::isinstance<py::array>(kv[0])) {
            const py::dtype dt = py::reinterpret_borrow<py::array>(kv[0]).dtype();
            if (dt.equal(py::dtype("float16"))) io.kv_type = policy::KVType::kF16;
            if (dt.equal(py::dtype("int8"))) io.kv_type = policy::KVType::kI8;
          }
          if ((io.kv_type == policy::KVType::kI8) == kv_scales.is_none()) {
            throw py::value_error(
                "policy step: kv_scales must be given for int8 caches and only for them");
          }
          if (!kv_scales.is_none() && static_cast<size_t>(py::len(kv_scales)) != nl) {
            throw py::value_error("policy step: one kv_scales array per layer (" +
                                  std::to_string(nl) + ")");
          }
        }
        const char* tname = io.kv_type == policy::KVType::kF16   ? "float16"
                            : io.kv_type == policy::KVType::kI8 ? "int8"
                                                                 : "float32";
        py::array a = Arr(kv[l], name, py::dtype(tname));
        if (a.ndim() != 5 || a.shape(0) != 2 || a.shape(2) != L.heads || a.shape(4) != L.head_dim ||
            a.shape(3) < 1 || !a.writeable()) {
          throw py::value_error("policy step: " + name + " must be a writeable (2, N, " +
                                std::to_string(L.heads) + ", C, " + std::to_string(L.head_dim) +
                                ") " + tname + " array");
        }
        if (l == 0) {
          io.num_envs = a.shape(1);
          io.capacity = a.shape(3);
        } else if (a.shape(1) != io.num_envs || a.shape(3) != io.capacity) {
          throw py::value_error("policy step: " + name + " has another (N, C) than kv[0]");
        }
        const std::string cname = "counts[" + std::to_string(l) + "]";
        py::array c = Arr(counts[l], cname, py::dtype::of<int64_t>());
        if (c.ndim() != 1 || c.shape(0) != io.num_envs || !c.writeable()) {
          throw py::value_error("policy step: " + cname + " must be a writeable (N,) int64 array");
        }
        io.kv.push_back(a.mutable_data());
        io.counts.push_back(static_cast<int64_t*>(c.mutable_data()));
        if (io.kv_type == policy::KVType::kI8) {
          const std::string sname = "kv_scales[" + std::to_string(l) + "]";
          py::array sc = Arr(kv_scales[py::int_(l)], sname);
          if (sc.ndim() != 4 || sc.shape(0) != 2 || sc.shape(1) != a.shape(1) ||
              sc.shape(2) != a.shape(2) || sc.shape(3) != a.shape(3) || !sc.writeable()) {
            throw py::value_error("policy step: " + sname + " must be a writeable (2, N, H, C) "
                                  "float32 array matching " + name);
          }
          io.kv_scales.push_back(static_cast<float*>(sc.mutable_data()));
        }
      }
      ids = EnvIds(env_ids, &io);
      for (size_t l = 1; l < nl; ++l) {
        for (int64_t r = 0; r < io.b; ++r) {
          const int64_t n = io.env_ids != nullptr ? io.env_ids[r] : r;
          if (io.counts[l][n] != io.counts[0][n]) {
            throw py::value_error("policy step: layer caches disagree on env " + std::to_string(n) +
                                  "'s step count");
          }
        }
      }
      // Distinct arrays per layer (aliased caches would be written twice per step).
      for (size_t l = 0; l < nl; ++l) {
        for (size_t k = l + 1; k < nl; ++k) {
          if (io.kv[l] == io.kv[k] || io.counts[l] == io.counts[k] ||
              (!io.kv_scales.empty() && io.kv_scales[l] == io.kv_scales[k])) {
            throw py::value_error("policy step: layers share a cache array");
          }
        }
      }
    }
    if (m.traj == policy::TrajKind::kGru) {
      const int64_t nl = static_cast<int64_t>(m.gru_layers.size());
      py::array hs = Arr(hidden, "hidden");
      if (hs.ndim() != 3 || hs.shape(0) != nl || hs.shape(2) != m.d_model || !hs.writeable()) {
        throw py::value_error("policy step: hidden must be a writeable (" + std::to_string(nl) +
                              ", N, " + std::to_string(m.d_model) + ") float32 array");
      }
      io.num_envs = hs.shape(1);
      io.hidden = static_cast<float*>(hs.mutable_data());
      ids = EnvIds(env_ids, &io);
    } else if (!hidden.is_none()) {
      throw py::value_error("policy step: hidden is only for a GRU encoder");
    }
    if (io.b == 0) return;
    py::gil_scoped_release release;
    engine_->Step(io);
  }

 private:
  std::vector<py::array> keep_;
  std::unique_ptr<policy::PolicyEngine> engine_;

  // Checks env_ids (None, or (b,) distinct int64 in [0, io->num_envs)) and points io at it;
  // returns the array, which the caller keeps alive through the step.
  static py::array EnvIds(py::object env_ids, policy::StepIO* io) {
    if (env_ids.is_none()) {
      if (io->b != io->num_envs) {
        throw py::value_error("policy step: " + std::to_string(io->b) + " rows for " +
                              std::to_string(io->num_envs) + " envs needs env_ids");
      }
      return py::array();
    }
    py::array ids = Arr(env_ids, "env_ids", py::dtype::of<int64_t>());
    if (ids.ndim() != 1 || ids.shape(0) != io->b) {
      throw py::value_error("policy step: env_ids must be (b,) int64");
    }
    const int64_t* p = static_cast<const int64_t*>(ids.data());
    std::vector<bool> seen(io->num_envs, false);
    for (int64_t r = 0; r < io->b; ++r) {
      const int64_t n = p[r];
      if (n < 0 || n >= io->num_envs) {
        throw py::value_error("policy step: env_ids must be in [0, " +
                              std::to_string(io->num_envs) + "), got " + std::to_string(n));
      }
      if (seen[n]) {
        throw py::value_error("policy step: env_ids has repeated id " + std::to_string(n));
      }
      seen[n] = true;
    }
    io->env_ids = p;
    return ids;
  }

  // {"shape": (h, w, c), "convs": [{"wt": (kh*kw*cin, cout), "b": (cout,), "cin", "cout",
  // "kh", "kw", "stride", "pad", "slope"}, ...], "wt_out": (oh*ow*cout, F), "b_out": (F,)}.
  policy::ImageNet ImageNetOf(py::handle item) {
    py::dict d = py::reinterpret_borrow<py::dict>(item);
    policy::ImageNet net;
    auto shape = d["shape"].cast<std::vector<int64_t>>();
    if (shape.size() != 3 || shape[0] < 1 || shape[1] < 1 || shape[2] < 1) {
      throw py::value_error("policy engine: image shape must be (H, W, C) >= 1");
    }
    net.h = shape[0];
    net.w = shape[1];
    net.c = shape[2];
    int64_t h = net.h, w = net.w, c = net.c;
    for (py::handle ch : d["convs"].cast<py::list>()) {
      py::dict cd = py::reinterpret_borrow<py::dict>(ch);
      policy::ConvLayer cv;
      cv.cin = cd["cin"].cast<int64_t>();
      cv.cout = cd["cout"].cast<int64_t>();
      cv.kh = cd["kh"].cast<int64_t>();
      cv.kw = cd["kw"].cast<int64_t>();
      cv.stride = cd["stride"].cast<int64_t>();
      cv.pad = cd["pad"].cast<int64_t>();
      cv.slope = cd["slope"].cast<float>();
      if (cv.cin != c || cv.cout < 1 || cv.kh < 1 || cv.kw < 1 || cv.stride < 1 || cv.pad < 0) {
        throw py::value_error("policy engine: image conv must take " + std::to_string(c) +
                              " channels, with cout, kernel and stride >= 1 and pad >= 0");
      }
      cv.in_h = h;
      cv.in_w = w;
      cv.out_h = (h + 2 * cv.pad - cv.kh) / cv.stride + 1;
      cv.out_w = (w + 2 * cv.pad - cv.kw) / cv.stride + 1;
      if (h + 2 * cv.pad < cv.kh || w + 2 * cv.pad < cv.kw) {
        throw py::value_error("policy engine: image conv kernel larger than its padded input");
      }
      cv.w = Lin(cd["wt"], cd["b"], cv.kh * cv.kw * cv.cin, cv.cout, "image conv");
      net.convs.push_back(cv);
      h = cv.out_h;
      w = cv.out_w;
      c = cv.cout;
    }
    net.out = Lin(d["wt_out"], d["b_out"], h * w * c, -1, "image out");
    return net;
  }

  // A C-contiguous array of `dtype` (float32 by default); no conversion, no copy.
  static py::array Arr(py::handle obj, const std::string& name,
                       py::dtype dtype = py::dtype::of<float>()) {
    if (!py::isinstance<py::array>(obj)) {
      throw py::type_error("policy engine: " + name + " must be a NumPy array, got " +
                           py::str(py::type::of(obj)).cast<std::string>());
    }
    py::array a = py::reinterpret_borrow<py::array>(obj);
    if (!a.dtype().equal(dtype)) {
      throw py::type_error("policy engine: " + name + " has dtype " +
                           py::str(a.dtype()).cast<std::string>() + ", expected " +
                           py::str(dtype).cast<std::string>());
    }
    if (!(a.flags() & py::array::c_style)) {
      throw py::value_error("policy engine: " + name + " must be C-contiguous");
    }
    return a;
  }

  const float* Vec(py::handle obj, int64_t n, const std::string& name) {
    py::array a = Arr(obj, name);
    if (a.ndim() != 1 || a.shape(0) != n) {
      throw py::value_error("policy engine: " + name + " must have shape (" + std::to_string(n) +
                            ",)");
    }
    keep_.push_back(a);
    return static_cast<const float*>(a.data());
  }

  policy::Dense Lin(py::handle wt, py::handle bias, int64_t in, int64_t out,
                    const std::string& name) {
    py::array a = Arr(wt, name + " weight");
    if (a.ndim() != 2 || a.shape(0) != in || (out >= 0 && a.shape(1) != out)) {
      throw py::value_error("policy engine: " + name + " weight (transposed) must be (" +
                            std::to_string(in) + ", " + std::to_string(out) + ")");
    }
    keep_.push_back(a);
    policy::Dense dn;
    dn.wt = static_cast<const float*>(a.data());
    dn.in = in;
    dn.out = a.shape(1);
    if (!bias.is_none()) dn.bias = Vec(bias, dn.out, name + " bias");
    return dn;
  }

  policy::Norm NormOf(py::handle t, int64_t dim, const std::string& name, bool optional) {
    policy::Norm nm;
    if (t.is_none()) {
      if (!optional) throw py::value_error("policy engine: " + name + " is required");
      return nm;
    }
    py::tuple tt = t.cast<py::tuple>();
    if (tt.size() != 3) throw py::value_error("policy engine: " + name + " must be (gamma, beta, eps)");
    nm.gamma = Vec(tt[0], dim, name + " weight");
    nm.beta = Vec(tt[1], dim, name + " bias");
    nm.eps = tt[2].cast<float>();
    nm.dim = dim;
    return nm;
  }

  // ("linear", wt, bias) / ("norm", gamma, beta, eps) / ("leaky", slope); *width is the input
  // width, updated to the output width.
  std::vector<policy::MlpOp> Ops(py::handle list, int64_t* width, const std::string& name) {
    std::vector<policy::MlpOp> ops;
    for (py::handle item : list.cast<py::list>()) {
      py::tuple t = item.cast<py::tuple>();
      const std::string kind = t[0].cast<std::string>();
      policy::MlpOp op;
      if (kind == "linear") {
        op.kind = policy::OpKind::kLinear;
        op.lin = Lin(t[1], t[2], *width, -1, name + " linear");
        *width = op.lin.out;
      } else if (kind == "norm") {
        op.kind = policy::OpKind::kNorm;
        op.norm = NormOf(py::make_tuple(t[1], t[2], t[3]), *width, name + " norm", false);
      } else if (kind == "leaky") {
        op.kind = policy::OpKind::kLeaky;
        op.slope = t[1].cast<float>();
      } else {
        throw py::value_error("policy engine: unknown " + name + " op '" + kind + "'");
      }
      ops.push_back(op);
    }
    return ops;
  }

  static policy::Field FieldOf(py::handle obj, int64_t b, int64_t width, const std::string& name) {
    if (!py::isinstance<py::array>(obj)) {
      throw py::type_error("policy step: " + name + " must be a NumPy array");
    }
    py::array a = py::reinterpret_borrow<py::array>(obj);
    if (!(a.flags() & py::array::c_style)) {
      throw py::value_error("policy step: " + name + " must be C-contiguous");
    }
    int64_t w = 1;
    for (ssize_t i = 1; i < a.ndim(); ++i) w *= a.shape(i);
    if (a.ndim() < 1 || a.shape(0) != b || w != width) {
      throw py::value_error("policy step: " + name + " must have " + std::to_string(b) +
                            " rows of " + std::to_string(width) + " values");
    }
    policy::Field f;
    f.data = a.data();
    f.width = width;
    const char k = a.dtype().kind();
    const ssize_t sz = a.dtype().itemsize();
    using T = policy::FieldType;
    if (k == 'f' && sz == 4) f.type = T::kF32;
    else if (k == 'f' && sz == 8) f.type = T::kF64;
    else if (k == 'i' && sz == 1) f.type = T::kI8;
    else if (k == 'i' && sz == 2) f.type = T::kI16;
    else if (k == 'i' && sz == 4) f.type = T::kI32;
    else if (k == 'i' && sz == 8) f.type = T::kI64;
    else if (k == 'u' && sz == 1) f.type = T::kU8;
    else if (k == 'u' && sz == 2) f.type = T::kU16;
    else if (k == 'u' && sz == 4) f.type = T::kU32;
    else if (k == 'u' && sz == 8) f.type = T::kU64;
    else if (k == 'b' && sz == 1) f.type = T::kBool;
    else {
      throw py::type_error("policy step: " + name + " has unsupported dtype " +
                           py::str(a.dtype()).cast<std::string>());
    }
    return f;
  }
};

// params (b, n) float32, u (b,) float64 uniforms in [0, 1), out (b,) int32: checked, then
// policy::SampleCategorical (a few hundred ns for a rollout batch: the GIL stays held).
inline void SampleCategoricalPy(py::object params, py::object u, py::object out) {
  auto arr = [](py::handle obj, const char* name, const py::dtype& dt) {
    if (!py::isinstance<py::array>(obj)) {
      throw py::type_error(std::string("sample_categorical: ") + name + " must be a NumPy array");
    }
    py::array a = py::reinterpret_borrow<py::array>(obj);
    if (!a.dtype().equal(dt) || !(a.flags() & py::array::c_style)) {
      throw py::type_error(std::string("sample_categorical: ") + name + " must be a C-contiguous " +
                           py::str(dt).cast<std::string>() + " array, got " +
                           py::str(a.dtype()).cast<std::string>());
    }
    return a;
  };
  py::array p = arr(params, "params", py::dtype::of<float>());
  py::array uu = arr(u, "u", py::dtype::of<double>());
  py::array o = arr(out, "out", py::dtype::of<int32_t>());
  if (p.ndim() != 2 || p.shape(1) < 1) {
    throw py::value_error("sample_categorical: params must be (b, n) with n >= 1");
  }
  const int64_t b = p.shape(0);
  if (uu.ndim() != 1 || uu.shape(0) != b || o.ndim() != 1 || o.shape(0) != b || !o.writeable()) {
    throw py::value_error("sample_categorical: u and out must be (b,) = (" + std::to_string(b) +
                          ",), out writeable");
  }
  policy::SampleCategorical(static_cast<const float*>(p.data()), b, p.shape(1),
                            static_cast<const double*>(uu.data()),
                            static_cast<int32_t*>(o.mutable_data()));
}

inline void RegisterPolicy(py::module_& m) {
  m.def("sample_categorical", &SampleCategoricalPy, py::arg("params"), py::arg("u"),
        py::arg("out"));
  py::class_<PyPolicyEngine>(m, "PolicyEngine")
      .def(py::init<py::dict, bool, int, int64_t>(), py::arg("cfg"), py::arg("use_simd") = true,
           py::arg("threads") = 1, py::arg("parallel_min") = -1)
      .def("step", &PyPolicyEngine::Step, py::arg("fields"), py::arg("action"),
           py::arg("reward"), py::arg("time_index"), py::arg("kv"), py::arg("counts"),
           py::arg("env_ids"), py::arg("out"), py::arg("kv_scales") = py::none(),
           py::arg("hidden") = py::none(), py::arg("images") = py::none())
      .def_property_readonly("param_dim", &PyPolicyEngine::ParamDim)
      .def_property_readonly("num_layers", &PyPolicyEngine::NumLayers)
      .def_property_readonly("avx2", &PyPolicyEngine::Avx2)
      .def_property_readonly("threads", &PyPolicyEngine::Threads)
      .def_property_readonly("split_runs", &PyPolicyEngine::SplitRuns);
}

}  // namespace amago

#endif  // AMAGO_FAST_POLICY_PY_POLICY_H_
