// CSR's native bf16 batched path (csr_spmm_bf16.h): bf16 values and bf16 activations through
// vdpbf16ps, no widening copy of x, fp32 accumulation, y rounded to bf16. Included only by
// csr_spmm_avx512bf16.cpp (flags: isa_table.h). Bitmap used it too until its expansion into
// dense chunks (bitmap_linear_bf16.h) measured faster; at 90% CSR's nonzeros are few enough
// that pairing them beats multiplying the zeros.
//
// As in the fp32 batched paths (csr_spmm_simd.h), x is copied once per call into tiles of
// Lanes batch rows, transposed ([cols][Lanes] bf16), and each row's nonzeros walk the tile.
// Here two nonzeros (c0, w0), (c1, w1) go together, multiplied by the pair (w0, w1), which
// both formats store side by side, with one vdpbf16ps per 16 batch rows:
// - 32 lanes (batches above 16): vpunpcklwd / vpunpckhwd of tile rows c0 and c1 (one zmm
//   each) make two zmm of pairs (x[b][c0], x[b][c1]). Per two nonzeros and 32 batch rows:
//   two loads (128 bytes, where fp32 tiles take 256), two shuffles and two vdpbf16ps,
//   against four loads and four FMAs in fp32. The unpacks work within 128-bit lanes, so the
//   accumulators hold the batch rows in a fixed shuffled order, undone once per row and tile
//   (kUnshuffle).
// - 16 lanes (batches up to 16): tile rows c0 and c1 (half a zmm each) side by side and one
//   vpermw make one zmm of pairs: two shuffles and one vdpbf16ps per two nonzeros, where a
//   half-empty 32-lane tile spends two of each.
// With two 32-lane tiles or more (batches above 32), each row's nonzeros go over two tiles at
// once (kTilesAtOnce): the index and value loads of a pair serve both, and W streams from
// memory once per two tiles instead of once per tile.
// The tiles outgrow L1 from about a thousand columns. Given W's column-chunked copy
// (csr_chunks.h), a block of kRowBlock rows multiplies one chunk of columns before the next
// (rows_of_tiles), so that the chunk's part of the tiles is read from L1.
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

constexpr int64_t kRowBlock = 32;  // output rows gathered in L1 before they go to y

// The vpermw order that interleaves two halves of a zmm word by word: word 2i from the low
// half's word i, word 2i + 1 from the high half's.
struct Interleave {
  alignas(64) uint16_t order[32] = {};
  constexpr Interleave() {
    for (int i = 0; i < 16; ++i) {
      order[2 * i] = uint16_t(i);
      order[2 * i + 1] = uint16_t(16 + i);
    }
  }
};
constexpr Interleave kInterleave{};

inline __m512i interleave_halves() { return _mm512_load_si512(kInterleave.order); }

// Where batch row b of a 32-row tile sits in the accumulators lo (0-15) and hi (16-31):
// unpacking within 128-bit lane k puts rows 8k .. 8k + 3 in lo's dwords 4k .. 4k + 3 and rows
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

template <int Lanes>
struct PairTiles {
  static_assert(Lanes == 16 || Lanes == 32, "a tile row is half a zmm or one");
  static constexpr int kShift = Lanes == 32 ? 5 : 4;  // column c's tile row starts c << kShift elements in

  static int64_t tiles_of(int64_t batch) { return (batch + Lanes - 1) / Lanes; }

  // Workspace: the transposed tiles, Lanes bf16 per column and tile.
  static int64_t workspace_floats(int64_t cols, int64_t batch) { return tiles_of(batch) * cols * (Lanes / 2); }

