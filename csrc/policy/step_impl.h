// Kernels and the step body of the native policy (pure C++). Deliberately WITHOUT an include
// guard: engine.h includes this file twice, into namespace simd_base (baseline x86-64 / any
// CPU) and into namespace simd_avx2 under `#pragma GCC target("avx2,fma,f16c")`, and picks one at
// run time — one source, two builds, no -march flag in the wheel. Include only from engine.h,
// after the standard headers (their guards must already be set outside the target region).
//
// Hot loops use GCC vector extensions of kW = AMAGO_POLICY_LANES floats (set by engine.h: 8 =
// one ymm register under AVX2, 4 = one xmm for the baseline). GCC's auto-vectoriser turned
// the same loops written on scalar arrays into shuffles and stack spills (measured 5x slower
// for the 8x64x192 GEMM), and 32-byte vectors without AVX are lowered to scalar code (50x).

constexpr int kW = AMAGO_POLICY_LANES;
typedef float VF __attribute__((vector_size(4 * AMAGO_POLICY_LANES)));
typedef int32_t VI __attribute__((vector_size(4 * AMAGO_POLICY_LANES)));
// Unaligned, aliasing view for loads/stores from float arrays.
typedef float VFu __attribute__((vector_size(4 * AMAGO_POLICY_LANES), aligned(4), may_alias));

#define AMAGO_LOAD(p) (*reinterpret_cast<const VFu*>(p))
#define AMAGO_STORE(p, v) (*reinterpret_cast<VFu*>(p) = (v))

inline __attribute__((always_inline)) float HSum(VF v) {
  float s = v[0];
  for (int l = 1; l < kW; ++l) s += v[l];
  return s;
}

inline __attribute__((always_inline)) VF Splat(float x) {
  VF v = {};
  return v + x;
}

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

// exp(x) for kW values x <= 0 (softmax after max subtraction): Cephes' range reduction and
// degree-6 polynomial, 2^n through the exponent bits; relative error ~1e-7, exactly 1 at 0.
// (libm's expf is a scalar call per key: it was the largest cost of attention at 1024 keys.)
inline __attribute__((always_inline)) VF ExpNonPositiveV(VF x) {
  const VF lo = Splat(-87.0f);
  x = x < lo ? lo : x;
  const VF t = x * 1.44269504088896341f - 0.5f;
  const VI n = __builtin_convertvector(t, VI);  // trunc of (x·log2e - 0.5) ≤ 0: round
  const VF fn = __builtin_convertvector(n, VF);
  VF r = x - fn * 0.693359375f;
  r = r - fn * -2.12194440e-4f;
  VF p = r * 1.9875691500e-4f + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const VI bits = (n + 127) << 23;
  return p * (VF)bits;  // NOLINT(readability/casting): vector bit cast
}

// Softmax over scores[0, len) in place (exp(s - max), unnormalised); returns 1 / Σ.
// scores has room for len rounded up to kW; the padding is set to -inf (exp → 0).
inline float SoftmaxInPlace(float* scores, int64_t len) {
  const float ninf = -std::numeric_limits<float>::infinity();
  const int64_t padded = (len + kW - 1) / kW * kW;
  for (int64_t c = len; c < padded; ++c) scores[c] = ninf;
  VF mv = Splat(ninf);
  for (int64_t c = 0; c < padded; c += kW) {
    const VF s = AMAGO_LOAD(scores + c);
    mv = s > mv ? s : mv;
  }
  float m = mv[0];
  for (int l = 1; l < kW; ++l) m = mv[l] > m ? mv[l] : m;
  VF sum = {};
  for (int64_t c = 0; c < padded; c += kW) {
    const VF e = ExpNonPositiveV(AMAGO_LOAD(scores + c) - m);
    AMAGO_STORE(scores + c, e);
    sum += e;
  }
  return 1.0f / HSum(sum);
}

