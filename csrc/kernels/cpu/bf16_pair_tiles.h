// The native bf16 batched path that CSR (csr_spmm_bf16.h) and bitmap (bitmap_linear_bf16.h)
// share: bf16 values and bf16 activations through vdpbf16ps, no widening copy of x, fp32
// accumulation, y rounded to bf16. Included only by the *_avx512bf16.cpp variants (flags:
// isa_table.h).
//
// As in the fp32 batched paths (csr_spmm_simd.h), x is copied once per call into tiles of
// kLanes batch rows, transposed ([cols][32] bf16: one zmm per column), and each row's
// nonzeros walk the tile. Here two nonzeros (c0, w0), (c1, w1) go together: vpunpcklwd /
// vpunpckhwd of tile rows c0 and c1 make two zmm of pairs (x[b][c0], x[b][c1]), and one
// vdpbf16ps per zmm multiplies them by the pair (w0, w1), which both formats store side by
// side. Per two nonzeros and 32 batch rows: two loads (128 bytes, where fp32 tiles take 256),
// two shuffles and two vdpbf16ps, against four loads and four FMAs in fp32. The unpacks work
// within 128-bit lanes, so the accumulators hold the batch rows in a fixed shuffled order,
// undone once per row and tile (kUnshuffle).
#pragma once

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "bf16.h"
#include "linear_args.h"
#include "simd_avx512.h"
#include "work_split.h"

namespace sparsekern::cpu::bf16tiles {
namespace {

constexpr int64_t kLanes = 32;     // batch rows per tile: one zmm of bf16 per column
constexpr int kLaneShift = 5;      // column c's tile row starts c << kLaneShift elements in
constexpr int64_t kRowBlock = 32;  // output rows gathered in L1 before they go to y

inline int64_t tiles_of(int64_t batch) { return (batch + kLanes - 1) / kLanes; }

// Workspace: the transposed tiles, 32 bf16 (16 floats) per column and tile.
inline int64_t workspace_floats(int64_t cols, int64_t batch) { return tiles_of(batch) * cols * (kLanes / 2); }

// Copies columns [c0, c1) of every tile: tile t, column c holds x[32t .. 32t + 31][c] (zero
// past the batch). 16 columns at a time: each pair of batch rows' 16 activations interleaved
// into 16 dwords (one vpermw), then a 16 x 16 dword transpose makes 16 tile rows; a scalar
// copy took ~10% of a 90%-sparse product at batch 256.
inline void pack(const DenseArgs& a, int64_t cols, int64_t c0, int64_t c1, uint16_t* tiles) {
  const auto* x = static_cast<const uint16_t*>(a.x);
  alignas(64) uint16_t interleave[32];
  for (int i = 0; i < 16; ++i) {
    interleave[2 * i] = uint16_t(i);
    interleave[2 * i + 1] = uint16_t(16 + i);
  }
  const __m512i order = _mm512_load_si512(interleave);
  for (int64_t t = 0; t < tiles_of(a.batch); ++t) {
    uint16_t* tile = tiles + t * cols * kLanes;
    const int64_t valid = std::min<int64_t>(kLanes, a.batch - t * kLanes);
    const uint16_t* rows = x + t * kLanes * a.x_row_stride;
    auto sixteen = [&](int64_t b, int64_t c) {
      return b < valid ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows + b * a.x_row_stride + c))
                       : _mm256_setzero_si256();
    };
    int64_t c = c0;
    for (; c + 16 <= c1; c += 16) {
      __m512 r[16];
      for (int d = 0; d < 16; ++d) {
        const __m512i both = _mm512_inserti64x4(_mm512_castsi256_si512(sixteen(2 * d, c)), sixteen(2 * d + 1, c), 1);
        r[d] = _mm512_castsi512_ps(_mm512_permutexvar_epi16(order, both));
      }
      simd::Avx512::transpose(r);
      for (int i = 0; i < 16; ++i) _mm512_store_ps(reinterpret_cast<float*>(tile + (c + i) * kLanes), r[i]);
    }
    for (; c < c1; ++c)
      for (int64_t b = 0; b < kLanes; ++b) tile[c * kLanes + b] = b < valid ? rows[b * a.x_row_stride + c] : 0;
  }
}

// Where batch row b of a tile sits in the accumulators lo (0-15) and hi (16-31): unpacking
// within 128-bit lane k puts rows 8k .. 8k + 3 in lo's dwords 4k .. 4k + 3 and rows
// 8k + 4 .. 8k + 7 in hi's. kUnshuffle.index[h][i] is the source of batch row 16h + i.
struct Unshuffle {
  alignas(64) int32_t index[2][16] = {};
  constexpr Unshuffle() {
    for (int b = 0; b < 32; ++b) {
      const int k = b / 8, j = b % 8;
      index[b / 16][b % 16] = j < 4 ? 4 * k + j : 16 + 4 * k + (j - 4);
    }
  }
};
constexpr Unshuffle kUnshuffle{};