  // Copies columns [c0, c1) of every tile: tile t, column c holds x[Lanes t ..][c] (zero
  // past the batch). 16 columns at a time: each pair of batch rows' 16 activations
  // interleaved into 16 dwords (one vpermw), then a 16 x 16 dword transpose makes 16 tile
  // rows (their first Lanes / 2 dwords); a scalar copy took ~10% of a 90%-sparse product at
  // batch 256.
  static void pack(const DenseArgs& a, int64_t cols, int64_t c0, int64_t c1, uint16_t* tiles) {
    const auto* x = static_cast<const uint16_t*>(a.x);
    const __m512i order = interleave_halves();
    for (int64_t t = 0; t < tiles_of(a.batch); ++t) {
      uint16_t* tile = tiles + t * cols * Lanes;
      const int64_t valid = std::min<int64_t>(Lanes, a.batch - t * Lanes);
      const uint16_t* rows = x + t * Lanes * a.x_row_stride;
      auto sixteen = [&](int64_t b, int64_t c) {
        return b < valid ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows + b * a.x_row_stride + c))
                         : _mm256_setzero_si256();
      };
      int64_t c = c0;
      for (; c + 16 <= c1; c += 16) {
        __m512 r[16];
        for (int d = 0; d < 16; ++d) {
          if (2 * d >= Lanes) {
            r[d] = _mm512_setzero_ps();
            continue;
          }
          const __m512i both = _mm512_inserti64x4(_mm512_castsi256_si512(sixteen(2 * d, c)), sixteen(2 * d + 1, c), 1);
          r[d] = _mm512_castsi512_ps(_mm512_permutexvar_epi16(order, both));
        }
        simd::Avx512::transpose(r);
        for (int i = 0; i < 16; ++i) {
          float* dst = reinterpret_cast<float*>(tile + (c + i) * Lanes);
          if constexpr (Lanes == 32) _mm512_store_ps(dst, r[i]);
          else _mm256_store_ps(dst, _mm512_castps512_ps256(r[i]));
        }
      }
      for (; c < c1; ++c)
        for (int64_t b = 0; b < Lanes; ++b) tile[c * Lanes + b] = b < valid ? rows[b * a.x_row_stride + c] : 0;
    }
  }

  // One output row's sums over NT tiles, in four accumulator chains per tile (one alone would
  // wait on vdpbf16ps's latency): for 32 lanes two (lo, hi) sets, for 16 lanes four of one zmm.
  template <int NT>
  struct RowSums {
    static constexpr int kChains = 4;
    static constexpr int kChainsPerStep = Lanes == 32 ? 2 : 1;
    __m512 acc[NT][kChains];

    RowSums() {
      for (auto& chains : acc)
        for (auto& chain : chains) chain = _mm512_setzero_ps();
    }

    // Two nonzeros at tile offsets at0, at1 (column << kShift) with values `pair`, into each
    // tile's chains from `first`.
    void step(const uint16_t* const* tiles, int64_t at0, int64_t at1, uint32_t pair, int first) {
      const __m512bh wv = reinterpret_cast<__m512bh>(_mm512_set1_epi32(int(pair)));
      for (int t = 0; t < NT; ++t) {
        __m512* chains = acc[t];
        if constexpr (Lanes == 32) {
          const __m512i xa = _mm512_load_si512(tiles[t] + at0), xb = _mm512_load_si512(tiles[t] + at1);
          chains[first] =
              _mm512_dpbf16_ps(chains[first], wv, reinterpret_cast<__m512bh>(_mm512_unpacklo_epi16(xa, xb)));
          chains[first + 1] =
              _mm512_dpbf16_ps(chains[first + 1], wv, reinterpret_cast<__m512bh>(_mm512_unpackhi_epi16(xa, xb)));
        } else {
          const __m512i both = _mm512_inserti64x4(
              _mm512_castsi256_si512(_mm256_load_si256(reinterpret_cast<const __m256i*>(tiles[t] + at0))),
              _mm256_load_si256(reinterpret_cast<const __m256i*>(tiles[t] + at1)), 1);
          chains[first] = _mm512_dpbf16_ps(
              chains[first], wv, reinterpret_cast<__m512bh>(_mm512_permutexvar_epi16(interleave_halves(), both)));
        }
      }
    }

    // Adds n nonzeros: values[j] (bf16) at tile offset at(j). Whole: n is a multiple of
    // kWhole (a padded segment, csr_chunks.h), so the loops for the rest are left out.
    static constexpr int64_t kWhole = 2 * kChains / kChainsPerStep;
    template <bool Whole = false, typename At>
    void add(const uint16_t* const* tiles, const uint16_t* values, int64_t n, const At& at) {
      constexpr int kSteps = kChains / kChainsPerStep;
      int64_t j = 0;
      for (; j + 2 * kSteps <= n; j += 2 * kSteps)
        // Unrolled, so that every chain index is a constant: gcc 12 left the 32-lane single-tile
        // loop storing all four chains to the stack on every pass (a chunked layer then ran at
        // 0.75x of an unchunked one, Zen 4).
#pragma GCC unroll 4
        for (int s = 0; s < kSteps; ++s) {
          uint32_t pair;
          std::memcpy(&pair, values + j + 2 * s, 4);
          step(tiles, at(j + 2 * s), at(j + 2 * s + 1), pair, s * kChainsPerStep);
        }
      if constexpr (Whole) return;
      for (; j + 2 <= n; j += 2) {
        uint32_t pair;
        std::memcpy(&pair, values + j, 4);
        step(tiles, at(j), at(j + 1), pair, 0);
      }
      if (j < n) step(tiles, at(j), at(j), values[j], kChains - kChainsPerStep);  // the odd one, with a zero weight
    }

    // Adds tile t's Lanes sums to out, in batch-row order.
    void add_to(int t, float* out) const {
      const __m512* chains = acc[t];
      if constexpr (Lanes == 32) {
        __m512 lo = chains[0], hi = chains[1];
        for (int c = 2; c < kChains; c += 2) lo = _mm512_add_ps(lo, chains[c]), hi = _mm512_add_ps(hi, chains[c + 1]);
        const __m512 first = _mm512_permutex2var_ps(lo, _mm512_load_si512(kUnshuffle.index[0]), hi);
        const __m512 second = _mm512_permutex2var_ps(lo, _mm512_load_si512(kUnshuffle.index[1]), hi);
        _mm512_store_ps(out, _mm512_add_ps(_mm512_load_ps(out), first));
        _mm512_store_ps(out + 16, _mm512_add_ps(_mm512_load_ps(out + 16), second));
      } else {
        __m512 sum = chains[0];
        for (int c = 1; c < kChains; ++c) sum = _mm512_add_ps(sum, chains[c]);
        _mm512_store_ps(out, _mm512_add_ps(_mm512_load_ps(out), sum));
      }
    }
  };

  // Tiles whose sums one pass over a row computes. Two 32-lane tiles ran 1.03-1.25x faster than
  // one at a time (Zen 4, 2 threads, C++ A/B, batches 33-256, 4096 x 4096, 11008 x 4096 and
  // 4096 x 11008 at 50-90%; 1.07-1.12x at 11008 columns, where their x, 2 x 64 bytes a column,
  // outgrows a 1 MiB L2), within 6% either way for layers of 1M weights. Four at a time lost
  // 11-17% at batch 128 and 256 (x of 1 MiB at 4096 columns). 16-lane tiles are for batches
  // up to 16: one tile.
  static constexpr int kTilesAtOnce = Lanes == 32 ? 2 : 1;

  // Output rows [r0, r1) for tiles [t0, t0 + NT), over the columns in `chunks` chunks of
  // chunk_cols (one chunk of all columns for plain CSR): a block of kRowBlock rows takes every
  // chunk in turn, all its rows one chunk before the next, so that the chunk's part of the tiles
  // stays in L1 (csr_chunks.h). segment(r, c, sums, tiles) adds row r's nonzeros in chunk c into
  // a RowSums<NT> over the NT tiles `tiles`, which start at the chunk's first column, and
  // returns how many it added.
  template <int NT, typename SegmentFn>
  static void rows_of_tiles(const DenseArgs& a, int64_t out_rows, int64_t cols, const uint16_t* all_tiles, int64_t t0,
                            int64_t r0, int64_t r1, int64_t chunks, int64_t chunk_cols, const SegmentFn& segment) {
    alignas(64) float out[NT][kRowBlock][Lanes];
    for (int64_t rb = r0; rb < r1; rb += kRowBlock) {
      const int64_t block = std::min<int64_t>(kRowBlock, r1 - rb);
      for (int t = 0; t < NT; ++t) std::fill(&out[t][0][0], &out[t][0][0] + block * Lanes, 0.f);
      for (int64_t c = 0; c < chunks; ++c) {
        const uint16_t* tiles[NT];
        for (int t = 0; t < NT; ++t) tiles[t] = all_tiles + ((t0 + t) * cols + c * chunk_cols) * Lanes;
        for (int64_t i = 0; i < block; ++i) {
          RowSums<NT> sums;
          if (segment(rb + i, c, sums, tiles) == 0) continue;
          for (int t = 0; t < NT; ++t) sums.add_to(t, out[t][i]);
        }
      }
      for (int t = 0; t < NT; ++t) {
        const int64_t first = (t0 + t) * Lanes;
        store_bf16_rows(a, out_rows, first, std::min<int64_t>(Lanes, a.batch - first), rb, block, &out[t][0][0],
                        Lanes, 1);
      }
    }
  }

  // Output rows [r0, r1) for every tile, kTilesAtOnce at a time.
  template <typename SegmentFn>
  static void rows(const DenseArgs& a, int64_t out_rows, int64_t cols, const uint16_t* tiles, int64_t r0, int64_t r1,
                   int64_t chunks, int64_t chunk_cols, const SegmentFn& segment) {
    int64_t t = 0;
    for (; t + kTilesAtOnce <= tiles_of(a.batch); t += kTilesAtOnce)
      rows_of_tiles<kTilesAtOnce>(a, out_rows, cols, tiles, t, r0, r1, chunks, chunk_cols, segment);
    for (; t < tiles_of(a.batch); ++t)
      rows_of_tiles<1>(a, out_rows, cols, tiles, t, r0, r1, chunks, chunk_cols, segment);
  }

  // The whole product: threads pack x together, then take rows by nonzeros (row_starts:
  // CSR's row_ptr), each part starting at a multiple of row_align (a chunked layout's row
  // blocks), and run rows(...) on them.
  template <typename SegmentFn>
  static void batched(const DenseArgs& a, int64_t out_rows, int64_t cols, const int64_t* row_starts,
                      int64_t row_align, int64_t chunks, int64_t chunk_cols, const SegmentFn& segment) {
    const int parts = useful_threads(row_starts[out_rows], a.batch, a.num_threads);
    auto* tiles = reinterpret_cast<uint16_t*>(a.workspace);
#pragma omp parallel num_threads(parts) if (parts > 1)
    {
      // The team OpenMP gave (it may give fewer threads than asked: nested, or a thread limit).
      const int team = omp_get_num_threads(), part = omp_get_thread_num();
      pack(a, cols, cols * part / team, cols * (part + 1) / team, tiles);
#pragma omp barrier
      rows(a, out_rows, cols, tiles, nnz_balanced_row_aligned(row_starts, out_rows, part, team, row_align),
           nnz_balanced_row_aligned(row_starts, out_rows, part + 1, team, row_align), chunks, chunk_cols, segment);
    }
  }
};

// Calls fn(PairTiles<16>{}) for batches up to 16, fn(PairTiles<32>{}) above.
template <typename Fn>
void with_lanes(int64_t batch, const Fn& fn) {
  if (batch <= 16) fn(PairTiles<16>{});
  else fn(PairTiles<32>{});
}

inline int64_t workspace_floats(int64_t cols, int64_t batch) {
  int64_t floats = 0;
  with_lanes(batch, [&](auto tiles) { floats = decltype(tiles)::workspace_floats(cols, batch); });
  return floats;
}

}  // namespace
}  // namespace sparsekern::cpu::bf16tiles
