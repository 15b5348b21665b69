// Argument checking shared by the CPU (module.cpp) and CUDA (cuda_bindings.cpp) bindings.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <sstream>
#include <string>

namespace sparsekern::bindings {

// Raises ValueError with the parts streamed together, so messages carry the actual values.
template <typename... Parts>
[[noreturn]] void fail(const Parts&... parts) {
  std::ostringstream message;
  (message << ... << parts);
  throw pybind11::value_error(message.str());
}

// A tensor's data_ptr() as passed from Python.
template <typename T>
const T* address(uintptr_t p) { return reinterpret_cast<const T*>(p); }

// The column index type for a dtype name; uint16 only addresses 65536 columns.
template <typename IndexType>
IndexType parse_index_type(const std::string& name, int64_t cols, IndexType u16, IndexType i32) {
  if (name != "uint16" && name != "int32") fail("col_idx dtype '", name, "', expected uint16 or int32");
  if (name == "uint16" && cols > 65536) fail("uint16 column indices need cols <= 65536, got cols = ", cols);
  return name == "uint16" ? u16 : i32;
}

}  // namespace sparsekern::bindings
