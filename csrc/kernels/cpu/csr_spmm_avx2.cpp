// AVX2 variant (compiled with -mavx2 -mfma): 8 lanes; row tails take a scalar loop since
// AVX2 has no masked 16-bit loads.
#include <immintrin.h>

#include "csr_spmm_simd.h"

namespace sparsekern::cpu {
namespace {

struct Avx2 {
  using reg = __m256;
  static constexpr int width = 8;
  static reg zero() { return _mm256_setzero_ps(); }
  static reg set1(float f) { return _mm256_set1_ps(f); }
  static reg load(const float* p) { return _mm256_load_ps(p); }
  static reg fmadd(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
  static void store(float* p, reg r) { _mm256_store_ps(p, r); }

  static __m256i load_cols(const uint16_t* p) {
    return _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static __m256i load_cols(const int32_t* p) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  }
  static reg load_values(const float* p) { return _mm256_loadu_ps(p); }
  static reg load_values(const uint16_t* p) {
    const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
  }

  template <typename IndexT, typename ValueT>
  static float row_dot(const ValueT* values, const IndexT* cols, int64_t n, const float* x) {
    reg acc0 = zero(), acc1 = zero();
    int64_t j = 0;
    for (; j + 16 <= n; j += 16) {
      acc0 = fmadd(load_values(values + j), _mm256_i32gather_ps(x, load_cols(cols + j), 4), acc0);
      acc1 = fmadd(load_values(values + j + 8), _mm256_i32gather_ps(x, load_cols(cols + j + 8), 4), acc1);
    }
    for (; j + 8 <= n; j += 8)
      acc0 = fmadd(load_values(values + j), _mm256_i32gather_ps(x, load_cols(cols + j), 4), acc0);
    const reg sum8 = _mm256_add_ps(acc0, acc1);
    __m128 sum4 = _mm_add_ps(_mm256_castps256_ps128(sum8), _mm256_extractf128_ps(sum8, 1));
    sum4 = _mm_add_ps(sum4, _mm_movehl_ps(sum4, sum4));
    sum4 = _mm_add_ss(sum4, _mm_movehdup_ps(sum4));
    float sum = _mm_cvtss_f32(sum4);
    for (; j < n; ++j) sum += value_at(values, j) * x[int64_t(cols[j])];
    return sum;
  }
};

}  // namespace

void csr_spmm_f32_avx2(const CsrMatrix& w, const DenseArgs& a) { simd::csr_spmm<Avx2>(w, a); }

int64_t csr_spmm_workspace_floats_avx2(int64_t batch, int64_t cols) {
  return simd::workspace_floats<Avx2>(batch, cols);
}

}  // namespace sparsekern::cpu
