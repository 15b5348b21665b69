// 2:4 semi-structured products for SparseLinear(format="2:4") on the CPU: y = x @ W.T + bias.
//
// Framework-free: raw pointers and sizes, no allocation, no environment, no printing.
// The caller (csrc/python) has checked every size; these functions trust them.
#pragma once

#include <cstdint>

#include "linear_args.h"

namespace sparsekern::cpu {

struct Nm24Lanes;  // nm24_lanes.h

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
  // Optional: the same bf16 matrix laid out 16 rows per zmm (nm24_lanes.h), which the
  // avx512bf16 variant needs for batches from Nm24Family::kNm24LanesFrom; without it they
  // take the small-batch path.
  const Nm24Lanes* lanes = nullptr;
};

inline int64_t nm24_meta_bytes(int64_t cols) { return (cols / 4 + 1) / 2; }

// The per-ISA variants (linear_dispatch.h), each defined in nm24_linear_<isa>.cpp. The batched
// path decodes blocks of W per thread into the workspace.
struct Nm24Family {
  using Matrix = Nm24Matrix;
  template <Isa isa>
  static void run(const Nm24Matrix& w, const DenseArgs& a);
  template <Isa isa>
  static int64_t workspace_floats(const Nm24Matrix& w, int64_t batch, int num_threads);
  // avx512bf16 reads bf16 activations itself (vdpbf16ps, nm24_linear_bf16.h) when the values
  // are bf16 too; every other case is widened to float32 by the dispatch. amx reads them too:
  // on tiles from kAmxFrom rows (below; amx_linear.h), below that with avx512bf16's code.
  static bool reads_bf16(Isa isa, const Nm24Matrix& w, int64_t /*batch: any*/) {
    return (isa == Isa::avx512bf16 || isa == Isa::amx) && w.value_type == ValueType::bf16;
  }
  // Whether a call of the amx variant multiplies on tiles.
  static bool runs_tiles(Isa isa, const Nm24Matrix& w, ActType act, int64_t batch) {
    return runs_amx_tiles(isa, w.value_type, act, batch, kAmxFrom);
  }
  // Batch from which amx's tiles beat avx512bf16's code: scripts/isa_crossover.py on an Intel
  // Xeon (family 6, model 207, AMX-BF16), 2 threads, 4096 x 4096 bf16, amx over avx512bf16:
  // 0.99x at batch 16, 0.54x at 32, 0.87x at 64, 1.35x at 128. (32, the first guess, lost.)
  static constexpr int64_t kAmxFrom = 128;
  // Whether a call would run the rows-in-lanes kernel (nm24_linear_bf16_lanes.h), given
  // Nm24Matrix::lanes: the owner of the matrix builds that copy when this first says so.
  static bool wants_lanes(Isa isa, const Nm24Matrix& w, ActType act, int64_t batch) {
    return reads_bf16(isa, w, batch) && act == ActType::bf16 && batch >= kNm24LanesFrom &&
           !runs_tiles(isa, w, act, batch);
  }
  // Batch from which the rows-in-lanes kernel beats the small-batch one. C++ A/B, the two
  // kernels' calls alternated, 2 threads, Zen 5 (2026-12-03, after the small-batch path's
  // unrolling), small-batch time / rows-in-lanes time over 4096 x 4096, 11008 x 4096,
  // 4096 x 11008, 2048 x 5632, 768 x 3072 and 3072 x 768, W in cache and from DRAM: batch 1
  // 0.65-1.06, batch 2 0.87-1.83, batch 3 1.02-2.19, batch 4 1.00-2.02. (Before the
  // unrolling, measured against dense in Python, the small-batch path had won up to batch 4.)
  static constexpr int64_t kNm24LanesFrom = 3;
};

// As for CsrMatrix (csr_spmm.h): overloads by matrix type.
int64_t workspace_floats(Isa isa, const Nm24Matrix& w, int64_t batch, ActType act, int num_threads);
void linear(Isa isa, const Nm24Matrix& w, const DenseArgs& a);

}  // namespace sparsekern::cpu
