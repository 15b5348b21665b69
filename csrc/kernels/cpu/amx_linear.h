// bf16 products on tile registers (Intel AMX, tdpbf16ps) for 2:4 and bitmap with bf16 values
// and activations, batches from the family's kAmxFrom: y = x @ W.T + bias, fp32 sums, y
// rounded to bf16.
//
// The tiles multiply dense blocks, so W is decompressed, 32 output rows by kChunkCols columns
// at a time, into B tiles in the thread's workspace (64 KiB: L2), and each B tile then serves
// every 16-row A tile of x: the sparsity saves the bytes read from memory, the tiles do the
// arithmetic. A B tile holds 16 output rows by 32 columns as tdpbf16ps wants them: row k is
// the 16 rows' pairs (W[n][2k], W[n][2k + 1]), i.e. the 16 x 16 transpose of the rows' 32
// columns viewed as pairs. The in-memory and saved formats stay the canonical ones.
//
// x is copied once per call into a zero-padded [batch rounded to 16][cols rounded to 32]
// bf16 buffer, so every A tile is whole. Tiles: C 0-3 (2 x 2 blocks of 16 x 16 sums), A 4-5,
// B 6-7; the sums go through the workspace between column chunks.
//
// Written against a Tiles interface (amx_tiles.h: the hardware; amx_tiles_emulated.h: plain
// C++, which the tests run on CPUs without AMX) and a Source that yields 32 columns of one
// row of W as 32 bf16 (Nm24Source, BitmapSource below). Needs AVX-512 with VBMI2 (vpexpandw)
// for the sources, which every AMX CPU has.
#pragma once

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "bf16.h"
#include "bitmap_expand_bf16.h"
#include "bitmap_linear.h"
#include "linear_args.h"
#include "nm24_linear.h"
#include "simd_avx512.h"
#include "work_split.h"

namespace sparsekern::cpu::amx {
namespace {

constexpr int64_t kStepRows = 32;     // output rows per step: two B tiles side by side
constexpr int64_t kChunkCols = 1024;  // columns decompressed per pass: 2 x 32 B tiles of 1 KiB
constexpr int64_t kTileFloats = 256;  // one tile: 16 rows of 64 bytes
constexpr int64_t kChunkTileFloats = kChunkCols / 32 * 2 * kTileFloats;

inline int64_t round_up(int64_t n, int64_t to) { return (n + to - 1) / to * to; }

// Where everything sits in the workspace: the padded x, then per thread its B tiles and its
// sums (batch rounded to 16 rows of 32 floats).
struct Shape {
  int64_t batch_rows, cols;  // x padded: whole A tiles
  int64_t x_floats, part_floats;
  Shape(int64_t batch, int64_t c)
      : batch_rows(round_up(batch, 16)),
        cols(round_up(c, 32)),
        x_floats(round_up(batch_rows * cols / 2, 16)),
        part_floats(kChunkTileFloats + batch_rows * kStepRows) {}
};

inline int64_t workspace_floats(int64_t cols, int64_t batch, int num_threads) {
  const Shape s(batch, cols);
  return s.x_floats + std::max(num_threads, 1) * s.part_floats;
}

// Rows [b0, b1) of the padded x.
inline void pack_x(const DenseArgs& a, int64_t cols, const Shape& s, uint16_t* x_pad, int64_t b0, int64_t b1) {
  const auto* x = static_cast<const uint16_t*>(a.x);
  for (int64_t b = b0; b < b1; ++b) {
    uint16_t* dst = x_pad + b * s.cols;
    const int64_t kept = b < a.batch ? cols : 0;
    if (kept) std::memcpy(dst, x + b * a.x_row_stride, size_t(kept) * 2);
    std::memset(dst + kept, 0, size_t(s.cols - kept) * 2);
  }
}

// 2:4: a row's 32 columns from c0 are 8 groups, 16 values and 8 nibbles; the nibbles make a
// 32-bit mask of the kept columns and vpexpandw puts the values there.
struct Nm24Source {
  const uint16_t* values;
  const uint8_t* meta;
  int64_t cols, meta_bytes;
  explicit Nm24Source(const Nm24Matrix& w)
      : values(static_cast<const uint16_t*>(w.values)),
        meta(w.meta),
        cols(w.cols),
        meta_bytes(nm24_meta_bytes(w.cols)) {}

