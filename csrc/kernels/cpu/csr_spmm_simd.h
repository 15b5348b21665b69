// The vectorized CSR product, written once over a SIMD traits type V and instantiated per
// ISA (csr_spmm_<isa>.cpp, with the flags of isa_table.h).
//
// V: the shared traits of simd_avx2.h / simd_avx512.h (reg, width, zero, set1, load, store,
// loadu, storeu, add, fmadd, transpose) plus the CSR batch-1 dot product that each variant
// adds, row_dot(values, cols, n, x) = sum_j values[j] * x[cols[j]].
//
// Batch 1 is bound by the bytes of W (cold) or by fetching x[cols[j]] (hot): each nonzero is
// read once and multiplied by one gathered activation (row_dot).
// Batch > 1 vectorizes over the batch: x is copied once per call into the workspace,
// transposed and cut into tiles of T = NACC * width batch rows ([cols][T] per tile), so that
// nonzero (r, c, v) becomes NACC aligned loads of tile row c and NACC FMAs into the
// accumulators of output row r. Each weight is read once per tile, each activation load
// feeds one FMA per lane, so the tile rows stream from L2 at one vector per FMA: L2
// bandwidth (about 32 bytes a cycle on Zen 4) caps this at about half the FMA peak. Given W's
// column-chunked copy (csr_chunks.h), a block of rows multiplies one chunk of columns before
// the next (tile_rows), so that the chunk's part of the tile is read from L1 instead.
#pragma once

#include <algorithm>
#include <cstdint>

#include "bf16.h"
#include "csr_chunks.h"
#include "csr_spmm.h"
#include "dispatch_types.h"
#include "work_split.h"

