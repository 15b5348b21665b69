// forced_variants.h's functions. Compiled with the amx variant's flags (CMakeLists.txt); call
// them only where amx_emulation_runs() or bitmap_tables_run() says.
#include "forced_variants.h"

#include <sstream>
#include <string>

#include "amx_linear.h"
#include "amx_tiles_emulated.h"
#include "bitmap_linear_bf16.h"

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

bool bitmap_tables_run() { return cpu::cpu_supports(cpu::Isa::avx512bf16); }

int64_t bitmap_tables_workspace_floats(const cpu::BitmapMatrix& w, int64_t batch, int num_threads) {
  return cpu::bitmapbf16::workspace_floats(w, batch, num_threads);
}

void bitmap_tables_linear(const cpu::BitmapMatrix& w, const cpu::DenseArgs& a) {
  using namespace cpu::bitmapbf16;
  if (a.batch > 0 && w.rows > 0) product<cpu::ExpandTables>(w, a, cpu_grouped_rule());
}

namespace {
const cpu::bitmapbf16::GroupedRule& other_rule() {
  using namespace cpu::bitmapbf16;
  return &cpu_grouped_rule() == &kGroupedRule ? kGroupedRuleZen4 : kGroupedRule;
}
}  // namespace

int64_t bitmap_other_rule_workspace_floats(const cpu::BitmapMatrix& w, int64_t batch, int num_threads) {
  return cpu::bitmapbf16::workspace_floats(w, batch, num_threads, other_rule());
}

void bitmap_other_rule_linear(const cpu::BitmapMatrix& w, const cpu::DenseArgs& a) {
  if (a.batch <= 0 || w.rows <= 0) return;
  if (cpu::cpu_has("avx512_vbmi2")) cpu::bitmapbf16::product<cpu::ExpandVbmi2>(w, a, other_rule());
  else cpu::bitmapbf16::product<cpu::ExpandTables>(w, a, other_rule());
}

}  // namespace sparsekern::test
