// The vectorized bitmap product, written once over a SIMD traits type V and instantiated per
// ISA (bitmap_linear_<isa>.cpp, with the flags of isa_table.h).
//
// V: the shared traits of simd_avx2.h / simd_avx512.h (what csr_spmm_simd.h's
// pack_transposed needs, and set1, load, add, fmadd, storeu, reduce), plus what each
// variant adds:
//   expand<Safe>(p, m, n): lane j = the next kept value if bit j of the W-bit chunk m is set,
//     else 0, where n = popcount(m) values start at p. Safe: W values are readable at p.
//   decode<Shift>(word, col0, out): writes (col0 + j) << Shift for the set bits j of a 32-bit
//     word to out (in order, and up to 8 garbage entries past them), returns out + popcount;
//     col0 is the word's first column in the 8 lanes of an __m256i (both ISAs have AVX2).
//
// Batches below kBatchedFrom (the direct path) move 4d + 1/8 bytes per weight (fp32 at
// density d) against 4 dense; from DRAM that bounds them, from cache the ~11 instructions
// per W-column chunk do (about 1x dense for 3072 x 768 at 70%). Each row is read once per
// group of up to kDirectBatch activation rows (from memory once, kDirectChunkRows rows
// serving every group before the next): per W columns, the row's next popcount values
// are expanded under the mask into the lanes of their columns and multiplied by a contiguous
// slice of x, no gather. One row at a time, with software prefetch: two rows sharing the
// loads of x ran slower from L3 (four streams instead of two). The work per chunk does not
// shrink with the density while CSR's does: at batch 1 CSR catches up near 70% sparsity
// for layers in cache and near 75% for 4096 x 4096 (Zen 5, 2 threads).
//
// Larger batches are bound by arithmetic and skip the zeros like CSR's batched path: x is
// copied once per call into tiles of T = NACC * W batch rows ([cols][T], pack_transposed),
// and each kept weight becomes one broadcast and NACC FMAs against its tile row. The set
// bits of a row are first decoded into a short list of tile offsets (decode: a table lookup
// per 8 columns, no branch per bit), so the FMA loop runs over a known count: one
// mispredicted loop exit per tiles.bitmap_decode_cols columns (tile_params.h) instead of one per word. Against CSR this
// trades the 2-byte column index per nonzero for the decode's work: even where tile loads
// from L2/L3 bound both (4096 x 4096), about 0.8x where the tile fits L2 (3072 x 768).
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "bf16.h"
#include "bitmap_linear.h"
#include "csr_spmm_simd.h"  // simd::pack_transposed
#include "work_split.h"

