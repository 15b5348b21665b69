// AVX2 variant of the 2:4 product (compiled with -mavx2 -mfma): 8 lanes; select2 blends two
// vpermps, since a row's first 4 values lie in the first 8 columns and the next 4 in the next.
#include <immintrin.h>

#include "nm24_linear_simd.h"

namespace sparsekern::cpu {
namespace {

struct Avx2 {
  using reg = __m256;
  using ireg = __m256i;
  static constexpr int tile_pairs = 1;  // 8 accumulators and 3 more of the 16 ymm
  static constexpr int width = 8;
  static reg zero() { return _mm256_setzero_ps(); }
  static reg loadu(const float* p) { return _mm256_loadu_ps(p); }
  static ireg loadu_i(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
  static void storeu_i(float* p, ireg r) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), r); }
  static reg fmadd(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
  static void storeu(float* p, reg r) { _mm256_storeu_ps(p, r); }
  static reg widen(const float* p) { return loadu(p); }
  static reg widen(const uint16_t* p) {
    const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
  }
  static reg widen_halves(const float* lo, const float* hi) {
    return _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(lo)), _mm_loadu_ps(hi), 1);
  }
  static reg widen_halves(const uint16_t* lo, const uint16_t* hi) {
    const __m128i both = _mm_unpacklo_epi64(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(lo)),
                                            _mm_loadl_epi64(reinterpret_cast<const __m128i*>(hi)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(both), 16));
  }
  static reg perm(ireg idx, reg x) { return _mm256_permutevar8x32_ps(x, idx); }
  static reg select2(reg x0, reg x1, ireg idx) {
    return _mm256_blend_ps(perm(idx, x0), perm(idx, x1), 0xF0);
  }
  static ireg positions(uint32_t word, ireg base) {
    const ireg shifts = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
    const ireg fields = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(int(word)), shifts),
                                         _mm256_set1_epi32(3));
    return _mm256_add_epi32(fields, base);
  }
  static float reduce(reg r) {
    const __m128 s = _mm_add_ps(_mm256_castps256_ps128(r), _mm256_extractf128_ps(r, 1));
    const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)));
  }
  // Sums of 4 registers within each 128-bit half: half h of the result holds, in lane i, the
  // sum of half h of a[i]. Two rounds of interleave-and-add, 9 operations.
  static reg sum_halves(reg a0, reg a1, reg a2, reg a3) {
    const reg s = _mm256_add_ps(_mm256_unpacklo_ps(a0, a1), _mm256_unpackhi_ps(a0, a1));
    const reg t = _mm256_add_ps(_mm256_unpacklo_ps(a2, a3), _mm256_unpackhi_ps(a2, a3));
    const __m256d sd = _mm256_castps_pd(s), td = _mm256_castps_pd(t);
    return _mm256_add_ps(_mm256_castpd_ps(_mm256_unpacklo_pd(sd, td)),
                         _mm256_castpd_ps(_mm256_unpackhi_pd(sd, td)));
  }
  static void reduce_halves8(const reg (&a)[8], float (&out)[16]) {
    _mm256_storeu_ps(out, sum_halves(a[0], a[1], a[2], a[3]));
    _mm256_storeu_ps(out + 8, sum_halves(a[4], a[5], a[6], a[7]));
  }
};

}  // namespace

void nm24_linear_f32_avx2(const Nm24Matrix& w, const DenseArgs& a) { nm24::nm24_linear<Avx2>(w, a); }

int64_t nm24_linear_workspace_floats_avx2(int64_t batch, int num_threads) {
  return nm24::workspace_floats<Avx2>(batch, num_threads);
}

}  // namespace sparsekern::cpu
