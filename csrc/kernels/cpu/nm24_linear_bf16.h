// 2:4 with bf16 values and bf16 activations, read natively with vdpbf16ps (AVX512-BF16):
// no widening copy of x, fp32 accumulation, y rounded to bf16. Included only by
// nm24_linear_avx512bf16.cpp (flags: isa_table.h).
//
// A chunk is 64 columns of a row: its 32 kept values are one zmm of bf16 and its 16 nibbles
// of positions one 64-bit word. Value j's 2-bit position sits at bits 2j of that word (group
// j / 2, first or second kept value), so its lane index into the chunk's 64 columns is
// 4 * (j / 2) + ((meta >> 2j) & 3): a vpermw that puts 16-bit slice j / 8 of the word in lane
// j, a vpsrlvw, an and and an add. One vpermt2w then gathers the 32 activations from the two
// zmm of x that hold the chunk, and one vdpbf16ps multiplies the 32 pairs and adds them to
// 16 fp32 lanes: 32 useful products per instruction, where dense bf16 spends one on 32
// products including the zeros.
//
// Small batches are bound by the bytes of W: 1.125 B per weight (2 of value, 0.25 of
// position, per kept half) against 2 for dense bf16, so at most ~1.78x from DRAM. The index
// decode is paid once per row and chunk and shared by up to kBatchTile activation rows; the
// two loads of x by kRowTile rows. Larger batches go to nm24_linear_bf16_lanes.h.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "bf16.h"
#include "nm24_linear.h"
#include "simd_avx512.h"
#include "work_split.h"

