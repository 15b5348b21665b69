// Plain C++ CSR product: the oracle the vectorized variants are tested against, and the
// fallback on CPUs without AVX2. Written for obviousness, not speed.
#include "bf16.h"
#include "csr_spmm.h"
#include "dispatch_types.h"
#include "work_split.h"

namespace sparsekern::cpu {
namespace {

template <typename IndexT, typename ValueT>
void csr_spmm_scalar_typed(const CsrMatrix& w, const DenseArgs& a) {
  const auto* cols = static_cast<const IndexT*>(w.col_idx);
  const auto* values = static_cast<const ValueT*>(w.values);
  const int parts = useful_threads(w.row_ptr[w.rows], a.batch, a.num_threads);
#pragma omp parallel for num_threads(parts) schedule(static, 1) if (parts > 1)
  for (int part = 0; part < parts; ++part) {
    const int64_t r0 = nnz_balanced_row(w.row_ptr, w.rows, part, parts);
    const int64_t r1 = nnz_balanced_row(w.row_ptr, w.rows, part + 1, parts);
    for (int64_t b = 0; b < a.batch; ++b) {
      const float* x = a.x_f32() + b * a.x_row_stride;
      float* y = a.y_f32() + b * w.rows;
      for (int64_t r = r0; r < r1; ++r) {
        float sum = 0.f;
        for (int64_t j = w.row_ptr[r]; j < w.row_ptr[r + 1]; ++j)
          sum += value_at(values, j) * x[int64_t(cols[j])];
        y[r] = a.bias ? sum + a.bias[r] : sum;
      }
    }
  }
}

}  // namespace

template <>
void CsrFamily::run<Isa::scalar>(const CsrMatrix& w, const DenseArgs& a) {
  dispatch_types(w, [&](auto index, auto value) {
    csr_spmm_scalar_typed<decltype(index), decltype(value)>(w, a);
  });
}

template <>
int64_t CsrFamily::workspace_floats<Isa::scalar>(const CsrMatrix&, int64_t, int) { return 0; }

}  // namespace sparsekern::cpu
