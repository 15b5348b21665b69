// The 2:4 family's AVX-512 variant (flags: isa_table.h): 16 lanes; select2 is one vpermt2ps
// over 32 columns.
#include "nm24_linear_simd.h"
#include "simd_avx512.h"

namespace sparsekern::cpu {
namespace {

struct Nm24Avx512 : simd::Avx512 {
  static constexpr int tile_pairs = 3;  // 3 x 8 accumulators and 7 more of the 32 zmm
};

}  // namespace

template <>
void Nm24Family::run<Isa::avx512>(const Nm24Matrix& w, const DenseArgs& a) { nm24::nm24_linear<Nm24Avx512>(w, a); }

template <>
int64_t Nm24Family::workspace_floats<Isa::avx512>(const Nm24Matrix&, int64_t batch, int num_threads) {
  return nm24::workspace_floats<Nm24Avx512>(batch, num_threads);
}

}  // namespace sparsekern::cpu
