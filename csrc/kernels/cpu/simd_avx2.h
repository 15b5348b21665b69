// AVX2 traits (8 float lanes) shared by every kernel family's AVX2 variant; include only from
// translation units compiled with the avx2 flags of isa_table.h. A family adds what only it
// needs by deriving (e.g. the CSR batch-1 dot product).
//
//   reg / ireg, width; zero, set1, load / store (64-byte aligned), loadu / storeu, loadu_i /
//   storeu_i, add, fmadd; widen(p): width values (float or bf16 bits) as floats;
//   widen_halves(lo, hi): width/2 values from each; perm(idx, x): lane j = x[idx[j]];
//   select2(x0, x1, idx): lane j = (x0 ++ x1)[idx[j]]; positions(word, base): lane j =
//   ((word >> 2j) & 3) + base[j]; reduce(r): sum of lanes; reduce_halves8(a, out): see below;
//   transpose(r[width]): r[i] lane j becomes r[j] lane i.
#pragma once

#include <immintrin.h>

#include <cstdint>

// Internal linkage on purpose: this header is compiled into translation units with
// different ISA flags, and one shared inline copy could carry AVX-512 code into the
// scalar path (the linker keeps any one of them).
namespace sparsekern::cpu::simd {
namespace {

// x[c[0]], ..., x[c[7]] in one register, from eight scalar loads and a few inserts. Zen 4 runs
// three loads a cycle but takes about 21 cycles for a 16-lane vgatherdps: this is about 1.6x
// faster per nonzero there (0.25 against 0.40 ns per nonzero per core, hot cache).
template <typename IndexT>
inline __m256 gather8(const float* x, const IndexT* c) {
  return _mm256_set_m128(_mm_setr_ps(x[c[4]], x[c[5]], x[c[6]], x[c[7]]),
                         _mm_setr_ps(x[c[0]], x[c[1]], x[c[2]], x[c[3]]));
}

inline float sum8(__m256 v) {
  __m128 sum4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  sum4 = _mm_add_ps(sum4, _mm_movehl_ps(sum4, sum4));
  sum4 = _mm_add_ss(sum4, _mm_movehdup_ps(sum4));
  return _mm_cvtss_f32(sum4);
}

struct Avx2 {
  using reg = __m256;
  using ireg = __m256i;
  static constexpr int width = 8;
  static reg zero() { return _mm256_setzero_ps(); }
  static reg set1(float f) { return _mm256_set1_ps(f); }
  static reg load(const float* p) { return _mm256_load_ps(p); }
  static void store(float* p, reg r) { _mm256_store_ps(p, r); }
  static reg loadu(const float* p) { return _mm256_loadu_ps(p); }
  static void storeu(float* p, reg r) { _mm256_storeu_ps(p, r); }
  static ireg loadu_i(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
  static void storeu_i(float* p, ireg r) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), r); }
  static reg add(reg a, reg b) { return _mm256_add_ps(a, b); }
  static reg fmadd(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }

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
  // A row's first 4 values lie in the first 8 columns and the next 4 in the next: blend two
  // vpermps.
  static reg select2(reg x0, reg x1, ireg idx) { return _mm256_blend_ps(perm(idx, x0), perm(idx, x1), 0xF0); }
  static ireg positions(uint32_t word, ireg base) {
    const ireg shifts = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
    const ireg fields = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(int(word)), shifts),
                                         _mm256_set1_epi32(3));
    return _mm256_add_epi32(fields, base);
  }

  static float reduce(reg r) { return sum8(r); }
  // Sums of 4 registers within each 128-bit half: half h of the result holds, in lane i, the
  // sum of half h of a[i]. Two rounds of interleave-and-add, 9 operations.
  static reg sum_halves(reg a0, reg a1, reg a2, reg a3) {
    const reg s = _mm256_add_ps(_mm256_unpacklo_ps(a0, a1), _mm256_unpackhi_ps(a0, a1));
    const reg t = _mm256_add_ps(_mm256_unpacklo_ps(a2, a3), _mm256_unpackhi_ps(a2, a3));
    const __m256d sd = _mm256_castps_pd(s), td = _mm256_castps_pd(t);
    return _mm256_add_ps(_mm256_castpd_ps(_mm256_unpacklo_pd(sd, td)),
                         _mm256_castpd_ps(_mm256_unpackhi_pd(sd, td)));
  }
  // out[8 * (b / 4) + 4 * h + b % 4] = sum of half h of a[b], for 8 registers.
  static void reduce_halves8(const reg (&a)[8], float (&out)[16]) {
    _mm256_storeu_ps(out, sum_halves(a[0], a[1], a[2], a[3]));
    _mm256_storeu_ps(out + 8, sum_halves(a[4], a[5], a[6], a[7]));
  }

  // 8 x 8: 4 x 4 blocks within the 128-bit halves by unpack and shuffle, then the halves.
  static void transpose(reg (&r)[8]) {
    reg t[8];
    for (int i = 0; i < 8; i += 2) {
      t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
      t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
      r[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
      r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
      r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
      r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    for (int i = 0; i < 4; ++i) {
      t[i] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x20);
      t[i + 4] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x31);
    }
    for (int i = 0; i < 8; ++i) r[i] = t[i];
  }
};

}  // namespace
}  // namespace sparsekern::cpu::simd
