// The ISA table's own checks: every feature an entry names is one the CPUID code knows (a typo
// would silently disable the variant), names round-trip, and the best ISA is supported.
#include <cstdio>
#include <sstream>
#include <string>

#include "cpu_features.h"

using namespace sparsekern::cpu;

int main() {
  int failures = 0;
  for (Isa isa : kAllIsas) {
    std::istringstream names(isa_features(isa));
    std::string feature;
    while (names >> feature)
      if (!feature_known(feature)) {
        std::printf("FAIL ISA %s names unknown feature '%s'\n", isa_name(isa), feature.c_str());
        ++failures;
      }
    Isa parsed;
    if (!parse_isa(isa_name(isa), &parsed) || parsed != isa) {
      std::printf("FAIL ISA %s does not round-trip through its name\n", isa_name(isa));
      ++failures;
    }
    std::printf("ISA %s: %s\n", isa_name(isa), cpu_supports(isa) ? "supported" : "not supported here");
  }
  Isa unused;
  if (parse_isa("no-such-isa", &unused)) {
    std::printf("FAIL an unknown name parsed\n");
    ++failures;
  }
  if (!cpu_supports(best_cpu_isa()) || !cpu_supports(Isa::scalar)) {
    std::printf("FAIL best_cpu_isa() or scalar is not supported\n");
    ++failures;
  }
  std::printf("%d ISAs, %d failed\n", kIsaCount, failures);
  return failures == 0 ? 0 : 1;
}
