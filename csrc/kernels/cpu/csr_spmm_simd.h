// The vectorized CSR product, written once over a SIMD traits type V and instantiated per
// ISA (csr_spmm_avx2.cpp, csr_spmm_avx512.cpp with their own compiler flags).
//
// V provides: reg, width, zero(), set1(f), load(p) (64-byte aligned p), fmadd(a, b, c),
// store(p, r), and row_dot(values, cols, n, x) = sum_j values[j] * x[cols[j]] (batch 1).
//
// Batch 1 is bound by the bytes of W: each nonzero is read once and multiplied by one
// gathered activation (row_dot).
// Batch > 1 vectorizes over the batch: x is copied once per call into the workspace,
// transposed and cut into tiles of T = NACC * width batch rows ([cols][T] per tile), so that
// nonzero (r, c, v) becomes NACC aligned loads of tile row c and NACC FMAs into the
// accumulators of output row r. Each weight is read once per tile, each activation load
// feeds one FMA per lane.
#pragma once

#include <algorithm>
#include <cstdint>

#include "bf16.h"
#include "csr_spmm.h"
#include "dispatch_types.h"
#include "work_split.h"

// Internal linkage on purpose: this header is compiled into translation units with
// different ISA flags, and one shared inline copy could carry AVX-512 code into the
// scalar path (the linker keeps any one of them).
namespace sparsekern::cpu::simd {
namespace {

constexpr int kMaxAccumulators = 4;

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

// Copies x [batch x cols] into tiles [cols][tile] (rows past the batch are zeros).
// Work is shared by blocks of columns inside an enclosing parallel region.
inline void pack_transposed(const DenseArgs& a, int64_t cols, int64_t tile) {
  constexpr int64_t kColBlock = 64;  // keeps the tile rows being written within L1
  const int64_t tiles = (a.batch + tile - 1) / tile;
  const int64_t blocks = (cols + kColBlock - 1) / kColBlock;
#pragma omp for schedule(static)
  for (int64_t job = 0; job < tiles * blocks; ++job) {
    const int64_t t0 = job / blocks * tile;
    const int64_t k0 = job % blocks * kColBlock;
    const int64_t k1 = std::min(cols, k0 + kColBlock);
    float* dst = a.workspace + t0 * cols;
    for (int64_t t = 0; t < tile; ++t) {
      const int64_t b = t0 + t;
      if (b < a.batch) {
        const float* src = a.x + b * a.x_row_stride;
        for (int64_t k = k0; k < k1; ++k) dst[k * tile + t] = src[k];
      } else {
        for (int64_t k = k0; k < k1; ++k) dst[k * tile + t] = 0.f;
      }
    }
  }
}

template <typename V, int NACC, typename IndexT, typename ValueT>
void tile_rows(const CsrMatrix& w, const DenseArgs& a, int64_t r0, int64_t r1) {
  constexpr int64_t T = int64_t(NACC) * V::width;
  const auto* cols = static_cast<const IndexT*>(w.col_idx);
  const auto* values = static_cast<const ValueT*>(w.values);
  alignas(64) float out[T];
  for (int64_t t0 = 0; t0 < a.batch; t0 += T) {
    const float* tile = a.workspace + t0 * w.cols;
    const int64_t valid = std::min<int64_t>(T, a.batch - t0);
    for (int64_t r = r0; r < r1; ++r) {
      typename V::reg acc[NACC];
      for (int i = 0; i < NACC; ++i) acc[i] = V::zero();
      for (int64_t j = w.row_ptr[r]; j < w.row_ptr[r + 1]; ++j) {
        const auto v = V::set1(value_at(values, j));
        const float* xc = tile + int64_t(cols[j]) * T;
        for (int i = 0; i < NACC; ++i) acc[i] = V::fmadd(v, V::load(xc + i * V::width), acc[i]);
      }
      for (int i = 0; i < NACC; ++i) V::store(out + i * V::width, acc[i]);
      const float bias = a.bias ? a.bias[r] : 0.f;
      float* y = a.y + t0 * w.rows + r;
      for (int64_t t = 0; t < valid; ++t) y[t * w.rows] = out[t] + bias;
    }
  }
}

template <typename V, typename IndexT, typename ValueT>
void single_rows(const CsrMatrix& w, const DenseArgs& a, int64_t r0, int64_t r1) {
  const auto* cols = static_cast<const IndexT*>(w.col_idx);
  const auto* values = static_cast<const ValueT*>(w.values);
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t j0 = w.row_ptr[r];
    const float dot = V::row_dot(values + j0, cols + j0, w.row_ptr[r + 1] - j0, a.x);
    a.y[r] = a.bias ? dot + a.bias[r] : dot;
  }
}

template <typename V, int NACC, typename IndexT, typename ValueT>
void csr_spmm_typed(const CsrMatrix& w, const DenseArgs& a) {
  const int parts = useful_threads(w.row_ptr[w.rows], a.batch, a.num_threads);
#pragma omp parallel num_threads(parts)
  {
    if (a.batch > 1) pack_transposed(a, w.cols, int64_t(NACC) * V::width);  // ends in a barrier
#pragma omp for schedule(static, 1)
    for (int part = 0; part < parts; ++part) {
      const int64_t r0 = nnz_balanced_row(w.row_ptr, w.rows, part, parts);
      const int64_t r1 = nnz_balanced_row(w.row_ptr, w.rows, part + 1, parts);
      if (a.batch > 1) tile_rows<V, NACC, IndexT, ValueT>(w, a, r0, r1);
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
    switch (accumulators_for<V>(a.batch)) {
      case 1: return csr_spmm_typed<V, 1, I, F>(w, a);
      case 2: return csr_spmm_typed<V, 2, I, F>(w, a);
      case 3: return csr_spmm_typed<V, 3, I, F>(w, a);
      default: return csr_spmm_typed<V, kMaxAccumulators, I, F>(w, a);
    }
  });
}

}  // namespace
}  // namespace sparsekern::cpu::simd