// One output row's sums over a tile: two pairs per step into separate accumulators, since one
// chain alone would wait on vdpbf16ps's latency.
struct RowSums {
  __m512 lo0 = _mm512_setzero_ps(), hi0 = _mm512_setzero_ps(), lo1 = _mm512_setzero_ps(), hi1 = _mm512_setzero_ps();

  static void step(const uint16_t* tile, int64_t at0, int64_t at1, uint32_t pair, __m512& lo, __m512& hi) {
    const __m512i xa = _mm512_load_si512(tile + at0), xb = _mm512_load_si512(tile + at1);
    const __m512bh wv = reinterpret_cast<__m512bh>(_mm512_set1_epi32(int(pair)));
    lo = _mm512_dpbf16_ps(lo, wv, reinterpret_cast<__m512bh>(_mm512_unpacklo_epi16(xa, xb)));
    hi = _mm512_dpbf16_ps(hi, wv, reinterpret_cast<__m512bh>(_mm512_unpackhi_epi16(xa, xb)));
  }

  // Adds n nonzeros: values[j] (bf16) at tile offset at(j) (column << kLaneShift).
  template <typename At>
  void add(const uint16_t* tile, const uint16_t* values, int64_t n, const At& at) {
    int64_t j = 0;
    for (; j + 4 <= n; j += 4) {
      uint32_t p0, p1;
      std::memcpy(&p0, values + j, 4);
      std::memcpy(&p1, values + j + 2, 4);
      step(tile, at(j), at(j + 1), p0, lo0, hi0);
      step(tile, at(j + 2), at(j + 3), p1, lo1, hi1);
    }
    for (; j + 2 <= n; j += 2) {
      uint32_t p0;
      std::memcpy(&p0, values + j, 4);
      step(tile, at(j), at(j + 1), p0, lo0, hi0);
    }
    if (j < n) step(tile, at(j), at(j), values[j], lo1, hi1);  // the odd one, paired with a zero weight
  }

  // The 32 sums in batch-row order.
  void store(float* out) const {
    const __m512 lo = _mm512_add_ps(lo0, lo1), hi = _mm512_add_ps(hi0, hi1);
    _mm512_store_ps(out, _mm512_permutex2var_ps(lo, _mm512_load_si512(kUnshuffle.index[0]), hi));
    _mm512_store_ps(out + 16, _mm512_permutex2var_ps(lo, _mm512_load_si512(kUnshuffle.index[1]), hi));
  }
};

// Output rows [r0, r1) for every tile; row_sums(r, tile, out) writes row r's 32 sums.
template <typename RowFn>
void rows(const DenseArgs& a, int64_t out_rows, int64_t cols, const uint16_t* tiles, int64_t r0, int64_t r1,
          const RowFn& row_sums) {
  alignas(64) float out[kRowBlock][kLanes];
  auto* y = static_cast<uint16_t*>(a.y);
  for (int64_t t = 0; t < tiles_of(a.batch); ++t) {
    const uint16_t* tile = tiles + t * cols * kLanes;
    const int64_t valid = std::min<int64_t>(kLanes, a.batch - t * kLanes);
    for (int64_t rb = r0; rb < r1; rb += kRowBlock) {
      const int64_t block = std::min<int64_t>(kRowBlock, r1 - rb);
      for (int64_t i = 0; i < block; ++i) row_sums(rb + i, tile, out[i]);
      // Row by row of y: `block` consecutive outputs of one batch row at a time.
      for (int64_t b = 0; b < valid; ++b) {
        uint16_t* dst = y + (t * kLanes + b) * out_rows + rb;
        for (int64_t i = 0; i < block; ++i) dst[i] = f32_to_bf16(out[i][b] + (a.bias ? a.bias[rb + i] : 0.f));
      }
    }
  }
}

// The whole product: threads pack x together, then take rows by nonzeros (row_starts: CSR's
// row_ptr, bitmap's offsets).
template <typename RowFn>
void batched(const DenseArgs& a, int64_t out_rows, int64_t cols, const int64_t* row_starts, const RowFn& row_sums) {
  const int parts = useful_threads(row_starts[out_rows], a.batch, a.num_threads);
  auto* tiles = reinterpret_cast<uint16_t*>(a.workspace);
#pragma omp parallel num_threads(parts) if (parts > 1)
  {
    // The team OpenMP gave (it may give fewer threads than asked: nested, or a thread limit).
    const int team = omp_get_num_threads(), part = omp_get_thread_num();
    pack(a, cols, cols * part / team, cols * (part + 1) / team, tiles);
#pragma omp barrier
    rows(a, out_rows, cols, tiles, nnz_balanced_row(row_starts, out_rows, part, team),
         nnz_balanced_row(row_starts, out_rows, part + 1, team), row_sums);
  }
}

}  // namespace
}  // namespace sparsekern::cpu::bf16tiles
