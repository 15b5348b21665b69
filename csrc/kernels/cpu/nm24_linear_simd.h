// The vectorized 2:4 product, written once over a SIMD traits type V and instantiated per
// ISA (nm24_linear_avx2.cpp, nm24_linear_avx512.cpp with their own compiler flags).
//
// V provides: reg / ireg (W = V::width floats / int32s), tile_pairs (row pairs per register
// tile of the batched path, as many as its registers hold), zero(), loadu(p), loadu_i(p),
// fmadd(a, b, c), widen(const float* or const uint16_t* p) (W values as float),
// widen_halves(lo, hi) (W/2 values from each), perm(idx, x) (lane j = x[idx[j] % W]),
// select2(x0, x1, idx) (lane j = (x0 ++ x1)[idx[j] % 2W]), positions(word, base)
// (lane j = ((word >> 2j) & 3) + base[j]), reduce(r) (sum of lanes), reduce_halves8(a, out)
// (out[8 * (b / 4) + 4 * h + b % 4] = sum of half h of a[b], for 8 registers), storeu,
// storeu_i.
//
// Batches of 1 to 3 are bound by the bytes of W (2.125 B per weight in fp32, 1.125 in bf16
// against 4 dense). The direct path streams each row once per group of up to kDirectBatch
// activation rows: W values cover 2W columns, whose 2-bit positions (one 32-bit word for
// AVX-512) become lane indices in four integer ops, and select2 picks the W activations
// they multiply from two contiguous loads of x, which serve two rows at a time (in cache,
// where loads rather than bytes bound it, that made a 768 x 3072 layer 1.7x faster).
//
// Large batches are bound by arithmetic, where those integer ops would cost as much as the
// FMAs. The batched path first decodes a block of W (tiles.nm24_block_rows x nm24_block_cols) per thread into
// the workspace: per pair of rows and W columns, the pair's W values as floats (W/2 of each
// row) and their W lane indices. Then each decoded vector serves a whole tile of activation
// rows: one perm (cheap here, it issues beside the FMAs) and one FMA per W useful products,
// where a dense kernel spends one FMA per W products including the zeros. One load of x
// serves both rows of a pair, and a tile of V::tile_pairs pairs x kTile activation rows keeps
// tile_pairs * kTile accumulators in registers.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "nm24_linear.h"
#include "work_split.h"

