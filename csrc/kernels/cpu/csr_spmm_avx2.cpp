// AVX2 variant (compiled with -mavx2 -mfma): 8 lanes; row tails take a scalar loop since
// AVX2 has no masked 16-bit loads.
#include <immintrin.h>

#include "csr_spmm_simd.h"
#include "gather_avx2.h"

namespace sparsekern::cpu {
namespace {

struct Avx2 {
  using reg = __m256;
  static constexpr int width = 8;
  static reg zero() { return _mm256_setzero_ps(); }
  static reg set1(float f) { return _mm256_set1_ps(f); }
  static reg load(const float* p) { return _mm256_load_ps(p); }
  static reg add(reg a, reg b) { return _mm256_add_ps(a, b); }
  static reg fmadd(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
  static void store(float* p, reg r) { _mm256_store_ps(p, r); }
  static reg loadu(const float* p) { return _mm256_loadu_ps(p); }
  static void storeu(float* p, reg r) { _mm256_storeu_ps(p, r); }

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

  static reg load_values(const float* p) { return _mm256_loadu_ps(p); }
  static reg load_values(const uint16_t* p) {
    const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
  }

  template <typename IndexT, typename ValueT>
  static float row_dot(const ValueT* values, const IndexT* cols, int64_t n, const float* x) {
    reg acc = zero();
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) acc = fmadd(load_values(values + j), gather8(x, cols + j), acc);
    float sum = sum8(acc);
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
