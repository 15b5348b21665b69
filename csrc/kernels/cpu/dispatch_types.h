// Calls fn(IndexT{}, ValueT{}) with the C++ types matching a CsrMatrix's runtime tags, so
// each kernel is written once as a template over its index and value types.
#pragma once

#include <cstdint>

#include "csr_spmm.h"

// Internal linkage on purpose: this header is compiled into translation units with
// different ISA flags, and one shared inline copy could carry AVX-512 code into the
// scalar path (the linker keeps any one of them).
namespace sparsekern::cpu {
namespace {

template <typename Fn>
void dispatch_types(const CsrMatrix& w, Fn&& fn) {
  const bool u16 = w.index_type == IndexType::u16;
  const bool f32 = w.value_type == ValueType::f32;
  if (u16 && f32) fn(uint16_t{}, float{});
  else if (u16) fn(uint16_t{}, uint16_t{});
  else if (f32) fn(int32_t{}, float{});
  else fn(int32_t{}, uint16_t{});
}

}  // namespace
}  // namespace sparsekern::cpu
