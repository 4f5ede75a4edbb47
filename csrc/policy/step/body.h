// The step body: the attention task per (row, head) and StepBody, the whole forward step.
// Part of step_impl.h: deliberately WITHOUT an include guard (compiled once per SIMD target
// inside engine.h's namespaces; include only through step_impl.h).

// One layer's attention over the ring caches (keys/values of this step already written).
struct AttnJob {
  const float* qkv;  // (b, 3d): the pre-scaled queries are the first d columns
  const void* kv;    // float, Half or int8_t (type)
  KVType type;
  const float* scales;  // kI8: (2, N, H, C)
  const int64_t* counts;
  const int64_t* env_ids;
  int64_t N, C, H, D, d;
  float* attn;  // (b, d)
  float* const* scores;  // per team slot, >= C + kW floats
};

// Task i = (row i / H, head i % H).
inline void AttnTask(void* ctx, int64_t i, int slot) {
  const AttnJob& j = *static_cast<const AttnJob*>(ctx);
  const int64_t r = i / j.H, hh = i % j.H;
  const int64_t n = j.env_ids != nullptr ? j.env_ids[r] : r;
  const int64_t len = std::min(j.counts[n], j.C);
  const int64_t koff = (n * j.H + hh) * j.C * j.D, voff = ((j.N + n) * j.H + hh) * j.C * j.D;
  const float* q = j.qkv + r * 3 * j.d + hh * j.D;
  float* out = j.attn + r * j.d + hh * j.D;
  if (j.type == KVType::kF16) {
    const Half* kv = static_cast<const Half*>(j.kv);
    AttendOne(q, kv + koff, kv + voff, len, j.D, RowScales{}, j.scores[slot], out);
  } else if (j.type == KVType::kI8) {
    const int8_t* kv = static_cast<const int8_t*>(j.kv);
    const RowScales rs{j.scales + koff / j.D, j.scales + voff / j.D};
    AttendOne(q, kv + koff, kv + voff, len, j.D, rs, j.scores[slot], out);
  } else {
    const float* kv = static_cast<const float*>(j.kv);
    AttendOne(q, kv + koff, kv + voff, len, j.D, RowScales{}, j.scores[slot], out);
  }
}

