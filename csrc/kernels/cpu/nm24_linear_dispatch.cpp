// Picks the 2:4 ISA variant. Compiled without ISA flags: it must run on any x86-64 CPU
// (cpu_supports itself lives in csr_spmm_dispatch.cpp).
#include "nm24_linear.h"

namespace sparsekern::cpu {

int64_t nm24_linear_workspace_floats(Isa isa, int64_t batch, int num_threads) {
  switch (isa) {
    case Isa::avx2: return nm24_linear_workspace_floats_avx2(batch, num_threads);
    case Isa::avx512: return nm24_linear_workspace_floats_avx512(batch, num_threads);
    default: return 0;
  }
}

void nm24_linear_f32(Isa isa, const Nm24Matrix& w, const DenseArgs& a) {
  switch (isa) {
    case Isa::avx2: return nm24_linear_f32_avx2(w, a);
    case Isa::avx512: return nm24_linear_f32_avx512(w, a);
    default: return nm24_linear_f32_scalar(w, a);
  }
}

}  // namespace sparsekern::cpu
