// A second, in-memory layout of a CSR matrix, for the batched paths (bf16: csr_spmm_bf16.h on
// bf16_pair_tiles.h; float32 activations: csr_spmm_simd.h): the nonzeros regrouped by chunks
// of kChunkCols columns.
//
// Without it each row walks its nonzeros over the whole transposed tile of x (bf16: 128 KiB
// for 16 lanes at 4096 columns, 256 KiB per 32-lane tile; float32 twice that), which L1
// cannot hold: every row reloads the lines it touches from L2. With it, a block of rows
// multiplies one chunk of the tile (bf16: 8 KiB at 16 lanes, 16 KiB per 32-lane tile) before
// the next chunk, so the chunk stays in L1, and a column within a chunk fits a byte (a byte
// per nonzero less than CSR's uint16 indices). The price is a partial sum per row and chunk,
// which is why it pays only on rows with many nonzeros per chunk (CsrFamily::wants_chunks).
//
// The canonical buffers (CsrMatrix::row_ptr, col_idx, values) stay what files and state_dict
// hold; this copy is derived from them by whoever owns the matrix (the Python module builds it
// on the first call that wants it) and points CsrMatrix::chunks at it.
#pragma once

#include <cstdint>
#include <vector>

#include "csr_spmm.h"

namespace sparsekern::cpu {

inline constexpr int64_t kChunkCols = 256;  // a column within a chunk is a uint8
// Rows per block: the native bf16 path's output row block; the float32 path's blocks (64 rows
// with avx512, 32 with avx2) are whole numbers of them.
inline constexpr int64_t kChunkRows = 32;
// With bf16 values, each segment (a row's nonzeros in one chunk) takes a whole multiple of this
// many entries, padded with zero weights at its last column, so that the native bf16 path runs
// whole unrolled steps (bf16_pair_tiles.h): the loops for a segment's last few nonzeros
// mispredicted on nearly every segment. C++ A/B on Zen 4, 2 threads, padded / not, batches 2-16:
// 1.02-1.16x at 20-30% density (4096 x 4096, 11008 x 4096, 4096 x 11008), 1.05x at 50%; from
// batch 17 0.97-1.05x. Float32 values are not padded: the float32 path spends an FMA on every
// entry, and padded it ran 0.95-0.97x at 30%.
inline constexpr int64_t kBf16SegmentAlign = 8;

struct CsrChunks {
  int64_t chunks = 0;      // ceil(cols / kChunkCols)
  int64_t row_blocks = 0;  // ceil(rows / kChunkRows)
  // [row_blocks][chunks][kChunkRows] + 1: where the nonzeros of row kChunkRows * block + i in
  // chunk c start in `columns` and `values`; they end where the next entry starts (bf16 values:
  // padded, kBf16SegmentAlign). Rows past the matrix (the last block's padding) have none.
  std::vector<int64_t> starts;
  std::vector<uint8_t> columns;   // [entries] column - kChunkCols * chunk
  // [entries] the matrix's values (float or bf16 bits, as CsrMatrix::value_type), in the same
  // order; 0 where an entry pads its segment.
  std::vector<uint32_t> value_words;

  template <typename ValueT>
  const ValueT* values() const {
    return reinterpret_cast<const ValueT*>(value_words.data());
  }

  // The entry of starts for row r and chunk c: its nonzeros are [starts[e], starts[e + 1]).
  int64_t segment(int64_t r, int64_t c) const {
    return ((r / kChunkRows) * chunks + c) * kChunkRows + r % kChunkRows;
  }
};

// The copy of `w`. The columns of a row need not be sorted.
CsrChunks build_csr_chunks(const CsrMatrix& w);

}  // namespace sparsekern::cpu
