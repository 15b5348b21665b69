// Picks the ISA variant. Compiled without ISA flags: it must run on any x86-64 CPU.
#include "csr_spmm.h"

namespace sparsekern::cpu {

bool cpu_supports(Isa isa) {
  switch (isa) {
    case Isa::scalar: return true;
#if defined(__x86_64__) || defined(_M_X64)
    case Isa::avx2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case Isa::avx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma");
#endif
    default: return false;
  }
}

Isa best_cpu_isa() {
  if (cpu_supports(Isa::avx512)) return Isa::avx512;
  if (cpu_supports(Isa::avx2)) return Isa::avx2;
  return Isa::scalar;
}

int64_t csr_spmm_workspace_floats(Isa isa, int64_t batch, int64_t cols) {
  switch (isa) {
    case Isa::avx2: return csr_spmm_workspace_floats_avx2(batch, cols);
    case Isa::avx512: return csr_spmm_workspace_floats_avx512(batch, cols);
    default: return 0;
  }
}

void csr_spmm_f32(Isa isa, const CsrMatrix& w, const DenseArgs& a) {
  switch (isa) {
    case Isa::avx2: return csr_spmm_f32_avx2(w, a);
    case Isa::avx512: return csr_spmm_f32_avx512(w, a);
    default: return csr_spmm_f32_scalar(w, a);
  }
}

}  // namespace sparsekern::cpu
