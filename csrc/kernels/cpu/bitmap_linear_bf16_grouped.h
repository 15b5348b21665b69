// Bitmap with bf16 values and bf16 activations for the batches bitmapbf16::takes_grouped
// gives it (up to 16 or 24 rows), read natively. x is copied once per call into groups of up
// to kGroupBatch rows, word-major (per 32-column word, the group's rows side by side: one
// pointer and fixed offsets reach them all, and the last partial word is zero-padded). Each
// group passes over W a chunk of rows at a time (kChunkRows), every group over one chunk before
// the next, so W streams from memory once: per 32-column word, each of kGroupRows rows of W
// has its next popcount values expanded into the 32 bf16 lanes of their columns in a register
// (bitmap_expand_bf16.h), and one vdpbf16ps per row of W and row of x multiplies 32 columns.
// Sums run over columns within the lanes and are reduced once per row. Included by
// bitmap_linear_bf16.h.
//
// Against the tiled path (bitmap_linear_bf16.h) this does the same products without storing the
// expanded words and broadcasting them back, and each load of x serves kGroupRows rows of W.
// Against the direct path it replaced (one row of W and up to 4 rows of x, read in place, per
// pass), the group of 8 shares each expansion among twice the rows of x, three rows of W keep
// more independent products in flight, and the next rows' starts are prefetched (see
// kPrefetchValues). Zen 5, 4096 x 4096 at 50% and 70%, 2 threads, C++ A/B, W in L3 unless
// said: against the tiled path 2.0-2.4x faster at batch 5-8 and 1.0-1.3x at 9-14 (16: see
// takes_grouped); against the direct path 1.0-1.7x at batch 2 (W from DRAM and L3) and
// 2.0-3.5x at 3-4; batch 1, which keeps the direct path's shape (one row of W at a time, four
// chains), within about 10% of it.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "bf16.h"
#include "bitmap_expand_bf16.h"
#include "bitmap_linear.h"
#include "simd_avx512.h"
#include "work_split.h"

