// 2:4 x dense for small batches on CUDA cores (see nm24_linear.h, row_groups.cuh).
//
// A lane takes one metadata byte at a time: two groups, 8 columns, 4 stored values, read as
// one vector load when rows of values are 4-value aligned (cols % 8 == 0). The positions
// pick 4 of the 8 activations, gathered through the read-only cache as in csr_spmm.cu.
// Tensor cores (mma.sp) are not used: at 1-32 rows the layer is bound by the bytes of W.
#include "nm24_linear.h"
#include "row_groups.cuh"

namespace sparsekern::gpu {
namespace {

struct alignas(8) Half4 { __half2 lo, hi; };
struct alignas(8) Bf164 { __nv_bfloat162 lo, hi; };

__device__ __forceinline__ void load4(const float* p, float (&v)[4]) {
  const float4 q = *reinterpret_cast<const float4*>(p);
  v[0] = q.x; v[1] = q.y; v[2] = q.z; v[3] = q.w;
}
__device__ __forceinline__ void load4(const __half* p, float (&v)[4]) {
  const Half4 q = *reinterpret_cast<const Half4*>(p);
  const float2 lo = __half22float2(q.lo), hi = __half22float2(q.hi);
  v[0] = lo.x; v[1] = lo.y; v[2] = hi.x; v[3] = hi.y;
}
__device__ __forceinline__ void load4(const __nv_bfloat16* p, float (&v)[4]) {
  const Bf164 q = *reinterpret_cast<const Bf164*>(p);
  const float2 lo = __bfloat1622float2(q.lo), hi = __bfloat1622float2(q.hi);
  v[0] = lo.x; v[1] = lo.y; v[2] = hi.x; v[3] = hi.y;
}

template <typename A, typename V, int BT>
__global__ void __launch_bounds__(kBlockThreads)
nm24_linear_kernel(int64_t rows, int64_t cols, const V* __restrict__ values, const uint8_t* __restrict__ meta,
                   const A* __restrict__ x, int64_t batch, int64_t x_row_stride, const A* __restrict__ bias,
                   A* __restrict__ y, int group_log2, bool vector_loads) {
  const RowGroup g = row_group(group_log2);
  if (g.row >= rows) return;  // whole groups leave together: the shuffles only name their group
  const int64_t groups = cols / 4;
  const int64_t meta_bytes = (groups + 1) / 2;
  const V* w = values + g.row * (cols / 2);
  const uint8_t* m = meta + g.row * meta_bytes;
  for (int64_t b0 = int64_t(blockIdx.y) * BT; b0 < batch; b0 += int64_t(gridDim.y) * BT) {
    const int tile_rows = int(batch - b0 < BT ? batch - b0 : BT);
    const A* xb = x + b0 * x_row_stride;
    float acc[BT] = {};
    for (int64_t u = g.lane; u < meta_bytes; u += g.size) {
      const unsigned bits = m[u];
      // The last byte of a row with an odd number of groups holds one group.
      const bool both = 2 * u + 1 < groups;
      float v[4];
      if (vector_loads) {
        load4(w + 4 * u, v);
      } else {
        v[0] = to_float(w[4 * u]);
        v[1] = to_float(w[4 * u + 1]);
        v[2] = both ? to_float(w[4 * u + 2]) : 0.0f;
        v[3] = both ? to_float(w[4 * u + 3]) : 0.0f;
      }
      const int64_t c = 8 * u;
      const int64_t c0 = c + (bits & 3), c1 = c + ((bits >> 2) & 3);
      const int64_t c2 = c + 4 + ((bits >> 4) & 3), c3 = c + 4 + ((bits >> 6) & 3);
#pragma unroll
      for (int b = 0; b < BT; ++b) {
        if (b < tile_rows) {
          const A* xr = xb + b * x_row_stride;
          float s = v[0] * to_float(xr[c0]) + v[1] * to_float(xr[c1]);
          if (both) s += v[2] * to_float(xr[c2]) + v[3] * to_float(xr[c3]);
          acc[b] += s;
        }
      }
    }
    finish_row<BT>(g, acc, tile_rows, b0, rows, bias, y);
  }
}

}  // namespace

cudaError_t nm24_linear(const Nm24Matrix& w, const DenseArgs& a, cudaStream_t stream) {
  if (w.rows == 0 || a.batch == 0) return cudaSuccess;
  return dispatch_kernel(a.x_type, w.value_type, a.batch, [&](auto act, auto val, auto tile) {
    using A = typename decltype(act)::type;
    using V = typename decltype(val)::type;
    constexpr int BT = decltype(tile)::value;
    const int64_t meta_bytes = nm24_meta_bytes(w.cols);
    const bool vector_loads = w.cols % 8 == 0 && reinterpret_cast<uintptr_t>(w.values) % (4 * sizeof(V)) == 0;
    const Launch l = plan_launch(w.rows, a.batch, BT, meta_bytes);
    nm24_linear_kernel<A, V, BT><<<l.grid, kBlockThreads, 0, stream>>>(
        w.rows, w.cols, static_cast<const V*>(w.values), w.meta, static_cast<const A*>(a.x), a.batch,
        a.x_row_stride, static_cast<const A*>(a.bias), static_cast<A*>(a.y), l.group_log2, vector_loads);
    return cudaGetLastError();
  });
}

}  // namespace sparsekern::gpu
