// The Csr family's avx512bf16 variant (flags: isa_table.h). bf16 values with bf16 activations
// from CsrFamily::kBf16From rows run natively (csr_spmm_bf16.h; CsrFamily::reads_bf16 lets
// them through the dispatch unwidened); everything else is the avx512 code as it is, which a
// CPU with AVX512-BF16 can always run.
#include "csr_spmm.h"
#include "csr_spmm_bf16.h"

namespace sparsekern::cpu {

template <>
void CsrFamily::run<Isa::avx512bf16>(const CsrMatrix& w, const DenseArgs& a) {
  if (a.act_type == ActType::bf16 && reads_bf16(Isa::avx512bf16, w, a.batch)) return csrbf16::batched(w, a);
  run<Isa::avx512>(w, a);
}

template <>
int64_t CsrFamily::workspace_floats<Isa::avx512bf16>(const CsrMatrix& w, int64_t batch, int num_threads) {
  // Without the activation type here, enough for either path.
  const int64_t native = reads_bf16(Isa::avx512bf16, w, batch) ? csrbf16::workspace_floats(w, batch) : 0;
  return std::max(native, workspace_floats<Isa::avx512>(w, batch, num_threads));
}

}  // namespace sparsekern::cpu
