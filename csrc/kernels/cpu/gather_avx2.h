// Batch-1 building blocks shared by the AVX2 and AVX-512 variants (both translation units are
// compiled with AVX2 and FMA).
#pragma once

#include <immintrin.h>

#include <cstdint>

// Internal linkage on purpose: this header is compiled into translation units with
// different ISA flags, and one shared inline copy could carry AVX-512 code into the
// scalar path (the linker keeps any one of them).
namespace sparsekern::cpu {
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

}  // namespace
}  // namespace sparsekern::cpu
