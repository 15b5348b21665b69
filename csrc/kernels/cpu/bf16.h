// bfloat16 is the top half of a float32: widening is a 16-bit shift, exact.
#pragma once

#include <cstdint>
#include <cstring>

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

// Reads nonzero j of a value array as float, whatever its stored type.
template <typename ValueT>
inline float value_at(const ValueT* values, int64_t j);
template <>
inline float value_at<float>(const float* values, int64_t j) { return values[j]; }
template <>
inline float value_at<uint16_t>(const uint16_t* values, int64_t j) { return bf16_to_f32(values[j]); }

}  // namespace
}  // namespace sparsekern::cpu
