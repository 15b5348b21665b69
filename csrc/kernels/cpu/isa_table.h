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

// avx512bf16 is AVX-512 plus vdpbf16ps (Intel Cooper Lake and Sapphire Rapids on, AMD Zen 4 on):
// 2:4 with bf16 values and activations reads bf16 natively there (nm24_linear_bf16.h); the
// other formats and dtypes run their avx512 code. SPARSEKERN_CPU_ISA=avx512 forbids it.
// clang-format off
#define SPARSEKERN_ISA_TABLE(X) \
  X(scalar, "", "") \
  X(avx2, "avx2 fma f16c", "-mavx2 -mfma -mf16c") \
  X(avx512, "avx512f avx512bw avx512vl avx512dq avx2 fma f16c", "-mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx2 -mfma -mf16c") \
  X(avx512bf16, "avx512f avx512bw avx512vl avx512dq avx2 fma f16c avx512_bf16", "-mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx2 -mfma -mf16c -mavx512bf16")
// clang-format on
