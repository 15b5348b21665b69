// What the small-batch kernels (csr_spmm.cu, nm24_linear.cu) share: dtype conversions,
// streaming loads of W, the warp-per-piece loop with its combine step, and the dispatch
// over (activation dtype, value dtype, batch tile).
//
// One warp computes one piece of an output row (split.h) for a tile of BT batch rows,
// accumulating in float32 per lane, then sums over the warp with shuffles. A row in one
// piece is written directly; the pieces of a longer row add their sums into a float32
// workspace and the last one to arrive writes y (the threadfence pattern of the CUDA
// programming guide: add, fence, count; the last counter sees every add).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "linear_types.h"
#include "split.h"

namespace sparsekern::gpu {

constexpr int kBlockThreads = 256;
constexpr int kWarpsPerBlock = kBlockThreads / 32;
constexpr int kMaxBatchTile = 16;

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// Loads Bytes (4, 8, or a multiple of 16) from p, aligned to min(Bytes, 16), as 32-bit words,
// in as few instructions as the width allows. Evict-first (__ldcs): W is read once per call,
// and must not push x, which every row reads, out of L1 and L2.
template <int Bytes>
__device__ __forceinline__ void load_streaming(const void* p, uint32_t (&w)[Bytes / 4]) {
  static_assert(Bytes == 4 || Bytes == 8 || Bytes % 16 == 0, "4, 8 or 16k bytes");
  if constexpr (Bytes % 16 == 0) {
#pragma unroll
    for (int k = 0; k < Bytes / 16; ++k) {
      const uint4 q = __ldcs(static_cast<const uint4*>(p) + k);
      w[4 * k] = q.x; w[4 * k + 1] = q.y; w[4 * k + 2] = q.z; w[4 * k + 3] = q.w;
    }
  } else if constexpr (Bytes == 8) {
    const uint2 q = __ldcs(static_cast<const uint2*>(p));
    w[0] = q.x; w[1] = q.y;
  } else {
    w[0] = __ldcs(static_cast<const unsigned int*>(p));
  }
}

// N values of type V, packed little-endian in 32-bit words, as floats.
template <typename V, int N>
__device__ __forceinline__ void words_to_floats(const uint32_t (&w)[N * sizeof(V) / 4], float (&v)[N]) {
  if constexpr (std::is_same_v<V, float>) {
#pragma unroll
    for (int i = 0; i < N; ++i) v[i] = __uint_as_float(w[i]);
  } else {
    using V2 = std::conditional_t<std::is_same_v<V, __half>, __half2, __nv_bfloat162>;
#pragma unroll
    for (int i = 0; i < N / 2; ++i) {
      V2 pair;
      memcpy(&pair, &w[i], sizeof pair);
      float2 f;
      if constexpr (std::is_same_v<V, __half>) f = __half22float2(pair); else f = __bfloat1622float2(pair);
      v[2 * i] = f.x;
      v[2 * i + 1] = f.y;
    }
  }
}

// Activations through the read-only path, which keeps them cached for the other rows.
template <typename A>
__device__ __forceinline__ float load_x(const A* p) { return to_float(__ldg(p)); }

__device__ __forceinline__ float load_bias(const void* bias, DType type, int64_t row) {
  if (!bias) return 0.0f;
  switch (type) {
    case DType::f16: return to_float(static_cast<const __half*>(bias)[row]);
    case DType::bf16: return to_float(static_cast<const __nv_bfloat16*>(bias)[row]);
    default: return static_cast<const float*>(bias)[row];
  }
}

// The persistent loop: this warp's lane and its items (warp, warp + all warps, ...).
struct WarpItems {
  int lane;
  int64_t first;
  int64_t stride;
};

__device__ __forceinline__ WarpItems warp_items() {
  const int64_t thread = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  return {int(threadIdx.x & 31), thread >> 5, (int64_t(gridDim.x) * blockDim.x) >> 5};
}

// Sums one tile of partial sums over the warp (every lane ends with the totals) and delivers
// them: straight to y when the row is one piece, else added to the row's workspace sums.
template <int BT, typename A>
__device__ __forceinline__ void deliver_tile(float (&acc)[BT], int tile_rows, int64_t b0, int64_t row,
                                             int64_t rows, int64_t row_pieces, const DenseArgs& a, int lane) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
#pragma unroll
    for (int b = 0; b < BT; ++b) acc[b] += __shfl_xor_sync(0xffffffffu, acc[b], offset);
  }
  if (row_pieces == 1) {
    const float bias = load_bias(a.bias, a.bias_type, row);
    A* y = static_cast<A*>(a.y);
#pragma unroll
    for (int b = 0; b < BT; ++b) {
      if (b < tile_rows && b == lane) y[(b0 + b) * rows + row] = from_float<A>(acc[b] + bias);
    }
  } else if (lane == 0) {
#pragma unroll
    for (int b = 0; b < BT; ++b) {
      if (b < tile_rows) atomicAdd(&a.partial[(b0 + b) * rows + row], acc[b]);
    }
  }
}