#if AMAGO_POLICY_LANES == 8
// [a0+a1, a2+a3, b0+b1, b2+b3, a4+a5, a6+a7, b4+b5, b6+b7] (AVX's hadd, two shufps + add);
// V = VF (float scores) or VI (the int8 path's int32 dot products).
template <typename V>
inline __attribute__((always_inline)) V PairSum(V a, V b) {
  const VI even = {0, 2, 8, 10, 4, 6, 12, 14};
  const VI odd = {1, 3, 9, 11, 5, 7, 13, 15};
  return __builtin_shuffle(a, b, even) + __builtin_shuffle(a, b, odd);
}

// The 8 horizontal sums of p[0..8) as one vector (a transpose-reduce: 6 pair sums, 2 lane
// swaps), instead of one horizontal sum per key (measured: half of the score loop's time).
template <typename V>
inline __attribute__((always_inline)) V TransposeSum8(const V* p) {
  const V h0 = PairSum(PairSum(p[0], p[1]), PairSum(p[2], p[3]));
  const V h1 = PairSum(PairSum(p[4], p[5]), PairSum(p[6], p[7]));
  const VI lo = {0, 1, 2, 3, 8, 9, 10, 11};
  const VI hi = {4, 5, 6, 7, 12, 13, 14, 15};
  return __builtin_shuffle(h0, h1, lo) + __builtin_shuffle(h0, h1, hi);
}
#endif

// Cache elements: float32, or float16 (Half, model.h) widened on load — F16C's vcvtph2ps under
// AVX2 (one instruction per 8 values), a scalar conversion in the baseline build. Stores
// round to nearest even either way, as torch's .to(float16) does, so both builds and the
// PyTorch path write the same bits.
inline __attribute__((always_inline)) float KVToFloat(float x) { return x; }
inline __attribute__((always_inline)) float KVToFloat(Half x) { return HalfToFloat(x); }
inline __attribute__((always_inline)) float KVToFloat(int8_t x) { return static_cast<float>(x); }
inline __attribute__((always_inline)) VF LoadKV(const float* p) { return AMAGO_LOAD(p); }
inline __attribute__((always_inline)) VF LoadKV(const Half* p) {
#if AMAGO_POLICY_LANES == 8
  return (VF)_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));  // NOLINT
#else
  VF v;
  for (int l = 0; l < kW; ++l) v[l] = HalfToFloat(p[l]);
  return v;
#endif
}
// int8 (the quantised cache): sign-extend 8 bytes and convert (the row's scale is applied to
// the score / the softmax weight, once per key instead of once per element).
inline __attribute__((always_inline)) VF LoadKV(const int8_t* p) {
#if AMAGO_POLICY_LANES == 8
  return (VF)_mm256_cvtepi32_ps(  // NOLINT(readability/casting)
      _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
#else
  VF v;
  for (int l = 0; l < kW; ++l) v[l] = static_cast<float>(p[l]);
  return v;
#endif
}

inline void StoreKV(const float* src, int64_t n, float* dst) {
  std::memcpy(dst, src, n * sizeof(float));
}
// float16 stores saturate at ±65504 (the largest finite half) instead of rounding to ±inf: a
// key of inf would make every score of its head ±inf and the softmax NaN. NaN stays NaN (the
// comparisons are false for it). The PyTorch path clamps the same way (kernels.decode.
// to_cache_dtype), so both write the same bits.
inline void StoreKV(const float* src, int64_t n, Half* dst) {
  int64_t i = 0;
#if AMAGO_POLICY_LANES == 8
  const VF hi = Splat(kHalfMax), lo = Splat(-kHalfMax);
  for (; i + 8 <= n; i += 8) {
    VF v = AMAGO_LOAD(src + i);
    v = v > hi ? hi : v;
    v = v < lo ? lo : v;
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i),
                     _mm256_cvtps_ph((__m256)v, _MM_FROUND_TO_NEAREST_INT));  // NOLINT
  }
