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

// Dense activations and output, all in one dtype (x_type), on the device.
//   x    [batch x cols], row b starts at x + b * x_row_stride elements, columns contiguous.
//   bias [rows] or nullptr.
//   y    [batch x rows], contiguous, fully overwritten.
// Products accumulate in float32 whatever the dtypes.
struct DenseArgs {
  const void* x = nullptr;
  DType x_type = DType::f32;
  int64_t batch = 0;
  int64_t x_row_stride = 0;
  const void* bias = nullptr;
  void* y = nullptr;
};

// The (activation, value) dtype pairs the kernels are built for: values in the activation
// dtype, or float32 activations with float32, float16 or bfloat16 values. Other pairs are
// the caller's to convert.
inline bool supports_types(DType activations, DType values) {
  return activations == values || activations == DType::f32;
}

}  // namespace sparsekern::gpu
