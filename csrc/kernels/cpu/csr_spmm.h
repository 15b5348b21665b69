// CSR sparse x dense products for SparseLinear on the CPU: y = x @ W.T + bias.
//
// Framework-free: raw pointers and sizes, no allocation, no environment, no printing.
// The caller (csrc/python) has checked every size; these functions trust them.
#pragma once

#include <cstdint>

#include "linear_args.h"

namespace sparsekern::cpu {

// W [rows x cols] in CSR over output rows (rows = out_features, cols = in_features).
struct CsrMatrix {
  int64_t rows = 0;
  int64_t cols = 0;
  // [rows + 1] int64: row_ptr[0] == 0, non-decreasing, row_ptr[rows] == nnz.
  const int64_t* row_ptr = nullptr;
  // [nnz] uint16_t (IndexType::u16, needs cols <= 65536) or int32_t (IndexType::i32):
  // column of each nonzero, each < cols (sorted within a row is not required here).
  const void* col_idx = nullptr;
  IndexType index_type = IndexType::u16;
  // [nnz] float (ValueType::f32) or bfloat16 bit patterns as uint16_t (ValueType::bf16).
  const void* values = nullptr;
  ValueType value_type = ValueType::f32;
};

// The per-ISA variants (linear_dispatch.h), each defined in csr_spmm_<isa>.cpp. The batched
// path's workspace is the transposed, batch-tiled copy of x it vectorizes over.
struct CsrFamily {
  using Matrix = CsrMatrix;
  template <Isa isa>
  static void run(const CsrMatrix& w, const DenseArgs& a);
  template <Isa isa>
  static int64_t workspace_floats(const CsrMatrix& w, int64_t batch, int num_threads);
  // avx512bf16 reads bf16 activations itself (vdpbf16ps, csr_spmm_bf16.h) when the values are
  // bf16 too and the batch is kBf16From or more; every other case is widened by the dispatch.
  // amx runs avx512bf16's code (CSR has no tile path).
  static bool reads_bf16(Isa isa, const CsrMatrix& w, int64_t batch) {
    return (isa == Isa::avx512bf16 || isa == Isa::amx) && w.value_type == ValueType::bf16 && batch >= kBf16From;
  }
  static constexpr int64_t kBf16From = 2;
};

// Floats of 64-byte-aligned workspace `linear` needs for this ISA, batch and activation type.
int64_t workspace_floats(Isa isa, const CsrMatrix& w, int64_t batch, ActType act, int num_threads);
// y = x @ W.T + bias with the ISA's variant (tests call each ISA through this).
void linear(Isa isa, const CsrMatrix& w, const DenseArgs& a);

}  // namespace sparsekern::cpu