// The whole step, force-inlined into one function per instruction-set target (below).
inline void StepBody(const Model& m, const StepIO& io, Scratch* s,
                     std::vector<float>* sin_table, Team* team, TeamBackoff* backoff,
                     int64_t parallel_min) {
  const int64_t b = io.b;
  const int64_t tw = std::max(MlpMaxWidth(m.tstep, m.in_dim),
                              std::max(MlpMaxWidth(m.actor, m.d_model),
                                       m.traj != TrajKind::kFF ? m.d_model
                                                               : MlpMaxWidth(m.ff, m.d_model)));
  int64_t lw = tw;
  for (const Layer& L : m.layers) lw = std::max({lw, L.qkv.out, L.ff1.out});
  for (const GruLayer& G : m.gru_layers) lw = std::max(lw, G.ih.out);
  float* xa = Scratch::Get(&s->a, b * lw);
  float* xb = Scratch::Get(&s->b, b * lw);
  float* tmp = Scratch::Get(&s->tmp, lw);

  // ---- timestep features into xa (b, in_dim)
  for (int64_t r = 0; r < b; ++r) {
    float* f = xa + r * m.in_dim;
    const float exists = io.time_index[r] != 0 ? 1.0f : 0.0f;
    int64_t col = 0;
    for (const Field& fld : io.norm_fields) {
      LoadRow(fld, r, f + col);
      col += fld.width;
    }
    if (m.clip) {
      if (m.norm_mean != nullptr) {
        for (int64_t j = 0; j < m.norm_dim; ++j) f[j] = (f[j] - m.norm_mean[j]) / m.norm_std[j];
      }
      const float c = m.clip_value;
      for (int64_t j = 0; j < m.norm_dim; ++j) f[j] = std::min(std::max(f[j], -c), c);
    }
    for (const Field& fld : io.raw_fields) {
      LoadRow(fld, r, f + col);
      col += fld.width;
    }
    col += m.image_dim;  // filled for all rows at once below
    if (m.discrete) {
      // One one-hot per component (a Discrete action is the single component n = action_dim).
      const int64_t k = static_cast<int64_t>(m.nvec.size());
      int64_t off = col;
      for (int64_t i = 0; i < k; ++i) {
        const double a = LoadScalar(io.action, r * k + i);
        for (int64_t j = 0; j < m.nvec[i]; ++j) {
          f[off + j] = a == static_cast<double>(j) ? exists : 0.0f;
        }
        off += m.nvec[i];
      }
    } else {
      LoadRow(io.action, r, f + col);
      for (int64_t j = 0; j < m.action_dim; ++j) {
        float v = 2.0f * (f[col + j] - m.act_low[j]) / m.act_range[j] - 1.0f;
        v = std::min(std::max(v, -1.0f), 1.0f);
        f[col + j] = v * exists;
      }
    }
    col += m.action_dim;
    float rew;
    LoadRow(io.reward, r, &rew);
    const float sg = rew > 0.0f ? 1.0f : (rew < 0.0f ? -1.0f : 0.0f);
    f[col] = sg * std::log1p(std::fabs(rew)) * exists;
    f[col + 1] = 1.0f - exists;
  }
  int64_t img_col = m.in_dim - m.image_dim - m.action_dim - 2;
  for (size_t i = 0; i < m.images.size(); ++i) {
    const int64_t F = m.images[i].out.out;
    if (io.image_embeddings[i] != nullptr) {
      for (int64_t r = 0; r < b; ++r) {
        std::memcpy(xa + r * m.in_dim + img_col, io.image_embeddings[i] + r * F, F * sizeof(float));
      }
    } else {
      RunImageNet(m.images[i], io.images[i], b, s, xa + img_col, m.in_dim, team, backoff);
    }
    img_col += F;
  }
  int64_t width = m.in_dim;
  float* x = RunMlp(m.tstep, b, width, xa, xb, tmp, &width);
  float* other = x == xa ? xb : xa;

  // ---- trajectory encoder
  float* h;
  if (m.traj == TrajKind::kGru) {
    // h = in_proj(x); per layer: gates from the layer input and the env's hidden row, the new
    // hidden row written back in place and fed to the next layer.
    const int64_t d = m.d_model, N = io.num_envs;
    h = Scratch::Get(&s->d, b * lw);  // lw: the actor MLP ping-pongs between h and xa
    Gemm(x, width, b, m.in_proj, m.in_proj.bias, nullptr, 0, h, d);
    float* gi = x == xa ? xb : xa;    // (b, 3d): x is dead once projected
    float* gh = Scratch::Get(&s->c, b * 3 * d);
    float* hp = x;                    // (b, d): the previous hidden rows
    for (size_t l = 0; l < m.gru_layers.size(); ++l) {
      const GruLayer& G = m.gru_layers[l];
      float* state = io.hidden + static_cast<int64_t>(l) * N * d;
      for (int64_t r = 0; r < b; ++r) {
        const int64_t n = io.env_ids != nullptr ? io.env_ids[r] : r;
        std::memcpy(hp + r * d, state + n * d, d * sizeof(float));
      }
      Gemm(h, d, b, G.ih, G.ih.bias, nullptr, 0, gi, 3 * d);
      Gemm(hp, d, b, G.hh, G.hh.bias, nullptr, 0, gh, 3 * d);
      for (int64_t r = 0; r < b; ++r) {
        const float* a = gi + r * 3 * d;
        const float* c = gh + r * 3 * d;
        const float* prev = hp + r * d;
        float* out = h + r * d;
        for (int64_t j = 0; j < d; ++j) {
          const float rg = 1.0f / (1.0f + std::exp(-(a[j] + c[j])));
          const float zg = 1.0f / (1.0f + std::exp(-(a[d + j] + c[d + j])));
          const float ng = std::tanh(a[2 * d + j] + rg * c[2 * d + j]);
          out[j] = (1.0f - zg) * ng + zg * prev[j];
        }
        const int64_t n = io.env_ids != nullptr ? io.env_ids[r] : r;
        std::memcpy(state + n * d, out, d * sizeof(float));
      }
    }
    LayerNormRows(h, d, b, d, m.norm_out.gamma, m.norm_out.beta, m.norm_out.eps, tmp);
    width = d;
  } else if (m.traj == TrajKind::kFF) {
    h = RunMlp(m.ff, b, width, x, other, tmp, &width);
  } else {
    const int64_t d = m.d_model;
    float* pos = Scratch::Get(&s->c, b * d);
    for (int64_t r = 0; r < b; ++r) {
      const int64_t t = io.time_index[r];
      float* row = pos + r * d;
      if (m.learned_pos) {
        const int64_t idx = std::min(std::max<int64_t>(t, 0), m.pos_rows - 1);
        std::memcpy(row, m.pos_table + idx * d, d * sizeof(float));
      } else if (t < kMaxTableRows) {
        const int64_t rows = static_cast<int64_t>(sin_table->size()) / d;
        if (t >= rows) {
          const int64_t grown = std::min(std::max({2 * rows, t + 1, int64_t{1024}}), kMaxTableRows);
          sin_table->resize(grown * d);
          for (int64_t u = rows; u < grown; ++u) SinusoidalRow(m, u, sin_table->data() + u * d);
        }
        std::memcpy(row, sin_table->data() + t * d, d * sizeof(float));
      } else {
        SinusoidalRow(m, t, row);
      }
    }
    h = Scratch::Get(&s->d, b * lw);  // lw: the actor MLP ping-pongs between h and xa
    Gemm(x, width, b, m.in_proj, nullptr, pos, d, h, d);
    const int64_t N = io.num_envs, C = io.capacity;
    float* attn = pos;  // reused: (b, d)
    const int threads = team != nullptr ? team->size() : 1;
    if (static_cast<int>(s->scores.size()) < threads) s->scores.resize(threads);
    float* score_bufs[Team::kMaxThreads];
    for (int t = 0; t < threads; ++t) score_bufs[t] = Scratch::Get(&s->scores[t], C + 8);
    for (size_t l = 0; l < m.layers.size(); ++l) {
      const Layer& L = m.layers[l];
      const int64_t H = L.heads, D = L.head_dim;
      // qkv = LN(h) @ Wqkv + b   → xb (b, 3d)
      std::memcpy(xa, h, b * d * sizeof(float));
      LayerNormRows(xa, d, b, d, L.attn_in.gamma, L.attn_in.beta, L.attn_in.eps, tmp);
      Gemm(xa, d, b, L.qkv, L.qkv.bias, nullptr, 0, xb, 3 * d);
      void* kv = io.kv[l];
      float* scales = io.kv_type == KVType::kI8 ? io.kv_scales[l] : nullptr;
      int64_t* counts = io.counts[l];
      // This step's keys/values into their ring slots first (serial, cheap), then attention:
      // each (row, head) is one task, computed whole by one thread with its own scores
      // scratch, so the result does not depend on the thread count.
      int64_t keys_read = 0;
      for (int64_t r = 0; r < b; ++r) {
        const int64_t n = io.env_ids != nullptr ? io.env_ids[r] : r;
        const float* q = xb + r * 3 * d;
        const int64_t slot = counts[n] % C;
        for (int64_t hh = 0; hh < H; ++hh) {
          const int64_t kslot = ((n * H + hh) * C + slot) * D;
          const int64_t vslot = (((N + n) * H + hh) * C + slot) * D;
          if (io.kv_type == KVType::kF16) {
            StoreKV(q + d + hh * D, D, static_cast<Half*>(kv) + kslot);
            StoreKV(q + 2 * d + hh * D, D, static_cast<Half*>(kv) + vslot);
          } else if (io.kv_type == KVType::kI8) {
            StoreKVInt8(q + d + hh * D, D, static_cast<int8_t*>(kv) + kslot, scales + kslot / D);
            StoreKVInt8(q + 2 * d + hh * D, D, static_cast<int8_t*>(kv) + vslot,
                        scales + vslot / D);
          } else {
            StoreKV(q + d + hh * D, D, static_cast<float*>(kv) + kslot);
            StoreKV(q + 2 * d + hh * D, D, static_cast<float*>(kv) + vslot);
          }
        }
        counts[n] += 1;
        keys_read += std::min(counts[n], C);
      }
      AttnJob job{xb, kv, io.kv_type, scales, counts, io.env_ids, N, C, H, D, d, attn, score_bufs};
      if (team != nullptr && keys_read * H * D >= parallel_min) {
        team->Run(b * H, &AttnTask, &job, backoff);
      } else {
        for (int64_t i = 0; i < b * H; ++i) AttnTask(&job, i, 0);
      }
      // h += [LN](attn @ Wproj + b)
      if (L.attn_out.on()) {
        Gemm(attn, d, b, L.proj, L.proj.bias, nullptr, 0, xa, d);
        LayerNormRows(xa, d, b, d, L.attn_out.gamma, L.attn_out.beta, L.attn_out.eps, tmp);
        for (int64_t i = 0; i < b * d; ++i) h[i] += xa[i];
      } else {
        Gemm(attn, d, b, L.proj, L.proj.bias, h, d, h, d);
      }
      // h += W2 [LN](leaky(W1 LN(h) + b1)) + b2
      std::memcpy(xa, h, b * d * sizeof(float));
      LayerNormRows(xa, d, b, d, L.ff_in.gamma, L.ff_in.beta, L.ff_in.eps, tmp);
      const int64_t f = L.ff1.out;
      Gemm(xa, d, b, L.ff1, L.ff1.bias, nullptr, 0, xb, f);
      LeakyRows(xb, f, b, f, L.slope);
      if (L.ff_mid.on()) LayerNormRows(xb, f, b, f, L.ff_mid.gamma, L.ff_mid.beta, L.ff_mid.eps, tmp);
      Gemm(xb, f, b, L.ff2, L.ff2.bias, h, d, h, d);
    }
    LayerNormRows(h, d, b, d, m.norm_out.gamma, m.norm_out.beta, m.norm_out.eps, tmp);
    width = d;
  }
  // ---- actor MLP (main gamma)
  float* y = h == xa ? xb : xa;
  float* p = RunMlp(m.actor, b, width, h, y, tmp, &width);
  std::memcpy(io.out, p, b * m.param_dim * sizeof(float));
}