#endif
  for (; i < n; ++i) {
    float v = src[i];
    v = v > kHalfMax ? kHalfMax : v;
    v = v < -kHalfMax ? -kHalfMax : v;
    dst[i] = FloatToHalf(v);
  }
}

// One int8 row (n values: one key or value of one head) and its scale; the rule of
// kernels.decode.quantize_int8_rows, scalar in both builds so they store the same bits:
// saturate at ±65504, scale = amax * kInv127, q = nearbyint(x / scale) (round half to even,
// the default rounding mode, as torch.round) clamped to ±127; a zero row stores scale 0, a row
// with NaN scale NaN, and q = 0 for both. Per step this is b x H x 2 short rows: noise next to
// attention's reads.
inline void StoreKVInt8(const float* src, int64_t n, int8_t* dst, float* scale) {
  float amax = 0.0f;
  bool nan = false;
  for (int64_t i = 0; i < n; ++i) {
    const float v = src[i];
    if (v != v) nan = true;
    amax = std::max(amax, std::min(std::fabs(v), kHalfMax));
  }
  const float s = nan ? std::numeric_limits<float>::quiet_NaN() : amax * kInv127;
  *scale = s;
  if (!(s > 0.0f)) {
    std::memset(dst, 0, n);
    return;
  }
  for (int64_t i = 0; i < n; ++i) {
    float v = src[i];
    v = v > kHalfMax ? kHalfMax : v;
    v = v < -kHalfMax ? -kHalfMax : v;
    float r = std::nearbyint(v / s);
    r = r > 127.0f ? 127.0f : r;
    r = r < -127.0f ? -127.0f : r;
    dst[i] = static_cast<int8_t>(r);
  }
}

// Per-key scales of an int8 cache (null for float caches: then Scaled is a no-op).
struct RowScales {
  const float* k = nullptr;
  const float* v = nullptr;
};

// scores[0, len) *= scales[0, len) (vectors, then the tail: never reads past len).
inline void ScaleScores(float* scores, const float* scales, int64_t len) {
  int64_t c = 0;
  for (; c + kW <= len; c += kW) {
    AMAGO_STORE(scores + c, AMAGO_LOAD(scores + c) * AMAGO_LOAD(scales + c));
  }
  for (; c < len; ++c) scores[c] *= scales[c];
}

#if AMAGO_POLICY_LANES == 8
// Scores of int8 keys (D = 16 M) through integer dot products: q is rounded to int16 with one
// scale (relative error <= 2^-16 of max|q|, far below the keys' int8 rounding), each key's 16
// int8 values are widened to int16 in one instruction and multiplied-and-paired by vpmaddwd,
// so a key costs 2 vector ops instead of 6 (convert twice to float, multiply-add twice).
// Measured on this file's kernel, 8 envs x 4 heads x 2 layers, 1024 keys of 16 dims: 404-424
// µs (float16) / 328-343 (int8, float converts) / 251-277 (int8, this) per step streaming
// from memory. No overflow: |Σ| <= D x 32767 x 127 < 2^31 for D <= 512.
// Returns false (caller takes the float path) when max|q| is 0, infinite or NaN.
template <int M>
inline bool Int8Scores(const float* q, const int8_t* keys, const float* kscale, int64_t len,
                       float* scores) {
  constexpr int D = 16 * M;
  float amax = 0.0f;
  for (int d = 0; d < D; ++d) amax = std::max(amax, std::fabs(q[d]));
  if (!(amax > 0.0f && amax <= std::numeric_limits<float>::max())) return false;  // NaN too
  const float qs = amax / 32767.0f;
  alignas(32) int16_t qi[D];
  for (int d = 0; d < D; ++d) {
    const float r = std::nearbyint(q[d] / qs);
    qi[d] = static_cast<int16_t>(std::min(std::max(r, -32767.0f), 32767.0f));
  }
  __m256i qv[M];
  for (int j = 0; j < M; ++j) {
    qv[j] = _mm256_load_si256(reinterpret_cast<const __m256i*>(qi + 16 * j));
  }
  int64_t c = 0;
  for (; c + 8 <= len; c += 8) {
    VI p[8];
#pragma GCC unroll 8
    for (int u = 0; u < 8; ++u) {
      const __m128i* k = reinterpret_cast<const __m128i*>(keys + (c + u) * D);
      __m256i acc = _mm256_madd_epi16(_mm256_cvtepi8_epi16(_mm_loadu_si128(k)), qv[0]);
      for (int j = 1; j < M; ++j) {
        const __m256i kj = _mm256_cvtepi8_epi16(_mm_loadu_si128(k + j));  // 16 bytes further
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(kj, qv[j]));
      }
      p[u] = (VI)acc;  // NOLINT(readability/casting): vector bit cast
    }
    const VF s = __builtin_convertvector(TransposeSum8(p), VF);
    AMAGO_STORE(scores + c, s * (AMAGO_LOAD(kscale + c) * qs));
  }
  for (; c < len; ++c) {
    int32_t acc = 0;
    for (int d = 0; d < D; ++d) acc += qi[d] * keys[c * D + d];
    scores[c] = static_cast<float>(acc) * (kscale[c] * qs);
  }
  return true;
}
#endif

