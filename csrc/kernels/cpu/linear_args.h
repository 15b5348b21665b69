// The arguments every CPU linear kernel shares: y = x @ W.T + bias, W in some packed format.
//
// Framework-free: raw pointers and sizes, no allocation, no environment, no printing. The
// caller (csrc/python) has checked every size; kernels trust them.
#pragma once

#include <cstdint>

#include "cpu_features.h"
#include "tile_params.h"

namespace sparsekern::cpu {

enum class IndexType : int { u16 = 0, i32 = 1 };
// Stored weights: float32, or bfloat16 bit patterns as uint16_t.
enum class ValueType : int { f32 = 0, bf16 = 1 };
// Activations and output (one dtype for both, as torch's linear returns x's dtype).
enum class ActType : int { f32 = 0, bf16 = 1 };

// Whether a call of the amx variant multiplies on tiles (amx_linear.h): bf16 values and
// activations, from the family's own batch threshold (its kAmxFrom, where amx measured faster
// than avx512bf16); below it amx runs the avx512bf16 code. SparseLinear's planner names the
// same thresholds (AMX_FROM); scripts/isa_crossover.py measures them.
inline bool runs_amx_tiles(Isa isa, ValueType values, ActType act, int64_t batch, int64_t amx_from) {
  return isa == Isa::amx && values == ValueType::bf16 && act == ActType::bf16 && batch >= amx_from;
}

// Dense activations and output.
//   x    [batch x cols] of act_type, row b starts b * x_row_stride elements in, columns
//        contiguous.
//   bias [rows] float or nullptr.
//   y    [batch x rows] of act_type, contiguous, fully overwritten.
//   workspace: the family's workspace_floats(...) floats, 64-byte aligned; may be nullptr
//   when that size is 0.
// The per-ISA kernels read float32 activations (x_f32, y_f32); each family's dispatch widens
// bfloat16 activations for them (linear_dispatch.h) until a variant reads bf16 itself.
struct DenseArgs {
  const void* x = nullptr;
  ActType act_type = ActType::f32;
  int64_t batch = 0;
  int64_t x_row_stride = 0;
  const float* bias = nullptr;
  void* y = nullptr;
  float* workspace = nullptr;
  int num_threads = 1;
  // Cache blocking (tile_params.h); the dispatchers sanitize it before a kernel reads it.
  TileParams tiles;

  const float* x_f32() const { return static_cast<const float*>(x); }
  float* y_f32() const { return static_cast<float*>(y); }
};

}  // namespace sparsekern::cpu
