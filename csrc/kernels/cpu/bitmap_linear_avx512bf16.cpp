// The Bitmap family's avx512bf16 variant: the avx512 code as it is (bf16 activations are
// widened by the dispatch, see BitmapFamily::reads_bf16). A CPU with AVX512-BF16 has every feature
// of avx512, so calling that variant is safe wherever this one is chosen.
#include "bitmap_linear.h"

namespace sparsekern::cpu {

template <>
void BitmapFamily::run<Isa::avx512bf16>(const BitmapMatrix& w, const DenseArgs& a) { run<Isa::avx512>(w, a); }

template <>
int64_t BitmapFamily::workspace_floats<Isa::avx512bf16>(const BitmapMatrix& w, int64_t batch, int num_threads) {
  return workspace_floats<Isa::avx512>(w, batch, num_threads);
}

}  // namespace sparsekern::cpu
