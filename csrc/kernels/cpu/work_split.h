// How threads share a CSR product: by nonzeros, not rows, so one dense row cannot leave
// the other threads idle.
#pragma once

#include <algorithm>
#include <cstdint>

// Internal linkage on purpose: this header is compiled into translation units with
// different ISA flags, and one shared inline copy could carry AVX-512 code into the
// scalar path (the linker keeps any one of them).
namespace sparsekern::cpu {
namespace {

// First row of part `part` of `parts` with about equal nonzeros (part == parts gives rows).
inline int64_t nnz_balanced_row(const int64_t* row_ptr, int64_t rows, int part, int parts) {
  if (part <= 0) return 0;
  if (part >= parts) return rows;
  const int64_t nnz = row_ptr[rows];
  // Split at equal shares of nonzeros plus one per row, so empty rows still spread out.
  const double target = double(nnz + rows) * part / parts;
  int64_t lo = 0, hi = rows;
  while (lo < hi) {  // first row r with row_ptr[r] + r >= target
    const int64_t mid = (lo + hi) / 2;
    if (double(row_ptr[mid] + mid) < target) lo = mid + 1; else hi = mid;
  }
  return lo;
}

// The same, rounded down to a multiple of `align` (the last part still ends at rows): parts
// that start where a block of a chunked layout starts (csr_chunks.h).
inline int64_t nnz_balanced_row_aligned(const int64_t* row_ptr, int64_t rows, int part, int parts, int64_t align) {
  const int64_t r = nnz_balanced_row(row_ptr, rows, part, parts);
  return r == rows ? r : r / align * align;
}

// Threads worth starting: one per ~32k multiply-adds, since waking a thread costs a few
// microseconds, which a small layer at batch 1 does not repay.
inline int useful_threads(int64_t nnz, int64_t batch, int requested) {
  const int64_t work = nnz * std::max<int64_t>(batch, 1);
  const int64_t by_work = std::max<int64_t>(1, work / 32768);
  return int(std::max<int64_t>(1, std::min<int64_t>(requested, by_work)));
}

// Runs part(0 .. parts-1), one OpenMP thread each; a single part skips the OpenMP runtime
// (about 0.4 us a call, a tenth of a small layer at batch 1).
template <typename Part>
inline void run_parts(int parts, const Part& part) {
  if (parts == 1) return part(0);
#pragma omp parallel for num_threads(parts) schedule(static, 1)
  for (int i = 0; i < parts; ++i) part(i);
}

}  // namespace
}  // namespace sparsekern::cpu