  void start(int64_t /*first row*/, int64_t /*rows*/) {}

  __m512i row32(int /*i*/, int64_t r, int64_t c0) const {
    const int64_t groups = std::min<int64_t>(8, (cols - c0) / 4);
    if (groups <= 0) return _mm512_setzero_si512();
    const uint8_t* m = meta + r * meta_bytes + c0 / 8;  // c0 % 32 == 0: group c0 / 4 starts a byte
    uint32_t kept = 0;
    for (int64_t g = 0; g < groups; ++g) {
      const uint32_t nibble = (m[g / 2] >> (4 * (g % 2))) & 15u;
      kept |= ((1u << (nibble & 3u)) | (1u << (nibble >> 2))) << (4 * g);
    }
    const __m512i v = _mm512_maskz_loadu_epi16(__mmask32((1u << (2 * groups)) - 1), values + r * (cols / 2) + c0 / 2);
    return _mm512_maskz_expand_epi16(__mmask32(kept), v);
  }
};

// Bitmap: word c0 / 32 of the row, expanded as the native bf16 path expands it
// (bitmap_expand_bf16.h); the row's values are read in order, so each of a step's rows keeps
// its place in the values (the columns go left to right).
struct BitmapSource {
  const uint32_t* bits;
  const int64_t* offsets;
  const uint16_t* values;
  const uint16_t* end;  // of all values
  int64_t words;
  const uint16_t* next[kStepRows] = {};
  explicit BitmapSource(const BitmapMatrix& w)
      : bits(w.bits),
        offsets(w.offsets),
        values(static_cast<const uint16_t*>(w.values)),
        end(values + w.offsets[w.rows]),
        words(bitmap_words(w.cols)) {}

  void start(int64_t r0, int64_t rows) {
    for (int64_t i = 0; i < kStepRows; ++i) next[i] = r0 + i < rows ? values + offsets[r0 + i] : nullptr;
  }

