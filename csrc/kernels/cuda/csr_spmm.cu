// CSR x dense for small batches on CUDA cores (see csr_spmm.h, kernel_common.cuh).
//
// Each lane loads kCsrChunk consecutive nonzeros at a time (values and indices, one or two
// vector loads each) and kUnroll chunks per step, all W loads issued before the x gathers
// that depend on them: enough bytes in flight per SM to approach DRAM bandwidth at batch 1.
// Consecutive lanes take consecutive chunks, so W is read coalesced; x is gathered through
// the read-only cache, where a tile of BT batch rows stays resident.
#include "csr_spmm.h"
#include "kernel_common.cuh"

namespace sparsekern::gpu {
namespace {

constexpr int kUnroll = 2;

template <typename A, typename V, typename I, int BT>
__global__ void __launch_bounds__(kBlockThreads)
csr_spmm_kernel(CsrMatrix w, DenseArgs a) {
  const WarpItems warp = warp_items();
  const V* values = static_cast<const V*>(w.values);
  const I* col_idx = static_cast<const I*>(w.col_idx);
  const A* x = static_cast<const A*>(a.x);
  for (int64_t item = warp.first; item < w.piece_count; item += warp.stride) {
    const int64_t begin = w.pieces[4 * item], end = w.pieces[4 * item + 1];
    const int64_t row = w.pieces[4 * item + 2], row_pieces = w.pieces[4 * item + 3];
    // Chunks are aligned to the buffers: the first may start before `begin`, the last may run
    // past `end` (even past nnz, within the same aligned chunk, so within mapped memory);
    // the elements outside begin .. end are never used, their indices never dereferenced.
    const int64_t first_chunk = begin - begin % kCsrChunk;
    for (int64_t b0 = 0; b0 < a.batch; b0 += BT) {
      const int tile_rows = int(a.batch - b0 < BT ? a.batch - b0 : BT);
      const A* xb = x + b0 * a.x_row_stride;
      float acc[BT] = {};
      for (int64_t j0 = first_chunk + kCsrChunk * warp.lane; j0 < end; j0 += kCsrChunk * 32 * kUnroll) {
        uint32_t vw[kUnroll][kCsrChunk * sizeof(V) / 4];
        uint32_t iw[kUnroll][kCsrChunk * sizeof(I) / 4];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          const int64_t j = j0 + kCsrChunk * 32 * u;
          if (j < end) {
            load_streaming<kCsrChunk * sizeof(V)>(values + j, vw[u]);
            load_streaming<kCsrChunk * sizeof(I)>(col_idx + j, iw[u]);
          }
        }
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          const int64_t j = j0 + kCsrChunk * 32 * u;
          if (j >= end) break;
          float v[kCsrChunk];
          words_to_floats<V, kCsrChunk>(vw[u], v);
          I idx[kCsrChunk];
          memcpy(idx, iw[u], sizeof idx);
#pragma unroll
          for (int e = 0; e < kCsrChunk; ++e) {
            if (j + e < begin || j + e >= end) continue;
            const int64_t col = int64_t(idx[e]);
#pragma unroll
            for (int b = 0; b < BT; ++b) {
              if (b < tile_rows) acc[b] += v[e] * load_x(xb + b * a.x_row_stride + col);
            }
          }
        }
      }
      deliver_tile<BT, A>(acc, tile_rows, b0, row, w.rows, row_pieces, a, warp.lane);
    }
    finish_piece<A>(row, w.rows, row_pieces, a, warp.lane);
  }
}

template <typename I>
cudaError_t launch(const CsrMatrix& w, const DenseArgs& a, cudaStream_t stream) {
  return dispatch_kernel(a.x_type, w.value_type, a.batch, [&](auto act, auto val, auto tile) {
    using A = typename decltype(act)::type;
    using V = typename decltype(val)::type;
    const auto kernel = csr_spmm_kernel<A, V, I, decltype(tile)::value>;
    unsigned blocks = 0;
    const cudaError_t e = persistent_grid(kernel, w.piece_count, &blocks);
    if (e != cudaSuccess) return e;
    kernel<<<blocks, kBlockThreads, 0, stream>>>(w, a);
    return cudaGetLastError();
  });
}

}  // namespace

cudaError_t csr_spmm(const CsrMatrix& w, const DenseArgs& a, cudaStream_t stream) {
  if (w.rows == 0 || a.batch == 0) return cudaSuccess;
  return w.index_type == IndexType::u16 ? launch<uint16_t>(w, a, stream) : launch<int32_t>(w, a, stream);
}

}  // namespace sparsekern::gpu
