// The CPU ISA variants, one line each: the single place that names them.
//
//   X(id, <"cpu features it needs">, <"compiler flags of its translation units">)
//
// The order is the order of preference (later is faster). Everything else derives from it:
// the Isa enum and cpu_supports (cpu_features.h), each kernel family's dispatch, the Python
// module's cpu_isas(), the tests, and CMakeLists.txt, which reads the flags from this very
// text (so keep each entry on one line, in this form). A variant must list every extension
// its flags enable: the CPU check tests exactly these names (cpu_features.cpp).
#pragma once

// clang-format off
#define SPARSEKERN_ISA_TABLE(X) \
  X(scalar, "", "") \
  X(avx2, "avx2 fma f16c", "-mavx2 -mfma -mf16c") \
  X(avx512, "avx512f avx512bw avx512vl avx512dq avx2 fma f16c", "-mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx2 -mfma -mf16c")
// clang-format on
