// Argument checking shared by the CPU (module.cpp) and CUDA (cuda_bindings.cpp) bindings.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <cstdio>
#include <string>
#include <type_traits>

namespace sparsekern::bindings {

// The parts of a message as text. No iostreams: torch's libraries export some of the
// libstdc++ stream internals they were built with, and a module built by a newer g++ that
// binds to those crashed on a Xeon host with torch 2.11 (an ifstream, in tile_params.cpp).
inline void append_text(std::string& s, const std::string& part) { s += part; }
inline void append_text(std::string& s, const char* part) { s += part; }
inline void append_text(std::string& s, char part) { s += part; }
template <typename T>
std::enable_if_t<std::is_arithmetic_v<T>> append_text(std::string& s, T part) {
  if constexpr (std::is_floating_point_v<T>) {
    char text[32];
    std::snprintf(text, sizeof text, "%g", double(part));
    s += text;
  } else {
    s += std::to_string(part);
  }
}

// Raises ValueError with the parts joined, so messages carry the actual values.
template <typename... Parts>
[[noreturn]] void fail(const Parts&... parts) {
  std::string message;
  (append_text(message, parts), ...);
  throw pybind11::value_error(message);
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
