// Which ISA variants this CPU runs, from CPUID and the OS's saved register state (XCR0).
#pragma once

#include <cstdint>
#include <string>

#include "isa_table.h"

namespace sparsekern::cpu {

enum class Isa : int {
#define SPARSEKERN_ISA_ENUM(id, features, flags) id,
  SPARSEKERN_ISA_TABLE(SPARSEKERN_ISA_ENUM)
#undef SPARSEKERN_ISA_ENUM
};

inline constexpr Isa kAllIsas[] = {
#define SPARSEKERN_ISA_LIST(id, features, flags) Isa::id,
    SPARSEKERN_ISA_TABLE(SPARSEKERN_ISA_LIST)
#undef SPARSEKERN_ISA_LIST
};
inline constexpr int kIsaCount = int(sizeof(kAllIsas) / sizeof(kAllIsas[0]));

// The table's name of an ISA ("scalar", "avx2", ...).
const char* isa_name(Isa isa);
// The ISA of a table name; false when there is none.
bool parse_isa(const std::string& name, Isa* isa);
// The table's feature list of an ISA, space-separated.
const char* isa_features(Isa isa);
// Whether this CPU (and the OS, for the wider registers) supports every feature of the ISA.
bool cpu_supports(Isa isa);
// Whether this CPU has one named feature ("avx512f", "avx512_bf16", "amx_tile", ...);
// false for names it does not know.
bool cpu_has(const std::string& feature);
// Whether cpu_has knows the name (a test checks every name in the ISA table).
bool feature_known(const std::string& feature);
// The last ISA in the table that this CPU supports.
Isa best_cpu_isa();
// The CPUID family of an AMD CPU (0x19: Zen 3 and Zen 4, of which only Zen 4 has AVX-512;
// 0x1A: Zen 5), 0 on any other vendor. For choices measured to differ between those CPUs.
int amd_family();

}  // namespace sparsekern::cpu
