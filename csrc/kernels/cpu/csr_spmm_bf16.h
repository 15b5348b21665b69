// CSR with bf16 values and bf16 activations for batches from CsrFamily::kBf16From, read
// natively with vdpbf16ps (bf16_pair_tiles.h): each row's nonzeros, two at a time, against
// the transposed bf16 tiles of x. Included only by csr_spmm_avx512bf16.cpp.
#pragma once

#include <cstdint>

#include "bf16_pair_tiles.h"
#include "csr_spmm.h"

namespace sparsekern::cpu::csrbf16 {
namespace {

template <typename Tiles, typename IndexT>
void product(const CsrMatrix& w, const DenseArgs& a) {
  const auto* cols = static_cast<const IndexT*>(w.col_idx);
  const auto* values = static_cast<const uint16_t*>(w.values);
  Tiles::batched(a, w.rows, w.cols, w.row_ptr, [&](int64_t r, auto& sums, const uint16_t* const* tiles) {
    const int64_t j0 = w.row_ptr[r];
    const IndexT* row_cols = cols + j0;
    sums.add(tiles, values + j0, w.row_ptr[r + 1] - j0,
             [&](int64_t j) { return int64_t(row_cols[j]) << Tiles::kShift; });
  });
}

inline void batched(const CsrMatrix& w, const DenseArgs& a) {
  bf16tiles::with_lanes(a.batch, [&](auto tiles) {
    using Tiles = decltype(tiles);
    if (w.index_type == IndexType::u16) product<Tiles, uint16_t>(w, a);
    else product<Tiles, int32_t>(w, a);
  });
}

inline int64_t workspace_floats(const CsrMatrix& w, int64_t batch) { return bf16tiles::workspace_floats(w.cols, batch); }

}  // namespace
}  // namespace sparsekern::cpu::csrbf16
