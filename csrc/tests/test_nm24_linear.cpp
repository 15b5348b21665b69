// C++ 2:4 kernel tests: every ISA variant this CPU supports against a float64 reference, on
// edge shapes (batch 0/1 and both sides of the batched-path threshold, cols 0/4/12 and not a
// multiple of the vector width, odd rows, 1:4 rows padded with zero values, fp32 and bf16
// values, fp32 and bf16 activations, strided x, no bias), and the native bf16 path's own edges.
// Exit code 0 when all pass.
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "forced_variants.h"
#include "dense_harness.h"
#include "nm24_lanes.h"
#include "nm24_linear.h"

using namespace sparsekern::cpu;
using namespace sparsekern::test;

namespace {

struct Case {
  int64_t rows, cols, batch;
  ValueType value_type;
  bool bias;
  int64_t x_pad;
  ActType act;
  // bf16 values: give the matrix its rows-in-lanes copy (nm24_lanes.h), as the Python module
  // does for a layer's kernel; without it the avx512bf16 variant runs its small-batch path.
  bool lanes = true;
  // Run the tile kernel on emulated tiles (forced_variants.h) instead of the ISA's variant.
  bool emulated_tiles = false;
};

void run_case(const Case& c, Isa isa, std::mt19937& rng) {
  const bool bf16 = c.value_type == ValueType::bf16;
  const int64_t groups = c.cols / 4, meta_bytes = nm24_meta_bytes(c.cols);
  std::vector<float> vals(size_t(c.rows * c.cols / 2));
  std::vector<uint8_t> meta(size_t(c.rows * meta_bytes), 0);
  RowTerms terms(size_t(c.rows));
  for (int64_t r = 0; r < c.rows; ++r)
    for (int64_t g = 0; g < groups; ++g) {
      int p0 = int(rng() % 4), p1 = int(rng() % 3);
      if (p1 >= p0) ++p1;
      if (p0 > p1) std::swap(p0, p1);
      meta[size_t(r * meta_bytes + g / 2)] |= uint8_t((p0 | p1 << 2) << (4 * (g % 2)));
      for (int h = 0; h < 2; ++h) {
        const size_t j = size_t(r * c.cols / 2 + 2 * g + h);
        // A 1:4 row every five: its second value in each group is the zero padding.
        vals[j] = r % 5 == 2 && h == 1 ? 0.f : random_weight(rng, bf16);
        terms[size_t(r)].emplace_back(vals[j], 4 * g + (h ? p1 : p0));
      }
    }
  std::vector<uint16_t> vals16;
  for (float v : vals) vals16.push_back(to_bf16(v));

  Nm24Matrix w;
  w.rows = c.rows;
  w.cols = c.cols;
  w.value_type = c.value_type;
  w.values = bf16 ? (const void*)vals16.data() : (const void*)vals.data();
  w.meta = meta.data();
  Nm24Lanes lanes;
  if (bf16 && c.lanes) {
    lanes = build_nm24_lanes(w);
    w.lanes = &lanes;
  }
  if (c.emulated_tiles) {
    run_and_check({c.rows, c.cols, c.batch, c.bias, c.x_pad, c.act}, terms,
                  amx_emulated_workspace_floats(c.cols, c.batch, 2), rng,
                  [&](const DenseArgs& a) { amx_emulated_linear(w, a); }, "2:4 emulated tiles");
    return;
  }
  const std::string label = std::string("2:4 isa=") + isa_name(isa) + " val=" + std::to_string(int(c.value_type));
  run_and_check({c.rows, c.cols, c.batch, c.bias, c.x_pad, c.act}, terms,
                workspace_floats(isa, w, c.batch, c.act, 2), rng,
                [&](const DenseArgs& a) { linear(isa, w, a); }, label.c_str());
}

}  // namespace

