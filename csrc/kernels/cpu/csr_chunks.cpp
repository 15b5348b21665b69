// Builds the column-chunked copy of a CSR matrix (csr_chunks.h). Compiled without ISA flags:
// it runs once per layer, not per call.
#include "csr_chunks.h"

namespace sparsekern::cpu {

namespace {

template <typename IndexT>
void fill(const CsrMatrix& w, CsrChunks& c) {
  const auto* cols = static_cast<const IndexT*>(w.col_idx);
  const auto* values = static_cast<const uint16_t*>(w.values);
  const int64_t nnz = w.row_ptr[w.rows];
  c.columns.resize(size_t(nnz));
  c.values.resize(size_t(nnz));
  // Count each segment's nonzeros into the entry after it, sum, then place each nonzero.
  c.starts.assign(size_t(c.row_blocks * c.chunks * kChunkRows + 1), 0);
  for (int64_t r = 0; r < w.rows; ++r)
    for (int64_t j = w.row_ptr[r]; j < w.row_ptr[r + 1]; ++j) ++c.starts[size_t(c.segment(r, cols[j] / kChunkCols) + 1)];
  for (size_t k = 1; k < c.starts.size(); ++k) c.starts[k] += c.starts[k - 1];
  std::vector<int64_t> next(c.starts.begin(), c.starts.end() - 1);
  for (int64_t r = 0; r < w.rows; ++r)
    for (int64_t j = w.row_ptr[r]; j < w.row_ptr[r + 1]; ++j) {
      const int64_t col = cols[j];
      const int64_t at = next[size_t(c.segment(r, col / kChunkCols))]++;
      c.columns[size_t(at)] = uint8_t(col % kChunkCols);
      c.values[size_t(at)] = values[j];
    }
}

}  // namespace

CsrChunks build_csr_chunks(const CsrMatrix& w) {
  CsrChunks c;
  c.chunks = (w.cols + kChunkCols - 1) / kChunkCols;
  c.row_blocks = (w.rows + kChunkRows - 1) / kChunkRows;
  if (w.index_type == IndexType::u16) fill<uint16_t>(w, c);
  else fill<int32_t>(w, c);
  return c;
}

}  // namespace sparsekern::cpu
