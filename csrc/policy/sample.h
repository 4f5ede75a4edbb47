// Sampling an action from the actor's categorical head (pure C++), for the rollout step: the
// rule of amago_fast.nets.native_step.sample_categorical_reference (NumPy), step for step, so the
// two differ only where expf's last bit decides which side of a CDF boundary u falls on.
#ifndef AMAGO_FAST_POLICY_SAMPLE_H_
#define AMAGO_FAST_POLICY_SAMPLE_H_

#include <cmath>
#include <cstdint>

namespace amago {
namespace policy {

// Row r of params (b, n): z = exp(p - max p) in float32, cdf = running float32 sum, target =
// u[r] * cdf[n - 1] in double; the action is the number of cdf entries below the target
// (capped at n - 1). A row with NaN or +inf compares false everywhere: action 0, as in NumPy.
inline void SampleCategorical(const float* params, int64_t b, int64_t n, const double* u,
                              int32_t* out) {
  for (int64_t r = 0; r < b; ++r) {
    const float* p = params + r * n;
    float m = p[0];
    bool nan = m != m;
    for (int64_t j = 1; j < n; ++j) {
      nan = nan || p[j] != p[j];
      m = p[j] > m ? p[j] : m;
    }
    if (nan) {  // NumPy's max propagates NaN: every z, cdf and the target are NaN
      out[r] = 0;
      continue;
    }
    // Two passes (total, then count) instead of storing the cdf: n is small (actions).
    float total = 0.0f;
    for (int64_t j = 0; j < n; ++j) total += std::exp(p[j] - m);
    const double target = u[r] * static_cast<double>(total);
    float cdf = 0.0f;
    int64_t below = 0;
    for (int64_t j = 0; j < n; ++j) {
      cdf += std::exp(p[j] - m);
      below += static_cast<double>(cdf) < target ? 1 : 0;
    }
    out[r] = static_cast<int32_t>(below < n - 1 ? below : n - 1);
  }
}

}  // namespace policy
}  // namespace amago

#endif  // AMAGO_FAST_POLICY_SAMPLE_H_
