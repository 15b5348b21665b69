// C++ 2:4 kernel tests: every ISA variant this CPU supports against a float64 reference, on
// edge shapes (batch 0/1 and both sides of the batched-path threshold, cols 0/4/12 and not a
// multiple of the vector width, odd rows, 1:4 rows padded with zero values, fp32 and bf16
// values, strided x, no bias). Exit code 0 when all pass.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "nm24_linear.h"

using namespace sparsekern::cpu;

namespace {

struct Case {
  int64_t rows, cols, batch;
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
  const int64_t groups = c.cols / 4, meta_bytes = nm24_meta_bytes(c.cols);
  std::vector<float> vals(size_t(c.rows * c.cols / 2));
  std::vector<uint8_t> meta(size_t(c.rows * meta_bytes), 0);
  std::vector<int32_t> col_of(vals.size());  // column of each stored value, for the reference
  for (int64_t r = 0; r < c.rows; ++r)
    for (int64_t g = 0; g < groups; ++g) {
      int p0 = int(rng() % 4), p1 = int(rng() % 3);
      if (p1 >= p0) ++p1;
      if (p0 > p1) std::swap(p0, p1);
      meta[size_t(r * meta_bytes + g / 2)] |= uint8_t((p0 | p1 << 2) << (4 * (g % 2)));
      for (int h = 0; h < 2; ++h) {
        const size_t j = size_t(r * c.cols / 2 + 2 * g + h);
        float v = (1.f + unit(rng)) * (unit(rng) < 0.5f ? -1.f : 1.f);
        if (r % 5 == 2 && h == 1) v = 0.f;  // a 1:4 row: the second value is padding
        vals[j] = c.value_type == ValueType::bf16 ? from_bf16(to_bf16(v)) : v;
        col_of[j] = int32_t(4 * g + (h ? p1 : p0));
      }
    }
  std::vector<uint16_t> vals16;
  for (float v : vals) vals16.push_back(to_bf16(v));
  const int64_t stride = c.cols + c.x_pad;
  std::vector<float> x(size_t(std::max<int64_t>(c.batch * stride, 1))), bias(size_t(c.rows));
  for (auto& v : x) v = unit(rng) * 2.f - 1.f;
  for (auto& v : bias) v = unit(rng);

  Nm24Matrix w;
  w.rows = c.rows;
  w.cols = c.cols;
  w.value_type = c.value_type;
  w.values = c.value_type == ValueType::f32 ? (const void*)vals.data() : (const void*)vals16.data();
  w.meta = meta.data();

  std::vector<float> y(size_t(c.batch * c.rows), NAN);
  const int threads = 2;
  const int64_t ws_floats = nm24_linear_workspace_floats(isa, c.batch, threads);
  float* ws = static_cast<float*>(std::aligned_alloc(64, size_t((ws_floats + 16) * 4)));
  DenseArgs a;
  a.x = x.data();
  a.batch = c.batch;
  a.x_row_stride = stride;
  a.bias = c.bias ? bias.data() : nullptr;
  a.y = y.data();
  a.workspace = ws;
  a.num_threads = threads;
  nm24_linear_f32(isa, w, a);
  std::free(ws);

  for (int64_t b = 0; b < c.batch; ++b)
    for (int64_t r = 0; r < c.rows; ++r) {
      double ref = c.bias ? bias[size_t(r)] : 0.0, mag = std::fabs(ref);
      for (int64_t j = r * c.cols / 2; j < (r + 1) * c.cols / 2; ++j) {
        const double term = double(vals[size_t(j)]) * x[size_t(b * stride + col_of[size_t(j)])];
        ref += term;
        mag += std::fabs(term);
      }
      // fp32 accumulation error grows like sqrt(terms) times the magnitude of the sum.
      const double tol = 1e-6 * std::sqrt(double(c.cols / 2 + 1)) * (mag + 1.0) * 4;
      const double got = y[size_t(b * c.rows + r)];
      if (!(std::fabs(got - ref) <= tol)) {
        if (failures++ < 10)
          std::printf("FAIL isa=%d rows=%lld cols=%lld batch=%lld val=%d b=%lld r=%lld got=%g ref=%g\n",
                      int(isa), (long long)c.rows, (long long)c.cols, (long long)c.batch,
                      int(c.value_type), (long long)b, (long long)r, got, ref);
        return;
      }
    }
}

}  // namespace

int main() {
  std::mt19937 rng(1234);
  const int64_t batches[] = {0, 1, 2, 3, 4, 7, 8, 9, 17, 70};
  const int64_t shapes[][2] = {{1, 4}, {3, 12}, {5, 0}, {7, 36}, {33, 100}, {64, 64}, {17, 1040}, {40, 2052}};
  int cases = 0;
  for (Isa isa : {Isa::scalar, Isa::avx2, Isa::avx512}) {
    if (!cpu_supports(isa)) {
      std::printf("skip ISA %d: not supported by this CPU\n", int(isa));
      continue;
    }
    for (const auto& s : shapes)
      for (int64_t batch : batches)
        for (ValueType vt : {ValueType::f32, ValueType::bf16}) {
          const bool bias = (cases % 3) != 0;
          run_case({s[0], s[1], batch, vt, bias, cases % 2 ? 0 : 5}, isa, rng);
          ++cases;
        }
  }
  std::printf("%d cases, %d failed\n", cases, failures);
  return failures == 0 ? 0 : 1;
}
