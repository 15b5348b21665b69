// Lookup tables that turn 8 bits of a bitmap row into lane indices, shared by the AVX2 and
// AVX-512 bitmap variants (both translation units are compiled with AVX2).
//
// Why tables and not AVX-512's own vexpandps / vpcompressd: on this project's Zen 5 machine
// those run at about one per 6 cycles even in their register forms (measured in a loop of
// independent ones), while two table loads, a byte add, a widening and a vpermt2ps cost
// about 2; AVX2 has neither. The tables take 4 (AVX2) or 16 (AVX-512) KiB of L1.
#pragma once

#include <immintrin.h>

#include <array>
#include <cstdint>

// Internal linkage on purpose: see work_split.h.
namespace sparsekern::cpu {
namespace {

struct MaskTables {
  // Lane j of the expand of mask m (AVX2): the rank of bit j among m's set bits (the index
  // of its value among the chunk's packed values), or 0x80 when bit j is clear (the sign bit,
  // once sign-extended, tells blendv to zero the lane).
  std::array<std::array<uint8_t, 8>, 256> expand{};
  // The 16 byte lane indices of a 16-bit mask m (AVX-512) are expand16_lo[m & 255] +
  // expand16_hi[m >> 8], one byte add: lo holds the low byte's ranks and, in lanes 8-15, its
  // popcount, by which the high byte's ranks shift. A clear bit gets 16 or more: vpermt2ps
  // then takes the lane from a zero register, so no mask register is needed.
  std::array<std::array<uint8_t, 16>, 256> expand16_lo{};
  std::array<std::array<uint8_t, 16>, 256> expand16_hi{};
  // positions[c][m]: the columns 8c + j of m's set bits j when m is byte c of a word, lowest
  // first; 0 past popcount(m). One table per byte saves decode_word an add per byte.
  std::array<std::array<std::array<uint8_t, 8>, 256>, 4> positions{};
};

constexpr MaskTables make_mask_tables() {
  MaskTables t;
  for (int m = 0; m < 256; ++m) {
    int rank = 0;
    for (int j = 0; j < 8; ++j) {
      const bool set = (m >> j) & 1;
      t.expand[m][j] = set ? uint8_t(rank) : uint8_t(0x80);
      t.expand16_lo[m][j] = set ? uint8_t(rank) : uint8_t(16);
      t.expand16_hi[m][8 + j] = set ? uint8_t(rank) : uint8_t(16);
      if (set) {
        for (int c = 0; c < 4; ++c) t.positions[c][m][rank] = uint8_t(8 * c + j);
        ++rank;
      }
    }
    for (int j = 8; j < 16; ++j) t.expand16_lo[m][j] = uint8_t(rank);
  }
  return t;
}

constexpr MaskTables kMaskTables = make_mask_tables();

inline __m128i load8(const std::array<uint8_t, 8>& entry) {
  return _mm_loadl_epi64(reinterpret_cast<const __m128i*>(entry.data()));
}

// Writes (col0 + j) << Shift for the set bits j of `word` to out, in order (and up to 8
// garbage entries past them), and returns out + popcount(word). col0: 8 lanes of the first
// column of the word. The shift scales columns to offsets into rows of 2^Shift floats.
template <int Shift>
inline int32_t* decode_word(uint32_t word, __m256i col0, int32_t* out) {
  for (int c = 0; c < 4; ++c) {
    const uint32_t m = (word >> (8 * c)) & 0xFFu;
    const __m256i pos = _mm256_cvtepu8_epi32(load8(kMaskTables.positions[c][m]));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), _mm256_slli_epi32(_mm256_add_epi32(pos, col0), Shift));
    out += __builtin_popcount(m);
  }
  return out;
}

}  // namespace
}  // namespace sparsekern::cpu
