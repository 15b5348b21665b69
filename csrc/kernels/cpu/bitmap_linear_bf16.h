// Bitmap with bf16 values and bf16 activations for batches from BitmapFamily::kBf16From, read
// natively with vdpbf16ps (bf16_pair_tiles.h): each row's set bits are decoded, a block of
// columns at a time as in the fp32 batched path (bitmap_linear_simd.h), into tile offsets,
// and its values go through them two at a time. Included only by
// bitmap_linear_avx512bf16.cpp.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "bf16_pair_tiles.h"
#include "bitmap_linear.h"
#include "bitmap_masks.h"

namespace sparsekern::cpu::bitmapbf16 {
namespace {

template <typename Tiles>
void product(const BitmapMatrix& w, const DenseArgs& a) {
  const auto* values = static_cast<const uint16_t*>(w.values);
  const int64_t words = bitmap_words(w.cols), decode_words = a.tiles.bitmap_decode_cols / 32;
  Tiles::batched(a, w.rows, w.cols, w.offsets, [&](int64_t r, const uint16_t* tile, float* out) {
    const uint32_t* bits = w.bits + r * words;
    const uint16_t* v = values + w.offsets[r];
    alignas(64) int32_t at[kMaxBitmapDecodeCols + 8];  // decode writes up to 8 past the last
    typename Tiles::RowSums sums;
    for (int64_t w0 = 0; w0 < words; w0 += decode_words) {
      const int64_t w1 = std::min(words, w0 + decode_words);
      int32_t* end = at;
      __m256i col0 = _mm256_set1_epi32(int32_t(32 * w0));
      for (int64_t k = w0; k < w1; ++k) {
        end = decode_word<Tiles::kShift>(bits[k], col0, end);
        col0 = _mm256_add_epi32(col0, _mm256_set1_epi32(32));
      }
      const int64_t n = end - at;
      sums.add(tile, v, n, [&](int64_t j) { return int64_t(at[j]); });
      v += n;
    }
    sums.store(out);
  });
}

inline void batched(const BitmapMatrix& w, const DenseArgs& a) {
  bf16tiles::with_lanes(a.batch, [&](auto tiles) { product<decltype(tiles)>(w, a); });
}

inline int64_t workspace_floats(const BitmapMatrix& w, int64_t batch) {
  return bf16tiles::workspace_floats(w.cols, batch);
}

}  // namespace
}  // namespace sparsekern::cpu::bitmapbf16
