// 2:4 semi-structured products for SparseLinear(format="2:4") on the CPU: y = x @ W.T + bias.
//
// Framework-free: raw pointers and sizes, no allocation, no environment, no printing.
// The caller (csrc/python) has checked every size; these functions trust them.
#pragma once

#include <cstdint>

#include "csr_spmm.h"  // Isa, ValueType, DenseArgs, cpu_supports

namespace sparsekern::cpu {

// W [rows x cols], cols % 4 == 0: in every group of 4 consecutive columns of a row at most
// two weights are kept, stored as exactly two values (a missing one is an explicit zero).
struct Nm24Matrix {
  int64_t rows = 0;
  int64_t cols = 0;
  // [rows x cols / 2] float (ValueType::f32) or bfloat16 bits as uint16_t (ValueType::bf16),
  // row-major: the two kept weights of group g of row r are values[r][2g], values[r][2g + 1].
  const void* values = nullptr;
  ValueType value_type = ValueType::f32;
  // [rows x nm24_meta_bytes(cols)] uint8, row-major: group g of a row is the nibble
  // (meta[g / 2] >> 4 * (g % 2)) & 15 = p0 | p1 << 2, the columns 4g + p0 and 4g + p1
  // (p0 < p1) of its two values. A row with an odd number of groups ends in a zero nibble.
  const uint8_t* meta = nullptr;
};

inline int64_t nm24_meta_bytes(int64_t cols) { return (cols / 4 + 1) / 2; }

// Floats of 64-byte-aligned workspace the given ISA needs (0 when it needs none): the
// batched path decodes blocks of W per thread into it.
int64_t nm24_linear_workspace_floats(Isa isa, int64_t batch, int num_threads);
int64_t nm24_linear_workspace_floats_avx2(int64_t batch, int num_threads);
int64_t nm24_linear_workspace_floats_avx512(int64_t batch, int num_threads);

// One entry point per ISA variant (tests call each directly) and one that dispatches.
// DenseArgs as for csr_spmm (x [batch x cols] rows at x_row_stride, y [batch x rows]).
void nm24_linear_f32_scalar(const Nm24Matrix& w, const DenseArgs& a);
void nm24_linear_f32_avx2(const Nm24Matrix& w, const DenseArgs& a);
void nm24_linear_f32_avx512(const Nm24Matrix& w, const DenseArgs& a);
void nm24_linear_f32(Isa isa, const Nm24Matrix& w, const DenseArgs& a);

}  // namespace sparsekern::cpu
