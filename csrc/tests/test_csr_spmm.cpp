// C++ kernel tests: every ISA variant this CPU supports against a float64 reference, on
// edge shapes (batch 0/1/odd, empty rows, odd and prime sizes, uint16 and int32 indices,
// fp32 and bf16 values, strided x, no bias). Exit code 0 when all pass.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "csr_spmm.h"

using namespace sparsekern::cpu;

namespace {

struct Case {
  int64_t rows, cols, batch;
  double density;
  IndexType index_type;
  ValueType value_type;
  bool bias;
  int64_t x_pad;  // extra floats per x row: a strided input
};

uint16_t to_bf16(float f) {  // round to nearest even
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return uint16_t((u + 0x7FFF + ((u >> 16) & 1)) >> 16);
}
float from_bf16(uint16_t b) {
  uint32_t u = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

int failures = 0;

void run_case(const Case& c, Isa isa, std::mt19937& rng) {
  std::uniform_real_distribution<float> unit(0.f, 1.f);
  std::vector<int64_t> row_ptr{0};
  std::vector<int32_t> cols32;
  std::vector<float> vals;
  for (int64_t r = 0; r < c.rows; ++r) {
    const bool empty_row = r % 7 == 3;  // rows with no nonzeros must still get the bias
    for (int64_t k = 0; k < c.cols; ++k)
      if (!empty_row && unit(rng) < c.density) {
        cols32.push_back(int32_t(k));
        const float v = (1.f + unit(rng)) * (unit(rng) < 0.5f ? -1.f : 1.f);
        vals.push_back(c.value_type == ValueType::bf16 ? from_bf16(to_bf16(v)) : v);
      }
    row_ptr.push_back(int64_t(cols32.size()));
  }
  std::vector<uint16_t> cols16(cols32.begin(), cols32.end()), vals16;
  for (float v : vals) vals16.push_back(to_bf16(v));
  const int64_t stride = c.cols + c.x_pad;
  std::vector<float> x(size_t(std::max<int64_t>(c.batch * stride, 1))), bias(size_t(c.rows));
  for (auto& v : x) v = unit(rng) * 2.f - 1.f;
  for (auto& v : bias) v = unit(rng);

  CsrMatrix w;
  w.rows = c.rows;
  w.cols = c.cols;
  w.row_ptr = row_ptr.data();
  w.index_type = c.index_type;
  w.col_idx = c.index_type == IndexType::u16 ? (const void*)cols16.data() : (const void*)cols32.data();
  w.value_type = c.value_type;
  w.values = c.value_type == ValueType::f32 ? (const void*)vals.data() : (const void*)vals16.data();

  std::vector<float> y(size_t(c.batch * c.rows), NAN);
  const int64_t ws_floats = csr_spmm_workspace_floats(isa, c.batch, c.cols);
  float* ws = static_cast<float*>(std::aligned_alloc(64, size_t((ws_floats + 16) * 4)));
  DenseArgs a;
  a.x = x.data();
  a.batch = c.batch;
  a.x_row_stride = stride;
  a.bias = c.bias ? bias.data() : nullptr;
  a.y = y.data();
  a.workspace = ws;
  a.num_threads = 2;
  csr_spmm_f32(isa, w, a);
  std::free(ws);

  for (int64_t b = 0; b < c.batch; ++b)
    for (int64_t r = 0; r < c.rows; ++r) {
      double ref = c.bias ? bias[size_t(r)] : 0.0, mag = std::fabs(ref);
      for (int64_t j = row_ptr[size_t(r)]; j < row_ptr[size_t(r) + 1]; ++j) {
        const double term = double(vals[size_t(j)]) * x[size_t(b * stride + cols32[size_t(j)])];
        ref += term;
        mag += std::fabs(term);
      }
      // fp32 accumulation error grows like sqrt(terms) times the magnitude of the sum.
      const double n = double(row_ptr[size_t(r) + 1] - row_ptr[size_t(r)]) + 1;
      const double tol = 1e-6 * std::sqrt(n) * (mag + 1.0) * 4;
      const double got = y[size_t(b * c.rows + r)];
      if (!(std::fabs(got - ref) <= tol)) {
        if (failures++ < 10)
          std::printf("FAIL isa=%d rows=%lld cols=%lld batch=%lld idx=%d val=%d b=%lld r=%lld got=%g ref=%g\n",
                      int(isa), (long long)c.rows, (long long)c.cols, (long long)c.batch,
                      int(c.index_type), int(c.value_type), (long long)b, (long long)r, got, ref);
        return;
      }
    }
}

}  // namespace

int main() {
  std::mt19937 rng(1234);
  const int64_t batches[] = {0, 1, 2, 7, 16, 17, 33, 64, 65, 130};
  const int64_t shapes[][2] = {{1, 1}, {5, 3}, {13, 97}, {64, 64}, {31, 257}, {4, 70000}};
  const double densities[] = {0.0, 0.05, 0.5, 1.0};
  int cases = 0;
  for (Isa isa : {Isa::scalar, Isa::avx2, Isa::avx512}) {
    if (!cpu_supports(isa)) {
      std::printf("skip ISA %d: not supported by this CPU\n", int(isa));
      continue;
    }
    for (const auto& s : shapes)
      for (int64_t batch : batches)
        for (double density : densities)
          for (IndexType it : {IndexType::u16, IndexType::i32})
            for (ValueType vt : {ValueType::f32, ValueType::bf16}) {
              if (it == IndexType::u16 && s[1] > 65536) continue;
              if (s[1] > 65536 && (batch > 17 || density > 0.05)) continue;  // keep it quick
              const bool bias = (cases % 3) != 0;
              run_case({s[0], s[1], batch, density, it, vt, bias, cases % 2 ? 0 : 5}, isa, rng);
              ++cases;
            }
  }
  // Block remainders of the vectorized paths: rows 1..17 and around the output row blocks
  // (32 and 64 rows), batches around the tiles (16 and 32 lanes), and row lengths around the
  // 8- and 16-lane pieces of the batch-1 dot product (dense rows of 7..33 columns).
  for (Isa isa : {Isa::avx2, Isa::avx512}) {
    if (!cpu_supports(isa)) continue;
    for (int64_t rows = 1; rows <= 130; rows += rows < 17 ? 1 : 16)
      for (int64_t cols : {7, 8, 9, 16, 17, 24, 33})
        for (int64_t batch : {1, 2, 15, 16, 17, 31, 32, 33, 64, 65})
          for (double density : {0.5, 1.0}) {
            const IndexType it = cases % 2 ? IndexType::u16 : IndexType::i32;
            const ValueType vt = cases % 3 ? ValueType::f32 : ValueType::bf16;
            run_case({rows, cols, batch, density, it, vt, cases % 5 != 0, cases % 4 ? 0 : 3}, isa, rng);
            ++cases;
          }
  }
  std::printf("%d cases, %d failed\n", cases, failures);
  return failures == 0 ? 0 : 1;
}