// Internal linkage on purpose: this header is compiled into translation units with
// different ISA flags, and one shared inline copy could carry AVX-512 code into the
// scalar path (the linker keeps any one of them).
namespace sparsekern::cpu::bitmap {
namespace {

// The direct path reads each row of W once per kDirectBatch rows of x, so its cost grows
// with the batch while the batched path's fixed costs (packing x, decoding bits) do not: on
// Zen 5 (4096 x 4096, 70%) direct won up to batch 6 and lost from 8.
constexpr int64_t kBatchedFrom = 8;
constexpr int kDirectBatch = 4;  // activation rows per pass of the direct path
// Rows of W that every pass of the direct path reads before the next rows start, so that W
// streams from memory once and the second pass (batch 5-7) reads the chunk from L2. Against
// each pass streaming all of W (Zen 5, 4096 x 4096, fp32, 2 threads, C++ A/B): batch 5-7
// 1.11-1.17x faster at 50% from DRAM, 1.01-1.08x at 70% from DRAM and L3; batch 1-4 the same.
constexpr int64_t kDirectChunkRows = 16;
// Software prefetch distances of the direct path, in values and words: the row-by-row
// streams defeat the hardware prefetcher often enough that without them 4096 x 4096 at 70%
// (22 MB, from L3) ran 1.3-2x slower on Zen 5; 512 values beat 256 and 1024.
constexpr int64_t kPrefetchValues = 512;
constexpr int64_t kPrefetchWords = 64;

// Accumulator registers per tile (T = NACC * W batch rows): 1, 2 or 4, enough to cover the
// batch. Up to 4 where CSR stops at 2 (csr_spmm_simd.h): decoding a row's bits is paid once
// per tile, so wider tiles pay it less often; on Zen 5 T = 4W beat 2W by 10-25% at batch 64
// and 256 (4096 x 4096, 768 x 3072), and 3W lost to both.
template <typename V>
int accumulators_for(int64_t batch) {
  const int64_t needed = (batch + V::width - 1) / V::width;
  return needed <= 1 ? 1 : needed <= 2 ? 2 : 4;
}

template <typename V>
int64_t workspace_floats(int64_t batch, int64_t cols) {
  if (batch < kBatchedFrom) return 0;
  const int64_t tile = int64_t(accumulators_for<V>(batch)) * V::width;
  return (batch + tile - 1) / tile * tile * cols;
}

// ---- direct path ---------------------------------------------------------------------------

// y[b0 .. b0 + NB) for row r. Safe: W values are readable past the row's last, so every
// expand may load W values.
template <typename V, typename ValueT, int NB, bool Safe>
void direct_row(const BitmapMatrix& w, const DenseArgs& a, int64_t r, int64_t b0, const float* const* x,
                const float (*x_tail)[32]) {
  using reg = typename V::reg;
  constexpr int W = V::width;
  constexpr int kChunks = 32 / W;
  constexpr uint32_t kChunkMask = (1u << W) - 1;
  // Independent FMA chains per batch row, so that NB * K >= 4 chains hide the FMA latency
  // (4 cycles): with 2 chains at batch 1, 3072 x 768 was latency-bound, 1.3x slower.
  constexpr int K = NB >= 4 ? 1 : NB >= 2 ? 2 : 4;
  constexpr int U = K > kChunks ? K / kChunks : 1;  // words per round of the chains
  const int64_t words = bitmap_words(w.cols), full = w.cols / 32;
  const ValueT* p = static_cast<const ValueT*>(w.values) + w.offsets[r];
  const uint32_t* bits = w.bits + r * words;
  reg acc[NB][K];
  for (int b = 0; b < NB; ++b)
    for (int k = 0; k < K; ++k) acc[b][k] = V::zero();
  // Word k, the u-th of its round: chunk c feeds chain (u * kChunks + c) % K.
  auto word = [&](int64_t k, auto u, auto&& x_at) {
    const uint32_t m = bits[k];
    __builtin_prefetch(p + kPrefetchValues);
    __builtin_prefetch(bits + k + kPrefetchWords);
    for (int c = 0; c < kChunks; ++c) {
      const uint32_t mc = (m >> (c * W)) & kChunkMask;
      const int n = __builtin_popcount(mc);
      const reg v = V::template expand<Safe>(p, mc, n);
      p += n;
      const int chain = (decltype(u)::value * kChunks + c) % K;
      for (int b = 0; b < NB; ++b) acc[b][chain] = V::fmadd(v, V::loadu(x_at(b) + c * W), acc[b][chain]);
    }
  };
  auto x_at = [&](int64_t k) { return [&x, k](int b) { return x[b] + 32 * k; }; };
  int64_t k = 0;
  for (; k + U <= full; k += U) {
    word(k, std::integral_constant<int, 0>{}, x_at(k));
    if constexpr (U > 1) word(k + 1, std::integral_constant<int, 1>{}, x_at(k + 1));
    static_assert(U <= 2, "one call per word of a round above");
  }
  for (; k < full; ++k) word(k, std::integral_constant<int, 0>{}, x_at(k));
  if (words > full) word(full, std::integral_constant<int, 0>{}, [&](int b) { return x_tail[b]; });
  for (int b = 0; b < NB; ++b) {
    reg sum = acc[b][0];
    for (int k = 1; k < K; ++k) sum = V::add(sum, acc[b][k]);
    const float dot = V::reduce(sum);
    a.y_f32()[(b0 + b) * w.rows + r] = a.bias ? dot + a.bias[r] : dot;
  }
}

// y[b0 .. b0 + NB) for rows [r0, r1).
template <typename V, typename ValueT, int NB>
void direct_rows(const BitmapMatrix& w, const DenseArgs& a, int64_t r0, int64_t r1, int64_t b0) {
  const int64_t tail_start = w.cols / 32 * 32;
  const int64_t nnz = w.offsets[w.rows];
  const float* x[NB];
  // The last partial word's activations, zero-padded to 32: x may end at cols.
  alignas(64) float x_tail[NB][32] = {};
  for (int b = 0; b < NB; ++b) {
    x[b] = a.x_f32() + (b0 + b) * a.x_row_stride;
    std::memcpy(x_tail[b], x[b] + tail_start, size_t(w.cols - tail_start) * 4);
  }
  for (int64_t r = r0; r < r1; ++r) {
    // Only the last rows of W can make an expand read past the end of the values.
    if (w.offsets[r + 1] + V::width <= nnz) direct_row<V, ValueT, NB, true>(w, a, r, b0, x, x_tail);
    else direct_row<V, ValueT, NB, false>(w, a, r, b0, x, x_tail);
  }
}

template <typename V, typename ValueT>
void direct(const BitmapMatrix& w, const DenseArgs& a) {
  const int parts = useful_threads(w.offsets[w.rows] + w.rows * bitmap_words(w.cols), a.batch, a.num_threads);
#pragma omp parallel for num_threads(parts) schedule(static, 1) if (parts > 1)
  for (int part = 0; part < parts; ++part) {
    const int64_t r0 = nnz_balanced_row(w.offsets, w.rows, part, parts);
    const int64_t r1 = nnz_balanced_row(w.offsets, w.rows, part + 1, parts);
    for (int64_t rc = r0; rc < r1; rc += kDirectChunkRows) {
      const int64_t re = std::min(rc + kDirectChunkRows, r1);
      for (int64_t b0 = 0; b0 < a.batch; b0 += kDirectBatch) {
        switch (std::min<int64_t>(kDirectBatch, a.batch - b0)) {
          case 1: direct_rows<V, ValueT, 1>(w, a, rc, re, b0); break;
          case 2: direct_rows<V, ValueT, 2>(w, a, rc, re, b0); break;
          case 3: direct_rows<V, ValueT, 3>(w, a, rc, re, b0); break;
          default: direct_rows<V, ValueT, 4>(w, a, rc, re, b0); break;
        }
      }
    }
  }
}

// ---- batched path --------------------------------------------------------------------------

// The rows, their blocks and the writing of y are CSR's (simd::tile_rows in csr_spmm_simd.h).
// The batched path takes the columns in chunks, as CSR's does (csr_chunks.h): each row walked
// its kept weights over the whole tile of x (T floats a column: 1 MiB at T = 64 and 4096
// columns), reading the tile from L2 row after row; a block of rows now multiplies one chunk
// of columns, whose part of the tile (a.tiles.bitmap_chunk_bytes: L1d) stays in L1, before
// the next. Bitmap needs no copy of W for that: a row's words and values for a chunk follow
// its previous chunk's, so each row keeps a cursor into its values. But then a block's rows
// are as many streams through memory (64 on AVX-512), more than the hardware prefetchers
// follow, so each row prefetches its next chunk's words and values (as many as this chunk
// had) when it ends one; chunks without the prefetches lost up to 20% at 70% sparsity.
// Zen 4, 2 threads, float32, C++ A/B against one chunk of all columns, batches 32-256:
// 4096 x 4096 1.21-1.40x at 50% density, 1.03-1.22x at 30%, 0.97-1.08x at 20%; 4096 x 11008
// 1.28-1.97x; 11008 x 4096, 768 x 3072, 3072 x 768 and 1024 x 1024 1.10-1.41x (3072 x 768 at
// batch 32: 0.99x). Tiles of one cache line a column (T = 16) come from L2 fast enough:
// chunked, they ran 0.84-0.89x at 20-30% density (4096 x 4096, batch 8 and 16), so they stay
// whole, as do tiles of fewer than kMinChunks chunks.
constexpr int64_t kMinChunkedTileBytes = 128;  // a column of the tile, two cache lines
constexpr int64_t kMinChunks = 4;

// Words per chunk for tiles of tile_floats floats a column: all the words (one chunk) for
// tiles of less than kMinChunkedTileBytes a column or fewer than kMinChunks chunks.
inline int64_t chunk_words(int64_t cols, int64_t tile_floats, int64_t chunk_bytes) {
  const int64_t words = std::max<int64_t>(bitmap_words(cols), 1), column_bytes = tile_floats * int64_t(sizeof(float));
  const int64_t per_chunk = std::max<int64_t>(1, chunk_bytes / (column_bytes * 32));
  return column_bytes >= kMinChunkedTileBytes && words >= kMinChunks * per_chunk ? per_chunk : words;
}

// acc[k] (+)= row r's kept weights in words [w0, w1), whose values start at v, times the rows
// of `tile` (which starts at word w0's first column) of their columns; returns where the
// values of word w1 start.
template <typename V, int NACC, typename ValueT>
const ValueT* row_times_tile(const BitmapMatrix& w, int64_t r, int64_t w0, int64_t w1, const ValueT* v,
                             const float* tile, int64_t decode_cols, typename V::reg (&acc)[NACC]) {
  constexpr int64_t T = int64_t(NACC) * V::width;
  constexpr int kShift = T == 8 ? 3 : T == 16 ? 4 : T == 32 ? 5 : 6;  // decode scales columns by T
  static_assert(T == int64_t(1) << kShift, "T is a power of two");
  const uint32_t* bits = w.bits + r * bitmap_words(w.cols);
  alignas(64) int32_t cols[kMaxBitmapDecodeCols + 8];  // offsets col * T; decode writes up to 8 past the last
  // Even and odd kept weights feed separate accumulators: NACC chains alone would wait on
  // the FMA latency.
  typename V::reg odd[NACC];
  for (int k = 0; k < NACC; ++k) odd[k] = V::zero();
  for (int64_t p0 = w0; p0 < w1; p0 += decode_cols / 32) {
    const int64_t p1 = std::min(w1, p0 + decode_cols / 32);
    int32_t* end = cols;
    __m256i col0 = _mm256_set1_epi32(int32_t(32 * (p0 - w0)));
    for (int64_t k = p0; k < p1; ++k) {
      end = V::template decode<kShift>(bits[k], col0, end);
      col0 = _mm256_add_epi32(col0, _mm256_set1_epi32(32));
    }
    const int64_t n = end - cols;
    int64_t j = 0;
    for (; j + 2 <= n; j += 2) {
      const auto v0 = V::set1(value_at(v, j)), v1 = V::set1(value_at(v, j + 1));
      const float* x0 = tile + cols[j];
      const float* x1 = tile + cols[j + 1];
      for (int k = 0; k < NACC; ++k) {
        acc[k] = V::fmadd(v0, V::load(x0 + k * V::width), acc[k]);
        odd[k] = V::fmadd(v1, V::load(x1 + k * V::width), odd[k]);
      }
    }
    if (j < n) {
      const auto v0 = V::set1(value_at(v, j));
      const float* x0 = tile + cols[j];
      for (int k = 0; k < NACC; ++k) acc[k] = V::fmadd(v0, V::load(x0 + k * V::width), acc[k]);
    }
    v += n;
  }
  for (int k = 0; k < NACC; ++k) acc[k] = V::add(acc[k], odd[k]);
  return v;
}

// Prefetches row r's words from w1 and as many values from v as [before, v) held: its next
// chunk, by the size of the chunk it just ended.
template <typename ValueT>
inline void prefetch_next_chunk(const BitmapMatrix& w, int64_t r, int64_t w1, const ValueT* before, const ValueT* v) {
  _mm_prefetch(reinterpret_cast<const char*>(w.bits + r * bitmap_words(w.cols) + w1), _MM_HINT_T0);
  // Addresses as integers: the last row's guess may reach past the values (a prefetch there is
  // harmless; a pointer there would not be).
  const uintptr_t from = reinterpret_cast<uintptr_t>(v), to = from + uintptr_t(v - before) * sizeof(ValueT);
  for (uintptr_t p = from; p <= to; p += 64) _mm_prefetch(reinterpret_cast<const char*>(p), _MM_HINT_T0);
}

template <typename V, int NACC, typename ValueT>
void tile_rows(const BitmapMatrix& w, const DenseArgs& a, int64_t r0, int64_t r1) {
  constexpr int64_t T = int64_t(NACC) * V::width;
  constexpr int64_t RB = simd::kRowGroups * V::width;  // simd::tile_rows's block of rows
  const int64_t words = bitmap_words(w.cols), step = chunk_words(w.cols, T, a.tiles.bitmap_chunk_bytes);
  const auto* values = static_cast<const ValueT*>(w.values);
  const ValueT* next[RB];  // each row of the block's values from the chunk at hand on
  // At least one chunk: cols == 0 still writes y = bias.
  const int64_t chunks = std::max<int64_t>(1, (words + step - 1) / step);
  simd::tile_rows<V, NACC>(w.rows, w.cols, a, r0, r1, chunks, 32 * step,
                           [&](int64_t r, int64_t c, const float* tile, typename V::reg (&acc)[NACC]) {
                             const ValueT*& at = next[(r - r0) % RB];
                             if (c == 0) at = values + w.offsets[r];
                             const int64_t w0 = c * step, w1 = std::min(words, w0 + step);
                             const ValueT* before = at;
                             at = row_times_tile<V, NACC, ValueT>(w, r, w0, w1, before, tile,
                                                                  a.tiles.bitmap_decode_cols, acc);
                             if (w1 < words) prefetch_next_chunk(w, r, w1, before, at);
                           });
}

template <typename V, int NACC, typename ValueT>
void batched(const BitmapMatrix& w, const DenseArgs& a) {
  const int parts = useful_threads(w.offsets[w.rows], a.batch, a.num_threads);
#pragma omp parallel num_threads(parts) if (parts > 1)
  {
    simd::pack_transposed<V>(a, w.cols, int64_t(NACC) * V::width);  // ends in a barrier
#pragma omp for schedule(static, 1)
    for (int part = 0; part < parts; ++part) {
      const int64_t r0 = nnz_balanced_row(w.offsets, w.rows, part, parts);
      const int64_t r1 = nnz_balanced_row(w.offsets, w.rows, part + 1, parts);
      tile_rows<V, NACC, ValueT>(w, a, r0, r1);
    }
  }
}

template <typename V>
void bitmap_linear(const BitmapMatrix& w, const DenseArgs& a) {
  if (a.batch == 0 || w.rows == 0) return;
  auto run = [&](auto value) {
    using ValueT = decltype(value);
    if (a.batch < kBatchedFrom) return direct<V, ValueT>(w, a);
    switch (accumulators_for<V>(a.batch)) {
      case 1: return batched<V, 1, ValueT>(w, a);
      case 2: return batched<V, 2, ValueT>(w, a);
      default: return batched<V, 4, ValueT>(w, a);
    }
  };
  if (w.value_type == ValueType::f32) run(float{});
  else run(uint16_t{});
}

}  // namespace
}  // namespace sparsekern::cpu::bitmap
