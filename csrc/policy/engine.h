// Native forward step of the stock amago_fast Agent for CPU rollouts (pure C++, no Python).
//
// One call = Agent.act's network part for b envs: timestep features (normalised vector
// observations, raw categorical fields, previous action/reward, boundary flag) → timestep MLP
// → Transformer decode per layer over the caller's ring KV caches (written in place, counts
// incremented: the same storage the PyTorch path uses) or the memory-free FF encoder → output
// LayerNorm → actor MLP for the main gamma → distribution parameters (b, P). Sampling stays in
// Python. Weights are borrowed pointers (the adapter keeps their arrays alive); the model is
// immutable after construction and each Step validates nothing: the adapter checks every input
// first, so a rejected call changes no state.
#ifndef AMAGO_FAST_POLICY_ENGINE_H_
#define AMAGO_FAST_POLICY_ENGINE_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#include "policy/model.h"

namespace amago {
namespace policy {

#define AMAGO_POLICY_LANES 4
namespace simd_base {
#include "policy/step_impl.h"  // NOLINT(build/include): compiled once per target, see there
}  // namespace simd_base
#undef AMAGO_POLICY_LANES

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define AMAGO_POLICY_HAS_AVX2_PATH 1
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define AMAGO_POLICY_LANES 8
namespace simd_avx2 {
#include "policy/step_impl.h"  // NOLINT(build/include)
}  // namespace simd_avx2
#undef AMAGO_POLICY_LANES
#pragma GCC pop_options

inline bool CpuHasAvx2() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#endif

// A model plus its per-engine caches. Not thread-safe: one Step at a time per engine.
class PolicyEngine {
 public:
  // use_simd: take the AVX2+FMA build when the CPU has it (false: the baseline build; tests
  // compare both).
  PolicyEngine(Model model, bool use_simd) : m_(std::move(model)) {
    PackModel(&m_);
#ifdef AMAGO_POLICY_HAS_AVX2_PATH
    avx2_ = use_simd && CpuHasAvx2();
#else
    (void)use_simd;
#endif
  }

  const Model& model() const { return m_; }
  bool avx2() const { return avx2_; }

  void Step(const StepIO& io) {
#ifdef AMAGO_POLICY_HAS_AVX2_PATH
    if (avx2_) {
      simd_avx2::StepBody(m_, io, &scratch_, &sin_table_);
      return;
    }
#endif
    simd_base::StepBody(m_, io, &scratch_, &sin_table_);
  }

 private:
  Model m_;
  bool avx2_ = false;
  Scratch scratch_;
  std::vector<float> sin_table_;
};

}  // namespace policy
}  // namespace amago

#endif  // AMAGO_FAST_POLICY_ENGINE_H_
