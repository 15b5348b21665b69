// 2:4 semi-structured products for SparseLinear(format="2:4") on CUDA GPUs: y = x @ W.T + bias.
// Built for small batches (1-16 activation rows) on CUDA cores; correct for any batch
// (sparsekern/ops_cuda.py sends larger ones to torch's semi-structured sparse tensor cores).
#pragma once

#include "linear_types.h"
#include "split.h"

namespace sparsekern::gpu {

// W [rows x cols], cols % 4 == 0, on the device, in the CPU kernels' layout
// (sparsekern/formats/nm.py, csrc/kernels/cpu/nm24_linear.h):
struct Nm24Matrix {
  int64_t rows = 0;
  int64_t cols = 0;
  // [rows x cols / 2] in value_type, row-major: the two kept weights of group g (columns
  // 4g .. 4g + 3) of row r are values[r][2g], values[r][2g + 1].
  const void* values = nullptr;
  DType value_type = DType::f32;
  // [rows x nm24_meta_bytes(cols)] uint8, row-major: group g of a row is the nibble
  // (meta[g / 2] >> 4 * (g % 2)) & 15 = p0 | p1 << 2, the columns 4g + p0 and 4g + p1 of its
  // two values.
  const uint8_t* meta = nullptr;
  // Each row is cut into this many equal pieces (split.h), one warp each; more than one
  // needs DenseArgs' workspace.
  int64_t pieces_per_row = 1;
};

SPARSEKERN_HD inline int64_t nm24_meta_bytes(int64_t cols) { return (cols / 4 + 1) / 2; }

// Enqueues y = x @ W.T + bias on `stream`; returns the launch's error (cudaSuccess when
// there is nothing to do).
cudaError_t nm24_linear(const Nm24Matrix& w, const DenseArgs& a, cudaStream_t stream);

}  // namespace sparsekern::gpu
