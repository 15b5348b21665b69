// CSR with bf16 values and bf16 activations for batches from CsrFamily::kBf16From, read
// natively with vdpbf16ps (bf16_pair_tiles.h): each row's nonzeros, two at a time, against
// the transposed bf16 tiles of x; by column chunks when the matrix comes with its chunked copy
// (csr_chunks.h). Included only by csr_spmm_avx512bf16.cpp.
#pragma once

#include <cstdint>

#include "bf16_pair_tiles.h"
#include "csr_chunks.h"
#include "csr_spmm.h"

namespace sparsekern::cpu::csrbf16 {
namespace {

// The canonical buffers: one chunk of all the columns.
template <typename Tiles, typename IndexT>
void product(const CsrMatrix& w, const DenseArgs& a) {
  const auto* cols = static_cast<const IndexT*>(w.col_idx);
  const auto* values = static_cast<const uint16_t*>(w.values);
  Tiles::batched(a, w.rows, w.cols, w.row_ptr, 1, 1, w.cols,
                 [&](int64_t r, int64_t, auto& sums, const uint16_t* const* tiles) {
                   const int64_t j0 = w.row_ptr[r], n = w.row_ptr[r + 1] - j0;
                   const IndexT* row_cols = cols + j0;
                   sums.add(tiles, values + j0, n, [&](int64_t j) { return int64_t(row_cols[j]) << Tiles::kShift; });
                   return n;
                 });
}

static_assert(kChunkRows == bf16tiles::kRowBlock, "a block of rows takes the chunks in turn");
static_assert(kBf16SegmentAlign % bf16tiles::PairTiles<16>::RowSums<1>::kWhole == 0 &&
                  kBf16SegmentAlign % bf16tiles::PairTiles<32>::RowSums<1>::kWhole == 0,
              "a bf16 copy's segments come in whole unrolled steps");

// The chunked copy: bf16 segments come padded to whole unrolled steps (kBf16SegmentAlign).
template <typename Tiles>
void chunked_product(const CsrMatrix& w, const DenseArgs& a) {
  const CsrChunks& c = *w.chunks;
  Tiles::batched(a, w.rows, w.cols, w.row_ptr, kChunkRows, c.chunks, kChunkCols,
                 [&](int64_t r, int64_t chunk, auto& sums, const uint16_t* const* tiles) {
                   const int64_t at = c.segment(r, chunk), j0 = c.starts[at], n = c.starts[at + 1] - j0;
                   const uint8_t* columns = c.columns.data() + j0;
                   sums.template add<true>(tiles, c.values<uint16_t>() + j0, n,
                                           [&](int64_t j) { return int64_t(columns[j]) << Tiles::kShift; });
                   return n;
                 });
}

inline void batched(const CsrMatrix& w, const DenseArgs& a) {
  bf16tiles::with_lanes(a.batch, [&](auto tiles) {
    using Tiles = decltype(tiles);
    if (w.chunks) chunked_product<Tiles>(w, a);
    else if (w.index_type == IndexType::u16) product<Tiles, uint16_t>(w, a);
    else product<Tiles, int32_t>(w, a);
  });
}

inline int64_t workspace_floats(const CsrMatrix& w, int64_t batch) { return bf16tiles::workspace_floats(w.cols, batch); }

}  // namespace
}  // namespace sparsekern::cpu::csrbf16
