// Builds the column-chunked copy of a CSR matrix (csr_chunks.h). Compiled without ISA flags:
// it runs once per layer, not per call.
#include "csr_chunks.h"

#include <cstring>

namespace sparsekern::cpu {

namespace {

template <typename IndexT>
void fill(const CsrMatrix& w, CsrChunks& c) {
  const auto* cols = static_cast<const IndexT*>(w.col_idx);
  const auto* values = static_cast<const char*>(w.values);
  const size_t value_bytes = w.value_type == ValueType::f32 ? 4 : 2;
  const int64_t align = w.value_type == ValueType::bf16 ? kBf16SegmentAlign : 1;
  // Count each segment's nonzeros into the entry after it, pad, sum, then place each nonzero.
  c.starts.assign(size_t(c.row_blocks * c.chunks * kChunkRows + 1), 0);
  for (int64_t r = 0; r < w.rows; ++r)
    for (int64_t j = w.row_ptr[r]; j < w.row_ptr[r + 1]; ++j)
      ++c.starts[size_t(c.segment(r, cols[j] / kChunkCols) + 1)];
  for (size_t k = 1; k < c.starts.size(); ++k)
    c.starts[k] = c.starts[k - 1] + (c.starts[k] + align - 1) / align * align;
  const int64_t entries = c.starts.back();
  c.columns.assign(size_t(entries), 0);
  c.value_words.assign((size_t(entries) * value_bytes + 3) / 4, 0);  // padding: zero weights
  char* placed = reinterpret_cast<char*>(c.value_words.data());
  std::vector<int64_t> next(c.starts.begin(), c.starts.end() - 1);
  for (int64_t r = 0; r < w.rows; ++r)
    for (int64_t j = w.row_ptr[r]; j < w.row_ptr[r + 1]; ++j) {
      const int64_t col = cols[j];
      const int64_t at = next[size_t(c.segment(r, col / kChunkCols))]++;
      c.columns[size_t(at)] = uint8_t(col % kChunkCols);
      std::memcpy(placed + size_t(at) * value_bytes, values + size_t(j) * value_bytes, value_bytes);
    }
  // A padding entry repeats its segment's last column, whose tile line the kernel has just read.
  for (size_t e = 0; e + 1 < c.starts.size(); ++e)
    for (int64_t at = next[e]; at < c.starts[e + 1]; ++at) c.columns[size_t(at)] = c.columns[size_t(next[e] - 1)];
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
