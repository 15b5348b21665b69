// The tile operations amx_linear.h is written against, on the hardware: Intel AMX (tile
// registers, tdpbf16ps). Included only by the *_amx.cpp variants (flags: isa_table.h).
//
// Every tile is configured as 16 rows of 64 bytes: an fp32 C tile is 16 x 16, a bf16 A tile
// 16 rows x 32 columns, a B tile 16 rows of 16 bf16 pairs. The tile numbers are template
// arguments because the instructions name them. amx_tiles_emulated.h
// implements the same interface in plain C++, so that the kernels' data layout is tested
// on CPUs without AMX.
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace sparsekern::cpu {
namespace {

struct AmxHardware {
  // The 64-byte operand of ldtilecfg (palette 1).
  struct alignas(64) Config {
    uint8_t palette = 1;
    uint8_t start_row = 0;
    uint8_t reserved[14] = {};
    uint16_t bytes_per_row[16] = {};
    uint8_t rows[16] = {};
  };

  // Tile state is per thread: each thread configures before its first tile instruction and
  // releases after its last.
  static void configure() {
    Config c;
    for (int t = 0; t < 8; ++t) {
      c.bytes_per_row[t] = 64;
      c.rows[t] = 16;
    }
    __asm__ volatile("ldtilecfg %0" ::"m"(c) : "memory");
  }
  static void release() { __asm__ volatile("tilerelease" ::: "memory"); }

  // Written out rather than with the compiler's _tile_* macros: those take the tile number as
  // a literal token (not a template argument), and their loads do not tell the compiler that
  // they read memory, which would let it move the B tiles' stores past them. "memory" here
  // keeps every tile access in order with the code around it.
  template <int T>
  static void zero() {
    __asm__ volatile("tilezero %%tmm%c0" ::"i"(T));
  }
  template <int T>
  static void load(const void* base, int64_t stride_bytes) {
    __asm__ volatile("{tileloadd (%0,%1,1), %%tmm%c2|tileloadd %%tmm%c2, [%0+%1*1]}" ::"r"(base), "r"(stride_bytes),
                     "i"(T)
                     : "memory");
  }
  template <int T>
  static void store(void* base, int64_t stride_bytes) {
    __asm__ volatile("{tilestored %%tmm%c2, (%0,%1,1)|tilestored [%0+%1*1], %%tmm%c2}" ::"r"(base), "r"(stride_bytes),
                     "i"(T)
                     : "memory");
  }
  // C += A B: C[m][n] += sum over pairs k of A[m][2k] B[k][2n] + A[m][2k + 1] B[k][2n + 1].
  template <int C, int A, int B>
  static void dot() {
    __asm__ volatile("{tdpbf16ps %%tmm%c2, %%tmm%c1, %%tmm%c0|tdpbf16ps %%tmm%c0, %%tmm%c1, %%tmm%c2}" ::"i"(C), "i"(A),
                     "i"(B));
  }
};

}  // namespace
}  // namespace sparsekern::cpu
