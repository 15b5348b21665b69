// Bitmap with bf16 values and bf16 activations, read natively with vdpbf16ps at every batch:
// up to 16 rows of x (24 on Zen 4) the grouped path (bitmap_linear_bf16_grouped.h;
// takes_grouped says where), above that this file's tiled path. Included only by
// bitmap_linear_avx512bf16.cpp (and the tests' forced variants).
//
// Rows of W are expanded, kRows rows by one 32-column word at a time, into dense bf16 in L1
// (zeros included), and a dense micro-kernel multiplies them with x, kept as pair tiles: tile
// t, pair p holds the 16 dwords (x[16t + b][2p], x[16t + b][2p + 1]), copied once per call.
// One vdpbf16ps takes a broadcast weight pair (W[r][2p], W[r][2p + 1]) and a tile row: both
// products for 16 batch rows. The kRows x T accumulators (T tiles of 16 batch rows) stay in
// registers over a whole row block, and each word's expansion sits in the same loop as its
// products. Each tile load serves kRows / T rows and each weight pair T tiles; W streams once
// per T tiles.
//
// Why multiply the zeros: skipping them one by one costs, per nonzero, placing its activation
// (a shuffle or a gather) beside one multiply. The pairing of arbitrary nonzeros that this
// replaced (per two nonzeros two shuffles, two tile loads and one vdpbf16ps) measured
// 0.37-0.72x of dense bf16 at 50% and batch 16-256 on Zen 5 (2 threads), and padding each row
// to whole column pairs, decoded in registers, measured no faster. This path reads W
// compressed (1/8 + density / 2 bytes per weight, against dense's 2) and does dense's
// arithmetic plus the expansion. Expanding 256 columns of 24 rows first and multiplying them
// after, with the sums added to memory per block (the previous version of this file), ran
// 1.1-1.5x slower at batch 8-16 and 1.0-1.1x at 32-64 on Zen 5 (2 threads, 4096 x 4096,
// 50-70%). The expansion still costs: on one thread with W in L3, at batch 16, the products
// alone took 9.3 cycles per row and word, the expansion alone 5.9, both 14.2.
// Where this leaves batch 64 on Zen 4 (4096 x 4096, 50%): 84% of vdpbf16ps's peak (one zmm per
// cycle per core, measured), dense bf16 in torch 75%, so multiplying the zeros cannot pass
// about 1.3x of dense there. Skipping only the all-zero column pairs (a quarter of them at 50%)
// with a per-row list of the others, built ahead, x chunked to stay in L1, and four tiles per
// pair ran at 0.87x this path's speed on one thread before any decoding: each vdpbf16ps then
// needs a tile row of its own, and the loads bound it at about 0.56 per cycle.
// The expansion of one 32-column word is bitmap_expand_bf16.h's.
#pragma once

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>

#include "bf16.h"
#include "bitmap_expand_bf16.h"
#include "bitmap_linear.h"
#include "bitmap_linear_bf16_grouped.h"
#include "cpu_features.h"
#include "simd_avx512.h"
#include "work_split.h"

