// Dense layers: the packed-panel GEMM, LayerNorm and LeakyReLU over rows.
// Part of step_impl.h: deliberately WITHOUT an include guard (compiled once per SIMD target
// inside engine.h's namespaces; include only through step_impl.h).

// GEMM tiles: kPanel = 16 output columns (the packed panel width, model.h) = kNV vectors per
// row, kTileRows rows → 8 vector accumulators in registers with either vector width.
constexpr int kNV = kPanel / kW;
constexpr int kTileRows = kW == 8 ? 4 : 2;

// Rows [0, RB) x columns [j0, j0 + 16) of y = bias + res + x @ W (bias/res may be null), W's
// columns j0.. read from their packed panel (in x 16, contiguous: one sequential stream).
template <int RB>
inline void GemmTile(const float* x, int64_t ldx, int64_t in, const float* panel, int64_t j0,
                     const float* bias, const float* res, int64_t ldr, float* y, int64_t ldy) {
  VF acc[RB][kNV];
#pragma GCC unroll 4
  for (int r = 0; r < RB; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < kNV; ++v) {
      acc[r][v] = bias != nullptr ? AMAGO_LOAD(bias + j0 + v * kW) : VF{};
      if (res != nullptr) acc[r][v] += AMAGO_LOAD(res + r * ldr + j0 + v * kW);
    }
  }
  const float* w = panel;
  for (int64_t i = 0; i < in; ++i, w += kPanel) {
    VF wv[kNV];
#pragma GCC unroll 4
    for (int v = 0; v < kNV; ++v) wv[v] = AMAGO_LOAD(w + v * kW);
#pragma GCC unroll 4
    for (int r = 0; r < RB; ++r) {
      const float xv = x[r * ldx + i];
#pragma GCC unroll 4
      for (int v = 0; v < kNV; ++v) acc[r][v] += xv * wv[v];
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < RB; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < kNV; ++v) AMAGO_STORE(y + r * ldy + j0 + v * kW, acc[r][v]);
  }
}

// Columns [j0, out) (fewer than 16) of every row from the row-major wt: plain loops (e.g. the
// actor's P outputs).
inline void GemmTail(const float* x, int64_t ldx, int64_t b, int64_t in, const float* wt,
                     int64_t out, int64_t j0, const float* bias, const float* res, int64_t ldr,
                     float* y, int64_t ldy) {
  for (int64_t r = 0; r < b; ++r) {
    for (int64_t j = j0; j < out; ++j) {
      float acc = bias != nullptr ? bias[j] : 0.0f;
      if (res != nullptr) acc += res[r * ldr + j];
      for (int64_t i = 0; i < in; ++i) acc += x[r * ldx + i] * wt[i * out + j];
      y[r * ldy + j] = acc;
    }
  }
}

// y (b, out) = bias + res + x (b, in) @ W for a Dense W; row strides ldx/ldr/ldy; y may be res
// (in-place residual add), never x. Panels outermost: a panel (in x 16) stays in L1/L2 while
// every row block uses it, so the weights stream from memory once per step whatever b is.
inline void Gemm(const float* x, int64_t ldx, int64_t b, const Dense& W, const float* bias,
                 const float* res, int64_t ldr, float* y, int64_t ldy) {
  const int64_t in = W.in, out = W.out;
  const int64_t full = out / kPanel * kPanel;
  for (int64_t j0 = 0; j0 < full; j0 += kPanel) {
    const float* panel = W.packed + j0 * in;
    int64_t r = 0;
    for (; r + kTileRows <= b; r += kTileRows) {
      GemmTile<kTileRows>(x + r * ldx, ldx, in, panel, j0, bias,
                          res != nullptr ? res + r * ldr : nullptr, ldr, y + r * ldy, ldy);
    }
    const float* rr = res != nullptr ? res + r * ldr : nullptr;
    switch (b - r) {
      case 3: GemmTile<3>(x + r * ldx, ldx, in, panel, j0, bias, rr, ldr, y + r * ldy, ldy); break;
      case 2: GemmTile<2>(x + r * ldx, ldx, in, panel, j0, bias, rr, ldr, y + r * ldy, ldy); break;
      case 1: GemmTile<1>(x + r * ldx, ldx, in, panel, j0, bias, rr, ldr, y + r * ldy, ldy); break;
      default: break;
    }
  }
  if (full < out) GemmTail(x, ldx, b, in, W.wt, out, full, bias, res, ldr, y, ldy);
}

// Sum of n floats: 8-lane vector partials, then the lanes and the tail.
inline float LaneSum(const float* x, int64_t n) {
  VF acc = {};
  int64_t i = 0;
  for (; i + kW <= n; i += kW) acc += AMAGO_LOAD(x + i);
  float s = HSum(acc);
  for (; i < n; ++i) s += x[i];
  return s;
}

// In-place LayerNorm of each of b rows (width dim, row stride ld): biased variance, two passes.
inline void LayerNormRows(float* x, int64_t ld, int64_t b, int64_t dim, const float* gamma,
                          const float* beta, float eps, float* tmp) {
  const int64_t nv = dim / kW * kW;
  for (int64_t r = 0; r < b; ++r) {
    float* row = x + r * ld;
    const float mean = LaneSum(row, dim) / static_cast<float>(dim);
    int64_t j = 0;
    for (; j < nv; j += kW) {
      const VF c = AMAGO_LOAD(row + j) - mean;
      AMAGO_STORE(row + j, c);
      AMAGO_STORE(tmp + j, c * c);
    }
    for (; j < dim; ++j) {
      const float c = row[j] - mean;
      row[j] = c;
      tmp[j] = c * c;
    }
    const float var = LaneSum(tmp, dim) / static_cast<float>(dim);
    const float inv = 1.0f / std::sqrt(var + eps);
    for (j = 0; j < nv; j += kW) {
      AMAGO_STORE(row + j, AMAGO_LOAD(row + j) * inv * AMAGO_LOAD(gamma + j) +
                               AMAGO_LOAD(beta + j));
    }
    for (; j < dim; ++j) row[j] = row[j] * inv * gamma[j] + beta[j];
  }
}

// Leaky ReLU in place; vector selects (the scalar loop's data-dependent branch mispredicted:
// 8% of the tiny model's step).
inline void LeakyRows(float* x, int64_t ld, int64_t b, int64_t dim, float slope) {
  const int64_t nv = dim / kW * kW;
  const VF zero = {};
  for (int64_t r = 0; r < b; ++r) {
    float* row = x + r * ld;
    int64_t j = 0;
    for (; j < nv; j += kW) {
      const VF v = AMAGO_LOAD(row + j);
      AMAGO_STORE(row + j, v >= zero ? v : v * slope);
    }
    for (; j < dim; ++j) row[j] = row[j] >= 0.0f ? row[j] : row[j] * slope;
  }
}
