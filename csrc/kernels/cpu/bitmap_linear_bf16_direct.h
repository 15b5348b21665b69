// Bitmap with bf16 values and bf16 activations for batches below bitmapbf16::kTilesFrom, read
// natively: each row of W streams once per group of up to kDirectBatch rows of x. Per 32-column
// word, the row's next popcount values are expanded into the 32 bf16 lanes of their columns
// (bitmap_expand_bf16.h) and one vdpbf16ps multiplies them with 32 activations of a row of x,
// read where they lie: no copy of x, no widening. Included by bitmap_linear_bf16.h.
//
// Against the widened fp32 path it replaces (x copied to fp32, two table expansions, two
// widenings and two FMAs per word), this does a quarter of the vector work per word: on Zen 5
// (4096 x 4096, 2 threads, W from DRAM) 1.4-1.6x faster at batch 1 and 1.3-1.8x at 2-4, and
// it streams W at 22-30 GB/s at batch 1, where dense bf16 F.linear streams its W at about 20.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "bf16.h"
#include "bitmap_expand_bf16.h"
#include "bitmap_linear.h"
#include "work_split.h"

namespace sparsekern::cpu::bitmapbf16 {
namespace {

constexpr int kDirectBatch = 4;  // rows of x per pass over W
// Software prefetch distances, in bytes ahead of a row's values and bits: rows read one after
// another defeat the hardware prefetcher at each row start (the fp32 direct path's distance).
constexpr int64_t kDirectPrefetchValues = 1024;
constexpr int64_t kDirectPrefetchBits = 256;

// y[b0 .. b0 + NB)[r]. x[b]: row b0 + b of x; tail[b]: its last partial word, zero-padded.
template <typename Expand, int NB>
void direct_row(const BitmapMatrix& w, const DenseArgs& a, int64_t r, int64_t b0, const uint16_t* const* x,
                const uint16_t (*tail)[32]) {
  // Independent vdpbf16ps chains per row of x, so that NB * K >= 4 hide its latency.
  constexpr int K = NB >= 4 ? 1 : NB >= 2 ? 2 : 4;
  const int64_t words = bitmap_words(w.cols), full = w.cols / 32;
  const auto* values = static_cast<const uint16_t*>(w.values);
  const uint16_t* v = values + w.offsets[r];
  const uint16_t* end = values + w.offsets[w.rows];
  const uint32_t* bits = w.bits + r * words;
  __m512 acc[NB][K];
  for (int b = 0; b < NB; ++b)
    for (int c = 0; c < K; ++c) acc[b][c] = _mm512_setzero_ps();
  // Word k into chain c; x_at(b): its 32 activations of row b.
  auto word = [&](int64_t k, int c, auto&& x_at) {
    const uint32_t m = bits[k];
    _mm_prefetch(reinterpret_cast<const char*>(v) + kDirectPrefetchValues, _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(bits + k) + kDirectPrefetchBits, _MM_HINT_T0);
    const auto kept = reinterpret_cast<__m512bh>(Expand::word(m, v, end));
    v += __builtin_popcount(m);
    for (int b = 0; b < NB; ++b)
      acc[b][c] = _mm512_dpbf16_ps(acc[b][c], kept, reinterpret_cast<__m512bh>(_mm512_loadu_si512(x_at(b))));
  };
  int64_t k = 0;
  for (; k + K <= full; k += K)
#pragma GCC unroll 4
    for (int c = 0; c < K; ++c) word(k + c, c, [&](int b) { return x[b] + 32 * (k + c); });
  for (; k < full; ++k) word(k, 0, [&](int b) { return x[b] + 32 * k; });
  if (words > full) word(full, 0, [&](int b) { return tail[b]; });
  auto* y = static_cast<uint16_t*>(a.y);
  for (int b = 0; b < NB; ++b) {
    __m512 sum = acc[b][0];
    for (int c = 1; c < K; ++c) sum = _mm512_add_ps(sum, acc[b][c]);
    const float dot = _mm512_reduce_add_ps(sum);
    y[(b0 + b) * w.rows + r] = f32_to_bf16(a.bias ? dot + a.bias[r] : dot);
  }
}

template <typename Expand>
void direct(const BitmapMatrix& w, const DenseArgs& a) {
  const int parts = useful_threads(w.offsets[w.rows] + w.rows * bitmap_words(w.cols), a.batch, a.num_threads);
  const int64_t tail_start = w.cols / 32 * 32;
  run_parts(parts, [&](int part) {
    const int64_t r0 = nnz_balanced_row(w.offsets, w.rows, part, parts);
    const int64_t r1 = nnz_balanced_row(w.offsets, w.rows, part + 1, parts);
    for (int64_t b0 = 0; b0 < a.batch; b0 += kDirectBatch) {
      const int nb = int(std::min<int64_t>(kDirectBatch, a.batch - b0));
      const uint16_t* x[kDirectBatch] = {};
      // The last partial word's activations, zero-padded to 32: x may end at cols.
      alignas(64) uint16_t tail[kDirectBatch][32] = {};
      for (int b = 0; b < nb; ++b) {
        x[b] = static_cast<const uint16_t*>(a.x) + (b0 + b) * a.x_row_stride;
        std::memcpy(tail[b], x[b] + tail_start, size_t(w.cols - tail_start) * 2);
      }
      for (int64_t r = r0; r < r1; ++r) {
        switch (nb) {
          case 1: direct_row<Expand, 1>(w, a, r, b0, x, tail); break;
          case 2: direct_row<Expand, 2>(w, a, r, b0, x, tail); break;
          case 3: direct_row<Expand, 3>(w, a, r, b0, x, tail); break;
          default: direct_row<Expand, 4>(w, a, r, b0, x, tail);
        }
      }
    }
  });
}

}  // namespace
}  // namespace sparsekern::cpu::bitmapbf16
