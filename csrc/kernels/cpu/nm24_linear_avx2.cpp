// The 2:4 family's AVX2 variant (flags: isa_table.h): 8 lanes; select2 blends two vpermps.
#include "nm24_linear_simd.h"
#include "simd_avx2.h"

namespace sparsekern::cpu {
namespace {

struct Nm24Avx2 : simd::Avx2 {
  static constexpr int tile_pairs = 1;  // 8 accumulators and 3 more of the 16 ymm
};

}  // namespace

template <>
void Nm24Family::run<Isa::avx2>(const Nm24Matrix& w, const DenseArgs& a) { nm24::nm24_linear<Nm24Avx2>(w, a); }

template <>
int64_t Nm24Family::workspace_floats<Isa::avx2>(const Nm24Matrix&, int64_t batch, int num_threads) {
  return nm24::workspace_floats<Nm24Avx2>(batch, num_threads);
}

}  // namespace sparsekern::cpu