namespace sparsekern::cpu::bitmapbf16 {
namespace {

constexpr int kRows = 24;          // the micro-kernel's accumulators: kRows / T rows x T tiles
constexpr int64_t kTileRows = 16;  // batch rows per tile
constexpr int kMaxTiles = 4;       // tiles per pass over W (T)
// Software prefetch distance ahead of each row's values (bytes), and of its bits (words, one
// prefetch per 16): kRows rows read side by side are more streams than the hardware
// prefetcher follows. On Zen 5 (2 threads, batch 16, W from DRAM) 128 bytes ran 14% faster
// than 256 at 70% and 2% at 50%, and 64 ran 5-20% slower than 128.
constexpr int64_t kPrefetchValueBytes = 128;
constexpr int64_t kPrefetchWords = 32;

// Which batches take the grouped path: every batch up to `up_to`, except one full tile of x
// (kTileRows rows) where W holds at least `full_tile_tiled_from` of its weights (the tiles'
// broadcasts save more where W is denser).
struct GroupedRule {
  int64_t up_to;
  double full_tile_tiled_from;
};

// Zen 5 and other CPUs (measured on Zen 5, 4096 x 4096, 2 threads, 30-70%; tiled / grouped
// time). Batch 5-8: 2.0-2.4x, 9-14: 1.0-1.3x with W in L3. Batch 16, W in L3 and from DRAM:
// 0.96-1.05x at 30-40% density, 0.97-1.09x at 50%, 0.85-1.04x at 60%; in Python against dense
// bf16 at 50% (seven alternations of the two builds) the tiled path's median ratio was 5%
// higher (1.27x against 1.20x), so 50% stays tiled. From 17 the tiles share each weight
// broadcast among two or more tiles: 0.92-1.02x at batch 24, 0.72-0.80x at 32 (the grouped
// path streaming W once, see kChunkRows).
constexpr GroupedRule kGroupedRule{16, 0.45};
// Zen 4 (AMD family 19h), where the tiled path's one-tile case runs further from vdpbf16ps's
// rate: on one thread with W in L2 (240 x 4096, 50%, batch 16) it took 1.19x the grouped
// path's time (its products alone would take 58% of it, the grouped path's 69%; at batch 64
// the tiled path's take 79%). Grouped / tiled time, 4096 x 4096 and 11008 x 4096 at 30% and
// 50% density, 2 threads, W in L3 and from DRAM: 0.89-0.98x at batch 16, 0.89-0.93x at 24,
// 1.04-1.08x at 28.
constexpr GroupedRule kGroupedRuleZen4{24, 2.0};  // 2.0: above any density, so 16 stays grouped

inline const GroupedRule& cpu_grouped_rule() {
  static const GroupedRule& rule = amd_family() == 0x19 ? kGroupedRuleZen4 : kGroupedRule;
  return rule;
}

inline bool takes_grouped(const BitmapMatrix& w, int64_t batch, const GroupedRule& rule) {
  if (batch > rule.up_to) return false;
  const double weights = double(w.rows) * double(w.cols);
  return batch != kTileRows || double(w.offsets[w.rows]) < rule.full_tile_tiled_from * weights;
}

// Pairs of x per tile: whole words, the pairs past cols zero (the expanded weights there are 0).
inline int64_t padded_pairs(int64_t cols) { return bitmap_words(cols) * 16; }
inline int64_t tiles_of(int64_t batch) { return (batch + kTileRows - 1) / kTileRows; }

// Pairs [p0, p1) of every tile (zero past the batch and past cols). 32 columns of 16 batch
// rows are 16 dwords each: one 16 x 16 transpose makes 16 tile rows.
inline void pack(const DenseArgs& a, int64_t cols, int64_t p0, int64_t p1, uint32_t* tiles) {
  const auto* x = static_cast<const uint16_t*>(a.x);
  const int64_t pairs = padded_pairs(cols), whole = cols / 2;  // pairs with both columns inside
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
        const uint32_t lo = b < valid && 2 * p < cols ? row[2 * p] : 0;
        const uint32_t hi = b < valid && 2 * p + 1 < cols ? row[2 * p + 1] : 0;
        dst[p * kTileRows + b] = lo | hi << 16;
      }
  }
}

// Tiles [t0, t0 + T) of the rows [r0, r1), kRows / T rows at a time. expanded: 2 x R x 16
// dwords (two words' buffers, so that a word's expansion need not wait for the previous
// word's products to have read the buffer); sums: R x T x 16 floats.
template <typename Expand, int T>
void rows(const BitmapMatrix& w, const DenseArgs& a, const uint32_t* tiles, int64_t r0, int64_t r1, int64_t t0,
          uint32_t* expanded, float* sums) {
  constexpr int R = kRows / T;
  const int64_t words = bitmap_words(w.cols), x_stride = padded_pairs(w.cols) * kTileRows;
  const auto* values = static_cast<const uint16_t*>(w.values);
  const uint16_t* end = values + w.offsets[w.rows];
  const uint32_t* x = tiles + t0 * x_stride;
  const uint16_t* next[R];
  const uint32_t* bits[R];
  for (int64_t rb = r0; rb < r1; rb += R) {
    const int64_t block = std::min<int64_t>(R, r1 - rb);
    for (int i = 0; i < block; ++i) {
      next[i] = values + w.offsets[rb + i];
      bits[i] = w.bits + (rb + i) * words;
    }
    // A short last block multiplies zeros in the rows it lacks (their sums are not stored).
    for (int half = 0; half < 2; ++half)
      std::fill(expanded + (half * R + block) * 16, expanded + (half + 1) * R * 16, 0u);
    __m512 acc[R][T];
#pragma GCC unroll 24
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();
    // Word k + 1 is expanded before word k's products, so that its stores have long landed
    // when the broadcasts read them back (expanding each word just before its own products ran
    // 2-6% slower with four tiles, batch 64-256, the same at 17-48: Zen 4, 4096 x 4096, 11008 x
    // 4096 and 4096 x 11008, 50-70%, C++ A/B).
    auto expand = [&](int64_t k) {
      uint32_t* e = expanded + (k & 1) * R * 16;
      for (int i = 0; i < block; ++i) {
        const uint32_t m = bits[i][k];
        _mm512_store_si512(e + i * 16, Expand::word(m, next[i], end));
        next[i] += __builtin_popcount(m);
        _mm_prefetch(reinterpret_cast<const char*>(next[i]) + kPrefetchValueBytes, _MM_HINT_T0);
        if (k % 16 == 0) _mm_prefetch(reinterpret_cast<const char*>(bits[i] + k + kPrefetchWords), _MM_HINT_T0);
      }
    };
    expand(0);
    for (int64_t k = 0; k < words; ++k) {
      if (k + 1 < words) expand(k + 1);
      const uint32_t* e = expanded + (k & 1) * R * 16;
      const uint32_t* xk = x + k * 16 * kTileRows;
      // Unrolled so that the accumulators stay in registers (without it gcc kept them in memory).
#pragma GCC unroll 2
      for (int p = 0; p < 16; ++p) {
        __m512bh xt[T];
#pragma GCC unroll 4
        for (int t = 0; t < T; ++t)
          xt[t] = reinterpret_cast<__m512bh>(_mm512_load_si512(xk + t * x_stride + p * kTileRows));
#pragma GCC unroll 24
        for (int r = 0; r < R; ++r) {
          const __m512bh pair = reinterpret_cast<__m512bh>(_mm512_set1_epi32(int(e[r * 16 + p])));
#pragma GCC unroll 4
          for (int t = 0; t < T; ++t) acc[r][t] = _mm512_dpbf16_ps(acc[r][t], xt[t], pair);
        }
      }
    }
#pragma GCC unroll 24
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int t = 0; t < T; ++t) _mm512_store_ps(sums + (r * T + t) * kTileRows, acc[r][t]);
    const int64_t first = t0 * kTileRows, valid = std::min<int64_t>(T * kTileRows, a.batch - first);
    store_bf16_rows(a, w.rows, first, valid, rb, block, sums, T * kTileRows, 1);
  }
}

