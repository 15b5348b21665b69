// C++ kernel tests: every ISA variant this CPU supports against a float64 reference, on
// edge shapes (batch 0/1/odd, empty rows, odd and prime sizes, uint16 and int32 indices,
// fp32 and bf16 values, fp32 and bf16 activations, strided x, no bias; with and without the
// column-chunked copy of csr_chunks.h). Exit code 0 when all pass.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "csr_chunks.h"
#include "csr_spmm.h"
#include "dense_harness.h"

using namespace sparsekern::cpu;
using namespace sparsekern::test;

namespace {

struct Case {
  int64_t rows, cols, batch;
  double density;
  IndexType index_type;
  ValueType value_type;
  bool bias;
  int64_t x_pad;
  ActType act = ActType::f32;
  // Give the matrix its column-chunked copy (csr_chunks.h), as the Python module does for a
  // layer's kernel when CsrFamily::wants_chunks says so (here whatever it says, so that every
  // shape meets the chunked paths).
  bool chunks = false;
};

// The copy's layout beside what the kernels' results check: with bf16 values every segment
// holds a whole kBf16SegmentAlign of entries, its nonzeros first and then zero weights at the
// last nonzero's column; with float32 values exactly its nonzeros.
void check_chunk_layout(const CsrMatrix& w, const std::vector<int32_t>& cols, const CsrChunks& c) {
  std::vector<int64_t> count(c.starts.size() - 1, 0);
  for (int64_t r = 0; r < w.rows; ++r)
    for (int64_t j = w.row_ptr[r]; j < w.row_ptr[r + 1]; ++j)
      ++count[size_t(c.segment(r, cols[size_t(j)] / kChunkCols))];
  const bool bf16 = w.value_type == ValueType::bf16;
  const int64_t align = bf16 ? kBf16SegmentAlign : 1;
  bool ok = c.starts.front() == 0 && int64_t(c.columns.size()) == c.starts.back();
  for (size_t e = 0; ok && e < count.size(); ++e) {
    const int64_t begin = c.starts[e], end = c.starts[e + 1], n = count[e];
    ok = end - begin == (n + align - 1) / align * align;
    for (int64_t at = begin + n; ok && at < end; ++at)
      ok = c.columns[size_t(at)] == c.columns[size_t(begin + n - 1)] && (bf16 ? c.values<uint16_t>()[at] == 0
                                                                               : c.values<float>()[at] == 0.f);
  }
  if (!ok && failures++ < 10)
    std::printf("FAIL chunk layout rows=%lld cols=%lld val=%d\n", (long long)w.rows, (long long)w.cols,
                int(w.value_type));
}

void run_case(const Case& c, Isa isa, std::mt19937& rng) {
  std::uniform_real_distribution<float> unit(0.f, 1.f);
  const bool bf16 = c.value_type == ValueType::bf16;
  std::vector<int64_t> row_ptr{0};
  std::vector<int32_t> cols32;
  std::vector<float> vals;
  RowTerms terms(size_t(c.rows));
  for (int64_t r = 0; r < c.rows; ++r) {
    const bool empty_row = r % 7 == 3;  // rows with no nonzeros must still get the bias
    for (int64_t k = 0; k < c.cols; ++k)
      if (!empty_row && unit(rng) < c.density) {
        cols32.push_back(int32_t(k));
        vals.push_back(random_weight(rng, bf16));
        terms[size_t(r)].emplace_back(vals.back(), k);
      }
    row_ptr.push_back(int64_t(cols32.size()));
  }
  if (c.chunks)  // columns in descending order: neither the kernels nor the copy may assume an order
    for (int64_t r = 0; r < c.rows; ++r) {
      std::reverse(cols32.begin() + row_ptr[r], cols32.begin() + row_ptr[r + 1]);
      std::reverse(vals.begin() + row_ptr[r], vals.begin() + row_ptr[r + 1]);
    }
  std::vector<uint16_t> cols16(cols32.begin(), cols32.end()), vals16;
  for (float v : vals) vals16.push_back(to_bf16(v));

  CsrMatrix w;
  w.rows = c.rows;
  w.cols = c.cols;
  w.row_ptr = row_ptr.data();
  w.index_type = c.index_type;
  w.col_idx = c.index_type == IndexType::u16 ? (const void*)cols16.data() : (const void*)cols32.data();
  w.value_type = c.value_type;
  w.values = bf16 ? (const void*)vals16.data() : (const void*)vals.data();
  CsrChunks chunks;
  if (c.chunks) {
    chunks = build_csr_chunks(w);
    w.chunks = &chunks;
    check_chunk_layout(w, cols32, chunks);
  }
  const std::string label = std::string("csr isa=") + isa_name(isa) + " idx=" + std::to_string(int(c.index_type)) +
                            " val=" + std::to_string(int(c.value_type)) + (w.chunks ? " chunks" : "");
  run_and_check({c.rows, c.cols, c.batch, c.bias, c.x_pad, c.act}, terms,
                workspace_floats(isa, w, c.batch, c.act, 2), rng,
                [&](const DenseArgs& a) { linear(isa, w, a); }, label.c_str());
}

}  // namespace

