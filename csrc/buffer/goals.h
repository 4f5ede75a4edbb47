// The multi-goal rule (amago_fast/spaces.py GoalSpec) and hindsight relabeling plans
// (amago_fast/relabel.py), bit-for-bit the NumPy reference's arithmetic.
#ifndef AMAGO_FAST_BUFFER_GOALS_H_
#define AMAGO_FAST_BUFFER_GOALS_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "buffer/rng.h"

namespace amago {

// IEEE half -> float (exact).
inline float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1Fu;
  uint32_t mant = h & 0x3FFu;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      exp = 127 - 15 + 1;
      while ((mant & 0x400u) == 0) {
        mant <<= 1;
        --exp;
      }
      mant &= 0x3FFu;
      bits = sign | (exp << 23) | (mant << 13);
    }
  } else if (exp == 0x1F) {
    bits = sign | 0x7F800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

// NumPy dtype characters of the goal dtypes.
enum class GoalDType : char {
  kFloat32 = 'f',
  kFloat16 = 'e',
  kUInt8 = 'B',
  kInt32 = 'i',
  kInt64 = 'l',
  kBool = '?',
};

inline size_t GoalDTypeSize(GoalDType t) {
  switch (t) {
    case GoalDType::kFloat32:
    case GoalDType::kInt32:
      return 4;
    case GoalDType::kFloat16:
      return 2;
    case GoalDType::kUInt8:
    case GoalDType::kBool:
      return 1;
    case GoalDType::kInt64:
      return 8;
  }
  throw std::invalid_argument("unsupported goal dtype");
}

struct GoalConfig {
  int goal_field = -1, achieved_field = -1, active_field = -1, completed_field = -1;
  int k = 0, dim = 0;
  GoalDType dtype = GoalDType::kFloat32;
  bool tolerance = false;
  double eps = 0.0;
  float goal_reward = 1.0f;
};

template <typename T>
inline T LoadAs(const uint8_t* p, int i) {
  T v;
  std::memcpy(&v, p + sizeof(T) * i, sizeof(T));
  return v;
}

// Exact: equality of the values in their own type (so -0 == 0 and NaN never matches, as in
// NumPy); tolerance: |a - g| <= eps in double, per element.
template <typename T>
inline bool MatchTyped(const GoalConfig& cfg, const uint8_t* a, const uint8_t* g) {
  if (!cfg.tolerance) {
    for (int i = 0; i < cfg.dim; ++i) {
      if (!(LoadAs<T>(a, i) == LoadAs<T>(g, i))) return false;
    }
    return true;
  }
  for (int i = 0; i < cfg.dim; ++i) {
    const double x = static_cast<double>(LoadAs<T>(a, i));
    const double y = static_cast<double>(LoadAs<T>(g, i));
    if (!(std::fabs(x - y) <= cfg.eps)) return false;
  }
  return true;
}

inline bool MatchHalf(const GoalConfig& cfg, const uint8_t* a, const uint8_t* g) {
  for (int i = 0; i < cfg.dim; ++i) {
    const float x = HalfToFloat(LoadAs<uint16_t>(a, i));
    const float y = HalfToFloat(LoadAs<uint16_t>(g, i));
    if (cfg.tolerance ? !(std::fabs(static_cast<double>(x) - static_cast<double>(y)) <= cfg.eps)
                      : !(x == y)) {
      return false;
    }
  }
  return true;
}

// Does achieved vector `a` reach goal `g` (dim elements each, raw bytes of the goal dtype)?
inline bool BuiltinMatch(const GoalConfig& cfg, const uint8_t* a, const uint8_t* g) {
  switch (cfg.dtype) {
    case GoalDType::kFloat32:
      return MatchTyped<float>(cfg, a, g);
    case GoalDType::kFloat16:
      return MatchHalf(cfg, a, g);
    case GoalDType::kUInt8:
    case GoalDType::kBool:
      return MatchTyped<uint8_t>(cfg, a, g);
    case GoalDType::kInt32:
      return MatchTyped<int32_t>(cfg, a, g);
    case GoalDType::kInt64:
      return MatchTyped<int64_t>(cfg, a, g);
  }
  return false;
}

// Slow path: a user predicate computes the whole (n, k) match matrix at once.
// Arguments: achieved rows (n * dim values, contiguous), instruction (k * dim), n, output
// (n * k bytes, 0/1).
using MatchMatrixFn =
    std::function<void(const uint8_t* achieved, const uint8_t* instruction, int64_t n,
                       uint8_t* out)>;

enum class Strategy : int { kNone = 0, kSome = 1, kAll = 2, kFinal = 3, kFuture = 4 };

struct RelabelParams {
  Strategy strategy = Strategy::kNone;
  double probability = 0.0;
};

// Which goals to replace: (goal index, achieved row) pairs; empty = keep the instruction.
// `c` = goals completed by row T under the original instruction, `r` = row of the last one
// completed inside the piece (0 if none), s = window start.
inline std::vector<std::pair<int, int64_t>> PlanRelabel(const RelabelParams& p, uint64_t seed,
                                                        uint64_t counter, uint64_t window,
                                                        int active0, int c, int k, int64_t r,
                                                        int64_t T, int64_t s) {
  std::vector<std::pair<int, int64_t>> plan;
  (void)active0;
  const int64_t lo = std::max(r, s);
  const int64_t u = k - c, n = T - lo;
  if (u <= 0 || n <= 0 || p.strategy == Strategy::kNone) return plan;
  if (!(UniformFloat(Draw(seed, counter, window, kDrawCoin)) < p.probability)) return plan;
  if (p.strategy == Strategy::kFinal) {
    plan.emplace_back(c, T);
    return plan;
  }
  if (p.strategy == Strategy::kFuture) {
    plan.emplace_back(c, lo + 1 + static_cast<int64_t>(UniformInt(
                                      Draw(seed, counter, window, kDrawCount),
                                      static_cast<uint64_t>(n))));
    return plan;
  }
  const int64_t cap = std::min(u, n);
  int64_t m = cap;
  if (p.strategy == Strategy::kSome) {
    m = 1 + static_cast<int64_t>(
                UniformInt(Draw(seed, counter, window, kDrawCount), static_cast<uint64_t>(cap)));
  }
  // Floyd's sampling of m distinct offsets in [0, n).
  std::vector<int64_t> chosen;
  chosen.reserve(static_cast<size_t>(m));
  for (int64_t i = 0, j = n - m; j < n; ++i, ++j) {
    int64_t t = static_cast<int64_t>(UniformInt(Draw(seed, counter, window, kDrawRows + i),
                                                static_cast<uint64_t>(j + 1)));
    bool seen = std::find(chosen.begin(), chosen.end(), t) != chosen.end();
    chosen.push_back(seen ? j : t);
  }
  std::sort(chosen.begin(), chosen.end());
  for (int64_t i = 0; i < m; ++i) plan.emplace_back(c + static_cast<int>(i), lo + 1 + chosen[i]);
  return plan;
}

}  // namespace amago

#endif  // AMAGO_FAST_BUFFER_GOALS_H_
