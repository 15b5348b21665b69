// The Bitmap family's avx512bf16 variant (flags: isa_table.h). bf16 values with bf16
// activations run natively at every batch (bitmap_linear_bf16.h;
// BitmapFamily::reads_bf16 lets them through the dispatch unwidened); everything else is the
// avx512 code as it is, which a CPU with AVX512-BF16 can always run.
#include "bitmap_linear.h"
#include "bitmap_linear_bf16.h"

namespace sparsekern::cpu {

template <>
void BitmapFamily::run<Isa::avx512bf16>(const BitmapMatrix& w, const DenseArgs& a) {
  if (a.act_type == ActType::bf16 && reads_bf16(Isa::avx512bf16, w, a.batch)) return bitmapbf16::linear(w, a);
  run<Isa::avx512>(w, a);
}

template <>
int64_t BitmapFamily::workspace_floats<Isa::avx512bf16>(const BitmapMatrix& w, int64_t batch, int num_threads) {
  // Without the activation type here, enough for either path.
  const bool native_path = reads_bf16(Isa::avx512bf16, w, batch);
  const int64_t native = native_path ? bitmapbf16::workspace_floats(w, batch, num_threads) : 0;
  return std::max(native, workspace_floats<Isa::avx512>(w, batch, num_threads));
}

}  // namespace sparsekern::cpu
