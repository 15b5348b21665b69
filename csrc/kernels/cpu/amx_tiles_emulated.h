// AmxHardware's interface (amx_tiles.h) in plain C++: eight 16 x 64-byte tiles per thread and
// tdpbf16ps's arithmetic, one product at a time in fp32. The C++ tests run amx_linear.h's
// kernels with it on CPUs without AMX, so that what the hardware variant feeds the tiles
// (x padded into A tiles, W decompressed into B tiles, C stored back) is checked everywhere;
// only the instructions themselves need an AMX machine.
#pragma once

#include <cstdint>
#include <cstring>

#include "bf16.h"

namespace sparsekern::cpu {
namespace {

struct AmxEmulated {
  struct Tile {
    alignas(64) uint8_t bytes[16][64];
  };
  static Tile* tiles() {
    thread_local Tile registers[8];
    return registers;
  }

  static void configure() {}
  static void release() {}

  template <int T>
  static void zero() {
    std::memset(tiles()[T].bytes, 0, sizeof(Tile::bytes));
  }
  template <int T>
  static void load(const void* base, int64_t stride_bytes) {
    const auto* rows = static_cast<const uint8_t*>(base);
    for (int r = 0; r < 16; ++r) std::memcpy(tiles()[T].bytes[r], rows + r * stride_bytes, 64);
  }
  template <int T>
  static void store(void* base, int64_t stride_bytes) {
    for (int r = 0; r < 16; ++r) std::memcpy(static_cast<uint8_t*>(base) + r * stride_bytes, tiles()[T].bytes[r], 64);
  }
  template <int C, int A, int B>
  static void dot() {
    for (int m = 0; m < 16; ++m)
      for (int n = 0; n < 16; ++n) {
        float c, a[32], b[32];
        std::memcpy(&c, tiles()[C].bytes[m] + 4 * n, 4);
        for (int k = 0; k < 16; ++k) {
          uint16_t bits[4];
          std::memcpy(bits, tiles()[A].bytes[m] + 4 * k, 4);
          std::memcpy(bits + 2, tiles()[B].bytes[k] + 4 * n, 4);
          a[2 * k] = bf16_to_f32(bits[0]);
          a[2 * k + 1] = bf16_to_f32(bits[1]);
          b[2 * k] = bf16_to_f32(bits[2]);
          b[2 * k + 1] = bf16_to_f32(bits[3]);
        }
        for (int k = 0; k < 32; ++k) c += a[k] * b[k];
        std::memcpy(tiles()[C].bytes[m] + 4 * n, &c, 4);
      }
  }
};

}  // namespace
}  // namespace sparsekern::cpu
