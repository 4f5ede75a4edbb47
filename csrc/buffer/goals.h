// The multi-goal rule (amago_fast/spaces.py GoalSpec) and hindsight relabeling plans
// (amago_fast/relabel.py), bit-for-bit the NumPy reference's arithmetic.
#ifndef AMAGO_FAST_BUFFER_GOALS_H_
#define AMAGO_FAST_BUFFER_GOALS_H_

#include <algorithm>
#include <climits>
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

// Exact-match key of a goal vector (`dim` elements of the goal dtype): two vectors are equal
// under the built-in exact match (`==` per element, so -0 == 0) iff their keys' inputs are
// equal, so equal vectors hash equal. Returns false if an element is NaN: such a vector
// equals nothing, itself included.
inline bool ExactKey(const GoalConfig& cfg, const uint8_t* a, uint64_t* hash) {
  uint64_t h = kGolden;
  for (int i = 0; i < cfg.dim; ++i) {
    uint64_t v = 0;
    switch (cfg.dtype) {
      case GoalDType::kFloat32: {
        uint32_t bits = LoadAs<uint32_t>(a, i);
        if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return false;
        if ((bits & 0x7FFFFFFFu) == 0) bits = 0;
        v = bits;
        break;
      }
      case GoalDType::kFloat16: {
        uint16_t bits = LoadAs<uint16_t>(a, i);
        if ((bits & 0x7FFFu) > 0x7C00u) return false;
        if ((bits & 0x7FFFu) == 0) bits = 0;
        v = bits;
        break;
      }
      case GoalDType::kUInt8:
      case GoalDType::kBool:
        v = a[i];
        break;
      case GoalDType::kInt32:
        v = LoadAs<uint32_t>(a, i);
        break;
      case GoalDType::kInt64:
        v = LoadAs<uint64_t>(a, i);
        break;
    }
    h = (h ^ v) * 0x100000001B3ULL + kGolden;
  }
  *hash = Mix64(h);
  return true;
}

// Per-piece tables for relabeling with the built-in match, built once when the piece is
// committed and immutable afterwards: gathers read them under the store's shared lock with no
// further synchronisation, and they are freed with their piece when it is evicted.
//
// With them a relabeled window's replay (relabel.py step 3) is a few binary searches instead
// of a goal check on every row from the last original success to the window's end. Measured
// with benchmarks/bench_buffer.py (B=24, k=3, 2-core box under load): relabeled / plain gather
// went from 2.1x to 1.1-1.2x at L=256 and from 1.7x to 0.9x at L=1024 (relabeled episodes end
// early, so fewer rows are copied). Cost: ~9 ns and <= 12 bytes per committed row.
struct GoalIndex {
  static constexpr int64_t kNever = INT64_MAX;

  // Step 1, done once: rows where the stored instruction's goals active0, active0+1, ... are
  // completed under the built-in match.
  std::vector<int64_t> reach;

  // Exact match only (`classes` false for the tolerance match, which is not an equivalence,
  // and for pieces too long for int32 rows): achieved rows 1..T grouped by equal value. Rows
  // of class c, ascending: class_rows[class_start[c] .. class_start[c + 1]). row_class[t]:
  // class of row t (-1: row 0, or a NaN that matches nothing). goal_class[g]: the class equal
  // to goal g of the stored instruction (-1: no row reaches it).
  bool classes = false;
  std::vector<int32_t> row_class, class_start, class_rows, goal_class;

  // First row > `after` in class c (kNever if none).
  int64_t NextInClass(int32_t c, int64_t after) const {
    if (c < 0) return kNever;
    const int32_t* lo = class_rows.data() + class_start[c];
    const int32_t* hi = class_rows.data() + class_start[c + 1];
    const int32_t* it = std::upper_bound(lo, hi, after, [](int64_t v, int32_t row) {
      return v < static_cast<int64_t>(row);
    });
    return it == hi ? kNever : static_cast<int64_t>(*it);
  }
};

