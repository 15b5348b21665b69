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
// every format with bf16 values and activations reads bf16 natively there, 2:4 at every batch
// and CSR and bitmap batched (the families' reads_bf16); the other dtypes run their avx512
// code. amx adds Intel's tile registers (Sapphire Rapids on; the OS must grant them, see
// cpu_features.cpp): 2:4 and bitmap with bf16 values and activations from each family's
// kAmxFrom batch (amx_linear.h); every other call is avx512bf16's. SPARSEKERN_CPU_ISA=avx512
// forbids both, =avx512bf16 forbids amx.
// clang-format off
#define SPARSEKERN_ISA_TABLE(X) \
  X(scalar, "", "") \
  X(avx2, "avx2 fma f16c", "-mavx2 -mfma -mf16c") \
  X(avx512, "avx512f avx512bw avx512vl avx512dq avx2 fma f16c", "-mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx2 -mfma -mf16c") \
  X(avx512bf16, "avx512f avx512bw avx512vl avx512dq avx2 fma f16c avx512_bf16", "-mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx2 -mfma -mf16c -mavx512bf16") \
  X(amx, "avx512f avx512bw avx512vl avx512dq avx2 fma f16c avx512_bf16 avx512_vbmi2 amx_tile amx_bf16", "-mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx2 -mfma -mf16c -mavx512bf16 -mavx512vbmi2 -mamx-tile -mamx-bf16")
// clang-format on