int main() {
  std::mt19937 rng(1234);
  const int64_t batches[] = {0, 1, 2, 3, 4, 7, 8, 9, 17, 70};
  const int64_t shapes[][2] = {{1, 4}, {3, 12}, {5, 0}, {7, 36}, {33, 100}, {64, 64}, {17, 1040}, {40, 2052}};
  int cases = 0;
  for (Isa isa : runnable_isas())
    for (const auto& s : shapes)
      for (int64_t batch : batches)
        for (ValueType vt : {ValueType::f32, ValueType::bf16}) {
          const bool bias = (cases % 3) != 0;
          const ActType act = cases % 4 == 1 ? ActType::bf16 : ActType::f32;
          run_case({s[0], s[1], batch, vt, bias, cases % 2 ? 0 : 5, act}, isa, rng);
          ++cases;
        }
  // Non-default tiles (2:4 block rows and columns, the register path's batches): batched calls
  // only, where they are read; blocks that split rows mid-tile and columns mid-row must still
  // add up, and the register path must give what the workspace path gives.
  for (const TileParams& tiles : extra_tile_sets()) {
    tiles_under_test = tiles;
    for (Isa isa : runnable_isas())
      for (const auto& s : shapes)
        for (int64_t batch : {int64_t(4), int64_t(5), int64_t(8), int64_t(9), int64_t(70)})
          for (ValueType vt : {ValueType::f32, ValueType::bf16}) {
            run_case({s[0], s[1], batch, vt, cases % 2 == 0, cases % 2 ? 0 : 5,
                      cases % 4 == 1 ? ActType::bf16 : ActType::f32}, isa, rng);
            ++cases;
          }
  }
  tiles_under_test = TileParams{};
  // bf16 values with bf16 activations, which avx512bf16 reads natively (nm24_linear_bf16.h):
  // rows not a multiple of its row tile or 16, cols a multiple of 4 but not of its 64-column
  // chunk, batches around its batch tile (8); for the rows-in-lanes path
  // (nm24_linear_bf16_lanes.h), batches around its threshold (Nm24Family::kNm24LanesFrom, 3)
  // and its tile (8), rows around its 16-row blocks and 48-row panels, cols around its block
  // of 64 groups (256 columns); and every batch once more without the copy.
  const int64_t bf16_batches[] = {1, 2, 3, 4, 5, 7, 8, 9, 13, 16, 17, 31, 32, 33, 64, 65};
  const int64_t bf16_shapes[][2] = {{1, 4},     {3, 60},    {15, 68},   {16, 64},  {17, 132}, {31, 1028},
                                    {33, 2052}, {48, 256},  {49, 260},  {50, 512}, {97, 516}, {20, 0}};
  for (Isa isa : runnable_isas())
    for (const auto& s : bf16_shapes)
      for (int64_t batch : bf16_batches)
        for (bool lanes : {true, false}) {
          run_case({s[0], s[1], batch, ValueType::bf16, batch % 2 == 1, batch % 3 ? 0 : 7, ActType::bf16, lanes},
                   isa, rng);
          ++cases;
        }
  // The amx variant's tile kernel (amx_linear.h) on emulated tiles, on the same shapes (rows
  // around its 32-row steps, cols around its 32-column tiles and 1024-column chunks) and
  // batches (around its 16-row A tiles and their pairs); the hardware variant runs above,
  // among the runnable ISAs, where the CPU has AMX.
  if (amx_emulation_runs()) {
    for (const auto& s : bf16_shapes)
      for (int64_t batch : bf16_batches) {
        Case c{s[0], s[1], batch, ValueType::bf16, batch % 2 == 1, batch % 3 ? 0 : 7, ActType::bf16};
        c.emulated_tiles = true;
        run_case(c, Isa::scalar, rng);
        ++cases;
      }
  } else {
    std::printf("skip the emulated tile kernel: this CPU lacks some of '%s' (besides AMX)\n", isa_features(Isa::amx));
  }
  std::printf("%d cases, %d failed\n", cases, failures);
  return failures == 0 ? 0 : 1;
}
