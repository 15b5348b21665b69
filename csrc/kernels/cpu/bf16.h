// bfloat16 is the top half of a float32: widening is a 16-bit shift, exact; narrowing rounds.
#pragma once

#include <cstdint>
#include <cstring>

#include "linear_args.h"

// Internal linkage on purpose: this header is compiled into translation units with
// different ISA flags, and one shared inline copy could carry AVX-512 code into the
// scalar path (the linker keeps any one of them).
namespace sparsekern::cpu {
namespace {

inline float bf16_to_f32(uint16_t bits) {
  const uint32_t widened = uint32_t(bits) << 16;
  float f;
  std::memcpy(&f, &widened, sizeof f);
  return f;
}

// Rounds to the nearest bfloat16, ties to even, as torch does; NaN stays a (quiet) NaN.
inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return uint16_t((u >> 16) | 0x40);
  return uint16_t((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

// Reads nonzero j of a value array as float, whatever its stored type.
template <typename ValueT>
inline float value_at(const ValueT* values, int64_t j);
template <>
inline float value_at<float>(const float* values, int64_t j) { return values[j]; }
template <>
inline float value_at<uint16_t>(const uint16_t* values, int64_t j) { return bf16_to_f32(values[j]); }

// Writes y[b][row] = sum + bias[row], rounded: the native bf16 paths that reduce one output at
// a time (2:4's small-batch path, bitmap's grouped path).
inline void store_bf16(const DenseArgs& a, int64_t out_rows, int64_t b, int64_t row, float sum) {
  static_cast<uint16_t*>(a.y)[b * out_rows + row] = f32_to_bf16(a.bias ? sum + a.bias[row] : sum);
}

// Writes y[b][rb + i] = sums[i * row_stride + (b - first) * batch_stride] + bias[rb + i],
// rounded, for i < block and b in [first, first + valid): the native bf16 batched paths gather
// a block of output rows' sums for tiles of batch rows (rows or batch rows contiguous), then
// write them one batch row at a time (block outputs each).
inline void store_bf16_rows(const DenseArgs& a, int64_t out_rows, int64_t first, int64_t valid, int64_t rb,
                            int64_t block, const float* sums, int64_t row_stride, int64_t batch_stride) {
  auto* y = static_cast<uint16_t*>(a.y);
  for (int64_t b = first; b < first + valid; ++b) {
    uint16_t* dst = y + b * out_rows + rb;
    const float* column = sums + (b - first) * batch_stride;
    for (int64_t i = 0; i < block; ++i)
      dst[i] = f32_to_bf16(column[i * row_stride] + (a.bias ? a.bias[rb + i] : 0.f));
  }
}

}  // namespace
}  // namespace sparsekern::cpu
