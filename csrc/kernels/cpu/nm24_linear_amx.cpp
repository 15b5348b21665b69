// The 2:4 family's amx variant (flags: isa_table.h): bf16 values and activations from kAmxFrom
// rows multiply on tiles (amx_linear.h); every other call is the avx512bf16 code, which a CPU
// with AMX can always run.
#include "amx_linear.h"
#include "amx_tiles.h"
#include "nm24_linear.h"

namespace sparsekern::cpu {

template <>
void Nm24Family::run<Isa::amx>(const Nm24Matrix& w, const DenseArgs& a) {
  if (!runs_tiles(Isa::amx, w, a.act_type, a.batch)) return run<Isa::avx512bf16>(w, a);
  if (w.rows == 0) return;
  amx::linear<AmxHardware>(amx::Nm24Source(w), w.rows, w.cols, a);
}

template <>
int64_t Nm24Family::workspace_floats<Isa::amx>(const Nm24Matrix& w, int64_t batch, int num_threads) {
  // Without the activation type here, enough for either path.
  const bool on_tiles = runs_tiles(Isa::amx, w, ActType::bf16, batch);
  const int64_t tiles = on_tiles ? amx::workspace_floats(w.cols, batch, num_threads) : 0;
  return std::max(tiles, workspace_floats<Isa::avx512bf16>(w, batch, num_threads));
}

}  // namespace sparsekern::cpu
