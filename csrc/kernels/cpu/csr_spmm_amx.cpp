// The Csr family's amx variant (flags: isa_table.h): CSR has no tile path, so every call is
// the avx512bf16 code, which a CPU with AMX can always run.
#include "csr_spmm.h"

namespace sparsekern::cpu {

template <>
void CsrFamily::run<Isa::amx>(const CsrMatrix& w, const DenseArgs& a) {
  run<Isa::avx512bf16>(w, a);
}

template <>
int64_t CsrFamily::workspace_floats<Isa::amx>(const CsrMatrix& w, int64_t batch, int num_threads) {
  return workspace_floats<Isa::avx512bf16>(w, batch, num_threads);
}

}  // namespace sparsekern::cpu
