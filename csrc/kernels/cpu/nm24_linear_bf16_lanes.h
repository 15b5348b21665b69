// 2:4 with bf16 values and activations for batches from Nm24Family::kNm24LanesFrom: 16 output
// rows in the lanes of a zmm, read from the rows-in-lanes copy of W (nm24_lanes.h). Included
// only by nm24_linear_avx512bf16.cpp (flags: isa_table.h).
//
// Lane i of an accumulator is row i of a block of 16 rows. In group g a row's two kept values
// (one 32-bit word of the copy) multiply x[b][4g + p0] and x[b][4g + p1]. So the four
// activations x[b][4g .. 4g + 3] are broadcast to every 64-bit slice of a zmm (one load), and
// one vpshufb moves each lane's pair (p0, p1) into place, steered by a control vector made
// from the 16 rows' nibbles; one vdpbf16ps then does 32 useful products. Per group and row:
// one shuffle and one vdpbf16ps, where dense bf16 spends two vdpbf16ps (half the products on
// zeros). The shuffles compete with vdpbf16ps for the vector pipes, which is why this reaches
// about 1.3-1.5x of dense bf16 from batch 64 rather than 2x (Zen 5; the same loop without
// the shuffles, a wrong product, ran 2.2-2.5x).
//
// The controls are made once per (16 rows, block of groups) into a per-thread buffer and
// serve every tile of kTileBatch activation rows: remaking them per tile (one vpmovzxbd and
// one vpermd per 16 rows and group) measured 1.3x / 1.1x against 1.5x / 1.4x of dense at
// batch 64 / 256 (4096 x 4096, 2 threads). A register tile is kPanelVecs blocks of 16 rows x
// kTileBatch activation rows (24 accumulators). A panel of rows goes through the groups
// kKBlock at a time, and each block through every tile of x; partial sums wait in a
// per-thread [batch x panel rows] fp32 buffer between the blocks. x is packed once per call,
// so that a tile's activations of one group share a cache line.
#pragma once

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <utility>

#include "nm24_lanes.h"
#include "nm24_linear.h"
#include "work_split.h"