  __m512i row32(int i, int64_t r, int64_t c0) {
    const int64_t k = c0 / 32;
    if (k >= words) return _mm512_setzero_si512();
    const uint32_t m = bits[r * words + k];
    const __m512i v = ExpandVbmi2::word(m, next[i], end);
    next[i] += __builtin_popcount(m);
    return v;
  }
};

// The B tiles of output rows [r0, r0 + 32) and columns [c0, c1): tile 2t + h holds rows
// r0 + 16h .. and columns c0 + 32t ..; rows past `rows` are zero.
template <typename Source>
void decompress(Source& src, int64_t rows, int64_t r0, int64_t c0, int64_t c1, float* b_tiles) {
  for (int64_t c = c0, t = 0; c < c1; c += 32, ++t)
    for (int h = 0; h < 2; ++h) {
      __m512 pairs[16];
      for (int n = 0; n < 16; ++n) {
        const int64_t r = r0 + 16 * h + n;
        pairs[n] = r < rows ? _mm512_castsi512_ps(src.row32(16 * h + n, r, c)) : _mm512_setzero_ps();
      }
      simd::Avx512::transpose(pairs);  // row k: every output row's pair k
      float* tile = b_tiles + (2 * t + h) * kTileFloats;
      for (int k = 0; k < 16; ++k) _mm512_store_ps(tile + 16 * k, pairs[k]);
    }
}

// Sums of x rows [m0, m0 + 16 or 32) with the step's 32 output rows over columns [c0, c1),
// added to `sums` ([batch_rows][32] floats; `first` starts them at zero).
template <typename Tiles, bool TwoA>
void multiply(const uint16_t* x_pad, const Shape& s, int64_t m0, int64_t c0, int64_t c1, const float* b_tiles,
              float* sums, bool first) {
  constexpr int64_t kSumStride = kStepRows * 4;  // bytes
  float* c = sums + m0 * kStepRows;
  float* c_low = c + 16 * kStepRows;  // x rows m0 + 16 ..
  if (first) {
    Tiles::template zero<0>();
    Tiles::template zero<1>();
    if constexpr (TwoA) {
      Tiles::template zero<2>();
      Tiles::template zero<3>();
    }
  } else {
    Tiles::template load<0>(c, kSumStride);
    Tiles::template load<1>(c + 16, kSumStride);
    if constexpr (TwoA) {
      Tiles::template load<2>(c_low, kSumStride);
      Tiles::template load<3>(c_low + 16, kSumStride);
    }
  }
  const int64_t x_stride = s.cols * 2;  // bytes
  for (int64_t k = c0, t = 0; k < c1; k += 32, ++t) {
    Tiles::template load<4>(x_pad + m0 * s.cols + k, x_stride);
    if constexpr (TwoA) Tiles::template load<5>(x_pad + (m0 + 16) * s.cols + k, x_stride);
    Tiles::template load<6>(b_tiles + 2 * t * kTileFloats, 64);
    Tiles::template load<7>(b_tiles + (2 * t + 1) * kTileFloats, 64);
    Tiles::template dot<0, 4, 6>();
    Tiles::template dot<1, 4, 7>();
    if constexpr (TwoA) {
      Tiles::template dot<2, 5, 6>();
      Tiles::template dot<3, 5, 7>();
    }
  }
  Tiles::template store<0>(c, kSumStride);
  Tiles::template store<1>(c + 16, kSumStride);
  if constexpr (TwoA) {
    Tiles::template store<2>(c_low, kSumStride);
    Tiles::template store<3>(c_low + 16, kSumStride);
  }
}

// The whole product. Threads copy x together, then take steps of 32 output rows.
template <typename Tiles, typename Source>
void linear(const Source& source, int64_t rows, int64_t cols, const DenseArgs& a) {
  const Shape s(a.batch, cols);
  auto* x_pad = reinterpret_cast<uint16_t*>(a.workspace);
  const int64_t steps = (rows + kStepRows - 1) / kStepRows;
  const int parts = int(std::min<int64_t>(steps, useful_threads(rows * cols / 2, a.batch, a.num_threads)));
#pragma omp parallel num_threads(parts) if (parts > 1)
  {
    const int team = omp_get_num_threads(), part = omp_get_thread_num();
    pack_x(a, cols, s, x_pad, s.batch_rows * part / team, s.batch_rows * (part + 1) / team);
#pragma omp barrier
    float* b_tiles = a.workspace + s.x_floats + part * s.part_floats;
    float* sums = b_tiles + kChunkTileFloats;
    Source src = source;
    Tiles::configure();
    for (int64_t step = steps * part / team; step < steps * (part + 1) / team; ++step) {
      const int64_t r0 = step * kStepRows;
      src.start(r0, rows);
      if (s.cols == 0) std::fill(sums, sums + s.batch_rows * kStepRows, 0.f);  // no columns: y is the bias
      for (int64_t c0 = 0; c0 < s.cols; c0 += kChunkCols) {
        const int64_t c1 = std::min(s.cols, c0 + kChunkCols);
        decompress(src, rows, r0, c0, c1, b_tiles);
        for (int64_t m0 = 0; m0 < s.batch_rows; m0 += 32) {
          if (m0 + 16 < s.batch_rows) multiply<Tiles, true>(x_pad, s, m0, c0, c1, b_tiles, sums, c0 == 0);
          else multiply<Tiles, false>(x_pad, s, m0, c0, c1, b_tiles, sums, c0 == 0);
        }
      }
      store_bf16_rows(a, rows, 0, a.batch, r0, std::min(kStepRows, rows - r0), sums, 1, kStepRows);
    }
    Tiles::release();
  }
}

}  // namespace
}  // namespace sparsekern::cpu::amx
