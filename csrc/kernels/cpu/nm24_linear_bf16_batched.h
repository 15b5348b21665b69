// 2:4 with bf16 values and activations for batches from kBatchedFrom: vdpbf16ps with the
// batch in the lanes. Included only by nm24_linear_avx512bf16.cpp (flags: isa_table.h).
//
// A row's two kept values in group g are one 32-bit word of its values (bf16 pair), and they
// multiply x[b][4g + p0] and x[b][4g + p1], where (p0, p1) is one of the six pairs p0 < p1.
// So x is packed once per tile of kLanes activation rows, by all threads together: for every
// group and every pair type, the kLanes rows' (x[4g + p0], x[4g + p1]) as bf16 pairs, kVecs
// zmm. Then each (row, group) costs a scalar table lookup of its pair
// type, a broadcast of its value pair and, per zmm of the tile, one load and one vdpbf16ps:
// 32 useful products per instruction, none wasted on the zeros. A tile of kBatchedRows rows x
// kVecs zmm keeps 12 fp32 accumulators (vdpbf16ps's latency needs about that many in flight).
//
// What limits it (about 0.5-0.6x of dense bf16 at batch 64-256 here): each row's W is read in
// runs of 144 bytes, rows 4 KiB apart at 4096 columns, so the loads of W wait on memory despite the
// prefetches; and each (row, group) spends ~9 instructions for 2 vdpbf16ps. A block-major
// copy of W made at pack time would stream W contiguously (not done yet).
//
// Packed x is 3x the size of x (6 pairs per 4 columns). It is read in blocks of kBlockGroups
// groups (24 KiB, L1) that serve kRowBlock rows before the next; partial sums go through a
// per-thread [kRowBlock x kLanes] fp32 buffer between blocks.
#pragma once

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "bf16.h"
#include "nm24_linear.h"
#include "work_split.h"

