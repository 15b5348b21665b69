// The 2:4 family's entry points. Compiled without ISA flags: it must run on any x86-64 CPU.
#include "linear_dispatch.h"
#include "nm24_linear.h"

namespace sparsekern::cpu {

int64_t workspace_floats(Isa isa, const Nm24Matrix& w, int64_t batch, ActType act, int num_threads) {
  return dispatch_workspace_floats<Nm24Family>(isa, w, batch, act, num_threads);
}

void linear(Isa isa, const Nm24Matrix& w, const DenseArgs& a) { dispatch_run<Nm24Family>(isa, w, a); }

}  // namespace sparsekern::cpu
