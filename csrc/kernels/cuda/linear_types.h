// Types shared by the CUDA kernels of SparseLinear (csr_spmm.h, nm24_linear.h).
//
// Framework-free: raw device pointers, sizes and a cudaStream_t; no allocation, no
// environment, no printing. The caller (csrc/python) has checked every size and these
// functions trust them; device buffers are never read on the host (that would synchronize),
// so the packed buffers must have been validated when they were made or loaded.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace sparsekern::gpu {

enum class DType : int { f32 = 0, f16 = 1, bf16 = 2 };
enum class IndexType : int { u16 = 0, i32 = 1 };

// Dense activations and output, on the device. Every pairing of x_type with the weight's
// value dtype has its own kernel: nothing is converted per call. Products and the bias add
// are done in float32; y is rounded to x_type once.
//   x    [batch x cols] in x_type, row b starts at x + b * x_row_stride elements, columns
//        contiguous.
//   bias [rows] in bias_type (x_type or f32), or nullptr.
//   y    [batch x rows] in x_type, contiguous, fully overwritten.
// Rows cut into several pieces (see split.h) are summed through a workspace:
//   partial  [batch x rows] float32 and arrivals [rows] uint32, both zero on entry (the
//   kernel leaves them dirty); null when no row has more than one piece.
struct DenseArgs {
  const void* x = nullptr;
  DType x_type = DType::f32;
  int64_t batch = 0;
  int64_t x_row_stride = 0;
  const void* bias = nullptr;
  DType bias_type = DType::f32;
  void* y = nullptr;
  float* partial = nullptr;
  unsigned* arrivals = nullptr;
};

// Workspace elements (4 bytes each) for a product with `batch` rows of x and `rows` outputs.
inline int64_t workspace_words(int64_t batch, int64_t rows) { return (batch + 1) * rows; }

}  // namespace sparsekern::gpu
