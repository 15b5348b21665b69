// CSR sparse x dense products for SparseLinear on CUDA GPUs: y = x @ W.T + bias.
// Built for small batches (1-16 activation rows, where a layer is bound by the bytes of W);
// correct for any batch (sparsekern/ops_cuda.py sends larger ones to cuBLAS).
#pragma once

#include "linear_types.h"

namespace sparsekern::gpu {

// Nonzeros a lane loads at once: 16 bytes of fp16/bf16 values (32 of fp32) and the same
// count of indices. The pieces of csr_split (below) start chunk-aligned within their rows.
constexpr int64_t kCsrChunk = 8;

// W [rows x cols] in CSR over output rows, on the device (sparsekern/formats/csr.py), with
// its rows cut into pieces for the warps (sparsekern/ops_cuda.py: csr_pieces):
struct CsrMatrix {
  int64_t rows = 0;
  int64_t cols = 0;
  // [nnz] uint16 (IndexType::u16, needs cols <= 65536) or int32 (IndexType::i32): the
  // column of each nonzero, each < cols; aligned to kCsrChunk indices.
  const void* col_idx = nullptr;
  IndexType index_type = IndexType::u16;
  // [nnz] in value_type, aligned to kCsrChunk values.
  const void* values = nullptr;
  DType value_type = DType::f32;
  // [pieces x 4] int64: (begin, end, row, pieces of that row). The pieces of each row are
  // consecutive, cover its nonzeros begin .. end in order, and every row has at least one
  // (an empty row's writes its bias). A row of several pieces needs DenseArgs' workspace.
  const int64_t* pieces = nullptr;
  int64_t piece_count = 0;
};

// Enqueues y = x @ W.T + bias on `stream`; returns the launch's error (cudaSuccess when
// there is nothing to do).
cudaError_t csr_spmm(const CsrMatrix& w, const DenseArgs& a, cudaStream_t stream);

}  // namespace sparsekern::gpu
