// AVX-512 traits (16 float lanes) shared by every kernel family's AVX-512 variant; include
// only from translation units compiled with the avx512 flags of isa_table.h. The operations
// are those of simd_avx2.h (same names, same meaning, twice the lanes).
#pragma once

#include <immintrin.h>

#include <cstdint>

#include "simd_avx2.h"  // gather8, sum8: the AVX-512 TUs are compiled with AVX2 too

// gcc 12 flags its own AVX-512 intrinsics (their "undefined" pass-through operands) as
// uninitialized once inlined; the code here reads no uninitialized value.
#pragma GCC diagnostic ignored "-Wuninitialized"

// Internal linkage on purpose: see simd_avx2.h.
namespace sparsekern::cpu::simd {
namespace {

struct Avx512 {
  using reg = __m512;
  using ireg = __m512i;
  static constexpr int width = 16;
  static reg zero() { return _mm512_setzero_ps(); }
  static reg set1(float f) { return _mm512_set1_ps(f); }
  static reg load(const float* p) { return _mm512_load_ps(p); }
  static void store(float* p, reg r) { _mm512_store_ps(p, r); }
  static reg loadu(const float* p) { return _mm512_loadu_ps(p); }
  static void storeu(float* p, reg r) { _mm512_storeu_ps(p, r); }
  static ireg loadu_i(const void* p) { return _mm512_loadu_si512(p); }
  static void storeu_i(float* p, ireg r) { _mm512_storeu_si512(p, r); }
  static reg add(reg a, reg b) { return _mm512_add_ps(a, b); }
  static reg fmadd(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }

  static reg widen(const float* p) { return loadu(p); }
  static reg widen(const uint16_t* p) {
    const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
  }
  // The first lanes of m only (masked loads never touch memory past them).
  static reg widen_masked(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
  static reg widen_masked(const uint16_t* p, __mmask16 m) {
    const __m512i wide = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p));
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
    return sum8(_mm256_add_ps(_mm512_extractf32x8_ps(r, 0), _mm512_extractf32x8_ps(r, 1)));
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
  // out[8 * (b / 4) + 4 * h + b % 4] = sum of half h of a[b], for 8 registers.
  static void reduce_halves8(const reg (&a)[8], float (&out)[16]) {
    const reg u0 = sum_quarters(a[0], a[1], a[2], a[3]), u1 = sum_quarters(a[4], a[5], a[6], a[7]);
    // Half h of a register is quarters 2h and 2h + 1.
    const reg even = _mm512_shuffle_f32x4(u0, u1, _MM_SHUFFLE(2, 0, 2, 0));
    const reg odd = _mm512_shuffle_f32x4(u0, u1, _MM_SHUFFLE(3, 1, 3, 1));
    _mm512_storeu_ps(out, _mm512_add_ps(even, odd));
  }

  // 16 x 16: pairs of rows interleaved by 32 then 64 bits, which transposes each 4 x 4 block
  // within the 128-bit lanes; then the 128-bit lanes themselves, by two rounds of shuffles.
  static void transpose(reg (&r)[16]) {
    reg t[16];
    for (int i = 0; i < 16; i += 2) {
      t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
      t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4)
      for (int h = 0; h < 2; ++h) {
        const __m512d lo = _mm512_castps_pd(t[i + h]), hi = _mm512_castps_pd(t[i + h + 2]);
        r[i + 2 * h] = _mm512_castpd_ps(_mm512_unpacklo_pd(lo, hi));
        r[i + 2 * h + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(lo, hi));
      }
    for (int i = 0; i < 4; ++i) {
      t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
      t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xDD);
      t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
      t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xDD);
    }
    for (int i = 0; i < 8; ++i) {
      r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
      r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xDD);
    }
  }
};

}  // namespace
}  // namespace sparsekern::cpu::simd
