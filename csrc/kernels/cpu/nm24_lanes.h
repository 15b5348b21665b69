// A second, in-memory layout of a 2:4 matrix with bf16 values, for the kernel that puts 16
// output rows in the lanes of a zmm (nm24_linear_bf16_lanes.h).
//
// The canonical buffers (Nm24Matrix::values, ::meta) stay what files and state_dict hold;
// this copy is derived from them by whoever owns the matrix (the Python module builds it
// on the first call that wants it, so a layer that only ever sees batch 1 never pays its
// memory) and points Nm24Matrix::lanes at it.
//
// Rows are taken 16 at a time (a block; the last is padded with zero rows). For block k and
// group g (4 columns), the 16 rows' kept value pairs are 16 consecutive 32-bit words
// (one zmm: 64 bytes) and their positions 8 consecutive bytes, row i's nibble p0 | p1 << 2
// at bits 4 * (i % 2) of byte i / 2. Blocks follow each other, so a kernel streams a
// block's W contiguously. 4.5 bytes per row and group, as the canonical buffers take.
#pragma once

#include <cstdint>
#include <vector>

#include "nm24_linear.h"

namespace sparsekern::cpu {

inline constexpr int64_t kLaneRows = 16;
inline constexpr int64_t kLaneNibbleBytes = kLaneRows / 2;

struct Nm24Lanes {
  int64_t blocks = 0;            // ceil(rows / 16)
  int64_t groups = 0;            // cols / 4
  std::vector<uint32_t> pairs;   // [blocks][groups][16] bf16 value pairs
  std::vector<uint8_t> nibbles;  // [blocks][groups][8] positions, two per byte, low nibble first
};

// The copy of `w` (bf16 values; cols % 4 == 0, as every Nm24Matrix). Padding rows hold zero
// values at positions (0, 1).
Nm24Lanes build_nm24_lanes(const Nm24Matrix& w);

}  // namespace sparsekern::cpu
