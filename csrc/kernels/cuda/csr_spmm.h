// CSR sparse x dense products for SparseLinear on CUDA GPUs: y = x @ W.T + bias.
// Built for small batches (1-32 activation rows, where a layer is bound by the bytes of W);
// correct for any batch.
#pragma once

#include "linear_types.h"

namespace sparsekern::gpu {

// W [rows x cols] in CSR over output rows, on the device (sparsekern/formats/csr.py).
struct CsrMatrix {
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t nnz = 0;
  // [rows + 1] int64: row_ptr[0] == 0, non-decreasing, row_ptr[rows] == nnz.
  const int64_t* row_ptr = nullptr;
  // [nnz] uint16 (IndexType::u16, needs cols <= 65536) or int32 (IndexType::i32): the
  // column of each nonzero, each < cols.
  const void* col_idx = nullptr;
  IndexType index_type = IndexType::u16;
  // [nnz] in value_type; supports_types(x_type, value_type) must hold.
  const void* values = nullptr;
  DType value_type = DType::f32;
};

// Enqueues y = x @ W.T + bias on `stream`; returns the launch's error (cudaSuccess when
// there is nothing to do).
cudaError_t csr_spmm(const CsrMatrix& w, const DenseArgs& a, cudaStream_t stream);

}  // namespace sparsekern::gpu