// Builds the GoalIndex of a piece of `rows` rows: `achieved(t)` points at row t's achieved
// vector, `instruction` at row 0's goal field (k vectors), `active0` = row 0's goal_active.
template <typename AchievedRow>
GoalIndex BuildGoalIndex(const GoalConfig& cfg, int64_t rows, const uint8_t* instruction,
                         int32_t active0, const AchievedRow& achieved) {
  GoalIndex gi;
  const size_t goal_stride = static_cast<size_t>(cfg.dim) * GoalDTypeSize(cfg.dtype);
  gi.classes = !cfg.tolerance && rows <= INT32_MAX;
  if (gi.classes) {
    // Open addressing, load <= 1/2; a slot holds a class id, the class's first row is its
    // representative (compared with BuiltinMatch, so hash collisions never merge classes).
    size_t cap = 16;
    while (cap < 2 * static_cast<size_t>(rows)) cap <<= 1;
    std::vector<int32_t> slot(cap, -1);
    std::vector<int32_t> rep;
    std::vector<uint64_t> rep_hash;
    std::vector<int32_t> count;
    auto find = [&](const uint8_t* v, uint64_t h, bool insert, int32_t row) -> int32_t {
      size_t i = h & (cap - 1);
      while (true) {
        const int32_t c = slot[i];
        if (c < 0) {
          if (!insert) return -1;
          const int32_t id = static_cast<int32_t>(rep.size());
          slot[i] = id;
          rep.push_back(row);
          rep_hash.push_back(h);
          count.push_back(0);
          return id;
        }
        if (rep_hash[c] == h && BuiltinMatch(cfg, achieved(rep[c]), v)) return c;
        i = (i + 1) & (cap - 1);
      }
    };
    gi.row_class.assign(static_cast<size_t>(rows), -1);
    for (int64_t t = 1; t < rows; ++t) {
      const uint8_t* v = achieved(t);
      uint64_t h;
      if (!ExactKey(cfg, v, &h)) continue;
      const int32_t c = find(v, h, true, static_cast<int32_t>(t));
      gi.row_class[t] = c;
      ++count[c];
    }
    gi.class_start.assign(rep.size() + 1, 0);
    for (size_t c = 0; c < rep.size(); ++c) gi.class_start[c + 1] = gi.class_start[c] + count[c];
    gi.class_rows.resize(static_cast<size_t>(gi.class_start.back()));
    std::vector<int32_t> fill(gi.class_start.begin(), gi.class_start.end() - 1);
    for (int64_t t = 1; t < rows; ++t) {
      if (gi.row_class[t] >= 0) gi.class_rows[fill[gi.row_class[t]]++] = static_cast<int32_t>(t);
    }
    gi.goal_class.assign(static_cast<size_t>(cfg.k), -1);
    for (int g = 0; g < cfg.k; ++g) {
      const uint8_t* v = instruction + g * goal_stride;
      uint64_t h;
      if (ExactKey(cfg, v, &h)) gi.goal_class[g] = find(v, h, false, -1);
    }
    int64_t pos = 0;
    for (int a = active0; a < cfg.k; ++a) {
      pos = gi.NextInClass(gi.goal_class[a], pos);
      if (pos == GoalIndex::kNever) break;
      gi.reach.push_back(pos);
    }
    return gi;
  }
  int active = active0;
  for (int64_t t = 1; t < rows && active < cfg.k; ++t) {
    if (BuiltinMatch(cfg, achieved(t), instruction + active * goal_stride)) {
      gi.reach.push_back(t);
      ++active;
    }
  }
  return gi;
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

// Which goals to replace: goals c, c+1, ..., c+m-1 get the achieved values of rows[0..m);
// returns m (0 = keep the instruction). `rows` has room for k entries (m <= k - c). `c` = goals
// completed by row T under the original instruction, `r` = row of the last one completed
// inside the piece (0 if none), s = window start. Writes into the caller's array: a relabeled
// window allocates nothing.
inline int PlanRelabel(const RelabelParams& p, uint64_t seed, uint64_t counter, uint64_t window,
                       int c, int k, int64_t r, int64_t T, int64_t s, int64_t* rows) {
  const int64_t lo = std::max(r, s);
  const int64_t u = k - c, n = T - lo;
  if (u <= 0 || n <= 0 || p.strategy == Strategy::kNone) return 0;
  if (!(UniformFloat(Draw(seed, counter, window, kDrawCoin)) < p.probability)) return 0;
  if (p.strategy == Strategy::kFinal) {
    rows[0] = T;
    return 1;
  }
  if (p.strategy == Strategy::kFuture) {
    rows[0] = lo + 1 + static_cast<int64_t>(UniformInt(Draw(seed, counter, window, kDrawCount),
                                                       static_cast<uint64_t>(n)));
    return 1;
  }
  const int64_t cap = std::min(u, n);
  int64_t m = cap;
  if (p.strategy == Strategy::kSome) {
    m = 1 + static_cast<int64_t>(
                UniformInt(Draw(seed, counter, window, kDrawCount), static_cast<uint64_t>(cap)));
  }
  // Floyd's sampling of m distinct offsets in [0, n).
  for (int64_t i = 0, j = n - m; j < n; ++i, ++j) {
    const int64_t t = static_cast<int64_t>(UniformInt(Draw(seed, counter, window, kDrawRows + i),
                                                      static_cast<uint64_t>(j + 1)));
    rows[i] = std::find(rows, rows + i, t) != rows + i ? j : t;
  }
  std::sort(rows, rows + m);
  for (int64_t i = 0; i < m; ++i) rows[i] += lo + 1;
  return static_cast<int>(m);
}

}  // namespace amago

#endif  // AMAGO_FAST_BUFFER_GOALS_H_
