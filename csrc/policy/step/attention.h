// Attention decode over the ring KV caches (float32, float16, int8 rows): softmax, scores, values.
// Part of step_impl.h: deliberately WITHOUT an include guard (compiled once per SIMD target
// inside engine.h's namespaces; include only through step_impl.h).

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
