// AVX-512 variant of the 2:4 product (compiled with -mavx512f -mavx512bw -mavx512vl
// -mavx512dq -mfma): 16 lanes; select2 is one vpermt2ps over 32 columns.
#include <immintrin.h>

#include "nm24_linear_simd.h"

// gcc 12 flags its own AVX-512 intrinsics (their "undefined" pass-through operands) as
// uninitialized once inlined; the code here reads no uninitialized value.
#pragma GCC diagnostic ignored "-Wuninitialized"

namespace sparsekern::cpu {
namespace {

struct Avx512 {
  using reg = __m512;
  using ireg = __m512i;
  static constexpr int tile_pairs = 3;  // 3 x 8 accumulators and 7 more of the 32 zmm
  static constexpr int width = 16;
  static reg zero() { return _mm512_setzero_ps(); }
  static reg loadu(const float* p) { return _mm512_loadu_ps(p); }
  static ireg loadu_i(const void* p) { return _mm512_loadu_si512(p); }
  static void storeu_i(float* p, ireg r) { _mm512_storeu_si512(p, r); }
  static reg fmadd(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
  static void storeu(float* p, reg r) { _mm512_storeu_ps(p, r); }
  static reg widen(const float* p) { return loadu(p); }
  static reg widen(const uint16_t* p) {
    const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
  }
  static reg widen_halves(const float* lo, const float* hi) {
    return _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_loadu_ps(lo)), _mm256_loadu_ps(hi), 1);
  }
  static reg widen_halves(const uint16_t* lo, const uint16_t* hi) {
    const __m256i both = _mm256_inserti128_si256(
        _mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(lo))),
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(hi)), 1);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(both), 16));
  }
  static reg perm(ireg idx, reg x) { return _mm512_permutexvar_ps(idx, x); }
  static reg select2(reg x0, reg x1, ireg idx) { return _mm512_permutex2var_ps(x0, idx, x1); }
  static ireg positions(uint32_t word, ireg base) {
    const ireg shifts = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const ireg fields = _mm512_and_si512(_mm512_srlv_epi32(_mm512_set1_epi32(int(word)), shifts),
                                         _mm512_set1_epi32(3));
    return _mm512_add_epi32(fields, base);
  }
  static float reduce(reg r) {
    const __m256 v = _mm256_add_ps(_mm512_extractf32x8_ps(r, 0), _mm512_extractf32x8_ps(r, 1));
    const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)));
  }
  // Sums of 4 registers within each 128-bit quarter: quarter q of the result holds, in lane
  // i, the sum of quarter q of a[i]. Two rounds of interleave-and-add, 9 operations.
  static reg sum_quarters(reg a0, reg a1, reg a2, reg a3) {
    const reg s = _mm512_add_ps(_mm512_unpacklo_ps(a0, a1), _mm512_unpackhi_ps(a0, a1));
    const reg t = _mm512_add_ps(_mm512_unpacklo_ps(a2, a3), _mm512_unpackhi_ps(a2, a3));
    const __m512d sd = _mm512_castps_pd(s), td = _mm512_castps_pd(t);
    return _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(sd, td)),
                         _mm512_castpd_ps(_mm512_unpackhi_pd(sd, td)));
  }
  static void reduce_halves8(const reg (&a)[8], float (&out)[16]) {
    const reg u0 = sum_quarters(a[0], a[1], a[2], a[3]), u1 = sum_quarters(a[4], a[5], a[6], a[7]);
    // Half h of a register is quarters 2h and 2h + 1.
    const reg even = _mm512_shuffle_f32x4(u0, u1, _MM_SHUFFLE(2, 0, 2, 0));
    const reg odd = _mm512_shuffle_f32x4(u0, u1, _MM_SHUFFLE(3, 1, 3, 1));
    _mm512_storeu_ps(out, _mm512_add_ps(even, odd));
  }
};

}  // namespace

void nm24_linear_f32_avx512(const Nm24Matrix& w, const DenseArgs& a) { nm24::nm24_linear<Avx512>(w, a); }

int64_t nm24_linear_workspace_floats_avx512(int64_t batch, int num_threads) {
  return nm24::workspace_floats<Avx512>(batch, num_threads);
}

}  // namespace sparsekern::cpu
