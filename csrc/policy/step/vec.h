// SIMD vocabulary of the step: kW-lane vector types, unaligned load/store, lane sums.
// Part of step_impl.h: deliberately WITHOUT an include guard (compiled once per SIMD target
// inside engine.h's namespaces; include only through step_impl.h).

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
