// CopyRow: one row of a field, copied with a fixed-size copy for the common row sizes.
#ifndef AMAGO_FAST_BUFFER_COPY_ROW_H_
#define AMAGO_FAST_BUFFER_COPY_ROW_H_

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace amago {

// Copies `bytes` bytes. The collector and the store copy rows one at a time (5 fields x 32 rows
// for a CartPole batch, several times over); a libc memcpy call with a run-time size costs
// ~15-30 instructions even for a 1- or 4-byte row, while a fixed-size copy is one load and one
// store. The switch on the row size predicts perfectly (a field's size never changes).
inline void CopyRow(uint8_t* dst, const uint8_t* src, size_t bytes) {
  switch (bytes) {
    case 1:
      *dst = *src;
      return;
    case 4:
      std::memcpy(dst, src, 4);
      return;
    case 8:
      std::memcpy(dst, src, 8);
      return;
    case 16:
      std::memcpy(dst, src, 16);
      return;
    default:
      std::memcpy(dst, src, bytes);
  }
}

}  // namespace amago

#endif  // AMAGO_FAST_BUFFER_COPY_ROW_H_
