// CSR x dense for small batches on CUDA cores (see csr_spmm.h, row_groups.cuh).
//
// Consecutive lanes of a group read consecutive nonzeros, so the index and value streams
// (the bytes that bound batch 1) are read coalesced; x is gathered through the read-only
// cache, where a batch tile of rows (BT <= 8, K elements each) stays resident.
#include "csr_spmm.h"
#include "row_groups.cuh"

namespace sparsekern::gpu {
namespace {

template <typename A, typename V, typename I, int BT>
__global__ void __launch_bounds__(kBlockThreads)
csr_spmm_kernel(int64_t rows, const int64_t* __restrict__ row_ptr, const I* __restrict__ col_idx,
                const V* __restrict__ values, const A* __restrict__ x, int64_t batch,
                int64_t x_row_stride, const A* __restrict__ bias, A* __restrict__ y, int group_log2) {
  const RowGroup g = row_group(group_log2);
  if (g.row >= rows) return;  // whole groups leave together: the shuffles only name their group
  const int64_t begin = row_ptr[g.row];
  const int64_t end = row_ptr[g.row + 1];
  for (int64_t b0 = int64_t(blockIdx.y) * BT; b0 < batch; b0 += int64_t(gridDim.y) * BT) {
    const int tile_rows = int(batch - b0 < BT ? batch - b0 : BT);
    const A* xb = x + b0 * x_row_stride;
    float acc[BT] = {};
    for (int64_t j = begin + g.lane; j < end; j += g.size) {
      const int64_t col = int64_t(col_idx[j]);
      const float v = to_float(values[j]);
#pragma unroll
      for (int b = 0; b < BT; ++b) {
        if (b < tile_rows) acc[b] += v * to_float(xb[b * x_row_stride + col]);
      }
    }
    finish_row<BT>(g, acc, tile_rows, b0, rows, bias, y);
  }
}

template <typename I>
cudaError_t launch(const CsrMatrix& w, const DenseArgs& a, cudaStream_t stream) {
  return dispatch_kernel(a.x_type, w.value_type, a.batch, [&](auto act, auto val, auto tile) {
    using A = typename decltype(act)::type;
    using V = typename decltype(val)::type;
    constexpr int BT = decltype(tile)::value;
    const Launch l = plan_launch(w.rows, a.batch, BT, w.rows ? w.nnz / w.rows : 0);
    csr_spmm_kernel<A, V, I, BT><<<l.grid, kBlockThreads, 0, stream>>>(
        w.rows, w.row_ptr, static_cast<const I*>(w.col_idx), static_cast<const V*>(w.values),
        static_cast<const A*>(a.x), a.batch, a.x_row_stride, static_cast<const A*>(a.bias),
        static_cast<A*>(a.y), l.group_log2);
    return cudaGetLastError();
  });
}

}  // namespace

cudaError_t csr_spmm(const CsrMatrix& w, const DenseArgs& a, cudaStream_t stream) {
  if (w.rows == 0 || a.batch == 0) return cudaSuccess;
  return w.index_type == IndexType::u16 ? launch<uint16_t>(w, a, stream) : launch<int32_t>(w, a, stream);
}

}  // namespace sparsekern::gpu
