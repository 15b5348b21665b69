// Plain C++ bitmap product: the oracle the vectorized variants are tested against, and the
// fallback on CPUs without AVX2. Written for obviousness, not speed.
#include "bf16.h"
#include "bitmap_linear.h"

namespace sparsekern::cpu {
namespace {

template <typename ValueT>
void bitmap_linear_scalar_typed(const BitmapMatrix& w, const DenseArgs& a) {
  const auto* values = static_cast<const ValueT*>(w.values);
  const int64_t words = bitmap_words(w.cols);
#pragma omp parallel for num_threads(a.num_threads) schedule(static)
  for (int64_t r = 0; r < w.rows; ++r) {
    for (int64_t b = 0; b < a.batch; ++b) {
      const float* x = a.x_f32() + b * a.x_row_stride;
      int64_t j = w.offsets[r];
      float sum = 0.f;
      for (int64_t k = 0; k < w.cols; ++k)
        if ((w.bits[r * words + k / 32] >> (k % 32)) & 1u) sum += value_at(values, j++) * x[k];
      a.y_f32()[b * w.rows + r] = a.bias ? sum + a.bias[r] : sum;
    }
  }
}

}  // namespace

template <>
void BitmapFamily::run<Isa::scalar>(const BitmapMatrix& w, const DenseArgs& a) {
  if (w.value_type == ValueType::f32) bitmap_linear_scalar_typed<float>(w, a);
  else bitmap_linear_scalar_typed<uint16_t>(w, a);
}

template <>
int64_t BitmapFamily::workspace_floats<Isa::scalar>(const BitmapMatrix&, int64_t, int) { return 0; }

}  // namespace sparsekern::cpu
