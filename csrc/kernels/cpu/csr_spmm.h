// CSR sparse x dense products for SparseLinear on the CPU: y = x @ W.T + bias.
//
// Framework-free: raw pointers and sizes, no allocation, no environment, no printing.
// The caller (csrc/python) has checked every size; these functions trust them.
#pragma once

#include <cstdint>

namespace sparsekern::cpu {

enum class Isa : int { scalar = 0, avx2 = 1, avx512 = 2 };
enum class IndexType : int { u16 = 0, i32 = 1 };
enum class ValueType : int { f32 = 0, bf16 = 1 };

// W [rows x cols] in CSR over output rows (rows = out_features, cols = in_features).
struct CsrMatrix {
  int64_t rows = 0;
  int64_t cols = 0;
  // [rows + 1] int64: row_ptr[0] == 0, non-decreasing, row_ptr[rows] == nnz.
  const int64_t* row_ptr = nullptr;
  // [nnz] uint16_t (IndexType::u16, needs cols <= 65536) or int32_t (IndexType::i32):
  // column of each nonzero, each < cols (sorted within a row is not required here).
  const void* col_idx = nullptr;
  IndexType index_type = IndexType::u16;
  // [nnz] float (ValueType::f32) or bfloat16 bit patterns as uint16_t (ValueType::bf16).
  const void* values = nullptr;
  ValueType value_type = ValueType::f32;
};

// Dense activations and output.
//   x    [batch x cols] float, row b starts at x + b * x_row_stride, columns contiguous.
//   bias [rows] float or nullptr.
//   y    [batch x rows] float, contiguous, fully overwritten.
//   workspace: csr_spmm_workspace_floats(...) floats, 64-byte aligned (the transposed,
//   batch-tiled copy of x that the batched path vectorizes over); may be nullptr when that
//   size is 0.
struct DenseArgs {
  const float* x = nullptr;
  int64_t batch = 0;
  int64_t x_row_stride = 0;
  const float* bias = nullptr;
  float* y = nullptr;
  float* workspace = nullptr;
  int num_threads = 1;
};

// Floats of workspace the given ISA needs for this batch and cols (0 for scalar, batch 1).
int64_t csr_spmm_workspace_floats(Isa isa, int64_t batch, int64_t cols);
int64_t csr_spmm_workspace_floats_avx2(int64_t batch, int64_t cols);
int64_t csr_spmm_workspace_floats_avx512(int64_t batch, int64_t cols);

// Whether this CPU can run the ISA variant.
bool cpu_supports(Isa isa);
// The best ISA variant this CPU supports.
Isa best_cpu_isa();

// One entry point per ISA variant (tests call each directly) and one that dispatches.
void csr_spmm_f32_scalar(const CsrMatrix& w, const DenseArgs& a);
void csr_spmm_f32_avx2(const CsrMatrix& w, const DenseArgs& a);
void csr_spmm_f32_avx512(const CsrMatrix& w, const DenseArgs& a);
void csr_spmm_f32(Isa isa, const CsrMatrix& w, const DenseArgs& a);

}  // namespace sparsekern::cpu