// Internal linkage on purpose: this header is compiled into translation units with
// different ISA flags, and one shared inline copy could carry AVX-512 code into the
// scalar path (the linker keeps any one of them).
namespace sparsekern::cpu::nm24 {
namespace {

constexpr int64_t kBatchedFrom = 4;  // batch from which decoding pays for itself (measured)
constexpr int kDirectBatch = 3;      // activation rows per pass of the direct path
constexpr int kTile = 8;             // activation rows per register tile
// Software prefetch distance ahead of each row's values at batch 1 (bytes; meta is fetched
// 64 bytes ahead once per 16 chunks). fp32 values, 2 threads, Zen 5, C++ A/B against no
// prefetch: avx512 1.06-1.21x faster with W from DRAM (4096 x 4096, 11008 x 4096,
// 4096 x 11008, 768 x 3072), 0.96-1.08x with W in cache (768 x 3072, 3072 x 768,
// 2048 x 2048); the avx2 variant on the same CPU 1.22-1.33x from DRAM, 0.96-1.02x in cache.
// Prefetching the next rows' starts too, as the bf16 small-batch path does, measured 0.90x
// on 3072 x 768 in cache and gained less from DRAM. Batch 1 only: from batch 2 the products
// take longer than the bytes, and the bf16 small-batch path's prefetches cost 12-24% there.
constexpr int64_t kPrefetchBytes = 512;
// A decoded block (tiles.nm24_block_rows x nm24_block_cols / 2 values, 8 bytes each: 384 KiB
// with 1 MiB of L2) stays in L2 (tile_params.h); long rows, since each block ends in
// reductions of every accumulator.

template <typename V>
int64_t workspace_floats(int64_t batch, int num_threads) {
  // Per block: rows * cols / 2 values, each a float and a lane index; sized for the largest
  // block sanitized tiles allow, so that any tiles fit the workspace.
  return batch >= kBatchedFrom ? int64_t(num_threads) * kMaxNm24BlockFloats : 0;
}

// The first `bytes` (at most 4) bytes at p as a little-endian word: rows end on any byte.
// Fixed-size copies for the common sizes, which compile to one load.
inline uint32_t read_meta(const uint8_t* p, int64_t bytes) {
  if (bytes == 4) {
    uint32_t word;
    std::memcpy(&word, p, 4);
    return word;
  }
  if (bytes == 2) {
    uint16_t word;
    std::memcpy(&word, p, 2);
    return word;
  }
  uint32_t word = 0;
  for (int64_t i = 0; i < bytes; ++i) word |= uint32_t(p[i]) << (8 * i);
  return word;
}

// W values at p as floats; n < W reads only n of them and zero-fills the rest.
template <typename V, typename ValueT>
typename V::reg load_values(const ValueT* p, int64_t n) {
  if (n >= V::width) return V::widen(p);
  ValueT buffer[V::width] = {};
  std::memcpy(buffer, p, size_t(n) * sizeof(ValueT));
  return V::widen(buffer);
}

// ---- direct path ---------------------------------------------------------------------------

// Lane j of a row's W values holds group j / 2: base offset 4 * (j / 2) within 2W columns.
template <typename V>
typename V::ireg direct_base() {
  alignas(64) int32_t base[V::width];
  for (int j = 0; j < V::width; ++j) base[j] = 4 * (j / 2);
  return V::loadu_i(base);
}

// y[b0 .. b0 + NB) for rows [r, r + NR): NR rows share each load of x and give NR
// independent chains of FMAs.
template <typename V, typename ValueT, int NR, int NB>
void direct_tile(const Nm24Matrix& w, const DenseArgs& a, int64_t r, int64_t b0, const float* const* x,
                 const float (*x_tail)[2 * V::width]) {
  using reg = typename V::reg;
  using ireg = typename V::ireg;
  constexpr int W = V::width;
  const ireg base = direct_base<V>();
  const int64_t half = w.cols / 2, meta_bytes = nm24_meta_bytes(w.cols);
  const int64_t full = w.cols / (2 * W);  // chunks of 2W columns; the rest is the tail
  const ValueT* values = static_cast<const ValueT*>(w.values) + r * half;
  const uint8_t* meta = w.meta + r * meta_bytes;
  reg acc[NR][NB];
  for (int i = 0; i < NR; ++i)
    for (int b = 0; b < NB; ++b) acc[i][b] = V::zero();
  // Chunk c: its values and meta bytes start at c * W and c * W / 4 in every row.
  auto chunk = [&](int64_t c, int64_t n_values, int64_t meta_count, auto&& x_at) {
    reg vals[NR];
    ireg idx[NR];
    for (int i = 0; i < NR; ++i) {
      if (NB == 1) {
        __builtin_prefetch(reinterpret_cast<const char*>(values + i * half + c * W) + kPrefetchBytes);
        if (c % 16 == 0) __builtin_prefetch(meta + i * meta_bytes + c * W / 4 + 64);
      }
      vals[i] = load_values<V>(values + i * half + c * W, n_values);
      idx[i] = V::positions(read_meta(meta + i * meta_bytes + c * W / 4, meta_count), base);
    }
    for (int b = 0; b < NB; ++b) {
      const reg x0 = V::loadu(x_at(b)), x1 = V::loadu(x_at(b) + W);
      for (int i = 0; i < NR; ++i) acc[i][b] = V::fmadd(vals[i], V::select2(x0, x1, idx[i]), acc[i][b]);
    }
  };
  for (int64_t c = 0; c < full; ++c) chunk(c, W, W / 4, [&](int b) { return x[b] + c * 2 * W; });
  if (w.cols > full * 2 * W)
    chunk(full, half - full * W, meta_bytes - full * W / 4, [&](int b) { return x_tail[b]; });
  for (int i = 0; i < NR; ++i)
    for (int b = 0; b < NB; ++b) {
      const float sum = V::reduce(acc[i][b]);
      a.y_f32()[(b0 + b) * w.rows + r + i] = a.bias ? sum + a.bias[r + i] : sum;
    }
}

// y[b0 .. b0 + NB) for rows [r0, r1), two rows at a time.
template <typename V, typename ValueT, int NB>
void direct_rows(const Nm24Matrix& w, const DenseArgs& a, int64_t r0, int64_t r1, int64_t b0) {
  constexpr int W = V::width;
  const int64_t tail_start = w.cols / (2 * W) * 2 * W;
  const float* x[NB];
  // The tail's activations, zero-padded to 2W: zero values times garbage could make NaN.
  alignas(64) float x_tail[NB][2 * W] = {};
  for (int b = 0; b < NB; ++b) {
    x[b] = a.x_f32() + (b0 + b) * a.x_row_stride;
    std::memcpy(x_tail[b], x[b] + tail_start, size_t(w.cols - tail_start) * 4);
  }
  int64_t r = r0;
  for (; r + 2 <= r1; r += 2) direct_tile<V, ValueT, 2, NB>(w, a, r, b0, x, x_tail);
  if (r < r1) direct_tile<V, ValueT, 1, NB>(w, a, r, b0, x, x_tail);
}

template <typename V, typename ValueT>
void direct(const Nm24Matrix& w, const DenseArgs& a) {
  const int parts = useful_threads(w.rows * w.cols / 2, a.batch, a.num_threads);
  auto run_part = [&](int part) {
    const int64_t r0 = w.rows * part / parts, r1 = w.rows * (part + 1) / parts;
    for (int64_t b0 = 0; b0 < a.batch; b0 += kDirectBatch) {
      switch (std::min<int64_t>(kDirectBatch, a.batch - b0)) {
        case 1: direct_rows<V, ValueT, 1>(w, a, r0, r1, b0); break;
        case 2: direct_rows<V, ValueT, 2>(w, a, r0, r1, b0); break;
        default: direct_rows<V, ValueT, 3>(w, a, r0, r1, b0); break;
      }
    }
  };
  run_parts(parts, run_part);
}

// Makes the compiler keep r in a register. Without it gcc folds the load of x into each of
// the V::tile_pairs perms that use it, and then loads, not shuffles, bound the loop (1.45x
// slower measured on Zen 4 at batch 256).
template <typename Reg>
inline void keep_in_register(Reg& r) { __asm__("" : "+v"(r)); }

// ---- batched path --------------------------------------------------------------------------

// Decoded block layout: [pair][chunk][2W] floats: W values (W/2 of row 2p, then W/2 of row
// 2p + 1), then W lane indices (int32 bits) into the chunk's W columns.
template <typename V>
constexpr int64_t decoded_pair_floats(int64_t chunks) { return chunks * 2 * V::width; }

// Lanes j and j + W/2 hold the same value slot of the two rows: group (j % (W/2)) / 2.
template <typename V>
typename V::ireg pair_base() {
  alignas(64) int32_t base[V::width];
  for (int j = 0; j < V::width; ++j) base[j] = 4 * ((j % (V::width / 2)) / 2);
  return V::loadu_i(base);
}

// Decodes the chunk of W columns at `col` (a multiple of W, so of 8: meta bytes start there)
// of rows r and r + 1 for the register path (decode_block writes the same into the
// workspace): the pair's W values as floats (W/2 of each row) and their W lane indices.
// Columns at and past `end` (the last chunk of a row) and a missing second row (odd rows)
// decode to zero values.
template <typename V, typename ValueT>
void decode_chunk(const Nm24Matrix& w, int64_t r, int64_t col, int64_t end, typename V::ireg base,
                  typename V::reg* vals, typename V::ireg* idx) {
  constexpr int W = V::width;
  const auto* values = static_cast<const ValueT*>(w.values);
  const int64_t half = w.cols / 2, meta_bytes = nm24_meta_bytes(w.cols);
  const int64_t n = std::min<int64_t>(W, end - col) / 2;  // values per row here
  const bool both = r + 1 < w.rows;
  const ValueT* src = values + r * half + col / 2;
  const int64_t bytes = std::min<int64_t>(W / 8, meta_bytes - col / 8);
  const uint8_t* meta = w.meta + r * meta_bytes + col / 8;
  const uint32_t second = both ? read_meta(meta + meta_bytes, bytes) : 0;
  const uint32_t word = read_meta(meta, bytes) | second << W;
  if (both && n == W / 2) {
    *vals = V::widen_halves(src, src + half);
  } else {  // the last chunk of a row, or a pair missing its second row: zero-padded
    ValueT lo[W / 2] = {}, hi[W / 2] = {};
    std::memcpy(lo, src, size_t(n) * sizeof(ValueT));
    if (both) std::memcpy(hi, src + half, size_t(n) * sizeof(ValueT));
    *vals = V::widen_halves(lo, hi);
  }
  *idx = V::positions(word, base);
}

// Decodes rows [r0, r0 + 2 * pairs) x columns [k0, k0 + cols) into ws; a missing second row
// (odd rows) and the columns past the last full chunk decode to zero values. The loop body is
// decode_chunk's, written out on purpose: calling decode_chunk here (storing its two
// registers) measured 1.94x / 1.96x over dense at batch 64 for 3072 x 768 / 768 x 3072,
// against 2.38-2.54x / 2.19-2.29x for this loop (Zen 5, fp32, 2 threads, 2026-12-03); with
// decode_chunk forced inline, 3072 x 768 still ran 1.75x / 2.38x against 2.89x / 2.96x for
// this loop, alternated in one session.
template <typename V, typename ValueT>
void decode_block(const Nm24Matrix& w, int64_t r0, int64_t pairs, int64_t k0, int64_t cols, float* ws) {
  constexpr int W = V::width;
  const typename V::ireg base = pair_base<V>();
  const auto* values = static_cast<const ValueT*>(w.values);
  const int64_t half = w.cols / 2, meta_bytes = nm24_meta_bytes(w.cols);
  const int64_t chunks = (cols + W - 1) / W;
  for (int64_t p = 0; p < pairs; ++p) {
    float* out = ws + p * decoded_pair_floats<V>(chunks);
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t col = k0 + c * W;  // a multiple of W, so of 8: meta bytes start here
      const int64_t n = std::min<int64_t>(W, k0 + cols - col) / 2;  // values per row here
      const int64_t r = r0 + 2 * p;
      const bool both = r + 1 < w.rows;
      const ValueT* src = values + r * half + col / 2;
      const int64_t bytes = std::min<int64_t>(W / 8, meta_bytes - col / 8);
      const uint8_t* meta = w.meta + r * meta_bytes + col / 8;
      const uint32_t second = both ? read_meta(meta + meta_bytes, bytes) : 0;
      const uint32_t word = read_meta(meta, bytes) | second << W;
      if (both && n == W / 2) {
        V::storeu(out + c * 2 * W, V::widen_halves(src, src + half));
      } else {  // the last chunk of a row, or a pair missing its second row: zero-padded
        ValueT lo[W / 2] = {}, hi[W / 2] = {};
        std::memcpy(lo, src, size_t(n) * sizeof(ValueT));
        if (both) std::memcpy(hi, src + half, size_t(n) * sizeof(ValueT));
        V::storeu(out + c * 2 * W, V::widen_halves(lo, hi));
      }
      V::storeu_i(out + c * 2 * W + W, V::positions(word, base));
    }
  }
}

// out[2p + h][b] = the sum of the lanes that hold row 2p + h in acc[p][b] (a pair's register
// holds W/2 lanes of each row).
template <typename V, int NP, int NB>
void reduce_pairs(typename V::reg (&acc)[NP][NB], float (&out)[2 * V::tile_pairs][kTile]) {
  for (int p = 0; p < NP; ++p) {
    typename V::reg tile[8];
    for (int b = 0; b < 8; ++b) tile[b] = b < NB ? acc[p][b] : V::zero();
    alignas(64) float sums[16];
    V::reduce_halves8(tile, sums);
    for (int b = 0; b < NB; ++b)
      for (int h = 0; h < 2; ++h) out[2 * p + h][b] = sums[8 * (b / 4) + 4 * h + b % 4];
  }
}

// out[2p + h][b] = row 2p + h of the decoded pairs times activation row b, over `chunks`
// chunks of W columns (the last from x_tail when `tail`).
template <typename V, int NP, int NB>
void batched_tile(const float* ws, int64_t pair_floats, const float* const* x, int64_t chunks,
                  const float (*x_tail)[V::width], bool tail, float (&out)[2 * V::tile_pairs][kTile]) {
  using reg = typename V::reg;
  using ireg = typename V::ireg;
  constexpr int W = V::width;
  reg acc[NP][NB];
  for (int p = 0; p < NP; ++p)
    for (int b = 0; b < NB; ++b) acc[p][b] = V::zero();
  auto chunk = [&](int64_t c, auto&& x_at) {
    reg vals[NP];
    ireg idx[NP];
    for (int p = 0; p < NP; ++p) {
      vals[p] = V::loadu(ws + p * pair_floats + c * 2 * W);
      idx[p] = V::loadu_i(ws + p * pair_floats + c * 2 * W + W);
    }
    for (int b = 0; b < NB; ++b) {
      reg xv = V::loadu(x_at(b));
      keep_in_register(xv);
      for (int p = 0; p < NP; ++p) acc[p][b] = V::fmadd(vals[p], V::perm(idx[p], xv), acc[p][b]);
    }
  };
  const int64_t full = tail ? chunks - 1 : chunks;
  for (int64_t c = 0; c < full; ++c) chunk(c, [&](int b) { return x[b] + c * W; });
  if (tail) chunk(full, [&](int b) { return x_tail[b]; });
  reduce_pairs<V, NP, NB>(acc, out);
}

template <typename V, int NP>
void batched_tile_any(int nb, const float* ws, int64_t pair_floats, const float* const* x, int64_t chunks,
                      const float (*x_tail)[V::width], bool tail, float (&out)[2 * V::tile_pairs][kTile]) {
  static_assert(kTile == 8, "one case per tile height");
  switch (nb) {
    case 1: return batched_tile<V, NP, 1>(ws, pair_floats, x, chunks, x_tail, tail, out);
    case 2: return batched_tile<V, NP, 2>(ws, pair_floats, x, chunks, x_tail, tail, out);
    case 3: return batched_tile<V, NP, 3>(ws, pair_floats, x, chunks, x_tail, tail, out);
    case 4: return batched_tile<V, NP, 4>(ws, pair_floats, x, chunks, x_tail, tail, out);
    case 5: return batched_tile<V, NP, 5>(ws, pair_floats, x, chunks, x_tail, tail, out);
    case 6: return batched_tile<V, NP, 6>(ws, pair_floats, x, chunks, x_tail, tail, out);
    case 7: return batched_tile<V, NP, 7>(ws, pair_floats, x, chunks, x_tail, tail, out);
    default: return batched_tile<V, NP, 8>(ws, pair_floats, x, chunks, x_tail, tail, out);
  }
}

template <typename V, typename ValueT>
void batched(const Nm24Matrix& w, const DenseArgs& a) {
  constexpr int W = V::width;
  const int64_t pairs = (w.rows + 1) / 2;
  const int64_t block_rows = a.tiles.nm24_block_rows, block_cols = a.tiles.nm24_block_cols;
  const int parts = int(std::min<int64_t>(useful_threads(w.rows * w.cols / 2, a.batch, a.num_threads),
                                          pairs));
#pragma omp parallel num_threads(parts) if (parts > 1)
  {
#pragma omp for schedule(static, 1)
    for (int part = 0; part < parts; ++part) {
      float* ws = a.workspace + int64_t(part) * kMaxNm24BlockFloats;
      const int64_t p0 = pairs * part / parts, p1 = pairs * (part + 1) / parts;
      for (int64_t pb = p0; pb < p1; pb += block_rows / 2) {
        const int64_t block_pairs = std::min<int64_t>(block_rows / 2, p1 - pb);
        for (int64_t k0 = 0; k0 < w.cols; k0 += block_cols) {
          const int64_t cols = std::min<int64_t>(block_cols, w.cols - k0);
          const int64_t chunks = (cols + W - 1) / W;
          const bool tail = cols % W != 0;
          const int64_t pair_floats = decoded_pair_floats<V>(chunks);
          decode_block<V, ValueT>(w, 2 * pb, block_pairs, k0, cols, ws);
          for (int64_t b0 = 0; b0 < a.batch; b0 += kTile) {
            const int nb = int(std::min<int64_t>(kTile, a.batch - b0));
            const float* x[kTile];
            alignas(64) float x_tail[kTile][W] = {};
            for (int b = 0; b < nb; ++b) {
              x[b] = a.x_f32() + (b0 + b) * a.x_row_stride + k0;
              if (tail) std::memcpy(x_tail[b], x[b] + (chunks - 1) * W, size_t(cols % W) * 4);
            }
            constexpr int kPairs = V::tile_pairs;
            int np = kPairs;
            for (int64_t p = 0; p < block_pairs; p += np) {
              np = block_pairs - p >= kPairs ? kPairs : 1;  // leftover pairs one at a time
              float out[2 * kPairs][kTile];
              const float* tile_ws = ws + p * pair_floats;
              if (np == kPairs)
                batched_tile_any<V, kPairs>(nb, tile_ws, pair_floats, x, chunks, x_tail, tail, out);
              else
                batched_tile_any<V, 1>(nb, tile_ws, pair_floats, x, chunks, x_tail, tail, out);
              const int64_t r0 = 2 * (pb + p);
              const int rows = int(std::min<int64_t>(2 * np, w.rows - r0));
              for (int b = 0; b < nb; ++b) {
                float* y = a.y_f32() + (b0 + b) * w.rows + r0;
                for (int i = 0; i < rows; ++i) {
                  const float start = k0 > 0 ? y[i] : a.bias ? a.bias[r0 + i] : 0.f;
                  y[i] = start + out[i][b];
                }
              }
            }
          }
        }
      }
    }
  }
}

// ---- register path ---------------------------------------------------------------------------

// Batches of one register tile (up to kTile rows) use each decoded chunk once, so the batched
// path's round trip through the workspace buys nothing: the register path decodes each chunk
// of a tile's row pairs straight into registers and multiplies it by every activation row of
// the batch (tiles.nm24_register_batch_max says up to which batch; measured in tile_params.h).

// y[b0 .. b0 + NB) for the NP row pairs from r0, over all columns.
template <typename V, typename ValueT, int NP, int NB>
void register_tile(const Nm24Matrix& w, const DenseArgs& a, int64_t r0, int64_t b0, const float* const* x,
                   const float (*x_tail)[V::width]) {
  using reg = typename V::reg;
  using ireg = typename V::ireg;
  constexpr int W = V::width;
  const ireg base = pair_base<V>();
  reg acc[NP][NB];
  for (int p = 0; p < NP; ++p)
    for (int b = 0; b < NB; ++b) acc[p][b] = V::zero();
  auto chunk = [&](int64_t c, auto&& x_at) {
    reg vals[NP];
    ireg idx[NP];
    for (int p = 0; p < NP; ++p) decode_chunk<V, ValueT>(w, r0 + 2 * p, c * W, w.cols, base, &vals[p], &idx[p]);
    for (int b = 0; b < NB; ++b) {
      reg xv = V::loadu(x_at(b));
      keep_in_register(xv);
      for (int p = 0; p < NP; ++p) acc[p][b] = V::fmadd(vals[p], V::perm(idx[p], xv), acc[p][b]);
    }
  };
  const int64_t full = w.cols / W;
  for (int64_t c = 0; c < full; ++c) chunk(c, [&](int b) { return x[b] + c * W; });
  if (w.cols > full * W) chunk(full, [&](int b) { return x_tail[b]; });
  float out[2 * V::tile_pairs][kTile];
  reduce_pairs<V, NP, NB>(acc, out);
  const int rows = int(std::min<int64_t>(2 * NP, w.rows - r0));
  for (int b = 0; b < NB; ++b) {
    float* y = a.y_f32() + (b0 + b) * w.rows + r0;
    for (int i = 0; i < rows; ++i) y[i] = (a.bias ? a.bias[r0 + i] : 0.f) + out[i][b];
  }
}

// Pairs [p0, p1) for activation rows [b0, b0 + NB): whole tiles of V::tile_pairs, then one pair at a time.
template <typename V, typename ValueT, int NB>
void register_pairs(const Nm24Matrix& w, const DenseArgs& a, int64_t p0, int64_t p1, int64_t b0) {
  constexpr int W = V::width;
  constexpr int kPairs = V::tile_pairs;
  const int64_t tail_start = w.cols / W * W;
  const float* x[NB];
  // The tail's activations, zero-padded to W: zero values times garbage could make NaN.
  alignas(64) float x_tail[NB][W] = {};
  for (int b = 0; b < NB; ++b) {
    x[b] = a.x_f32() + (b0 + b) * a.x_row_stride;
    std::memcpy(x_tail[b], x[b] + tail_start, size_t(w.cols - tail_start) * 4);
  }
  int64_t p = p0;
  for (; p + kPairs <= p1; p += kPairs) register_tile<V, ValueT, kPairs, NB>(w, a, 2 * p, b0, x, x_tail);
  for (; p < p1; ++p) register_tile<V, ValueT, 1, NB>(w, a, 2 * p, b0, x, x_tail);
}

template <typename V, typename ValueT>
void registers(const Nm24Matrix& w, const DenseArgs& a) {
  const int64_t pairs = (w.rows + 1) / 2;
  const int parts = int(std::min<int64_t>(useful_threads(w.rows * w.cols / 2, a.batch, a.num_threads), pairs));
  static_assert(kTile == 8, "one case per tile height");
  auto run_part = [&](int part) {
    const int64_t p0 = pairs * part / parts, p1 = pairs * (part + 1) / parts;
    for (int64_t b0 = 0; b0 < a.batch; b0 += kTile) {
      switch (std::min<int64_t>(kTile, a.batch - b0)) {
        case 1: register_pairs<V, ValueT, 1>(w, a, p0, p1, b0); break;
        case 2: register_pairs<V, ValueT, 2>(w, a, p0, p1, b0); break;
        case 3: register_pairs<V, ValueT, 3>(w, a, p0, p1, b0); break;
        case 4: register_pairs<V, ValueT, 4>(w, a, p0, p1, b0); break;
        case 5: register_pairs<V, ValueT, 5>(w, a, p0, p1, b0); break;
        case 6: register_pairs<V, ValueT, 6>(w, a, p0, p1, b0); break;
        case 7: register_pairs<V, ValueT, 7>(w, a, p0, p1, b0); break;
        default: register_pairs<V, ValueT, 8>(w, a, p0, p1, b0); break;
      }
    }
  };
  run_parts(parts, run_part);
}

template <typename V>
void nm24_linear(const Nm24Matrix& w, const DenseArgs& a) {
  if (a.batch == 0 || w.rows == 0) return;
  auto run = [&](auto value) {
    using ValueT = decltype(value);
    if (a.batch >= kBatchedFrom && a.batch <= a.tiles.nm24_register_batch_max && w.cols > 0)
      registers<V, ValueT>(w, a);
    else if (a.batch >= kBatchedFrom && w.cols > 0)
      batched<V, ValueT>(w, a);
    else
      direct<V, ValueT>(w, a);
  };
  if (w.value_type == ValueType::f32) run(float{});
  else run(uint16_t{});
}

}  // namespace
}  // namespace sparsekern::cpu::nm24
