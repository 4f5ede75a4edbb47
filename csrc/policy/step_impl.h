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
//
// The code lives in guard-less parts under step/, included here in dependency order: vec.h
// (vector types, AMAGO_LOAD / AMAGO_STORE), dense.h (GEMM, LayerNorm, LeakyReLU), attention.h
// (softmax and the KV-cache decode), layers.h (field loads, MLP plans, image CNN, positions),
// body.h (StepBody). Each part sees everything included before it.

// NOLINTBEGIN(build/include)
#include "policy/step/vec.h"
#include "policy/step/dense.h"
#include "policy/step/attention.h"
#undef AMAGO_LOAD
#undef AMAGO_STORE
#include "policy/step/layers.h"
#include "policy/step/body.h"
// NOLINTEND(build/include)