// Floats of a thread's part of the workspace: its two words' expanded rows and its sums.
constexpr int64_t kPartFloats = 2 * kRows * 16 + kRows * kTileRows;

// The product where the grouped path is not taken: threads pack x together, then take rows by
// nonzeros and stream them once per kMaxTiles tiles (the last group with the tiles left).
template <typename Expand>
void tiled(const BitmapMatrix& w, const DenseArgs& a) {
  const int64_t pairs = padded_pairs(w.cols), tiles_n = tiles_of(a.batch);
  auto* tiles = reinterpret_cast<uint32_t*>(a.workspace);
  const int parts = useful_threads(w.offsets[w.rows], a.batch, a.num_threads);
#pragma omp parallel num_threads(parts) if (parts > 1)
  {
    // The team OpenMP gave (it may give fewer threads than asked: nested, or a thread limit).
    const int team = omp_get_num_threads(), part = omp_get_thread_num();
    pack(a, w.cols, pairs * part / team, pairs * (part + 1) / team, tiles);
#pragma omp barrier
    float* mine = a.workspace + tiles_n * pairs * kTileRows + part * kPartFloats;
    auto* expanded = reinterpret_cast<uint32_t*>(mine);
    float* sums = mine + 2 * kRows * 16;
    const int64_t r0 = nnz_balanced_row(w.offsets, w.rows, part, team);
    const int64_t r1 = nnz_balanced_row(w.offsets, w.rows, part + 1, team);
    for (int64_t t0 = 0; t0 < tiles_n; t0 += kMaxTiles) {
      switch (std::min<int64_t>(tiles_n - t0, kMaxTiles)) {
        case 1: rows<Expand, 1>(w, a, tiles, r0, r1, t0, expanded, sums); break;
        case 2: rows<Expand, 2>(w, a, tiles, r0, r1, t0, expanded, sums); break;
        case 3: rows<Expand, 3>(w, a, tiles, r0, r1, t0, expanded, sums); break;
        default: rows<Expand, 4>(w, a, tiles, r0, r1, t0, expanded, sums);
      }
    }
  }
}

template <typename Expand>
void product(const BitmapMatrix& w, const DenseArgs& a, const GroupedRule& rule) {
  if (takes_grouped(w, a.batch, rule)) grouped<Expand>(w, a);
  else tiled<Expand>(w, a);
}

inline void linear(const BitmapMatrix& w, const DenseArgs& a) {
  static const bool vbmi2 = cpu_has("avx512_vbmi2");
  if (vbmi2) product<ExpandVbmi2>(w, a, cpu_grouped_rule());
  else product<ExpandTables>(w, a, cpu_grouped_rule());
}

inline int64_t workspace_floats(const BitmapMatrix& w, int64_t batch, int num_threads,
                                const GroupedRule& rule = cpu_grouped_rule()) {
  if (takes_grouped(w, batch, rule)) return grouped_workspace_floats(w, batch);
  return tiles_of(batch) * padded_pairs(w.cols) * kTileRows + std::max(num_threads, 1) * kPartFloats;
}

}  // namespace
}  // namespace sparsekern::cpu::bitmapbf16
