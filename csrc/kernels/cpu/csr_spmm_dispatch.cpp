// The CSR family's entry points. Compiled without ISA flags: it must run on any x86-64 CPU.
#include "csr_spmm.h"
#include "linear_dispatch.h"

namespace sparsekern::cpu {

int64_t workspace_floats(Isa isa, const CsrMatrix& w, int64_t batch, ActType act, int num_threads) {
  return dispatch_workspace_floats<CsrFamily>(isa, w, batch, act, num_threads);
}

void linear(Isa isa, const CsrMatrix& w, const DenseArgs& a) { dispatch_run<CsrFamily>(isa, w, a); }

}  // namespace sparsekern::cpu
