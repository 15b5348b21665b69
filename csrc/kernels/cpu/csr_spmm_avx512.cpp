// AVX-512 variant (compiled with -mavx512f -mavx512bw -mavx512vl -mfma): 16 lanes, masked
// loads for row tails so short rows pay no scalar loop.
#include <immintrin.h>

#include "csr_spmm_simd.h"

namespace sparsekern::cpu {
namespace {

struct Avx512 {
  using reg = __m512;
  static constexpr int width = 16;
  static reg zero() { return _mm512_setzero_ps(); }
  static reg set1(float f) { return _mm512_set1_ps(f); }
  static reg load(const float* p) { return _mm512_load_ps(p); }
  static reg fmadd(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
  static void store(float* p, reg r) { _mm512_store_ps(p, r); }

  static __m512i load_cols(const uint16_t* p, __mmask16 m) {
    return _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p));
  }
  static __m512i load_cols(const int32_t* p, __mmask16 m) { return _mm512_maskz_loadu_epi32(m, p); }
  static reg load_values(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
  static reg load_values(const uint16_t* p, __mmask16 m) {
    const __m512i wide = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
  }

  template <typename IndexT, typename ValueT>
  static float row_dot(const ValueT* values, const IndexT* cols, int64_t n, const float* x) {
    // Two accumulators hide the FMA latency behind the gathers.
    reg acc0 = zero(), acc1 = zero();
    const __mmask16 all = 0xFFFF;
    int64_t j = 0;
    for (; j + 32 <= n; j += 32) {
      const __m512i c0 = load_cols(cols + j, all), c1 = load_cols(cols + j + 16, all);
      acc0 = fmadd(load_values(values + j, all), _mm512_i32gather_ps(c0, x, 4), acc0);
      acc1 = fmadd(load_values(values + j + 16, all), _mm512_i32gather_ps(c1, x, 4), acc1);
    }
    for (; j < n; j += 16) {
      const __mmask16 m = n - j >= 16 ? all : __mmask16((1u << (n - j)) - 1);
      const __m512i c = load_cols(cols + j, m);
      const reg xs = _mm512_mask_i32gather_ps(zero(), m, c, x, 4);
      acc0 = fmadd(load_values(values + j, m), xs, acc0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
  }
};

}  // namespace

void csr_spmm_f32_avx512(const CsrMatrix& w, const DenseArgs& a) { simd::csr_spmm<Avx512>(w, a); }

int64_t csr_spmm_workspace_floats_avx512(int64_t batch, int64_t cols) {
  return simd::workspace_floats<Avx512>(batch, cols);
}

}  // namespace sparsekern::cpu