// Internal linkage on purpose: this header is compiled into translation units with
// different ISA flags, and one shared inline copy could carry AVX-512 code into the
// scalar path (the linker keeps any one of them).
namespace sparsekern::cpu::simd {
namespace {

// T = 2 * width: on Zen 4 (3072 x 768 and 4096 x 4096 at 90%, batch 64 and 256) T = 32 beat
// T = 64 by up to 10% (a tile half the size stays in L2 beside W) and tied T = 16.
constexpr int kMaxAccumulators = 2;

// Accumulator registers per tile for this batch: enough to cover it, at most the maximum.
template <typename V>
int accumulators_for(int64_t batch) {
  const int64_t needed = (batch + V::width - 1) / V::width;
  return int(std::min<int64_t>(needed, kMaxAccumulators));
}

template <typename V>
int64_t workspace_floats(int64_t batch, int64_t cols) {
  if (batch <= 1) return 0;
  const int64_t tile = int64_t(accumulators_for<V>(batch)) * V::width;
  return (batch + tile - 1) / tile * tile * cols;
}

// Copies x [batch x cols] into tiles [cols][tile] (rows past the batch are zeros), width x
// width blocks at a time through a register transpose; columns past the last full block
// one float at a time. Work is shared by blocks of columns inside an enclosing parallel region.
template <typename V>
void pack_transposed(const DenseArgs& a, int64_t cols, int64_t tile) {
  constexpr int W = V::width;
  const int64_t col_block = a.tiles.pack_col_block;  // keeps the tile rows being written within L1
  const int64_t tiles = (a.batch + tile - 1) / tile;
  const int64_t blocks = (cols + col_block - 1) / col_block;
#pragma omp for schedule(static)
  for (int64_t job = 0; job < tiles * blocks; ++job) {
    const int64_t t0 = job / blocks * tile;
    const int64_t k0 = job % blocks * col_block;
    const int64_t k1 = std::min(cols, k0 + col_block);
    const int64_t k_full = k0 + (k1 - k0) / W * W;
    float* dst = a.workspace + t0 * cols;
    for (int64_t t = 0; t < tile; t += W) {
      for (int64_t k = k0; k < k_full; k += W) {
        typename V::reg r[W];
        for (int i = 0; i < W; ++i) {
          const int64_t b = t0 + t + i;
          r[i] = b < a.batch ? V::loadu(a.x_f32() + b * a.x_row_stride + k) : V::zero();
        }
        V::transpose(r);
        for (int i = 0; i < W; ++i) V::store(dst + (k + i) * tile + t, r[i]);
      }
      for (int64_t i = 0; i < W; ++i) {
        const int64_t b = t0 + t + i;
        for (int64_t k = k_full; k < k1; ++k)
          dst[k * tile + t + i] = b < a.batch ? a.x_f32()[b * a.x_row_stride + k] : 0.f;
      }
    }
  }
}

// y is [batch x rows], so one output row of a tile is T floats a whole y row apart. Stored
// straight from the accumulators, each output row would touch T cache lines (all in one L1
// set when rows * 4 bytes is a multiple of 4 KiB): 3072 x 768 at batch 64 ran 2.3x slower so.
// Instead kRowGroups * width output rows are kept in an L1 buffer, transposed through
// registers, and written kRowGroups * width floats at a time (4 groups beat 1 by ~5%).
constexpr int kRowGroups = 4;

// Writes output rows [0, block) x batch rows [0, valid) of the L1 buffer out[row][batch lane]
// to y (y[t * y_stride + i] = out[i][t]), transposing W x W pieces through registers into
// out_t, so that a full block goes out kRowGroups * W floats per store. Shared by every
// kernel family whose batched path keeps a block of output rows in registers.
template <typename V, int NACC>
void store_row_block(const float (*out)[NACC * V::width], float (*out_t)[kRowGroups * V::width], float* y,
                     int64_t y_stride, int64_t block, int64_t valid) {
  constexpr int W = V::width;
  for (int g = 0; g < kRowGroups; ++g)
    for (int k = 0; k < NACC; ++k) {
      typename V::reg r[W];
      for (int i = 0; i < W; ++i) r[i] = V::load(out[g * W + i] + k * W);
      V::transpose(r);
      for (int j = 0; j < W; ++j) V::store(out_t[k * W + j] + g * W, r[j]);
    }
  for (int64_t t = 0; t < valid; ++t) {
    float* row = y + t * y_stride;
    if (block == kRowGroups * W) {
      for (int g = 0; g < kRowGroups; ++g) V::storeu(row + g * W, V::load(out_t[t] + g * W));
    } else {
      for (int64_t i = 0; i < block; ++i) row[i] = out_t[t][i];
    }
  }
}

// Adds n nonzeros, values[j] at column cols[j] of `tile` ([cols][NACC * width]), into the
// accumulators: even and odd nonzeros into separate sets, since NACC (<= 2) chains alone would
// wait on the FMA latency (4 cycles); batch 16 runs 1.4x faster with two sets.
template <typename V, int NACC, typename IndexT, typename ValueT>
inline void add_row(const float* tile, const IndexT* cols, const ValueT* values, int64_t n,
                    typename V::reg (&acc)[NACC]) {
  constexpr int W = V::width;
  constexpr int64_t T = int64_t(NACC) * W;
  typename V::reg odd[NACC];
  for (int k = 0; k < NACC; ++k) odd[k] = V::zero();
  int64_t j = 0;
  for (; j + 2 <= n; j += 2) {
    const auto v0 = V::set1(value_at(values, j)), v1 = V::set1(value_at(values, j + 1));
    const float* x0 = tile + int64_t(cols[j]) * T;
    const float* x1 = tile + int64_t(cols[j + 1]) * T;
    for (int k = 0; k < NACC; ++k) {
      acc[k] = V::fmadd(v0, V::load(x0 + k * W), acc[k]);
      odd[k] = V::fmadd(v1, V::load(x1 + k * W), odd[k]);
    }
  }
  if (j < n) {
    const auto v0 = V::set1(value_at(values, j));
    const float* x0 = tile + int64_t(cols[j]) * T;
    for (int k = 0; k < NACC; ++k) acc[k] = V::fmadd(v0, V::load(x0 + k * W), acc[k]);
  }
  for (int k = 0; k < NACC; ++k) acc[k] = V::add(acc[k], odd[k]);
}

// Output rows [r0, r1) of a rows x cols product for every tile of x, over the columns in
// `chunks` chunks of chunk_cols (one chunk of all columns for CSR's canonical buffers): a block
// of output rows takes every chunk in turn, all its rows one chunk before the next, so that
// the chunk's part of the tile stays in L1 (csr_chunks.h; bitmap's batched path too).
// segment(r, c, tile, acc) adds row r's nonzeros in chunk c into acc, `tile` starting at the
// chunk's first column; the chunks of a row come in order, from chunk 0.
template <typename V, int NACC, typename SegmentFn>
void tile_rows(int64_t rows, int64_t cols, const DenseArgs& a, int64_t r0, int64_t r1, int64_t chunks,
               int64_t chunk_cols, const SegmentFn& segment) {
  constexpr int W = V::width;
  constexpr int64_t T = int64_t(NACC) * W;
  constexpr int64_t RB = kRowGroups * W;
  // Rows past a partial block are transposed but never written to y; zeroed so that they
  // are never read uninitialized.
  alignas(64) float out[RB][T] = {};
  alignas(64) float out_t[T][RB];
  for (int64_t t0 = 0; t0 < a.batch; t0 += T) {
    const float* tile = a.workspace + t0 * cols;
    const int64_t valid = std::min<int64_t>(T, a.batch - t0);
    for (int64_t rb = r0; rb < r1; rb += RB) {
      const int64_t block = std::min<int64_t>(RB, r1 - rb);
      for (int64_t c = 0; c < chunks; ++c)
        for (int64_t i = 0; i < block; ++i) {
          // The first chunk starts from the bias, the others from the sums so far.
          typename V::reg acc[NACC];
          for (int k = 0; k < NACC; ++k)
            acc[k] = c == 0 ? V::set1(a.bias ? a.bias[rb + i] : 0.f) : V::load(out[i] + k * W);
          segment(rb + i, c, tile + c * chunk_cols * T, acc);
          for (int k = 0; k < NACC; ++k) V::store(out[i] + k * W, acc[k]);
        }
      store_row_block<V, NACC>(out, out_t, a.y_f32() + t0 * rows + rb, rows, block, valid);
    }
  }
}

// The batched rows [r0, r1): from the canonical buffers, or from the chunked copy when the
// matrix comes with it.
template <typename V, int NACC, typename IndexT, typename ValueT>
void batched_rows(const CsrMatrix& w, const DenseArgs& a, int64_t r0, int64_t r1) {
  using Acc = typename V::reg[NACC];
  if (w.chunks) {
    const CsrChunks& c = *w.chunks;
    const ValueT* values = c.values<ValueT>();
    return tile_rows<V, NACC>(w.rows, w.cols, a, r0, r1, c.chunks, kChunkCols,
                              [&](int64_t r, int64_t chunk, const float* tile, Acc& acc) {
                                const int64_t at = c.segment(r, chunk), j0 = c.starts[at];
                                add_row<V, NACC>(tile, c.columns.data() + j0, values + j0, c.starts[at + 1] - j0, acc);
                              });
  }
  const auto* cols = static_cast<const IndexT*>(w.col_idx);
  const auto* values = static_cast<const ValueT*>(w.values);
  tile_rows<V, NACC>(w.rows, w.cols, a, r0, r1, 1, w.cols, [&](int64_t r, int64_t, const float* tile, Acc& acc) {
    const int64_t j0 = w.row_ptr[r];
    add_row<V, NACC>(tile, cols + j0, values + j0, w.row_ptr[r + 1] - j0, acc);
  });
}

template <typename V, typename IndexT, typename ValueT>
void single_rows(const CsrMatrix& w, const DenseArgs& a, int64_t r0, int64_t r1) {
  const auto* cols = static_cast<const IndexT*>(w.col_idx);
  const auto* values = static_cast<const ValueT*>(w.values);
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t j0 = w.row_ptr[r];
    const float dot = V::row_dot(values + j0, cols + j0, w.row_ptr[r + 1] - j0, a.x_f32());
    a.y_f32()[r] = a.bias ? dot + a.bias[r] : dot;
  }
}

template <typename V, int NACC, typename IndexT, typename ValueT>
void csr_spmm_typed(const CsrMatrix& w, const DenseArgs& a) {
  const int parts = useful_threads(w.row_ptr[w.rows], a.batch, a.num_threads);
  if (parts == 1 && a.batch == 1) {
    // Work too small to share: no OpenMP runtime call at all (about 0.4 us, a third of a
    // small layer's batch-1 product).
    return single_rows<V, IndexT, ValueT>(w, a, 0, w.rows);
  }
#pragma omp parallel num_threads(parts) if (parts > 1)
  {
    if (a.batch > 1) pack_transposed<V>(a, w.cols, int64_t(NACC) * V::width);  // ends in a barrier
#pragma omp for schedule(static, 1)
    for (int part = 0; part < parts; ++part) {
      // With the chunked copy, parts start where its row blocks do.
      const int64_t align = a.batch > 1 && w.chunks ? kChunkRows : 1;
      const int64_t r0 = nnz_balanced_row_aligned(w.row_ptr, w.rows, part, parts, align);
      const int64_t r1 = nnz_balanced_row_aligned(w.row_ptr, w.rows, part + 1, parts, align);
      if (a.batch > 1) batched_rows<V, NACC, IndexT, ValueT>(w, a, r0, r1);
      else single_rows<V, IndexT, ValueT>(w, a, r0, r1);
    }
  }
}

template <typename V>
void csr_spmm(const CsrMatrix& w, const DenseArgs& a) {
  if (a.batch == 0) return;
  dispatch_types(w, [&](auto index, auto value) {
    using I = decltype(index);
    using F = decltype(value);
    static_assert(kMaxAccumulators == 2, "one instantiation per accumulator count below");
    if (accumulators_for<V>(a.batch) == 1) return csr_spmm_typed<V, 1, I, F>(w, a);
    return csr_spmm_typed<V, 2, I, F>(w, a);
  });
}

}  // namespace
}  // namespace sparsekern::cpu::simd
