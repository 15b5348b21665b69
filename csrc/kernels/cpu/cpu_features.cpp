// CPU feature detection by CPUID. Compiled without ISA flags: it must run on any x86-64 CPU.
//
// Own CPUID reading rather than __builtin_cpu_supports: the builtin takes only literal names
// (the ISA table holds strings), and it knows no AMX or AVX512-BF16 on older compilers.
#include "cpu_features.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <string>

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#endif
#if defined(__linux__) && defined(__x86_64__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace sparsekern::cpu {
namespace {

struct IsaEntry {
  const char* name;
  const char* features;
};

constexpr IsaEntry kIsaEntries[] = {
#define SPARSEKERN_ISA_ENTRY(id, features, flags) {#id, features},
    SPARSEKERN_ISA_TABLE(SPARSEKERN_ISA_ENTRY)
#undef SPARSEKERN_ISA_ENTRY
};

enum Reg { EAX, EBX, ECX, EDX };

// A feature bit: CPUID leaf/subleaf, register, bit; and the XCR0 state bits the OS must save
// for its registers to be usable (YMM for AVX, opmask + ZMM for AVX-512, tiles for AMX).
struct FeatureBit {
  const char* name;
  unsigned leaf, subleaf;
  Reg reg;
  int bit;
  uint64_t xcr0;
};

constexpr uint64_t kYmm = 0x6, kZmm = 0xE6, kTiles = 0x60000;

constexpr FeatureBit kFeatures[] = {
    {"fma", 1, 0, ECX, 12, kYmm},
    {"f16c", 1, 0, ECX, 29, kYmm},
    {"avx2", 7, 0, EBX, 5, kYmm},
    {"avx512f", 7, 0, EBX, 16, kZmm},
    {"avx512dq", 7, 0, EBX, 17, kZmm},
    {"avx512bw", 7, 0, EBX, 30, kZmm},
    {"avx512vl", 7, 0, EBX, 31, kZmm},
    {"avx512_vbmi2", 7, 0, ECX, 6, kZmm},
    {"avx512_vnni", 7, 0, ECX, 11, kZmm},
    {"avx512_fp16", 7, 0, EDX, 23, kZmm},
    {"amx_bf16", 7, 0, EDX, 22, kTiles},
    {"amx_tile", 7, 0, EDX, 24, kTiles},
    {"amx_int8", 7, 0, EDX, 25, kTiles},
    {"avx512_bf16", 7, 1, EAX, 5, kZmm},
};

#if defined(__x86_64__) || defined(_M_X64)
uint64_t os_saved_state() {
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) return 0;  // no OSXSAVE: no xgetbv
  uint32_t lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (uint64_t(hi) << 32) | lo;
}

// Linux enables the tile registers' state in XCR0 but hands it to a process only when asked
// (arch_prctl ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA, kernel 5.16 on); without that the
// first tile instruction raises SIGILL. Asked once per process; a refusal means no AMX.
bool os_grants_tiles() {
#if defined(__linux__) && defined(__x86_64__)
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  static const bool granted = syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  return granted;
#else
  return false;
#endif
}

bool has_bit(const FeatureBit& f) {
  unsigned r[4] = {0, 0, 0, 0};
  if (!__get_cpuid_count(f.leaf, f.subleaf, &r[0], &r[1], &r[2], &r[3])) return false;
  if (!(r[f.reg] & (1u << f.bit))) return false;
  static const uint64_t saved = os_saved_state();
  if ((saved & f.xcr0) != f.xcr0) return false;
  return f.xcr0 != kTiles || os_grants_tiles();
}
#else
bool has_bit(const FeatureBit&) { return false; }
#endif

}  // namespace

const char* isa_name(Isa isa) { return kIsaEntries[int(isa)].name; }
const char* isa_features(Isa isa) { return kIsaEntries[int(isa)].features; }

bool parse_isa(const std::string& name, Isa* isa) {
  for (int i = 0; i < kIsaCount; ++i)
    if (name == kIsaEntries[i].name) {
      *isa = kAllIsas[i];
      return true;
    }
  return false;
}

bool cpu_has(const std::string& feature) {
  for (const FeatureBit& f : kFeatures)
    if (feature == f.name) return has_bit(f);
  return false;
}

bool feature_known(const std::string& feature) {
  for (const FeatureBit& f : kFeatures)
    if (feature == f.name) return true;
  return false;
}

namespace {

// isa_features' space-separated names, split by hand (no iostreams: see tile_params.cpp).
bool has_all_features(Isa isa) {
  const std::string names = isa_features(isa);
  for (std::size_t begin = 0; begin < names.size();) {
    const std::size_t end = std::min(names.find(' ', begin), names.size());
    if (end > begin && !cpu_has(names.substr(begin, end - begin))) return false;
    begin = end + 1;
  }
  return true;
}

}  // namespace

// Computed once: CPUID traps to the hypervisor in a VM (tens of microseconds), and the
// bindings ask on every call.
bool cpu_supports(Isa isa) {
  static const auto supported = [] {
    std::array<bool, kIsaCount> table{};
    for (int i = 0; i < kIsaCount; ++i) table[i] = has_all_features(kAllIsas[i]);
    return table;
  }();
  return supported[int(isa)];
}

// Computed once, like cpu_supports: CPUID traps to the hypervisor in a VM.
int amd_family() {
#if defined(__x86_64__) || defined(_M_X64)
  static const int family = [] {
    unsigned a, b, c, d;
    if (!__get_cpuid(0, &a, &b, &c, &d)) return 0;
    char vendor[13] = {};
    std::memcpy(vendor, &b, 4);
    std::memcpy(vendor + 4, &d, 4);
    std::memcpy(vendor + 8, &c, 4);
    if (std::strcmp(vendor, "AuthenticAMD") != 0 || !__get_cpuid(1, &a, &b, &c, &d)) return 0;
    const unsigned base = (a >> 8) & 0xF;
    return int(base == 0xF ? base + ((a >> 20) & 0xFF) : base);
  }();
  return family;
#else
  return 0;
#endif
}

Isa best_cpu_isa() {
  Isa best = Isa::scalar;
  for (Isa isa : kAllIsas)
    if (cpu_supports(isa)) best = isa;
  return best;
}

}  // namespace sparsekern::cpu