// Internal linkage on purpose (see bf16.h): this code exists in one translation unit only,
// compiled with -mavx512bf16.
namespace sparsekern::cpu::nm24bf16 {
namespace {

constexpr int kRowTile = 2;    // rows sharing each load of x
// Software prefetch distance at batch 1, in 64-column chunks (64 bytes of values, 8 of
// positions) ahead of each row. Without it a batch-1 call streamed W at 11-18 GB/s; with it,
// and the next row tile's first chunks prefetched at each tile's start, at 21-33 GB/s, 1.2-1.9x
// faster over several C++ A/B runs (Zen 5, 2 threads, 4096 and 11008 x 4096, W from DRAM and
// from L3). From batch 2 the products take longer than the bytes, and the prefetches cost:
// 12-24% slower at batch 2 with W in L3, no gain from DRAM.
constexpr int64_t kPrefetchChunks = 8;
// Activation rows sharing each row's index decode: 8 (16 accumulators) against 4 measured
// 1.14x / 1.03x and 1.14x / 0.75x of dense bf16 at batch 8 and 12 (4096 x 4096, 1 thread).
constexpr int kBatchTile = 8;

// The first `bytes` (at most 8) bytes at p as a little-endian word: a row's meta may end on any byte.
inline uint64_t read_meta64(const uint8_t* p, int64_t bytes) {
  if (bytes >= 8) {
    uint64_t word;
    std::memcpy(&word, p, 8);
    return word;
  }
  uint64_t word = 0;
  for (int64_t i = 0; i < bytes; ++i) word |= uint64_t(p[i]) << (8 * i);
  return word;
}

// The constant vectors of the index decode.
struct Decode {
  __m512i slice, shift, base, three;
  Decode() {
    alignas(64) uint16_t s[32], h[32], b[32];
    for (int j = 0; j < 32; ++j) {
      s[j] = uint16_t(j / 8);
      h[j] = uint16_t(2 * (j % 8));
      b[j] = uint16_t(4 * (j / 2));
    }
    slice = _mm512_load_si512(s);
    shift = _mm512_load_si512(h);
    base = _mm512_load_si512(b);
    three = _mm512_set1_epi16(3);
  }
  // Lane j: the column (0 .. 63) within the chunk of value j.
  __m512i positions(uint64_t meta) const {
    const __m512i word = _mm512_zextsi128_si512(_mm_cvtsi64_si128(int64_t(meta)));
    const __m512i bits = _mm512_srlv_epi16(_mm512_permutexvar_epi16(slice, word), shift);
    return _mm512_add_epi16(_mm512_and_si512(bits, three), base);
  }
};

inline __m512 dot_pairs(__m512 acc, __m512i values, __m512i x) {
  return _mm512_dpbf16_ps(acc, reinterpret_cast<__m512bh>(values), reinterpret_cast<__m512bh>(x));
}

// y[b0 .. b0 + NB) for rows [r, r + NR).
template <int NR, int NB>
void tile(const Nm24Matrix& w, const DenseArgs& a, const Decode& d, int64_t r, int64_t b0) {
  const int64_t half = w.cols / 2, meta_bytes = nm24_meta_bytes(w.cols);
  const int64_t full = w.cols / 64, rest = w.cols - full * 64;  // rest: columns of the last, short chunk
  const auto* values = static_cast<const uint16_t*>(w.values) + r * half;
  const uint8_t* meta = w.meta + r * meta_bytes;
  const uint16_t* x[NB];
  for (int b = 0; b < NB; ++b) x[b] = static_cast<const uint16_t*>(a.x) + (b0 + b) * a.x_row_stride;
  constexpr bool prefetch = NB == 1 && NR == kRowTile;  // batch 1 (a last odd row goes without)
  // The next row tile's start: the running prefetches below reach ahead only within the rows
  // they read.
  if (prefetch)
    for (int64_t n = r + NR; n < std::min<int64_t>(r + 2 * NR, w.rows); ++n) {
      const auto* next = reinterpret_cast<const char*>(static_cast<const uint16_t*>(w.values) + n * half);
      for (int64_t o = 0; o < kPrefetchChunks * 64; o += 64) _mm_prefetch(next + o, _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(w.meta + n * meta_bytes), _MM_HINT_T0);
    }
  // Every loop over rows and batch rows unrolled, so that acc, vals and idx stay in registers
  // (gcc kept them on the stack otherwise, each accumulator stored and reloaded per chunk).
  __m512 acc[NR][NB];
#pragma GCC unroll 2
  for (int i = 0; i < NR; ++i)
#pragma GCC unroll 8
    for (int b = 0; b < NB; ++b) acc[i][b] = _mm512_setzero_ps();
  // Chunk c; the masks cover its values and its two halves of x (a short last chunk loads
  // zeros past them: zero values times zero activations, never garbage that could be NaN).
  auto chunk = [&](int64_t c, __mmask32 value_mask, __mmask32 lo_mask, __mmask32 hi_mask, int64_t meta_count) {
    __m512i vals[NR], idx[NR];
#pragma GCC unroll 2
    for (int i = 0; i < NR; ++i) {
      if (prefetch) {
        _mm_prefetch(reinterpret_cast<const char*>(values + i * half + (c + kPrefetchChunks) * 32), _MM_HINT_T0);
        if (c % 8 == 0)  // a line of positions holds 8 chunks
          _mm_prefetch(reinterpret_cast<const char*>(meta + i * meta_bytes + (c + kPrefetchChunks) * 8), _MM_HINT_T0);
      }
      vals[i] = _mm512_maskz_loadu_epi16(value_mask, values + i * half + c * 32);
      idx[i] = d.positions(read_meta64(meta + i * meta_bytes + c * 8, meta_count));
    }
#pragma GCC unroll 8
    for (int b = 0; b < NB; ++b) {
      const __m512i x0 = _mm512_maskz_loadu_epi16(lo_mask, x[b] + c * 64);
      const __m512i x1 = _mm512_maskz_loadu_epi16(hi_mask, x[b] + c * 64 + 32);
#pragma GCC unroll 2
      for (int i = 0; i < NR; ++i) acc[i][b] = dot_pairs(acc[i][b], vals[i], _mm512_permutex2var_epi16(x0, idx[i], x1));
    }
  };
  constexpr __mmask32 all = ~__mmask32(0);
  for (int64_t c = 0; c < full; ++c) chunk(c, all, all, all, 8);
  if (rest > 0) {
    const auto low_bits = [](int64_t n) { return n >= 32 ? all : __mmask32((uint64_t(1) << n) - 1); };
    chunk(full, low_bits(rest / 2), low_bits(rest), low_bits(std::max<int64_t>(rest - 32, 0)),
          meta_bytes - full * 8);
  }
#pragma GCC unroll 2
  for (int i = 0; i < NR; ++i)
#pragma GCC unroll 8
    for (int b = 0; b < NB; ++b) store_bf16(a, w.rows, b0 + b, r + i, simd::Avx512::reduce(acc[i][b]));
}

template <int NR>
void batch_tiles(const Nm24Matrix& w, const DenseArgs& a, const Decode& d, int64_t r, int64_t b0, int64_t b1) {
  for (int64_t b = b0; b < b1; b += kBatchTile) {
    switch (std::min<int64_t>(kBatchTile, b1 - b)) {
      case 1: tile<NR, 1>(w, a, d, r, b); break;
      case 2: tile<NR, 2>(w, a, d, r, b); break;
      case 3: tile<NR, 3>(w, a, d, r, b); break;
      case 4: tile<NR, 4>(w, a, d, r, b); break;
      case 5: tile<NR, 5>(w, a, d, r, b); break;
      case 6: tile<NR, 6>(w, a, d, r, b); break;
      case 7: tile<NR, 7>(w, a, d, r, b); break;
      default: tile<NR, 8>(w, a, d, r, b); break;
    }
  }
}

// Rows outer, activation rows inner: a row pair's W (a few KiB) is read from memory once and
// then served from L1 to every tile of the batch.
inline void small_batch(const Nm24Matrix& w, const DenseArgs& a) {
  const Decode d;
  const int parts = useful_threads(w.rows * w.cols / 2, a.batch, a.num_threads);
  auto run_part = [&](int part) {
    const int64_t r0 = w.rows * part / parts, r1 = w.rows * (part + 1) / parts;
    int64_t r = r0;
    for (; r + kRowTile <= r1; r += kRowTile) batch_tiles<kRowTile>(w, a, d, r, 0, a.batch);
    for (; r < r1; ++r) batch_tiles<1>(w, a, d, r, 0, a.batch);
  };
  run_parts(parts, run_part);
}

}  // namespace
}  // namespace sparsekern::cpu::nm24bf16
