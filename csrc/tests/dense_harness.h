// What every C++ kernel test shares: bf16 conversion, random activations and bias, the caller's
// side of a kernel call (workspace, DenseArgs), and the float64 reference check.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <utility>
#include <vector>

#include "linear_args.h"

namespace sparsekern::test {

inline uint16_t to_bf16(float f) {  // round to nearest even
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return uint16_t((u + 0x7FFF + ((u >> 16) & 1)) >> 16);
}

inline float from_bf16(uint16_t b) {
  uint32_t u = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// A nonzero weight as the tests generate it: 1 + rand with a random sign, never zero, and
// already rounded to bf16 when the kernel will read bf16 (so the reference sees what it sees).
inline float random_weight(std::mt19937& rng, bool bf16) {
  std::uniform_real_distribution<float> unit(0.f, 1.f);
  const float v = (1.f + unit(rng)) * (unit(rng) < 0.5f ? -1.f : 1.f);
  return bf16 ? from_bf16(to_bf16(v)) : v;
}

// The weight as the reference reads it: per output row, its (value, column) terms.
using RowTerms = std::vector<std::vector<std::pair<float, int64_t>>>;

struct DenseCase {
  int64_t rows, cols, batch;
  bool bias;
  int64_t x_pad;  // extra elements per x row: a strided input
  cpu::ActType act = cpu::ActType::f32;  // bf16: x rounded to bf16 and passed as bits, y read back
};

inline int failures = 0;

// The cache tiles run_and_check passes the kernels (tile_params.h): the tests sweep several,
// tiny and odd ones included, since any tiles must give the same products (the fifth field
// switches the 2:4 register path on for some batches; the sixth makes the bitmap batched path's
// column chunks one word, one or two words by the tile's width, or never chunked).
inline cpu::TileParams tiles_under_test;

// Tile sets the tests sweep besides the defaults: the smallest legal tiles, odd sizes the
// dispatchers round, and sizes far beyond any cache that they clamp.
inline std::vector<cpu::TileParams> extra_tile_sets() {
  return {{2, 16, 1, 32, 8, 1}, {7, 36, 5, 100, 5, 10000}, {100000, 1 << 20, 100000, 1 << 20, 100, 1 << 30}};
}

// The ISA variants to test: every one this CPU runs; the others are named as skipped.
inline std::vector<cpu::Isa> runnable_isas() {
  std::vector<cpu::Isa> isas;
  for (cpu::Isa isa : cpu::kAllIsas) {
    if (cpu::cpu_supports(isa)) isas.push_back(isa);
    else std::printf("skip ISA %s: this CPU lacks some of '%s'\n", cpu::isa_name(isa), cpu::isa_features(isa));
  }
  return isas;
}

// Runs kernel(DenseArgs) on random x (and bias) with `workspace_floats` of 64-byte-aligned
// workspace and 2 threads, then checks y against the float64 reference of `terms`. fp32
// accumulation error grows like sqrt(terms) times the magnitude of the sum, hence the tolerance;
// a bf16 output adds its own rounding (half a unit in the last place: 2^-8 relative).
template <typename Kernel>
void run_and_check(const DenseCase& c, const RowTerms& terms, int64_t workspace_floats, std::mt19937& rng,
                   Kernel&& kernel, const char* label) {
  std::uniform_real_distribution<float> unit(0.f, 1.f);
  const int64_t stride = c.cols + c.x_pad;
  const bool bf16 = c.act == cpu::ActType::bf16;
  std::vector<float> x(size_t(std::max<int64_t>(c.batch * stride, 1))), bias(size_t(c.rows));
  std::vector<uint16_t> x16(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    x16[i] = to_bf16(unit(rng) * 2.f - 1.f);
    x[i] = bf16 ? from_bf16(x16[i]) : unit(rng) * 2.f - 1.f;
    // NaN between the rows of a strided x: a kernel that reads past cols, even to multiply
    // it by a zero weight, fails.
    if (c.x_pad > 0 && int64_t(i) % stride >= c.cols) x[i] = NAN, x16[i] = 0x7FC0;
  }
  for (auto& v : bias) v = unit(rng);
  std::vector<float> y(size_t(c.batch * c.rows), NAN);
  std::vector<uint16_t> y16(y.size(), 0x7FC0);  // NaN
  float* workspace = static_cast<float*>(std::aligned_alloc(64, size_t((workspace_floats + 16) * 4)));
  cpu::DenseArgs a;
  a.x = bf16 ? static_cast<const void*>(x16.data()) : x.data();
  a.act_type = c.act;
  a.batch = c.batch;
  a.x_row_stride = stride;
  a.bias = c.bias ? bias.data() : nullptr;
  a.y = bf16 ? static_cast<void*>(y16.data()) : y.data();
  a.workspace = workspace;
  a.num_threads = 2;
  a.tiles = tiles_under_test;
  kernel(a);
  std::free(workspace);
  if (bf16)
    for (size_t i = 0; i < y.size(); ++i) y[i] = from_bf16(y16[i]);

  for (int64_t b = 0; b < c.batch; ++b)
    for (int64_t r = 0; r < c.rows; ++r) {
      double ref = c.bias ? bias[size_t(r)] : 0.0, mag = std::fabs(ref);
      for (const auto& [value, col] : terms[size_t(r)]) {
        const double term = double(value) * x[size_t(b * stride + col)];
        ref += term;
        mag += std::fabs(term);
      }
      const double tol = 4e-6 * std::sqrt(double(terms[size_t(r)].size()) + 1) * (mag + 1.0) +
                         (bf16 ? std::ldexp(std::fabs(ref), -8) : 0.0);
      const double got = y[size_t(b * c.rows + r)];
      if (!(std::fabs(got - ref) <= tol)) {
        if (failures++ < 10)
          std::printf("FAIL %s act=%d rows=%lld cols=%lld batch=%lld b=%lld r=%lld got=%g ref=%g\n", label,
                      int(c.act), (long long)c.rows, (long long)c.cols, (long long)c.batch, (long long)b,
                      (long long)r, got, ref);
        return;
      }
    }
}

}  // namespace sparsekern::test