// scores[c] = q · k_c for D = NV * kW (float or float16 keys; int8 unscaled).
template <int NV, typename T>
inline void ScoreKeys(const float* q, const T* keys, int64_t len, float* scores) {
  constexpr int64_t D = NV * kW;
  VF qv[NV];
  for (int j = 0; j < NV; ++j) qv[j] = AMAGO_LOAD(q + j * kW);
  int64_t c = 0;
#if AMAGO_POLICY_LANES == 8
  for (; c + 8 <= len; c += 8) {
    VF p[8];
#pragma GCC unroll 8
    for (int u = 0; u < 8; ++u) {
      const T* k = keys + (c + u) * D;
      VF acc = qv[0] * LoadKV(k);
#pragma GCC unroll 8
      for (int j = 1; j < NV; ++j) acc += qv[j] * LoadKV(k + j * kW);
      p[u] = acc;
    }
    AMAGO_STORE(scores + c, TransposeSum8(p));
  }
#endif
  for (; c < len; ++c) {
    const T* k = keys + c * D;
    VF acc = qv[0] * LoadKV(k);
    for (int j = 1; j < NV; ++j) acc += qv[j] * LoadKV(k + j * kW);
    scores[c] = HSum(acc);
  }
}

// out = inv x Σ_c w_c v_c for D = NV * kW. Two keys per iteration into two accumulator sets:
// halves the FMA latency chain.
template <int NV, typename T>
inline void AccumulateValues(const T* vals, int64_t len, const float* scores, float inv,
                             float* out) {
  constexpr int64_t D = NV * kW;
  VF o0[NV], o1[NV];
  for (int j = 0; j < NV; ++j) o0[j] = o1[j] = VF{};
  int64_t c = 0;
  for (; c + 2 <= len; c += 2) {
    const float p0 = scores[c], p1 = scores[c + 1];
    const T* v0 = vals + c * D;
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) {
      o0[j] += p0 * LoadKV(v0 + j * kW);
      o1[j] += p1 * LoadKV(v0 + D + j * kW);
    }
  }
  if (c < len) {
    const float p0 = scores[c];
    for (int j = 0; j < NV; ++j) o0[j] += p0 * LoadKV(vals + c * D + j * kW);
  }
  for (int j = 0; j < NV; ++j) AMAGO_STORE(out + j * kW, (o0[j] + o1[j]) * inv);
}

