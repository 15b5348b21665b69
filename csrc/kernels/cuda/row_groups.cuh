// The work split both small-batch kernels share: a group of 2^k lanes of one warp computes
// one output row for a tile of BT batch rows, accumulating in float32, then reduces with
// warp shuffles. Group size follows the work per row (4 lanes for very sparse rows, a full
// warp for long ones), so short rows do not idle 28 of 32 lanes; rows of unequal length are
// balanced by the hardware handing out blocks of 256 / 2^k rows as SMs free up.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "linear_types.h"

namespace sparsekern::gpu {

constexpr int kBlockThreads = 256;
constexpr int kMaxBatchTile = 8;

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

struct RowGroup {
  int64_t row;    // the output row this group computes
  int size;       // lanes in the group: 4, 8, 16 or 32
  int lane;       // this thread's lane within the group
  unsigned mask;  // the group's lanes within the warp, for the shuffles
};

__device__ __forceinline__ RowGroup row_group(int group_log2) {
  RowGroup g;
  g.size = 1 << group_log2;
  g.row = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> group_log2;
  g.lane = threadIdx.x & (g.size - 1);
  const int first_lane = (threadIdx.x & 31) & ~(g.size - 1);
  g.mask = g.size == 32 ? 0xffffffffu : ((1u << g.size) - 1) << first_lane;
  return g;
}

// Sums each batch row's partial sums over the group and writes y[b0 + b][row] (+ bias).
template <int BT, typename A>
__device__ __forceinline__ void finish_row(const RowGroup& g, float (&acc)[BT], int tile_rows,
                                           int64_t b0, int64_t rows, const A* __restrict__ bias,
                                           A* __restrict__ y) {
  for (int offset = g.size >> 1; offset > 0; offset >>= 1) {
#pragma unroll
    for (int b = 0; b < BT; ++b) acc[b] += __shfl_xor_sync(g.mask, acc[b], offset);
  }
  const float add = bias ? to_float(bias[g.row]) : 0.0f;
#pragma unroll
  for (int b = 0; b < BT; ++b) {
    if (b < tile_rows && (b & (g.size - 1)) == g.lane) y[(b0 + b) * rows + g.row] = from_float<A>(acc[b] + add);
  }
}

// Launch shape: enough groups for every row; grid.y tiles the batch (the kernels loop when
// the batch needs more than 65535 tiles).
struct Launch {
  dim3 grid;
  int group_log2;
};

inline Launch plan_launch(int64_t rows, int64_t batch, int batch_tile, int64_t steps_per_row) {
  // At least ~3 loop steps per lane before the group grows; never less than 4 lanes, so
  // the shuffle reduction stays cheap next to the loop.
  int group_log2 = 2;
  while (group_log2 < 5 && (int64_t(3) << (group_log2 + 1)) <= steps_per_row) ++group_log2;
  const int64_t threads = rows << group_log2;
  const int64_t tiles = (batch + batch_tile - 1) / batch_tile;
  Launch l;
  l.grid = dim3(unsigned((threads + kBlockThreads - 1) / kBlockThreads), unsigned(tiles < 65535 ? tiles : 65535));
  l.group_log2 = group_log2;
  return l;
}

template <typename T> struct Tag { using type = T; };
template <int N> using BatchTile = std::integral_constant<int, N>;

template <int BT, typename Fn>
cudaError_t with_types(DType activations, DType values, Fn& fn) {
  switch (activations) {
    case DType::f16: return fn(Tag<__half>{}, Tag<__half>{}, BatchTile<BT>{});
    case DType::bf16: return fn(Tag<__nv_bfloat16>{}, Tag<__nv_bfloat16>{}, BatchTile<BT>{});
    default: break;
  }
  switch (values) {
    case DType::f16: return fn(Tag<float>{}, Tag<__half>{}, BatchTile<BT>{});
    case DType::bf16: return fn(Tag<float>{}, Tag<__nv_bfloat16>{}, BatchTile<BT>{});
    default: return fn(Tag<float>{}, Tag<float>{}, BatchTile<BT>{});
  }
}

// Calls fn(Tag<A>, Tag<V>, BatchTile<BT>) with the activation and value types and the batch
// tile (1 for batch 1, 4 up to 4 rows, else 8), so each kernel is written once as a template.
template <typename Fn>
cudaError_t dispatch_kernel(DType activations, DType values, int64_t batch, Fn&& fn) {
  if (!supports_types(activations, values)) return cudaErrorInvalidValue;
  if (batch == 1) return with_types<1>(activations, values, fn);
  if (batch <= 4) return with_types<4>(activations, values, fn);
  return with_types<kMaxBatchTile>(activations, values, fn);
}

}  // namespace sparsekern::gpu
