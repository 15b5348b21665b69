// One 32-column word of a bitmap row with bf16 values, expanded into 32 bf16 lanes (0 where a
// bit is clear): the native bf16 bitmap path (bitmap_linear_bf16.h) and the amx variant's tile
// kernel (amx_linear.h) both build dense blocks of W this way. Needs AVX-512 (BW); included
// only by translation units compiled with avx512bf16's flags or more (isa_table.h).
//
// Two ways: vpexpandw (AVX512-VBMI2) where the CPU has it, else the ranks of the set bits from
// bitmap_masks.h's byte tables and a masked vpermw (AVX512-BW); Intel Cooper Lake has
// AVX512-BF16 without VBMI2. The tables measured about 15% slower at batch 16 on Zen 5.
// vpexpandw is written in inline asm so that avx512bf16's flags (isa_table.h) need not enable
// VBMI2 for the compiler, which could then use it anywhere; there it runs only behind the CPU
// check (the amx variant requires VBMI2).
#pragma once

#include <immintrin.h>

#include <array>
#include <cstdint>

#include "bitmap_masks.h"

namespace sparsekern::cpu {
namespace {

// Word `m` of a row as 32 bf16 (0 where a bit is clear), its popcount(m) values from v; `end`
// is the end of all values, which neither expansion reads past.
struct ExpandVbmi2 {
  static __m512i word(uint32_t m, const uint16_t* v, const uint16_t* end) {
    __m512i out;
    const __mmask32 k = m;
    if (v + 32 <= end) {  // the register form: from memory, 1.56 against 1.39 ns a word on Zen 5
      __asm__("vpexpandw %1, %0%{%2%}%{z%}" : "=v"(out) : "v"(_mm512_loadu_si512(v)), "Yk"(k));
    } else {
      __asm__("vpexpandw (%1), %0%{%2%}%{z%}" : "=v"(out) : "r"(v), "Yk"(k), "m"(*(const uint16_t(*)[32])v));
    }
    return out;
  }
};

struct ExpandTables {
  static __m128i load16(const std::array<uint8_t, 16>& entry) {
    return _mm_loadu_si128(reinterpret_cast<const __m128i*>(entry.data()));
  }
  static __m512i word(uint32_t m, const uint16_t* v, const uint16_t* end) {
    const auto& t = kMaskTables;
    const __m128i lo = _mm_add_epi8(load16(t.expand16_lo[m & 255]), load16(t.expand16_hi[(m >> 8) & 255]));
    const __m128i hi_ranks = _mm_add_epi8(load16(t.expand16_lo[(m >> 16) & 255]), load16(t.expand16_hi[m >> 24]));
    const __m128i hi = _mm_add_epi8(hi_ranks, _mm_set1_epi8(char(__builtin_popcount(m & 0xFFFFu))));
    const __m512i rank = _mm512_cvtepu8_epi16(_mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1));
    // A full load unless it would pass the end (masked loads are slow on Zen 5).
    const __m512i values =
        v + 32 <= end ? _mm512_loadu_si512(v)
                      : _mm512_maskz_loadu_epi16(__mmask32((uint64_t(1) << __builtin_popcount(m)) - 1), v);
    return _mm512_maskz_permutexvar_epi16(__mmask32(m), rank, values);
  }
};

}  // namespace
}  // namespace sparsekern::cpu