namespace sparsekern::cpu::nm24bf16 {
namespace {

// Batch from which the batched path runs: one full tile of lanes. Measured on Zen 5, 4096 x
// 4096, 1 thread, against dense bf16 in the same run (a loaded machine, load ~8.7): the
// small-batch path 0.64x / 0.76x / 0.52x / 0.37x at batch 12 / 16 / 64 / 256, this path
// 0.64x / 0.54x / 0.58x / 0.49x: a partly empty tile wastes its lanes. Again with the
// small-batch path's 8-row tiles, by thread CPU time: at batch 32 / 48 / 64 / 128 this path
// 0.78x / 0.53x / 0.59x / 0.53x, the small-batch path 0.49x / 0.46x / 0.46x / 0.46x.
constexpr int64_t kBatchedFrom = 32;
constexpr int kVecs = 2;                // zmm of activation rows per tile
constexpr int kLanes = 16 * kVecs;      // activation rows per tile
constexpr int kBatchedRows = 6;         // rows per register tile: 6 x 2 accumulators
constexpr int64_t kBlockGroups = 32;    // groups (128 columns) per block of packed x: 24 KiB
constexpr int64_t kRowBlock = 48;     // rows sharing each block of packed x (8 register tiles)
constexpr int kPairTypes = 6;
constexpr int64_t kPackedFloats = kBlockGroups * kPairTypes * kLanes;  // 32-bit pairs of one block

// The pair type of a nibble p0 | p1 << 2, times the pairs of one type (kLanes): its offset in
// a group's packed x. Nibbles with p0 >= p1 never pass validation (formats/nm.py); they map
// to type 0 so that a bad one reads inside the buffer.
struct PairTypes {
  uint16_t offset[16] = {};
  uint8_t p0[kPairTypes] = {}, p1[kPairTypes] = {};
  constexpr PairTypes() {
    int t = 0;
    for (int a = 0; a < 4; ++a)
      for (int b = a + 1; b < 4; ++b) {
        p0[t] = uint8_t(a);
        p1[t] = uint8_t(b);
        offset[a | b << 2] = uint16_t(t * kLanes);
        ++t;
      }
  }
};
constexpr PairTypes kPairs{};

// Threads the batched path starts (each takes a range of rows).
inline int batched_parts(const Nm24Matrix& w, int64_t batch, int num_threads) {
  return int(std::max<int64_t>(1, std::min<int64_t>(useful_threads(w.rows * w.cols / 2, batch, num_threads), w.rows)));
}

// Workspace: x packed for one tile of kLanes activation rows (every group, shared by the
// threads), then per thread kRowBlock x kLanes partial sums. Multiples of 16 floats, so
// every part stays 64-byte aligned.
inline int64_t packed_floats(const Nm24Matrix& w) { return w.cols / 4 * kPairTypes * kLanes; }

inline int64_t batched_workspace_floats(const Nm24Matrix& w, int64_t batch, int num_threads) {
  if (batch < kBatchedFrom) return 0;
  return packed_floats(w) + batched_parts(w, batch, num_threads) * kRowBlock * kLanes;
}

// Packs groups [g0, g1) of activation rows [b0, b0 + nb) (rows past nb: zero).
inline void pack_groups(const DenseArgs& a, int64_t b0, int nb, int64_t g0, int64_t g1, uint32_t* packed) {
  const auto* x = static_cast<const uint16_t*>(a.x);
  for (int64_t g = g0; g < g1; ++g)
    for (int t = 0; t < kPairTypes; ++t) {
      uint32_t* dst = packed + (g * kPairTypes + t) * kLanes;
      const int64_t c0 = 4 * g + kPairs.p0[t], c1 = 4 * g + kPairs.p1[t];
      int b = 0;
      for (; b < nb; ++b) {
        const uint16_t* row = x + (b0 + b) * a.x_row_stride;
        dst[b] = uint32_t(row[c0]) | uint32_t(row[c1]) << 16;
      }
      for (; b < kLanes; ++b) dst[b] = 0;
    }
}

// Partial sums of rows [r, r + NR) over groups [g0, g0 + groups), kept in part_sums
// ([NR][kLanes]; started from zero when `first`).
template <int NR>
void batched_tile(const Nm24Matrix& w, int64_t r, int64_t g0, int64_t groups, const uint32_t* packed,
                  float* part_sums, bool first) {
  const int64_t half = w.cols / 2, meta_bytes = nm24_meta_bytes(w.cols);
  const uint32_t* pairs[NR];
  const uint8_t* meta[NR];
  __m512 acc[NR][kVecs];
  for (int i = 0; i < NR; ++i) {
    pairs[i] = reinterpret_cast<const uint32_t*>(static_cast<const uint16_t*>(w.values) + (r + i) * half);
    meta[i] = w.meta + (r + i) * meta_bytes;
    // This row's W for the next block, which it reaches after the whole row block: rows 4 KiB
    // apart, read 144 bytes at a time, defeat the hardware prefetchers (measured 4x slower).
    const char* next_values = reinterpret_cast<const char*>(pairs[i] + g0 + kBlockGroups);
    _mm_prefetch(next_values, _MM_HINT_T0);
    _mm_prefetch(next_values + 64, _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(meta[i] + (g0 + kBlockGroups) / 2), _MM_HINT_T0);
    for (int v = 0; v < kVecs; ++v)
      acc[i][v] = first ? _mm512_setzero_ps() : _mm512_load_ps(part_sums + i * kLanes + 16 * v);
  }
  for (int64_t g = g0; g < g0 + groups; ++g) {
    const uint32_t* block = packed + g * kPairTypes * kLanes;
    for (int i = 0; i < NR; ++i) {
      const int nibble = (meta[i][g / 2] >> (4 * (g % 2))) & 15;
      const uint32_t* x = block + kPairs.offset[nibble];
      uint32_t pair;
      std::memcpy(&pair, pairs[i] + g, 4);
      const __m512bh wv = reinterpret_cast<__m512bh>(_mm512_set1_epi32(int(pair)));
      for (int v = 0; v < kVecs; ++v)
        acc[i][v] = _mm512_dpbf16_ps(acc[i][v], wv, reinterpret_cast<__m512bh>(_mm512_load_si512(x + 16 * v)));
    }
  }
  for (int i = 0; i < NR; ++i)
    for (int v = 0; v < kVecs; ++v) _mm512_store_ps(part_sums + i * kLanes + 16 * v, acc[i][v]);
}

// Rows [r0, r1) (at most kRowBlock) for one tile of activation rows: column block by column
// block, so that a block of packed x (kBlockGroups groups, L1-sized) serves every row of the
// row block before the next is touched, while each row's W is still read in runs of
// kBlockGroups groups.
inline void row_block(const Nm24Matrix& w, const DenseArgs& a, int64_t r0, int64_t r1, int64_t b0, int nb,
                      const uint32_t* packed, float* sums) {
  const int64_t groups = w.cols / 4;
  if (groups == 0) std::fill(sums, sums + (r1 - r0) * kLanes, 0.f);
  for (int64_t g0 = 0; g0 < groups; g0 += kBlockGroups) {
    const int64_t block = std::min<int64_t>(kBlockGroups, groups - g0);
    int64_t r = r0;
    for (; r + kBatchedRows <= r1; r += kBatchedRows)
      batched_tile<kBatchedRows>(w, r, g0, block, packed, sums + (r - r0) * kLanes, g0 == 0);
    for (; r < r1; ++r) batched_tile<1>(w, r, g0, block, packed, sums + (r - r0) * kLanes, g0 == 0);
  }
  auto* y = static_cast<uint16_t*>(a.y);
  for (int64_t r = r0; r < r1; ++r) {
    const float bias = a.bias ? a.bias[r] : 0.f;
    for (int b = 0; b < nb; ++b) y[(b0 + b) * w.rows + r] = f32_to_bf16(sums[(r - r0) * kLanes + b] + bias);
  }
}

inline void batched(const Nm24Matrix& w, const DenseArgs& a) {
  const int64_t groups = w.cols / 4;
  const int parts = batched_parts(w, a.batch, a.num_threads);
  auto* packed = reinterpret_cast<uint32_t*>(a.workspace);
#pragma omp parallel num_threads(parts) if (parts > 1)
  {
    // The team OpenMP gave (it may give fewer threads than asked: nested, or a thread limit).
    const int team = omp_get_num_threads(), part = omp_get_thread_num();
    float* sums = a.workspace + packed_floats(w) + part * kRowBlock * kLanes;
    const int64_t r0 = w.rows * part / team, r1 = w.rows * (part + 1) / team;
    for (int64_t b0 = 0; b0 < a.batch; b0 += kLanes) {
      const int nb = int(std::min<int64_t>(kLanes, a.batch - b0));
      // Every thread packs a share of the groups; the barriers keep the tiles apart.
#pragma omp barrier
      pack_groups(a, b0, nb, groups * part / team, groups * (part + 1) / team, packed);
#pragma omp barrier
      for (int64_t rb = r0; rb < r1; rb += kRowBlock)
        row_block(w, a, rb, std::min<int64_t>(rb + kRowBlock, r1), b0, nb, packed, sums);
    }
  }
}

}  // namespace
}  // namespace sparsekern::cpu::nm24bf16