int main() {
  std::mt19937 rng(1234);
  const int64_t batches[] = {0, 1, 2, 7, 16, 17, 33, 64, 65, 130};
  const int64_t shapes[][2] = {{1, 1}, {5, 3}, {13, 97}, {64, 64}, {31, 257}, {4, 70000}};
  const double densities[] = {0.0, 0.05, 0.5, 1.0};
  int cases = 0;
  const std::vector<Isa> isas = runnable_isas();
  for (Isa isa : isas) {
    for (const auto& s : shapes)
      for (int64_t batch : batches)
        for (double density : densities)
          for (IndexType it : {IndexType::u16, IndexType::i32})
            for (ValueType vt : {ValueType::f32, ValueType::bf16}) {
              if (it == IndexType::u16 && s[1] > 65536) continue;
              if (s[1] > 65536 && (batch > 17 || density > 0.05)) continue;  // keep it quick
              const bool bias = (cases % 3) != 0;
              const ActType act = cases % 4 == 1 ? ActType::bf16 : ActType::f32;
              run_case({s[0], s[1], batch, density, it, vt, bias, cases % 2 ? 0 : 5, act, cases % 8 < 4}, isa, rng);
              ++cases;
            }
  }
  // Block remainders of the vectorized paths: rows 1..17 and around the output row blocks
  // (32 and 64 rows), batches around the tiles (16 and 32 lanes; bf16's pairs of 32-lane tiles
  // and a tile left over: 64, 65, 97), and row lengths around the 8- and 16-lane pieces of the
  // batch-1 dot product (dense rows of 7..33 columns). bf16 values meet bf16 activations (the
  // native path) in one case of six, with either index type.
  for (Isa isa : isas) {
    if (isa == Isa::scalar) continue;
    for (int64_t rows = 1; rows <= 130; rows += rows < 17 ? 1 : 16)
      for (int64_t cols : {7, 8, 9, 16, 17, 24, 33})
        for (int64_t batch : {1, 2, 15, 16, 17, 31, 32, 33, 64, 65, 97})
          for (double density : {0.5, 1.0}) {
            const IndexType it = cases % 2 ? IndexType::u16 : IndexType::i32;
            const ValueType vt = cases % 3 ? ValueType::f32 : ValueType::bf16;
            const ActType act = cases / 2 % 2 ? ActType::f32 : ActType::bf16;
            run_case({rows, cols, batch, density, it, vt, cases % 5 != 0, cases % 4 ? 0 : 3, act, cases % 8 < 4}, isa,
                     rng);
            ++cases;
          }
  }
  // The column-chunked copy (csr_chunks.h): columns around one and two chunks (kChunkCols,
  // 256), rows around its row blocks (kChunkRows, 32; threads split at block starts) and the
  // float32 path's 64-row blocks, batches around the tile widths; bf16 values with bf16
  // activations (the native path), and float32 or bf16 values with float32 activations.
  for (Isa isa : isas) {
    if (isa == Isa::scalar) continue;
    for (int64_t cols : {255, 256, 257, 511, 513, 1000})
      for (int64_t rows : {1, 31, 32, 33, 65, 97})
        for (int64_t batch : {2, 9, 16, 17, 33, 65}) {
          const IndexType it = cases % 2 ? IndexType::u16 : IndexType::i32;
          const int kind = cases % 3;  // bf16 values and activations, f32 values, bf16 values with f32 activations
          const ValueType vt = kind == 1 ? ValueType::f32 : ValueType::bf16;
          const ActType act = kind == 0 ? ActType::bf16 : ActType::f32;
          const double density = cases % 4 ? 0.3 : 1.0;
          run_case({rows, cols, batch, density, it, vt, cases % 5 != 0, cases % 4 ? 0 : 3, act, true}, isa, rng);
          ++cases;
        }
  }
  // Non-default tiles (the pack column block): batched calls only, where they are read.
  for (const TileParams& tiles : extra_tile_sets()) {
    tiles_under_test = tiles;
    for (Isa isa : isas)
      for (const auto& s : shapes)
        for (int64_t batch : {int64_t(2), int64_t(33), int64_t(130)}) {
          if (s[1] > 65536) continue;
          run_case({s[0], s[1], batch, 0.5, IndexType::i32, ValueType::f32, cases % 2 == 0, cases % 2 ? 0 : 5,
                    cases % 4 == 1 ? ActType::bf16 : ActType::f32}, isa, rng);
          ++cases;
        }
  }
  tiles_under_test = TileParams{};
  std::printf("%d cases, %d failed\n", cases, failures);
  return failures == 0 ? 0 : 1;
}