namespace sparsekern::cpu::nm24bf16 {
namespace {

constexpr int kPanelVecs = 3;                          // blocks of 16 rows per register tile
constexpr int64_t kPanelRows = kPanelVecs * kLaneRows;
constexpr int kTileBatch = 8;                          // activation rows per register tile
// Groups per block. 64, 128 and 256 measured the same within noise (1.3-1.55x of dense bf16
// at batch 64, 4096 x 4096, Zen 5): the loop is bound by the vector pipes, not by the cache
// level the panel's values and controls (48 rows x 8 bytes a group) come from.
constexpr int64_t kKBlock = 128;
// Words between one 16-row block's controls and the next: a block and a cache line, so that
// the three blocks' controls do not share L1 sets (a multiple of 4 KiB apart, they would, and
// with W's lines too, which are 4 KiB multiples apart from block to block).
constexpr int64_t kControlStride = kKBlock * kLaneRows + kLaneRows;

// The vpshufb control of nibble p0 | p1 << 2: the bytes of activations p0 and p1 of the four
// broadcast in each 64-bit slice, as the 32-bit lane vdpbf16ps pairs with a row's two values.
inline __m512i shuffle_table() {
  alignas(64) uint32_t t[16];
  for (uint32_t n = 0; n < 16; ++n) {
    const uint32_t p0 = n & 3, p1 = n >> 2;
    t[n] = 2 * p0 | (2 * p0 + 1) << 8 | (2 * p1) << 16 | (2 * p1 + 1) << 24;
  }
  return _mm512_load_si512(t);
}

inline int64_t lane_panels(const Nm24Lanes& l) { return (l.blocks + kPanelVecs - 1) / kPanelVecs; }

inline int lanes_parts(const Nm24Matrix& w, int64_t batch, int num_threads) {
  const int64_t panels = (w.rows + kPanelRows - 1) / kPanelRows;
  return int(std::max<int64_t>(1, std::min<int64_t>(useful_threads(w.rows * w.cols / 2, batch, num_threads), panels)));
}

// Workspace: x packed by tiles (packed_x_floats, shared by the threads), then per thread the
// controls of one block of groups and the partial sums ([batch][kPanelRows]); each part a
// multiple of 16 floats, so that all stay 64-byte aligned.
inline int64_t tiles_of_x(int64_t batch) { return (batch + kTileBatch - 1) / kTileBatch; }
inline int64_t packed_x_floats(const Nm24Matrix& w, int64_t batch) {
  return tiles_of_x(batch) * (w.cols / 4) * kTileBatch * 2;  // 8 bytes per row and group
}
inline int64_t thread_floats(int64_t batch) { return kPanelVecs * kControlStride + batch * kPanelRows; }

inline int64_t lanes_workspace_floats(const Nm24Matrix& w, int64_t batch, int num_threads) {
  return packed_x_floats(w, batch) + lanes_parts(w, batch, num_threads) * thread_floats(batch);
}

// Packs x for tiles [t0, t1): tile t, group g holds the tile's kTileBatch rows' x[4g .. 4g + 3]
// side by side (one cache line), rows past the batch zero. Read straight from x, a tile's
// rows lie a row of x apart (8 KiB at 4096 columns) and fall into one L1 set with W's and
// the controls' lines.
inline void pack_x(const DenseArgs& a, int64_t groups, int64_t t0, int64_t t1, uint64_t* packed) {
  const auto* x = static_cast<const uint16_t*>(a.x);
  for (int64_t t = t0; t < t1; ++t)
    for (int b = 0; b < kTileBatch; ++b) {
      const int64_t row = t * kTileBatch + b;
      uint64_t* dst = packed + t * groups * kTileBatch + b;
      if (row >= a.batch) {
        for (int64_t g = 0; g < groups; ++g) dst[g * kTileBatch] = 0;
        continue;
      }
      const uint16_t* src = x + row * a.x_row_stride;
      for (int64_t g = 0; g < groups; ++g) std::memcpy(dst + g * kTileBatch, src + 4 * g, 8);
    }
}

// Where one register tile works: activation rows [b0, b0 + NB), the panel's first 16-row block
// and the block of groups [g0, g0 + groups).
struct TileAt {
  int64_t b0, block0, g0, groups;
  bool first, last;  // first block of groups (start from zero), last (write y)
};

// NV blocks of 16 rows x NB activation rows over one block of groups.
template <int NV, int NB>
void tile(const Nm24Lanes& l, const DenseArgs& a, int64_t rows, const TileAt& at, const uint64_t* packed_x,
          const uint32_t* controls, float* sums) {
  const int64_t groups_all = l.groups;
  const uint64_t* x = packed_x + (at.b0 / kTileBatch * groups_all + at.g0) * kTileBatch;
  float* part = sums + at.b0 * kPanelRows;
  __m512 acc[NB][NV];
  for (int b = 0; b < NB; ++b)
    for (int v = 0; v < NV; ++v)
      acc[b][v] = at.first ? _mm512_setzero_ps() : _mm512_load_ps(part + b * kPanelRows + v * kLaneRows);
  const uint32_t* pairs = l.pairs.data() + (at.block0 * groups_all + at.g0) * kLaneRows;
  for (int64_t g = 0; g < at.groups; ++g) {
    __m512bh wv[NV];
    __m512i control[NV];
    for (int v = 0; v < NV; ++v) {
      wv[v] = reinterpret_cast<__m512bh>(_mm512_loadu_si512(pairs + (v * groups_all + g) * kLaneRows));
      control[v] = _mm512_load_si512(controls + v * kControlStride + g * kLaneRows);
    }
    for (int b = 0; b < NB; ++b) {
      const __m512i xb = _mm512_set1_epi64((long long)x[g * kTileBatch + b]);
      for (int v = 0; v < NV; ++v)
        acc[b][v] = _mm512_dpbf16_ps(acc[b][v], wv[v], reinterpret_cast<__m512bh>(_mm512_shuffle_epi8(xb, control[v])));
    }
  }
  if (!at.last) {
    for (int b = 0; b < NB; ++b)
      for (int v = 0; v < NV; ++v) _mm512_store_ps(part + b * kPanelRows + v * kLaneRows, acc[b][v]);
    return;
  }
  auto* y = static_cast<uint16_t*>(a.y);
  for (int v = 0; v < NV; ++v) {
    const int64_t r = (at.block0 + v) * kLaneRows;
    const int64_t here = std::min<int64_t>(kLaneRows, rows - r);
    const __mmask16 mask = here >= 16 ? __mmask16(0xffff) : __mmask16((1u << here) - 1);
    const __m512 bias = a.bias ? _mm512_maskz_loadu_ps(mask, a.bias + r) : _mm512_setzero_ps();
    for (int b = 0; b < NB; ++b) {
      const __m256bh out = _mm512_cvtneps_pbh(_mm512_add_ps(acc[b][v], bias));
      _mm256_mask_storeu_epi16(y + (at.b0 + b) * rows + r, mask, reinterpret_cast<__m256i>(out));
    }
  }
}

using TileFn = void (*)(const Nm24Lanes&, const DenseArgs&, int64_t, const TileAt&, const uint64_t*, const uint32_t*,
                        float*);

template <int NV, int... B>
constexpr std::array<TileFn, kTileBatch> tiles_of(std::integer_sequence<int, B...>) {
  return {&tile<NV, B + 1>...};
}
// kTiles[NV - 1][NB - 1]: the last panel may have fewer blocks, the last tile fewer rows of x.
constexpr auto kBatchSeq = std::make_integer_sequence<int, kTileBatch>{};
constexpr std::array<std::array<TileFn, kTileBatch>, kPanelVecs> kTiles = {
    tiles_of<1>(kBatchSeq), tiles_of<2>(kBatchSeq), tiles_of<3>(kBatchSeq)};
static_assert(kPanelVecs == 3, "kTiles lists one row per panel width");

// One panel: blocks [block0, block0 + nv) of 16 rows, every activation row.
inline void panel(const Nm24Lanes& l, const DenseArgs& a, int64_t rows, int64_t block0, int nv,
                  const uint64_t* packed_x, uint32_t* controls, float* sums, __m512i table) {
  const int64_t groups = l.groups;
  const __m128i nibble_mask = _mm_set1_epi8(0x0f);
  int64_t g0 = 0;
  do {  // at least once: cols == 0 still writes y = bias
    const int64_t block = std::min<int64_t>(kKBlock, groups - g0);
    for (int v = 0; v < nv; ++v)
      for (int64_t g = 0; g < block; ++g) {
        // 16 nibbles, two per byte, to 16 bytes in row order, then to 16 dword controls.
        const __m128i packed = _mm_loadl_epi64(
            reinterpret_cast<const __m128i*>(l.nibbles.data() + ((block0 + v) * groups + g0 + g) * kLaneNibbleBytes));
        const __m128i low = _mm_and_si128(packed, nibble_mask), high = _mm_and_si128(_mm_srli_epi16(packed, 4), nibble_mask);
        const __m512i control = _mm512_permutexvar_epi32(_mm512_cvtepu8_epi32(_mm_unpacklo_epi8(low, high)), table);
        _mm512_store_si512(controls + v * kControlStride + g * kLaneRows, control);
      }
    TileAt at{0, block0, g0, block, g0 == 0, g0 + block >= groups};
    for (at.b0 = 0; at.b0 < a.batch; at.b0 += kTileBatch) {
      const int nb = int(std::min<int64_t>(kTileBatch, a.batch - at.b0));
      kTiles[size_t(nv - 1)][size_t(nb - 1)](l, a, rows, at, packed_x, controls, sums);
    }
    g0 += block;
  } while (g0 < groups);
}

inline void lanes(const Nm24Matrix& w, const DenseArgs& a) {
  const Nm24Lanes& l = *w.lanes;
  const int parts = lanes_parts(w, a.batch, a.num_threads);
  const int64_t panels = lane_panels(l), tiles = tiles_of_x(a.batch);
  const __m512i table = shuffle_table();
  auto* packed_x = reinterpret_cast<uint64_t*>(a.workspace);
  float* threads_area = a.workspace + packed_x_floats(w, a.batch);
#pragma omp parallel num_threads(parts) if (parts > 1)
  {
    // The team OpenMP gave (it may give fewer threads than asked: nested, or a thread limit).
    const int team = omp_get_num_threads(), part = omp_get_thread_num();
    pack_x(a, l.groups, tiles * part / team, tiles * (part + 1) / team, packed_x);
#pragma omp barrier
    float* mine = threads_area + part * thread_floats(a.batch);
    auto* controls = reinterpret_cast<uint32_t*>(mine);
    float* sums = mine + kPanelVecs * kControlStride;
    for (int64_t p = panels * part / team; p < panels * (part + 1) / team; ++p) {
      const int64_t block0 = p * kPanelVecs;
      panel(l, a, w.rows, block0, int(std::min<int64_t>(kPanelVecs, l.blocks - block0)), packed_x, controls, sums,
            table);
    }
  }
}

}  // namespace
}  // namespace sparsekern::cpu::nm24bf16
