// The CSR family's AVX2 variant (flags: isa_table.h): 8 lanes; row tails take a scalar loop
// since AVX2 has no masked 16-bit loads.
#include "csr_spmm_simd.h"
#include "simd_avx2.h"

namespace sparsekern::cpu {
namespace {

struct CsrAvx2 : simd::Avx2 {
  // sum_j values[j] * x[cols[j]] (batch 1).
  template <typename IndexT, typename ValueT>
  static float row_dot(const ValueT* values, const IndexT* cols, int64_t n, const float* x) {
    reg acc = zero();
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) acc = fmadd(widen(values + j), simd::gather8(x, cols + j), acc);
    float sum = simd::sum8(acc);
    for (; j < n; ++j) sum += value_at(values, j) * x[int64_t(cols[j])];
    return sum;
  }
};

}  // namespace

template <>
void CsrFamily::run<Isa::avx2>(const CsrMatrix& w, const DenseArgs& a) { simd::csr_spmm<CsrAvx2>(w, a); }

template <>
int64_t CsrFamily::workspace_floats<Isa::avx2>(const CsrMatrix& w, int64_t batch, int) {
  return simd::workspace_floats<CsrAvx2>(batch, w.cols);
}

}  // namespace sparsekern::cpu
