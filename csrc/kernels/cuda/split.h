// How the small-batch kernels cut their work: every warp of a persistent grid takes pieces
// of output rows, in turn, so a short layer still fills every SM and a long row is shared by
// several warps instead of being walked by one. Plain arithmetic, for host and device: the
// host tests run it on the CPU (csrc/tests/test_cuda_split.cpp).
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define SPARSEKERN_HD __host__ __device__
#else
#define SPARSEKERN_HD
#endif

namespace sparsekern::gpu {

struct UnitRange {
  int64_t begin;
  int64_t end;
};

// Piece `piece` of `pieces` equal cuts of `units` (2:4 rows are uniform, so no table is
// needed): the cuts differ by at most one unit, cover 0 .. units in order, and are empty
// only when pieces > units.
SPARSEKERN_HD inline UnitRange piece_range(int64_t units, int64_t pieces, int64_t piece) {
  return {units * piece / pieces, units * (piece + 1) / pieces};
}

// The persistent grid: at most `resident_blocks` blocks (what the SMs hold at once), never
// more than `items` needs; each warp then takes items warp, warp + total warps, ...
SPARSEKERN_HD inline int64_t persistent_blocks(int64_t items, int warps_per_block, int64_t resident_blocks) {
  const int64_t needed = (items + warps_per_block - 1) / warps_per_block;
  return needed < resident_blocks ? needed : resident_blocks;
}

}  // namespace sparsekern::gpu
