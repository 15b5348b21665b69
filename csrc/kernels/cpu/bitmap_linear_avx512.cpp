// The bitmap family's AVX-512 variant (flags: isa_table.h): 16 lanes. Expands are table
// lookups and a vpermt2ps, not vexpandps (bitmap_masks.h says why); bf16 values are widened
// to fp32 first.
#include <immintrin.h>

#include "bitmap_linear_simd.h"
#include "bitmap_masks.h"
#include "simd_avx512.h"

namespace sparsekern::cpu {
namespace {

struct BitmapAvx512 : simd::Avx512 {
  // The 16 lane indices of m from two table rows and a byte add (bitmap_masks.h), then one
  // two-source permute that takes the lanes m does not keep from a zero register. Near the
  // end of the values, a masked load of the n that exist.
  template <bool Safe, typename ValueT>
  static reg expand(const ValueT* p, uint32_t m, int n) {
    const reg packed = Safe ? widen(p) : widen_masked(p, __mmask16((1u << n) - 1));
    const __m128i lo = _mm_loadu_si128(reinterpret_cast<const __m128i*>(kMaskTables.expand16_lo[m & 0xFFu].data()));
    const __m128i hi = _mm_loadu_si128(reinterpret_cast<const __m128i*>(kMaskTables.expand16_hi[m >> 8].data()));
    const __m512i idx = _mm512_cvtepu8_epi32(_mm_add_epi8(lo, hi));
    return _mm512_permutex2var_ps(packed, idx, _mm512_setzero_ps());
  }

  template <int Shift>
  static int32_t* decode(uint32_t word, __m256i col0, int32_t* out) { return decode_word<Shift>(word, col0, out); }
};

}  // namespace

template <>
void BitmapFamily::run<Isa::avx512>(const BitmapMatrix& w, const DenseArgs& a) {
  bitmap::bitmap_linear<BitmapAvx512>(w, a);
}

template <>
int64_t BitmapFamily::workspace_floats<Isa::avx512>(const BitmapMatrix& w, int64_t batch, int) {
  return bitmap::workspace_floats<BitmapAvx512>(batch, w.cols);
}

}  // namespace sparsekern::cpu
