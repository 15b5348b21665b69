// The bitmap family's AVX2 variant (flags: isa_table.h): 8 lanes. Expands and
// decodes come from bitmap_masks.h's 256-entry tables: an expand is one vpermps of the next
// 8 values by the mask's lane indices and a blend that zeroes the lanes it does not keep.
#include <immintrin.h>

#include "bitmap_linear_simd.h"
#include "bitmap_masks.h"
#include "simd_avx2.h"

namespace sparsekern::cpu {
namespace {

struct BitmapAvx2 : simd::Avx2 {
  // Near the end of the values (not Safe) the n that exist go through a zeroed copy.
  template <bool Safe, typename ValueT>
  static reg expand(const ValueT* p, uint32_t m, int n) {
    reg packed;
    if (Safe) {
      packed = widen(p);
    } else {
      ValueT copy[8] = {};
      std::memcpy(copy, p, size_t(n) * sizeof(ValueT));
      packed = widen(copy);
    }
    const __m256i idx = _mm256_cvtepi8_epi32(load8(kMaskTables.expand[m]));
    return _mm256_blendv_ps(_mm256_permutevar8x32_ps(packed, idx), zero(), _mm256_castsi256_ps(idx));
  }

  template <int Shift>
  static int32_t* decode(uint32_t word, __m256i col0, int32_t* out) { return decode_word<Shift>(word, col0, out); }
};

}  // namespace

template <>
void BitmapFamily::run<Isa::avx2>(const BitmapMatrix& w, const DenseArgs& a) { bitmap::bitmap_linear<BitmapAvx2>(w, a); }

template <>
int64_t BitmapFamily::workspace_floats<Isa::avx2>(const BitmapMatrix& w, int64_t batch, int) {
  return bitmap::workspace_floats<BitmapAvx2>(batch, w.cols);
}

}  // namespace sparsekern::cpu
