// Native forward step of the stock amago_fast Agent for CPU rollouts (pure C++, no Python).
//
// One call = Agent.act's network part for b envs: timestep features (normalised vector
// observations, raw categorical fields, previous action/reward, boundary flag) → timestep MLP
// → Transformer decode per layer over the caller's ring KV caches (written in place, counts
// incremented: the same storage the PyTorch path uses), a GRU over the caller's hidden state
// (rows updated in place) or the memory-free FF encoder → output
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
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__)) && !defined(AMAGO_FAST_GENERIC)
#include <immintrin.h>
#endif

#include "policy/model.h"
#include "policy/team.h"

namespace amago {
namespace policy {

#define AMAGO_POLICY_LANES 4
namespace simd_base {
#include "policy/step_impl.h"  // NOLINT(build/include): compiled once per target, see there
}  // namespace simd_base
#undef AMAGO_POLICY_LANES

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__)) && !defined(AMAGO_FAST_GENERIC)
#define AMAGO_POLICY_HAS_AVX2_PATH 1
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#define AMAGO_POLICY_LANES 8
namespace simd_avx2 {
#include "policy/step_impl.h"  // NOLINT(build/include)
}  // namespace simd_avx2
#undef AMAGO_POLICY_LANES
#pragma GCC pop_options

inline bool CpuHasAvx2() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
         __builtin_cpu_supports("f16c");
}
#endif

// A model plus its per-engine caches. Not thread-safe: one Step at a time per engine.
class PolicyEngine {
 public:
  // use_simd: take the AVX2+FMA build when the CPU has it (false: the baseline build; tests
  // compare both). threads: attention runs on a shared team of this many threads (1: inline)
  // once a layer reads at least parallel_min key floats (Σ len x heads x head_dim; < 0: the
  // measured default kParallelMinFloats). Results do not depend on either.
  PolicyEngine(Model model, bool use_simd, int threads = 1, int64_t parallel_min = -1)
      : m_(std::move(model)),
        team_(threads > 1 ? Team::Shared(threads) : nullptr),
        parallel_min_(parallel_min < 0 ? kParallelMinFloats : parallel_min) {
    PackModel(&m_);
#ifdef AMAGO_POLICY_HAS_AVX2_PATH
    avx2_ = use_simd && CpuHasAvx2();
#else
    (void)use_simd;
#endif
  }

  const Model& model() const { return m_; }
  bool avx2() const { return avx2_; }
  int threads() const { return team_ != nullptr ? team_->size() : 1; }
  // Layers whose attention was split across the team so far.
  int64_t split_runs() const { return backoff_.split_runs; }

  // Work of one layer's attention (key floats read, Σ len x H x D; values add as much again)
  // from which it is split across the team. A split costs ~10-35 µs here (waking or handing
  // off to the worker on a 2-vCPU VM) and halves the attention time: the tiny model (8 envs,
  // 4 heads x 16) read 1 MB per layer at step 1024 in ~130 µs single-threaded, so splitting
  // gains from ~256 keys per (env, head) on (256k floats at 8 x 4 x 16 per key); below it a
  // short-context rollout never wakes the worker.
  static constexpr int64_t kParallelMinFloats = int64_t{1} << 18;

  void Step(const StepIO& io) {
#ifdef AMAGO_POLICY_HAS_AVX2_PATH
    if (avx2_) {
      simd_avx2::StepBody(m_, io, &scratch_, &sin_table_, team_, &backoff_, parallel_min_);
      return;
    }
#endif
    simd_base::StepBody(m_, io, &scratch_, &sin_table_, team_, &backoff_, parallel_min_);
  }

 private:
  Model m_;
  bool avx2_ = false;
  Team* team_ = nullptr;
  TeamBackoff backoff_;
  int64_t parallel_min_ = 0;
  Scratch scratch_;
  std::vector<float> sin_table_;
};

}  // namespace policy
}  // namespace amago

#endif  // AMAGO_FAST_POLICY_ENGINE_H_