// After every tile of a piece of a multi-piece row: lane 0 counts the piece in, and the last
// piece of the row writes y from the workspace sums (all adds were made before their counts).
template <typename A>
__device__ __forceinline__ void finish_piece(int64_t row, int64_t rows, int64_t row_pieces, const DenseArgs& a,
                                             int lane) {
  if (row_pieces == 1 || lane != 0) return;
  __threadfence();  // this piece's adds land before its count
  if (atomicAdd(&a.arrivals[row], 1u) != unsigned(row_pieces - 1)) return;
  __threadfence();  // the other pieces' adds, made before their counts, are seen from here
  const float bias = load_bias(a.bias, a.bias_type, row);
  A* y = static_cast<A*>(a.y);
  for (int64_t b = 0; b < a.batch; ++b) y[b * rows + row] = from_float<A>(__ldcg(&a.partial[b * rows + row]) + bias);
}

// Blocks of a persistent grid for `kernel`: what the SMs of the current device hold at once,
// no more than `items` warps need.
template <typename Kernel>
cudaError_t persistent_grid(Kernel kernel, int64_t items, unsigned* blocks) {
  int device = 0, sms = 0, per_sm = 0;
  cudaError_t e = cudaGetDevice(&device);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (e == cudaSuccess) e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kBlockThreads, 0);
  if (e != cudaSuccess) return e;
  *blocks = unsigned(persistent_blocks(items, kWarpsPerBlock, int64_t(sms) * (per_sm > 0 ? per_sm : 1)));
  return cudaSuccess;
}

template <typename T> struct Tag { using type = T; };
template <int N> using BatchTile = std::integral_constant<int, N>;

template <typename A, int BT, typename Fn>
cudaError_t with_values(DType values, Fn& fn) {
  switch (values) {
    case DType::f16: return fn(Tag<A>{}, Tag<__half>{}, BatchTile<BT>{});
    case DType::bf16: return fn(Tag<A>{}, Tag<__nv_bfloat16>{}, BatchTile<BT>{});
    default: return fn(Tag<A>{}, Tag<float>{}, BatchTile<BT>{});
  }
}

template <int BT, typename Fn>
cudaError_t with_types(DType activations, DType values, Fn& fn) {
  switch (activations) {
    case DType::f16: return with_values<__half, BT>(values, fn);
    case DType::bf16: return with_values<__nv_bfloat16, BT>(values, fn);
    default: return with_values<float, BT>(values, fn);
  }
}

// Calls fn(Tag<A>, Tag<V>, BatchTile<BT>) with the activation and value types and the batch
// tile (1, 4, 8 or 16: the smallest that holds the batch), so each kernel is written once.
template <typename Fn>
cudaError_t dispatch_kernel(DType activations, DType values, int64_t batch, Fn&& fn) {
  if (batch == 1) return with_types<1>(activations, values, fn);
  if (batch <= 4) return with_types<4>(activations, values, fn);
  if (batch <= 8) return with_types<8>(activations, values, fn);
  return with_types<kMaxBatchTile>(activations, values, fn);
}

}  // namespace sparsekern::gpu
