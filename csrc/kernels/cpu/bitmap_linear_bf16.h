// Bitmap with bf16 values and bf16 activations for batches from BitmapFamily::kBf16From, read
// natively with vdpbf16ps. Included only by bitmap_linear_avx512bf16.cpp.
//
// Rows of W are expanded, kRows rows by chunk_cols() columns at a time, into dense bf16 in L1
// (zeros included), and a dense micro-kernel multiplies them with x, kept as pair tiles: tile
// t, pair p holds the 16 dwords (x[16t + b][2p], x[16t + b][2p + 1]), copied once per call.
// One vdpbf16ps takes a broadcast weight pair (W[r][2p], W[r][2p + 1]) and a tile row: both
// products for 16 batch rows. The micro-kernel holds kRows x T accumulators (T tiles of 16
// batch rows), so each tile load serves kRows rows and each weight pair T tiles.
//
// Why multiply the zeros: skipping them one by one costs, per nonzero, placing its activation
// (a shuffle or a gather) beside one multiply. The pairing of arbitrary nonzeros that this
// replaced (per two nonzeros two shuffles, two tile loads and one vdpbf16ps) measured
// 0.37-0.72x of dense bf16 at 50% and batch 16-256 on Zen 5 (2 threads), and padding each row
// to whole column pairs, decoded in registers, measured no faster. This path reads W
// compressed (1/8 + density / 2 bytes per weight, against dense's 2) and does dense's
// arithmetic plus the expansion: 1.21-1.26x of dense bf16 at 50% and batch 16, 1.08-1.09x at
// 64, 0.95x at 70% and 256 (benchmarks/, each paired with dense).
//
// The expansion of one 32-column word is bitmap_expand_bf16.h's.
#pragma once

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>

#include "bf16.h"
#include "bitmap_expand_bf16.h"
#include "bitmap_linear.h"
#include "cpu_features.h"
#include "simd_avx512.h"
#include "work_split.h"

