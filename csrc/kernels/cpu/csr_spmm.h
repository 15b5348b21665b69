// CSR sparse x dense products for SparseLinear on the CPU: y = x @ W.T + bias.
//
// Framework-free: raw pointers and sizes, no allocation, no environment, no printing.
// The caller (csrc/python) has checked every size; these functions trust them.
#pragma once

#include <algorithm>
#include <cstdint>

#include "linear_args.h"

namespace sparsekern::cpu {

struct CsrChunks;  // csr_chunks.h

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
  // Optional: the same matrix regrouped by column chunks (csr_chunks.h), which the batched
  // paths (native bf16 and float32) read instead of the buffers above when it is given.
  const CsrChunks* chunks = nullptr;
};

// The per-ISA variants (linear_dispatch.h), each defined in csr_spmm_<isa>.cpp. The batched
// path's workspace is the transposed, batch-tiled copy of x it vectorizes over.
struct CsrFamily {
  using Matrix = CsrMatrix;
  template <Isa isa>
  static void run(const CsrMatrix& w, const DenseArgs& a);
  template <Isa isa>
  static int64_t workspace_floats(const CsrMatrix& w, int64_t batch, int num_threads);
  // avx512bf16 reads bf16 activations itself (vdpbf16ps, csr_spmm_bf16.h) when the values are
  // bf16 too and the batch is kBf16From or more; every other case is widened by the dispatch.
  // amx runs avx512bf16's code (CSR has no tile path).
  static bool reads_bf16(Isa isa, const CsrMatrix& w, int64_t batch) {
    return (isa == Isa::avx512bf16 || isa == Isa::amx) && w.value_type == ValueType::bf16 && batch >= kBf16From;
  }
  static constexpr int64_t kBf16From = 2;
  // Bytes per column of W of the transposed x tiles that one pass over a row reads in the
  // batched paths: the native bf16 path (bf16_pair_tiles.h) 16 bf16 batch rows up to batch 16,
  // 32 up to 32, two tiles of 32 above; the float32 path (csr_spmm_simd.h) one or two vectors
  // of floats, as many as the batch needs.
  static int64_t tile_bytes_per_col(Isa isa, const CsrMatrix& w, ActType act, int64_t batch) {
    if (act == ActType::bf16 && reads_bf16(isa, w, batch)) return batch <= 16 ? 32 : batch <= 32 ? 64 : 128;
    const int64_t width = isa == Isa::avx2 ? 8 : 16;
    return std::min<int64_t>((batch + width - 1) / width, 2) * width * 4;
  }
  // Whether a call would read CsrMatrix::chunks: the owner of the matrix builds that copy when
  // this first says so. Batched calls of the vector ISAs (the scalar variant ignores the copy).
  // Each row pays a partial sum per chunk, so the copy is only for matrices with a fifth of
  // their weights kept or more, and only where the tiles of x that one pass reads outgrow L1
  // (with fewer columns they stay there anyway). Chunked over unchunked time, C++ A/B, Zen 4
  // (32 KiB L1d), 2 threads, native bf16 path, batches 2, 16, 64 (and 32, 33, 256 at 4096 x
  // 4096):
  // - 4096 x 4096: 1.31-1.69x at 50% sparsity, 1.10-1.60x at 70%, 1.02-1.26x at 80%; at 85%
  //   0.93-1.08x, at 90% 0.68-0.94x.
  // - 11008 x 4096, 4096 x 11008, 5632 x 2048, 2048 x 5632 at 50% and 70%: 1.13-1.75x.
  // - 768 x 3072 (as those, one 16-row tile outgrows L1): 1.07-1.41x.
  // - 3072 x 768 and 1024 x 1024 at batch 2 and 16 (one 16-row tile fits): 0.90-1.03x; at 64
  //   (two 32-row tiles do not fit): 1.09-1.24x.
  // The float32 path (avx512 code, float32 values and activations), batches 2, 16, 17, 64
  //   (and 256 at 4096 x 4096): 4096 x 4096 1.33-1.59x at 50%, 1.16-1.32x at 70%, 1.07-1.18x
  //   at 80%, 0.83-1.00x at 90%; 11008 x 4096, 4096 x 11008 1.21-1.58x; 768 x 3072, 3072 x
  //   768 at 70% and 1024 x 1024 at 50%, 0.96-1.44x.
  static bool wants_chunks(Isa isa, const CsrMatrix& w, ActType act, int64_t batch) {
    return isa != Isa::scalar && batch >= 2 && 5 * w.row_ptr[w.rows] >= w.rows * w.cols &&
           w.cols * tile_bytes_per_col(isa, w, act, batch) > l1d_or_default(cpu_caches());
  }
};

// Floats of 64-byte-aligned workspace `linear` needs for this ISA, batch and activation type.
int64_t workspace_floats(Isa isa, const CsrMatrix& w, int64_t batch, ActType act, int num_threads);
// y = x @ W.T + bias with the ISA's variant (tests call each ISA through this).
void linear(Isa isa, const CsrMatrix& w, const DenseArgs& a);

}  // namespace sparsekern::cpu
