// 2:4 x dense for small batches on CUDA cores (see nm24_linear.h, kernel_common.cuh).
//
// A lane takes one chunk of 32 columns at a time: 8 groups, 16 stored values (one or more
// 16-byte loads) and their 4 metadata bytes (one 32-bit load), 64 bytes of values per step
// (two chunks of 16-bit values, one of fp32), every W load issued before x is read. x's 32
// columns of the chunk come in as 16-byte vectors, and the metadata picks each group's two
// from registers (chunk_dot). On an H200 at batch 1, a 4096 x 4096 fp16 layer went from 31 us
// (one 2-byte gather per kept weight, rows cut in 4 pieces) to 12 us with this and whole rows
// (ops_cuda.nm24_pieces_per_row), measured together. That needs cols % 32 == 0 and aligned
// buffers (the usual layer sizes); an unaligned x is gathered per weight, and other layers take
// one group per lane, with scalar loads.
// Tensor cores (mma.sp) are not used: at 1-4 rows the layer is bound by the bytes of W.
#include "kernel_common.cuh"
#include "nm24_linear.h"

namespace sparsekern::gpu {
namespace {

constexpr int kChunkCols = 32;
constexpr int kChunkValues = kChunkCols / 2;
// Chunks per lane per step: 64 bytes of values. More spills registers at batch tile 16.
template <typename V> constexpr int kUnroll = 64 / (kChunkValues * int(sizeof(V)));

template <typename A, int BT>
__device__ __forceinline__ void add_group(float (&acc)[BT], int tile_rows, const A* xb, int64_t x_row_stride,
                                          int64_t col0, unsigned nibble, float v0, float v1) {
  const int64_t c0 = col0 + (nibble & 3), c1 = col0 + (nibble >> 2);
#pragma unroll
  for (int b = 0; b < BT; ++b) {
    if (b < tile_rows) {
      const A* xr = xb + b * x_row_stride;
      acc[b] += v0 * load_x(xr + c0) + v1 * load_x(xr + c1);
    }
  }
}

// Column p (0-3, known only at run time) of group g of a chunk of x held in registers as
// 32-bit words. g comes from a fully unrolled loop, so every index below is a constant and the
// array stays in registers; p only selects and shifts.
template <typename A, int W>
__device__ __forceinline__ float x_in_chunk(const uint32_t (&xw)[W], int g, unsigned p) {
  if constexpr (std::is_same_v<A, float>) {
    const uint32_t w = p == 0 ? xw[4 * g] : p == 1 ? xw[4 * g + 1] : p == 2 ? xw[4 * g + 2] : xw[4 * g + 3];
    return __uint_as_float(w);
  } else {
    const uint32_t w = (p & 2) ? xw[2 * g + 1] : xw[2 * g];
    const unsigned short bits = (p & 1) ? (w >> 16) : (w & 0xffffu);
    if constexpr (std::is_same_v<A, __half>) return __half2float(__ushort_as_half(bits));
    else return __uint_as_float(uint32_t(bits) << 16);
  }
}

// One chunk's 8 groups against one row of x: the chunk's 32 columns of x come in with 16-byte
// loads (4 for 16-bit x, 8 for fp32) instead of 16 dependent 2- or 4-byte gathers, and the
// metadata picks each group's two columns from registers. Needs x_chunk 16-byte aligned.
template <typename A>
__device__ __forceinline__ float chunk_dot(const A* x_chunk, const float (&v)[kChunkValues], uint32_t meta) {
  constexpr int kWords = kChunkCols * int(sizeof(A)) / 4;
  uint32_t xw[kWords];
#pragma unroll
  for (int k = 0; k < kWords / 4; ++k) {
    const uint4 q = __ldg(reinterpret_cast<const uint4*>(x_chunk) + k);
    xw[4 * k] = q.x; xw[4 * k + 1] = q.y; xw[4 * k + 2] = q.z; xw[4 * k + 3] = q.w;
  }
  float sum = 0.0f;
#pragma unroll
  for (int g = 0; g < kChunkCols / 4; ++g) {
    const unsigned nibble = (meta >> (4 * g)) & 15;
    sum += v[2 * g] * x_in_chunk<A>(xw, g, nibble & 3) + v[2 * g + 1] * x_in_chunk<A>(xw, g, nibble >> 2);
  }
  return sum;
}

template <typename A, typename V, int BT>
__device__ __forceinline__ void chunked_row(float (&acc)[BT], int tile_rows, const A* xb, int64_t x_row_stride,
                                            const V* w, const uint32_t* meta, UnitRange chunks, int lane,
                                            bool x_vectors) {
  for (int64_t c0 = chunks.begin + lane; c0 < chunks.end; c0 += 32 * kUnroll<V>) {
    uint32_t vw[kUnroll<V>][kChunkValues * sizeof(V) / 4];
    uint32_t mw[kUnroll<V>][1];
#pragma unroll
    for (int u = 0; u < kUnroll<V>; ++u) {
      const int64_t c = c0 + 32 * u;
      if (c < chunks.end) {
        load_streaming<kChunkValues * sizeof(V)>(w + kChunkValues * c, vw[u]);
        load_streaming<4>(meta + c, mw[u]);
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll<V>; ++u) {
      const int64_t c = c0 + 32 * u;
      if (c >= chunks.end) break;
      float v[kChunkValues];
      words_to_floats<V, kChunkValues>(vw[u], v);
      if (x_vectors) {
#pragma unroll
        for (int b = 0; b < BT; ++b) {
          if (b < tile_rows) acc[b] += chunk_dot<A>(xb + b * x_row_stride + kChunkCols * c, v, mw[u][0]);
        }
      } else {
#pragma unroll
        for (int g = 0; g < kChunkCols / 4; ++g) {
          add_group<A, BT>(acc, tile_rows, xb, x_row_stride, kChunkCols * c + 4 * g, (mw[u][0] >> (4 * g)) & 15,
                           v[2 * g], v[2 * g + 1]);
        }
      }
    }
  }
}

template <typename A, typename V, int BT>
__device__ __forceinline__ void grouped_row(float (&acc)[BT], int tile_rows, const A* xb, int64_t x_row_stride,
                                            const V* w, const uint8_t* meta, UnitRange groups, int lane) {
  for (int64_t g = groups.begin + lane; g < groups.end; g += 32) {
    const float v0 = to_float(__ldcs(w + 2 * g)), v1 = to_float(__ldcs(w + 2 * g + 1));
    const unsigned nibble = (unsigned(__ldcs(meta + g / 2)) >> (4 * (g % 2))) & 15;
    add_group<A, BT>(acc, tile_rows, xb, x_row_stride, 4 * g, nibble, v0, v1);
  }
}

template <typename A, typename V, int BT>
__global__ void __launch_bounds__(kBlockThreads)
nm24_linear_kernel(Nm24Matrix w, DenseArgs a, bool chunked, bool x_vectors) {
  const WarpItems warp = warp_items();
  const int64_t value_cols = w.cols / 2, meta_bytes = nm24_meta_bytes(w.cols);
  const int64_t units = chunked ? w.cols / kChunkCols : w.cols / 4;
  const A* x = static_cast<const A*>(a.x);
  for (int64_t item = warp.first; item < w.rows * w.pieces_per_row; item += warp.stride) {
    const int64_t row = item / w.pieces_per_row;
    const UnitRange range = piece_range(units, w.pieces_per_row, item % w.pieces_per_row);
    const V* wr = static_cast<const V*>(w.values) + row * value_cols;
    const uint8_t* mr = w.meta + row * meta_bytes;
    for (int64_t b0 = 0; b0 < a.batch; b0 += BT) {
      const int tile_rows = int(a.batch - b0 < BT ? a.batch - b0 : BT);
      const A* xb = x + b0 * a.x_row_stride;
      float acc[BT] = {};
      if (chunked) {
        chunked_row<A, V, BT>(acc, tile_rows, xb, a.x_row_stride, wr, reinterpret_cast<const uint32_t*>(mr), range,
                              warp.lane, x_vectors);
      } else {
        grouped_row<A, V, BT>(acc, tile_rows, xb, a.x_row_stride, wr, mr, range, warp.lane);
      }
      deliver_tile<BT, A>(acc, tile_rows, b0, row, w.rows, w.pieces_per_row, a, warp.lane);
    }
    finish_piece<A>(row, w.rows, w.pieces_per_row, a, warp.lane);
  }
}

}  // namespace

cudaError_t nm24_linear(const Nm24Matrix& w, const DenseArgs& a, cudaStream_t stream) {
  if (w.rows == 0 || a.batch == 0) return cudaSuccess;
  return dispatch_kernel(a.x_type, w.value_type, a.batch, [&](auto act, auto val, auto tile) {
    using A = typename decltype(act)::type;
    using V = typename decltype(val)::type;
    // Chunks need whole 32-column chunks in every row, so rows of values and of metadata
    // start aligned when the buffers do.
    const bool chunked = w.cols % kChunkCols == 0 && reinterpret_cast<uintptr_t>(w.values) % 16 == 0 &&
                         reinterpret_cast<uintptr_t>(w.meta) % 4 == 0;
    // x in 16-byte vectors: every row of x, and so every chunk of it, starts 16-byte aligned.
    const bool x_vectors = chunked && reinterpret_cast<uintptr_t>(a.x) % 16 == 0 &&
                           (a.batch == 1 || a.x_row_stride * int64_t(sizeof(A)) % 16 == 0);
    const auto kernel = nm24_linear_kernel<A, V, decltype(tile)::value>;
    unsigned blocks = 0;
    const cudaError_t e = persistent_grid(kernel, w.rows * w.pieces_per_row, &blocks);
    if (e != cudaSuccess) return e;
    kernel<<<blocks, kBlockThreads, 0, stream>>>(w, a, chunked, x_vectors);
    return cudaGetLastError();
  });
}

}  // namespace sparsekern::gpu
