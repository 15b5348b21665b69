// Plain C++ 2:4 product: the oracle the vectorized variants are tested against, and the
// fallback on CPUs without AVX2. Written for obviousness, not speed.
#include "bf16.h"
#include "nm24_linear.h"

namespace sparsekern::cpu {
namespace {

template <typename ValueT>
void nm24_linear_scalar_typed(const Nm24Matrix& w, const DenseArgs& a) {
  const auto* values = static_cast<const ValueT*>(w.values);
  const int64_t groups = w.cols / 4, meta_bytes = nm24_meta_bytes(w.cols);
#pragma omp parallel for num_threads(a.num_threads) schedule(static)
  for (int64_t r = 0; r < w.rows; ++r) {
    const ValueT* row_values = values + r * (w.cols / 2);
    const uint8_t* row_meta = w.meta + r * meta_bytes;
    for (int64_t b = 0; b < a.batch; ++b) {
      const float* x = a.x_f32() + b * a.x_row_stride;
      float sum = 0.f;
      for (int64_t g = 0; g < groups; ++g) {
        const int nibble = (row_meta[g / 2] >> (4 * (g % 2))) & 15;
        sum += value_at(row_values, 2 * g) * x[4 * g + (nibble & 3)];
        sum += value_at(row_values, 2 * g + 1) * x[4 * g + (nibble >> 2)];
      }
      a.y_f32()[b * w.rows + r] = a.bias ? sum + a.bias[r] : sum;
    }
  }
}

}  // namespace

template <>
void Nm24Family::run<Isa::scalar>(const Nm24Matrix& w, const DenseArgs& a) {
  if (w.value_type == ValueType::f32) nm24_linear_scalar_typed<float>(w, a);
  else nm24_linear_scalar_typed<uint16_t>(w, a);
}

template <>
int64_t Nm24Family::workspace_floats<Isa::scalar>(const Nm24Matrix&, int64_t, int) { return 0; }

}  // namespace sparsekern::cpu
