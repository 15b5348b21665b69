// amx_emulated.h's functions. Compiled with the amx variant's flags (CMakeLists.txt); call
// them only where amx_emulation_runs().
#include "amx_emulated.h"

#include <sstream>
#include <string>

#include "amx_linear.h"
#include "amx_tiles_emulated.h"

namespace sparsekern::test {

bool amx_emulation_runs() {
  std::istringstream names(cpu::isa_features(cpu::Isa::amx));
  std::string feature;
  while (names >> feature)
    if (feature.rfind("amx_", 0) != 0 && !cpu::cpu_has(feature)) return false;
  return true;
}

int64_t amx_emulated_workspace_floats(int64_t cols, int64_t batch, int num_threads) {
  return cpu::amx::workspace_floats(cols, batch, num_threads);
}

void amx_emulated_linear(const cpu::Nm24Matrix& w, const cpu::DenseArgs& a) {
  if (a.batch > 0 && w.rows > 0) cpu::amx::linear<cpu::AmxEmulated>(cpu::amx::Nm24Source(w), w.rows, w.cols, a);
}

void amx_emulated_linear(const cpu::BitmapMatrix& w, const cpu::DenseArgs& a) {
  if (a.batch > 0 && w.rows > 0) cpu::amx::linear<cpu::AmxEmulated>(cpu::amx::BitmapSource(w), w.rows, w.cols, a);
}

}  // namespace sparsekern::test