namespace sparsekern::cpu::bitmapbf16 {
namespace {

constexpr int kRows = 24;             // rows expanded together: the micro-kernel's accumulators
constexpr int64_t kTileRows = 16;     // batch rows per tile
constexpr int kMaxTiles = 4;          // tiles per micro-kernel call (T)
constexpr int64_t kMaxChunkCols = kMaxBitmapDecodeCols / 4;

// Columns expanded per pass: a quarter of tiles.bitmap_decode_cols (1/12 of L1d in int32s),
// so that the expanded rows and up to kMaxTiles tiles' pairs of the chunk fill about 2/3 of
// L1d: 256 columns for 48 KiB, which measured best of 128-1024 on Zen 5 (512: 0.5-0.7x of
// 256's speed at batch 16).
inline int64_t chunk_cols(const TileParams& t) {
  return std::clamp<int64_t>(t.bitmap_decode_cols / 4 / 32 * 32, 32, kMaxChunkCols);
}
// Elements from one expanded row to the next: the chunk plus a line, off 4 KiB multiples.
inline int64_t chunk_stride(int64_t chunk) { return chunk + 32; }

inline int64_t pairs_of(int64_t cols) { return (cols + 1) / 2; }
inline int64_t tiles_of(int64_t batch) { return (batch + kTileRows - 1) / kTileRows; }

// Pairs [p0, p1) of every tile (zero past the batch, and past cols in the last pair of an odd
// cols). 32 columns of 16 batch rows are 16 dwords each: one 16 x 16 transpose makes 16 tile rows.
inline void pack(const DenseArgs& a, int64_t cols, int64_t p0, int64_t p1, uint32_t* tiles) {
  const auto* x = static_cast<const uint16_t*>(a.x);
  const int64_t pairs = pairs_of(cols), whole = cols / 2;  // pairs with both columns inside
  for (int64_t t = 0; t < tiles_of(a.batch); ++t) {
    const int64_t valid = std::min<int64_t>(kTileRows, a.batch - t * kTileRows);
    uint32_t* dst = tiles + t * pairs * kTileRows;
    const uint16_t* rows = x + t * kTileRows * a.x_row_stride;
    int64_t p = p0;
    for (; p + 16 <= std::min(p1, whole); p += 16) {
      __m512 r[16];
      for (int b = 0; b < 16; ++b)
        r[b] = b < valid ? _mm512_loadu_ps(rows + b * a.x_row_stride + 2 * p) : _mm512_setzero_ps();
      simd::Avx512::transpose(r);
      for (int i = 0; i < 16; ++i) _mm512_store_ps(reinterpret_cast<float*>(dst + (p + i) * kTileRows), r[i]);
    }
    for (; p < p1; ++p)
      for (int b = 0; b < kTileRows; ++b) {
        const uint16_t* row = rows + b * a.x_row_stride;
        const uint32_t lo = b < valid ? row[2 * p] : 0, hi = b < valid && 2 * p + 1 < cols ? row[2 * p + 1] : 0;
        dst[p * kTileRows + b] = lo | hi << 16;
      }
  }
}

// sums[r][16t ..] += the products of pairs [0, n) of the R expanded rows (`w`, pairs per row
// `w_stride`) with tiles 0 .. T - 1 (`x`, T tiles `x_stride` dwords apart).
template <int R, int T>
inline void micro(const uint32_t* w, int64_t w_stride, const uint32_t* x, int64_t x_stride, int64_t n, float* sums,
                  int64_t sums_stride) {
  __m512 acc[R][T];
#pragma GCC unroll 24
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();
  for (int64_t p = 0; p < n; ++p) {
    __m512bh xt[T];
#pragma GCC unroll 4
    for (int t = 0; t < T; ++t) xt[t] = reinterpret_cast<__m512bh>(_mm512_load_si512(x + t * x_stride + p * kTileRows));
    // Unrolled so that the accumulators stay in registers (without it gcc kept them in memory).
#pragma GCC unroll 24
    for (int r = 0; r < R; ++r) {
      const __m512bh pair = reinterpret_cast<__m512bh>(_mm512_set1_epi32(int(w[r * w_stride + p])));
#pragma GCC unroll 4
      for (int t = 0; t < T; ++t) acc[r][t] = _mm512_dpbf16_ps(acc[r][t], xt[t], pair);
    }
  }
#pragma GCC unroll 24
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int t = 0; t < T; ++t) {
      float* s = sums + r * sums_stride + t * kTileRows;
      _mm512_store_ps(s, _mm512_add_ps(_mm512_load_ps(s), acc[r][t]));
    }
}

// Rows [r0, r1), kRows at a time. T: tiles per micro-kernel call (kRows / T rows, so that
// there are always kRows accumulators); the tiles past the last multiple of T go one at a time.
template <typename Expand, int T>
void rows(const BitmapMatrix& w, const DenseArgs& a, const uint32_t* tiles, int64_t r0, int64_t r1, uint16_t* expanded,
          float* sums) {
  constexpr int R = kRows / T;
  const int64_t chunk = chunk_cols(a.tiles), stride = chunk_stride(chunk);
  const int64_t words = bitmap_words(w.cols), pairs = pairs_of(w.cols), tiles_n = tiles_of(a.batch);
  const int64_t x_stride = pairs * kTileRows, sums_stride = tiles_n * kTileRows;
  const auto* values = static_cast<const uint16_t*>(w.values);
  const uint16_t* end = values + w.offsets[w.rows];
  const uint32_t* pair_rows = reinterpret_cast<const uint32_t*>(expanded);
  const uint16_t* next[R];
  for (int64_t rb = r0; rb < r1; rb += R) {
    const int64_t block = std::min<int64_t>(R, r1 - rb);
    for (int i = 0; i < R; ++i) next[i] = i < block ? values + w.offsets[rb + i] : nullptr;
    std::fill(sums, sums + R * sums_stride, 0.f);
    for (int64_t c0 = 0; c0 < w.cols; c0 += chunk) {
      const int64_t k0 = c0 / 32, k1 = std::min(words, (c0 + chunk) / 32);
      for (int i = 0; i < R; ++i) {
        uint16_t* dst = expanded + i * stride;
        if (i >= block) {
          std::fill(dst, dst + chunk, uint16_t(0));
          continue;
        }
        const uint32_t* bits = w.bits + (rb + i) * words;
        for (int64_t k = k0; k < k1; ++k) {
          _mm512_store_si512(dst + (k - k0) * 32, Expand::word(bits[k], next[i], end));
          next[i] += __builtin_popcount(bits[k]);
        }
        // The row's next chunk: kRows rows read side by side are more streams than the
        // hardware prefetcher follows.
        for (int64_t line = 0; line < chunk * 2; line += 64)
          _mm_prefetch(reinterpret_cast<const char*>(next[i]) + line, _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(bits + k1), _MM_HINT_T0);
      }
      const int64_t p0 = c0 / 2, n = std::min(pairs, (c0 + chunk) / 2) - p0;
      const uint32_t* x = tiles + p0 * kTileRows;
      int64_t t = 0;
      for (; t + T <= tiles_n; t += T)
        micro<R, T>(pair_rows, stride / 2, x + t * x_stride, x_stride, n, sums + t * kTileRows, sums_stride);
      for (; t < tiles_n; ++t)
        micro<R, 1>(pair_rows, stride / 2, x + t * x_stride, x_stride, n, sums + t * kTileRows, sums_stride);
    }
    store_bf16_rows(a, w.rows, 0, a.batch, rb, block, sums, sums_stride, 1);
  }
}

// Floats of a thread's part of the workspace: its expanded rows (for the largest chunk) and
// its sums.
constexpr int64_t kExpandedFloats = kRows * (kMaxChunkCols + 32) / 2;
inline int64_t part_floats(int64_t batch) { return kExpandedFloats + kRows * tiles_of(batch) * kTileRows; }

// The whole product: threads pack x together, then take rows by nonzeros.
template <typename Expand>
void product(const BitmapMatrix& w, const DenseArgs& a) {
  const int64_t pairs = pairs_of(w.cols), tiles_n = tiles_of(a.batch);
  auto* tiles = reinterpret_cast<uint32_t*>(a.workspace);
  const int parts = useful_threads(w.offsets[w.rows], a.batch, a.num_threads);
#pragma omp parallel num_threads(parts) if (parts > 1)
  {
    // The team OpenMP gave (it may give fewer threads than asked: nested, or a thread limit).
    const int team = omp_get_num_threads(), part = omp_get_thread_num();
    pack(a, w.cols, pairs * part / team, pairs * (part + 1) / team, tiles);
#pragma omp barrier
    float* mine = a.workspace + tiles_n * pairs * kTileRows + part * part_floats(a.batch);
    auto* expanded = reinterpret_cast<uint16_t*>(mine);
    float* sums = mine + kExpandedFloats;
    const int64_t r0 = nnz_balanced_row(w.offsets, w.rows, part, team);
    const int64_t r1 = nnz_balanced_row(w.offsets, w.rows, part + 1, team);
    // As many tiles per call as the batch fills, up to kMaxTiles.
    switch (std::min<int64_t>(tiles_n, kMaxTiles)) {
      case 1: rows<Expand, 1>(w, a, tiles, r0, r1, expanded, sums); break;
      case 2: rows<Expand, 2>(w, a, tiles, r0, r1, expanded, sums); break;
      case 3: rows<Expand, 3>(w, a, tiles, r0, r1, expanded, sums); break;
      default: rows<Expand, 4>(w, a, tiles, r0, r1, expanded, sums);
    }
  }
}

inline void batched(const BitmapMatrix& w, const DenseArgs& a) {
  static const bool vbmi2 = cpu_has("avx512_vbmi2");
  if (vbmi2) product<ExpandVbmi2>(w, a);
  else product<ExpandTables>(w, a);
}

inline int64_t workspace_floats(const BitmapMatrix& w, int64_t batch, int num_threads) {
  return tiles_of(batch) * pairs_of(w.cols) * kTileRows + std::max(num_threads, 1) * part_floats(batch);
}

}  // namespace
}  // namespace sparsekern::cpu::bitmapbf16
