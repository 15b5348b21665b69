// The bitmap family's entry points. Compiled without ISA flags: it must run on any x86-64 CPU.
#include "bitmap_linear.h"
#include "linear_dispatch.h"

namespace sparsekern::cpu {

int64_t workspace_floats(Isa isa, const BitmapMatrix& w, int64_t batch, ActType act, int num_threads) {
  return dispatch_workspace_floats<BitmapFamily>(isa, w, batch, act, num_threads);
}

void linear(Isa isa, const BitmapMatrix& w, const DenseArgs& a) { dispatch_run<BitmapFamily>(isa, w, a); }

}  // namespace sparsekern::cpu