// AttendOne for D = NV * kW (the common head dims): loops fully unrolled, q in registers.
// int8 caches: score c = (q · k_c) * kscale_c, weight c = p_c * vscale_c.
template <int NV, typename T>
inline void AttendFixed(const float* q, const T* keys, const T* vals, int64_t len,
                        RowScales rs, float* scores, float* out) {
  bool scored = false;
#if AMAGO_POLICY_LANES == 8
  if constexpr (std::is_same_v<T, int8_t> && NV % 2 == 0) {
    scored = Int8Scores<NV / 2>(q, keys, rs.k, len, scores);
  }
#endif
  if (!scored) ScoreKeys<NV>(q, keys, len, scores);
  if (rs.k != nullptr && !scored) ScaleScores(scores, rs.k, len);
  const float inv = SoftmaxInPlace(scores, len);
  if (rs.v != nullptr) ScaleScores(scores, rs.v, len);
  AccumulateValues<NV>(vals, len, scores, inv, out);
}

// Softmax attention of one (pre-scaled) query q (D) over `len` >= 1 keys/values (row stride
// D): out (D) = Σ softmax(q·k)_c v_c (int8: keys/values times their row scales rs). scores:
// scratch of >= len + kW floats.
template <typename T>
inline void AttendOne(const float* q, const T* keys, const T* vals, int64_t len,
                      int64_t D, RowScales rs, float* scores, float* out) {
  if (D == kW) return AttendFixed<1, T>(q, keys, vals, len, rs, scores, out);
  if (D == 2 * kW) return AttendFixed<2, T>(q, keys, vals, len, rs, scores, out);
  if (D == 4 * kW) return AttendFixed<4, T>(q, keys, vals, len, rs, scores, out);
  if (D == 8 * kW) return AttendFixed<8, T>(q, keys, vals, len, rs, scores, out);
  // Any other head dim: plain loops.
  for (int64_t c = 0; c < len; ++c) {
    const T* k = keys + c * D;
    float s = 0.0f;
    for (int64_t d = 0; d < D; ++d) s += q[d] * KVToFloat(k[d]);
    scores[c] = s;
  }
  if (rs.k != nullptr) ScaleScores(scores, rs.k, len);
  const float inv = SoftmaxInPlace(scores, len);
  if (rs.v != nullptr) ScaleScores(scores, rs.v, len);
  for (int64_t d = 0; d < D; ++d) out[d] = 0.0f;
  for (int64_t c = 0; c < len; ++c) {
    const float p = scores[c];
    const T* v = vals + c * D;
    for (int64_t d = 0; d < D; ++d) out[d] += p * KVToFloat(v[d]);
  }
  for (int64_t d = 0; d < D; ++d) out[d] *= inv;
}

#undef AMAGO_LOAD
#undef AMAGO_STORE
template <typename T>
inline void CastRow(const T* src, int64_t n, float* dst) {
  for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<float>(src[j]);
}

// Row r of a field as float32 (the cast NumPy's float32 assignment does).
inline void LoadRow(const Field& f, int64_t r, float* dst) {
  const int64_t w = f.width;
  switch (f.type) {
    case FieldType::kF32: std::memcpy(dst, static_cast<const float*>(f.data) + r * w, w * 4); break;
    case FieldType::kF64: CastRow(static_cast<const double*>(f.data) + r * w, w, dst); break;
    case FieldType::kI8: CastRow(static_cast<const int8_t*>(f.data) + r * w, w, dst); break;
    case FieldType::kI16: CastRow(static_cast<const int16_t*>(f.data) + r * w, w, dst); break;
    case FieldType::kI32: CastRow(static_cast<const int32_t*>(f.data) + r * w, w, dst); break;
    case FieldType::kI64: CastRow(static_cast<const int64_t*>(f.data) + r * w, w, dst); break;
    case FieldType::kU8: CastRow(static_cast<const uint8_t*>(f.data) + r * w, w, dst); break;
    case FieldType::kU16: CastRow(static_cast<const uint16_t*>(f.data) + r * w, w, dst); break;
    case FieldType::kU32: CastRow(static_cast<const uint32_t*>(f.data) + r * w, w, dst); break;
    case FieldType::kU64: CastRow(static_cast<const uint64_t*>(f.data) + r * w, w, dst); break;
    case FieldType::kBool: CastRow(static_cast<const bool*>(f.data) + r * w, w, dst); break;
  }
}

