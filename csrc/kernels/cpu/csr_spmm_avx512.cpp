// AVX-512 variant (compiled with -mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma -mavx2):
// 16 lanes.
#include <immintrin.h>


#include "csr_spmm_simd.h"
#include "gather_avx2.h"

namespace sparsekern::cpu {
namespace {

struct Avx512 {
  using reg = __m512;
  static constexpr int width = 16;
  static reg zero() { return _mm512_setzero_ps(); }
  static reg set1(float f) { return _mm512_set1_ps(f); }
  static reg load(const float* p) { return _mm512_load_ps(p); }
  static reg add(reg a, reg b) { return _mm512_add_ps(a, b); }
  static reg fmadd(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
  static void store(float* p, reg r) { _mm512_store_ps(p, r); }
  static reg loadu(const float* p) { return _mm512_loadu_ps(p); }
  static void storeu(float* p, reg r) { _mm512_storeu_ps(p, r); }

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

  static reg load_values(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
  static reg load_values(const uint16_t* p, __mmask16 m) {
    const __m512i wide = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
  }

  // Nonzeros ahead to prefetch W: the scalar loads that build x's register fill the
  // out-of-order window, leaving few of W's own loads in flight. With W coming from DRAM
  // (4096 x 4096 at 50%, two threads) this is 12% faster; in hot cache 2-4% slower.
  // 1024 ahead helped DRAM a little more but cost 10% in hot cache.
  static constexpr int64_t kPrefetchAhead = 256;

  template <typename IndexT, typename ValueT>
  static float row_dot(const ValueT* values, const IndexT* cols, int64_t n, const float* x) {
    // One accumulator: building x's register takes longer than the FMA's latency.
    reg acc = zero();
    int64_t j = 0;
    for (; j + 16 <= n; j += 16) {
      _mm_prefetch(reinterpret_cast<const char*>(values + j + kPrefetchAhead), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(cols + j + kPrefetchAhead), _MM_HINT_T0);
      const reg xs = _mm512_insertf32x8(_mm512_castps256_ps512(gather8(x, cols + j)), gather8(x, cols + j + 8), 1);
      acc = fmadd(load_values(values + j, 0xFFFF), xs, acc);
    }
    // The tail by 8 lanes, then one at a time: a masked 16-lane tail costs 16 loads however
    // short it is (rows of 3072 x 768 at 90% have ~77 nonzeros: 25% slower that way).
    __m256 acc8 = _mm256_add_ps(_mm512_castps512_ps256(acc), _mm512_extractf32x8_ps(acc, 1));
    if (j + 8 <= n) {
      acc8 = _mm256_fmadd_ps(_mm512_castps512_ps256(load_values(values + j, 0xFF)), gather8(x, cols + j), acc8);
      j += 8;
    }
    float sum = sum8(acc8);
    for (; j < n; ++j) sum += value_at(values, j) * x[int64_t(cols[j])];
    return sum;
  }
};

}  // namespace

void csr_spmm_f32_avx512(const CsrMatrix& w, const DenseArgs& a) { simd::csr_spmm<Avx512>(w, a); }

int64_t csr_spmm_workspace_floats_avx512(int64_t batch, int64_t cols) {
  return simd::workspace_floats<Avx512>(batch, cols);
}

}  // namespace sparsekern::cpu