namespace sparsekern::cpu::bitmapbf16 {
namespace {

constexpr int kGroupBatch = 8;  // rows of x per pass over W: 8 x 3 accumulators fill the registers
constexpr int kGroupRows = 3;   // rows of W side by side (batch 1: one, see group_pass)
// Rows of W that every group multiplies before the next rows start, so that W streams from
// memory once per call and the later groups read the chunk from L2 (12 rows of 4096 columns at
// 50% are 55 KiB). Against each group streaming all of W (Zen 5, 4096 x 4096, 2 threads, C++
// A/B): batch 9 and 16 ran 1.12-1.30x faster with W from DRAM, 0.99-1.09x with W in L3
// (chunks of 12 and 48 rows alike).
constexpr int64_t kChunkRows = 4 * kGroupRows;
// Software prefetch distance ahead of each row's values (bytes), and of its bits. One row at a
// time (batch 1) streams W from DRAM best with a long distance (the fp32 direct path's 1024);
// three rows side by side ran 0.76-0.94x of one row from DRAM at batch 1, but 1.6x from L3, and
// from batch 2 up they win from either. For three rows 512 and 1024 measured alike, 256 about
// 10% slower at batch 16 (Zen 5, W in L3).
constexpr int64_t kPrefetchValuesOneRow = 1024;
constexpr int64_t kPrefetchValues = 512;
constexpr int64_t kPrefetchBits = 256;

// A group's x: [words][nb][32] bf16, zero past cols.
inline int64_t group_elements(int64_t cols, int64_t nb) { return bitmap_words(cols) * nb * 32; }

inline void pack_group(const DenseArgs& a, int64_t cols, int64_t b0, int nb, uint16_t* dst) {
  const auto* x = static_cast<const uint16_t*>(a.x);
  const int64_t words = bitmap_words(cols), full = cols / 32;
  for (int b = 0; b < nb; ++b) {
    const uint16_t* row = x + (b0 + b) * a.x_row_stride;
    for (int64_t k = 0; k < full; ++k) _mm512_store_si512(dst + (k * nb + b) * 32, _mm512_loadu_si512(row + 32 * k));
    if (words > full) {  // x may end at cols: a masked load reads nothing past it
      const __mmask32 inside = __mmask32((uint64_t(1) << (cols - 32 * full)) - 1);
      _mm512_store_si512(dst + (full * nb + b) * 32, _mm512_maskz_loadu_epi16(inside, row + 32 * full));
    }
  }
}

// y[b0 .. b0 + NB)[r .. r + NR) from the group's packed x.
template <typename Expand, int NR, int NB>
void group_rows(const BitmapMatrix& w, const DenseArgs& a, const uint16_t* xg, int64_t r, int64_t b0) {
  // K independent vdpbf16ps chains per row of W and row of x, so that K * NR * NB >= 12 are in
  // flight: the instruction issues two a cycle and takes several cycles to finish.
  constexpr int K = NR * NB >= 12 ? 1 : NR * NB >= 6 ? 2 : 4;
  constexpr int64_t prefetch = NR == 1 ? kPrefetchValuesOneRow : kPrefetchValues;
  const int64_t words = bitmap_words(w.cols);
  const auto* values = static_cast<const uint16_t*>(w.values);
  const uint16_t* end = values + w.offsets[w.rows];
  const uint16_t* v[NR];
  const uint32_t* bits[NR];
  for (int i = 0; i < NR; ++i) {
    v[i] = values + w.offsets[r + i];
    bits[i] = w.bits + (r + i) * words;
  }
  // The next rows' first bytes: the running prefetches below reach ahead only within the rows
  // they read, so without these each row would start on demand misses (with three rows and W in
  // L3, that ran 1.1-1.4x slower).
  for (int64_t n = r + NR; n < std::min<int64_t>(r + 2 * NR, w.rows); ++n) {
    const auto* next_values = reinterpret_cast<const char*>(values + w.offsets[n]);
    const auto* next_bits = reinterpret_cast<const char*>(w.bits + n * words);
    for (int64_t o = 0; o < prefetch; o += 64) _mm_prefetch(next_values + o, _MM_HINT_T0);
    for (int64_t o = 0; o < std::min<int64_t>(kPrefetchBits, words * 4); o += 64)
      _mm_prefetch(next_bits + o, _MM_HINT_T0);
  }
  // Unrolled throughout so that the accumulators stay in registers.
  __m512 acc[K][NR][NB];
#pragma GCC unroll 4
  for (int c = 0; c < K; ++c)
#pragma GCC unroll 3
    for (int i = 0; i < NR; ++i)
#pragma GCC unroll 8
      for (int b = 0; b < NB; ++b) acc[c][i][b] = _mm512_setzero_ps();
  // Word k into chain c.
  auto word = [&](int64_t k, int c) {
    __m512bh kept[NR];
#pragma GCC unroll 3
    for (int i = 0; i < NR; ++i) {
      const uint32_t m = bits[i][k];
      _mm_prefetch(reinterpret_cast<const char*>(v[i]) + prefetch, _MM_HINT_T0);
      if (k % 16 == 0) _mm_prefetch(reinterpret_cast<const char*>(bits[i] + k) + kPrefetchBits, _MM_HINT_T0);
      kept[i] = reinterpret_cast<__m512bh>(Expand::word(m, v[i], end));
      v[i] += __builtin_popcount(m);
    }
    const uint16_t* xk = xg + k * NB * 32;
#pragma GCC unroll 8
    for (int b = 0; b < NB; ++b) {
      const auto xb = reinterpret_cast<__m512bh>(_mm512_load_si512(xk + b * 32));
#pragma GCC unroll 3
      for (int i = 0; i < NR; ++i) acc[c][i][b] = _mm512_dpbf16_ps(acc[c][i][b], kept[i], xb);
    }
  };
  int64_t k = 0;
  for (; k + K <= words; k += K)
#pragma GCC unroll 4
    for (int c = 0; c < K; ++c) word(k + c, c);
  for (; k < words; ++k) word(k, 0);
#pragma GCC unroll 3
  for (int i = 0; i < NR; ++i)
#pragma GCC unroll 8
    for (int b = 0; b < NB; ++b) {
      __m512 sum = acc[0][i][b];
#pragma GCC unroll 4
      for (int c = 1; c < K; ++c) sum = _mm512_add_ps(sum, acc[c][i][b]);
      store_bf16(a, w.rows, b0 + b, r + i, simd::Avx512::reduce(sum));
    }
}

// Rows [r0, r1) of one group: kGroupRows at a time, one at a time at batch 1 (see kPrefetchValues).
template <typename Expand, int NB>
void group_pass(const BitmapMatrix& w, const DenseArgs& a, const uint16_t* xg, int64_t r0, int64_t r1, int64_t b0) {
  constexpr int NR = NB == 1 ? 1 : kGroupRows;
  int64_t r = r0;
  for (; r + NR <= r1; r += NR) group_rows<Expand, NR, NB>(w, a, xg, r, b0);
  for (; r < r1; ++r) group_rows<Expand, 1, NB>(w, a, xg, r, b0);
}

// The batch in ceil(batch / kGroupBatch) groups of near-equal size (9 rows: 5 + 4, not 8 + 1:
// a group of one would run latency-bound chains over all of W for one row of x).
inline int64_t groups_of(int64_t batch) { return (batch + kGroupBatch - 1) / kGroupBatch; }
inline int64_t group_start(int64_t batch, int64_t g) { return batch * g / groups_of(batch); }

inline int64_t grouped_workspace_floats(const BitmapMatrix& w, int64_t batch) {
  return (group_elements(w.cols, batch) + 1) / 2;  // floats: two bf16 each
}

template <typename Expand>
void grouped(const BitmapMatrix& w, const DenseArgs& a) {
  // x is small here (at most 24 rows): the calling thread copies it, with no barrier.
  auto* packed = reinterpret_cast<uint16_t*>(a.workspace);
  for (int64_t g = 0; g < groups_of(a.batch); ++g) {
    const int64_t b0 = group_start(a.batch, g), nb = group_start(a.batch, g + 1) - b0;
    pack_group(a, w.cols, b0, int(nb), packed + group_elements(w.cols, b0));
  }
  const int parts = useful_threads(w.offsets[w.rows] + w.rows * bitmap_words(w.cols), a.batch, a.num_threads);
  run_parts(parts, [&](int part) {
    const int64_t r0 = nnz_balanced_row(w.offsets, w.rows, part, parts);
    const int64_t r1 = nnz_balanced_row(w.offsets, w.rows, part + 1, parts);
    for (int64_t rc = r0; rc < r1; rc += kChunkRows) {
      const int64_t re = std::min(rc + kChunkRows, r1);
      for (int64_t g = 0; g < groups_of(a.batch); ++g) {
        const int64_t b0 = group_start(a.batch, g), nb = group_start(a.batch, g + 1) - b0;
        const uint16_t* xg = packed + group_elements(w.cols, b0);
        switch (nb) {
          case 1: group_pass<Expand, 1>(w, a, xg, rc, re, b0); break;
          case 2: group_pass<Expand, 2>(w, a, xg, rc, re, b0); break;
          case 3: group_pass<Expand, 3>(w, a, xg, rc, re, b0); break;
          case 4: group_pass<Expand, 4>(w, a, xg, rc, re, b0); break;
          case 5: group_pass<Expand, 5>(w, a, xg, rc, re, b0); break;
          case 6: group_pass<Expand, 6>(w, a, xg, rc, re, b0); break;
          case 7: group_pass<Expand, 7>(w, a, xg, rc, re, b0); break;
          default: group_pass<Expand, kGroupBatch>(w, a, xg, rc, re, b0);
        }
      }
    }
  });
}

}  // namespace
}  // namespace sparsekern::cpu::bitmapbf16
