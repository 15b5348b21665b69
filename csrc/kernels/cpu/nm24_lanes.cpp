// Builds the rows-in-lanes copy of a 2:4 matrix (nm24_lanes.h). Compiled without ISA flags:
// it runs once per layer, not per call.
#include "nm24_lanes.h"

#include <cstring>

namespace sparsekern::cpu {

Nm24Lanes build_nm24_lanes(const Nm24Matrix& w) {
  Nm24Lanes l;
  l.blocks = (w.rows + kLaneRows - 1) / kLaneRows;
  l.groups = w.cols / 4;
  const size_t words = size_t(l.blocks * l.groups * kLaneRows);
  l.pairs.assign(words, 0);
  constexpr uint8_t kPad = 0 | 1 << 2;  // positions (0, 1), for the padding rows' zeros
  l.nibbles.assign(words / 2, uint8_t(kPad | kPad << 4));
  const int64_t meta_bytes = nm24_meta_bytes(w.cols), half = w.cols / 2;
  const auto* values = static_cast<const uint16_t*>(w.values);
  for (int64_t r = 0; r < w.rows; ++r) {
    const int64_t block = r / kLaneRows, lane = r % kLaneRows;
    for (int64_t g = 0; g < l.groups; ++g) {
      const size_t at = size_t((block * l.groups + g) * kLaneRows + lane);
      std::memcpy(&l.pairs[at], values + r * half + 2 * g, 4);
      const uint8_t nibble = (w.meta[r * meta_bytes + g / 2] >> (4 * (g % 2))) & 15;
      uint8_t& byte = l.nibbles[at / 2];
      byte = uint8_t(lane % 2 ? (byte & 0x0f) | nibble << 4 : (byte & 0xf0) | nibble);
    }
  }
  return l;
}

}  // namespace sparsekern::cpu