// Element r (flat index) of a field as double (exact for every integer action index).
inline double LoadScalar(const Field& f, int64_t r) {
  switch (f.type) {
    case FieldType::kF32: return static_cast<const float*>(f.data)[r];
    case FieldType::kF64: return static_cast<const double*>(f.data)[r];
    case FieldType::kI8: return static_cast<const int8_t*>(f.data)[r];
    case FieldType::kI16: return static_cast<const int16_t*>(f.data)[r];
    case FieldType::kI32: return static_cast<const int32_t*>(f.data)[r];
    case FieldType::kI64: return static_cast<double>(static_cast<const int64_t*>(f.data)[r]);
    case FieldType::kU8: return static_cast<const uint8_t*>(f.data)[r];
    case FieldType::kU16: return static_cast<const uint16_t*>(f.data)[r];
    case FieldType::kU32: return static_cast<const uint32_t*>(f.data)[r];
    case FieldType::kU64: return static_cast<double>(static_cast<const uint64_t*>(f.data)[r]);
    case FieldType::kBool: return static_cast<const bool*>(f.data)[r] ? 1.0 : 0.0;
  }
  return 0.0;
}

// Runs an MLP plan on x (b, width in) → returns the buffer holding (b, width out); ping-pongs
// between x and y (both with room for b x max width).
inline float* RunMlp(const std::vector<MlpOp>& ops, int64_t b, int64_t width,
                                  float* x, float* y, float* tmp, int64_t* out_width) {
  for (const MlpOp& op : ops) {
    if (op.kind == OpKind::kLinear) {
      Gemm(x, width, b, op.lin, op.lin.bias, nullptr, 0, y, op.lin.out);
      std::swap(x, y);
      width = op.lin.out;
    } else if (op.kind == OpKind::kNorm) {
      LayerNormRows(x, width, b, width, op.norm.gamma, op.norm.beta, op.norm.eps, tmp);
    } else {
      LeakyRows(x, width, b, width, op.slope);
    }
  }
  *out_width = width;
  return x;
}

inline int64_t MlpMaxWidth(const std::vector<MlpOp>& ops, int64_t in) {
  int64_t w = in;
  for (const MlpOp& op : ops) {
    if (op.kind == OpKind::kLinear) w = std::max(w, op.lin.out);
  }
  return w;
}

// One convolution over output rows [r0, r1) (row = one (image, y, x) position): im2col of
// those rows, the packed GEMM, LeakyReLU. Rows are independent, so any split of the rows gives
// the same bits as none (blocks start at multiples of the GEMM's row tile).
struct ConvJob {
  const ConvLayer* cv;
  const float* in;  // (b, in_h, in_w, cin)
  float* cols;      // (rows, kh * kw * cin)
  float* out;       // (rows, cout)
  int64_t rows, block;
};

inline void ConvRows(const ConvJob& j, int64_t r0, int64_t r1) {
  const ConvLayer& cv = *j.cv;
  const int64_t K = cv.kh * cv.kw * cv.cin, per_image = cv.out_h * cv.out_w;
  const size_t row_bytes = cv.cin * sizeof(float);
  for (int64_t row = r0; row < r1; ++row) {
    const int64_t bi = row / per_image, oy = row % per_image / cv.out_w, ox = row % cv.out_w;
    float* dst = j.cols + row * K;
    for (int64_t ky = 0; ky < cv.kh; ++ky) {
      const int64_t iy = oy * cv.stride - cv.pad + ky;
      for (int64_t kx = 0; kx < cv.kw; ++kx) {
        const int64_t ix = ox * cv.stride - cv.pad + kx;
        float* d = dst + (ky * cv.kw + kx) * cv.cin;
        if (iy < 0 || iy >= cv.in_h || ix < 0 || ix >= cv.in_w) {
          std::memset(d, 0, row_bytes);  // zero padding
        } else {
          std::memcpy(d, j.in + ((bi * cv.in_h + iy) * cv.in_w + ix) * cv.cin, row_bytes);
        }
      }
    }
  }
  Gemm(j.cols + r0 * K, K, r1 - r0, cv.w, cv.w.bias, nullptr, 0, j.out + r0 * cv.cout, cv.cout);
  LeakyRows(j.out + r0 * cv.cout, cv.cout, r1 - r0, cv.cout, cv.slope);
}

