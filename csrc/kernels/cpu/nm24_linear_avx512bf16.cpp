// The 2:4 family's avx512bf16 variant (flags: isa_table.h). bf16 values with bf16 activations
// run natively (Nm24Family::reads_bf16 lets them through the dispatch unwidened): from
// kNm24LanesFrom activation rows with 16 output rows in the lanes, when the matrix has its
// rows-in-lanes copy (nm24_linear_bf16_lanes.h), otherwise with the batch in the sum
// (nm24_linear_bf16.h). Every other dtype pairing is the avx512 variant's.
#include "nm24_linear_bf16.h"
#include "nm24_linear_bf16_lanes.h"

namespace sparsekern::cpu {

template <>
void Nm24Family::run<Isa::avx512bf16>(const Nm24Matrix& w, const DenseArgs& a) {
  if (a.act_type == ActType::f32 || w.value_type != ValueType::bf16) return run<Isa::avx512>(w, a);
  if (a.batch == 0 || w.rows == 0) return;
  if (wants_lanes(Isa::avx512bf16, w, a.act_type, a.batch) && w.lanes) nm24bf16::lanes(w, a);
  else nm24bf16::small_batch(w, a);
}

template <>
int64_t Nm24Family::workspace_floats<Isa::avx512bf16>(const Nm24Matrix& w, int64_t batch, int num_threads) {
  // Without the activation type here, enough for either path (float32 activations take avx512's).
  const bool lanes = w.lanes && wants_lanes(Isa::avx512bf16, w, ActType::bf16, batch);
  const int64_t native = lanes ? nm24bf16::lanes_workspace_floats(w, batch, num_threads) : 0;
  return std::max(native, workspace_floats<Isa::avx512>(w, batch, num_threads));
}

}  // namespace sparsekern::cpu
