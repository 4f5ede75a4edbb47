// Counter-based random numbers shared bit-for-bit with amago_fast/relabel.py.
//
// Every draw is a pure function of (seed, sample call counter, window, draw index), so windows
// do not depend on the number of gather threads or on their scheduling.
#ifndef AMAGO_FAST_BUFFER_RNG_H_
#define AMAGO_FAST_BUFFER_RNG_H_

#include <cstdint>

namespace amago {

inline constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ULL;

// Draw indices inside one window (see amago_fast/relabel.py).
inline constexpr uint64_t kDrawTrajectory = 0;
inline constexpr uint64_t kDrawStart = 1;
inline constexpr uint64_t kDrawCoin = 2;
inline constexpr uint64_t kDrawCount = 3;
inline constexpr uint64_t kDrawRows = 4;

// SplitMix64 finaliser.
inline uint64_t Mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

inline uint64_t Draw(uint64_t seed, uint64_t counter, uint64_t window, uint64_t index) {
  uint64_t x = Mix64(seed + kGolden * (counter + 1));
  x = Mix64(x + kGolden * (window + 1));
  return Mix64(x + kGolden * (index + 1));
}

// [0, n) by multiply-shift (Lemire); n >= 1.
inline uint64_t UniformInt(uint64_t x, uint64_t n) {
  return static_cast<uint64_t>((static_cast<unsigned __int128>(x) * n) >> 64);
}

// [0, 1) with 53 random bits.
inline double UniformFloat(uint64_t x) {
  return static_cast<double>(x >> 11) * (1.0 / 9007199254740992.0);
}

}  // namespace amago

#endif  // AMAGO_FAST_BUFFER_RNG_H_