inline void ConvTask(void* ctx, int64_t i, int /*slot*/) {
  const ConvJob& j = *static_cast<const ConvJob*>(ctx);
  ConvRows(j, i * j.block, std::min(j.rows, (i + 1) * j.block));
}

// Work (multiply-adds) of one convolution from which its rows are split across the team: a
// split costs ~10-35 µs to hand off here (see kParallelMinFloats), a 64x64x3 frame's second
// convolution ~4.7M multiply-adds (~1.5 ms on one core).
constexpr int64_t kConvParallelMinMacs = int64_t{1} << 22;
// Output rows per task: a multiple of every kTileRows, a few tasks per thread on big images.
constexpr int64_t kConvBlockRows = 256;

// The CNN of one image key for b rows: NHWC pixels / 255 (a division, as the PyTorch module
// computes it), each convolution as im2col + the packed GEMM + LeakyReLU (rows split across the
// team when large), then the output linear on the flattened NHWC activations into y (b rows of
// stride ldy).
inline void RunImageNet(const ImageNet& net, const uint8_t* px, int64_t b, Scratch* s, float* y,
                        int64_t ldy, Team* team, TeamBackoff* backoff) {
  const int64_t n = b * net.h * net.w * net.c;
  int64_t max_act = n, max_cols = 0;
  for (const ConvLayer& cv : net.convs) {
    max_act = std::max(max_act, b * cv.out_h * cv.out_w * cv.cout);
    max_cols = std::max(max_cols, b * cv.out_h * cv.out_w * cv.kh * cv.kw * cv.cin);
  }
  float* cur = Scratch::Get(&s->img_a, 2 * max_act);
  float* nxt = cur + max_act;
  float* cols = Scratch::Get(&s->img_b, max_cols);
  for (int64_t i = 0; i < n; ++i) cur[i] = static_cast<float>(px[i]) / 255.0f;
  for (const ConvLayer& cv : net.convs) {
    const int64_t rows = b * cv.out_h * cv.out_w;
    ConvJob job{&cv, cur, cols, nxt, rows, kConvBlockRows};
    const int64_t tasks = (rows + kConvBlockRows - 1) / kConvBlockRows;
    if (team != nullptr && tasks > 1 &&
        rows * cv.kh * cv.kw * cv.cin * cv.cout >= kConvParallelMinMacs) {
      team->Run(tasks, &ConvTask, &job, backoff);
    } else {
      ConvRows(job, 0, rows);
    }
    std::swap(cur, nxt);
  }
  Gemm(cur, net.out.in, b, net.out, net.out.bias, nullptr, 0, y, ldy);
}

// Sinusoidal position rows (bias included) for the engine's lifetime, grown on demand like
// the PyTorch plan's table; rows past kMaxTableRows are computed per call.
constexpr int64_t kMaxTableRows = 16384;

inline void SinusoidalRow(const Model& m, int64_t t, float* row) {
  const int64_t half = static_cast<int64_t>(m.freqs.size());
  const float tf = static_cast<float>(t);
  for (int64_t j = 0; j < half; ++j) {
    const float ang = tf * m.freqs[j];
    row[j] = std::sin(ang) + m.b_in[j];
    row[half + j] = std::cos(ang) + m.b_in[half + j];
  }
  if (m.d_model % 2) row[m.d_model - 1] = m.b_in[m.d_model - 1];
}

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

