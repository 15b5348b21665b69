// Bitmap-sparse products for SparseLinear(format="bitmap") on the CPU: y = x @ W.T + bias.
//
// Framework-free: raw pointers and sizes, no allocation, no environment, no printing.
// The caller (csrc/python) has checked every size; these functions trust them.
//
// Layout (sparsekern/formats/bitmap.py, docs/format.md): blocks of one output row x 32
// inputs, one uint32 word each. Bit j of word w of row r says whether column 32w + j is kept;
// the kept values follow row-major in mask order. 32-bit words rather than 16: one word is
// two AVX-512 masks or four AVX2 ones, one tzcnt loop of the batched path covers 32 columns,
// and a row pads at most 31 bits (4 bytes). Per-row offsets into the values let every thread
// start at any row without a prefix sum over the popcounts before it.
#pragma once

#include <cstdint>

#include "linear_args.h"

namespace sparsekern::cpu {

struct BitmapMatrix {
  int64_t rows = 0;
  int64_t cols = 0;  // at most 2^25: the batched path keeps int32 offsets col * 64
  // [rows x bitmap_words(cols)] uint32, row-major. Bits past cols in a row's last word are 0.
  const uint32_t* bits = nullptr;
  // [rows + 1] int64: offsets[0] == 0, offsets[r + 1] - offsets[r] == popcount of row r's
  // words, offsets[rows] == nnz.
  const int64_t* offsets = nullptr;
  // [nnz] float (ValueType::f32) or bfloat16 bits as uint16_t (ValueType::bf16): the kept
  // weights of row r, in column order, at offsets[r] .. offsets[r + 1].
  const void* values = nullptr;
  ValueType value_type = ValueType::f32;
};

inline int64_t bitmap_words(int64_t cols) { return (cols + 31) / 32; }

// The per-ISA variants (linear_dispatch.h), each defined in bitmap_linear_<isa>.cpp. The
// batched path copies x into the workspace once per call, transposed into tiles of batch rows.
struct BitmapFamily {
  using Matrix = BitmapMatrix;
  template <Isa isa>
  static void run(const BitmapMatrix& w, const DenseArgs& a);
  template <Isa isa>
  static int64_t workspace_floats(const BitmapMatrix& w, int64_t batch, int num_threads);
  // avx512bf16 reads bf16 activations itself (vdpbf16ps, bitmap_linear_bf16.h) when the values
  // are bf16 too, at every batch (kBf16From); every other case is widened by the dispatch.
  // amx reads them there too: on tiles from kAmxFrom rows (below; amx_linear.h), below that with
  // avx512bf16's code.
  static bool reads_bf16(Isa isa, const BitmapMatrix& w, int64_t batch) {
    return (isa == Isa::avx512bf16 || isa == Isa::amx) && w.value_type == ValueType::bf16 && batch >= kBf16From;
  }
  // Whether a call of the amx variant multiplies on tiles.
  static bool runs_tiles(Isa isa, const BitmapMatrix& w, ActType act, int64_t batch) {
    return runs_amx_tiles(isa, w.value_type, act, batch, kAmxFrom);
  }
  // Batch from which amx's tiles beat avx512bf16's code: scripts/isa_crossover.py on an Intel
  // Xeon (family 6, model 207, AMX-BF16), 2 threads, 4096 x 4096 bf16 at 50%, amx over
  // avx512bf16: 1.00x at batch 16, 2.08x at 32, 2.27x at 64, 3.00x at 128.
  static constexpr int64_t kAmxFrom = 32;
  // Native from batch 1: the direct path that first did batch 1-4 natively (one row of W and
  // up to 4 of x per pass) ran 1.4-1.8x faster than the fp32 direct path on widened x, and its
  // successor (bitmap_linear_bf16_grouped.h) is faster still from batch 2 (Zen 5, 4096 x 4096,
  // 2 threads).
  static constexpr int64_t kBf16From = 1;
};

// As for CsrMatrix (csr_spmm.h): overloads by matrix type.
int64_t workspace_floats(Isa isa, const BitmapMatrix& w, int64_t batch, ActType act, int num_threads);
void linear(Isa isa, const BitmapMatrix& w, const DenseArgs& a);

}  // namespace sparsekern::cpu
