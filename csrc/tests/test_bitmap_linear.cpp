// C++ bitmap kernel tests: every ISA variant this CPU supports against a float64 reference,
// on edge shapes: in_features around the 8/16/32-column chunks and words (1, 15, 17, 31, 33,
// 4097), empty and full rows, batch 0/1/3 and both sides of the batched-path threshold and
// of the tile widths (16, 32), fp32 and bf16 values and activations, strided x, no bias. Rows near the end
// of the values exercise the expands that may not read W values. Exit code 0 when all pass.
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "forced_variants.h"
#include "bitmap_linear.h"
#include "dense_harness.h"

using namespace sparsekern::cpu;
using namespace sparsekern::test;

namespace {

// The tile kernel on emulated tiles, the native bf16 paths' table expansion, or their split by
// the other CPUs' grouped rule.
enum class Forced { none, emulated_tiles, expansion_tables, other_grouped_rule };

struct Case {
  int64_t rows, cols, batch;
  double density;
  ValueType value_type;
  bool bias;
  int64_t x_pad;
  ActType act;
  // Run a variant the dispatch would not pick here (forced_variants.h) instead of the ISA's.
  Forced forced = Forced::none;
};

void run_case(const Case& c, Isa isa, std::mt19937& rng) {
  std::uniform_real_distribution<float> unit(0.f, 1.f);
  const bool bf16 = c.value_type == ValueType::bf16;
  const int64_t words = bitmap_words(c.cols);
  std::vector<uint32_t> bits(size_t(std::max<int64_t>(c.rows * words, 1)), 0);
  std::vector<int64_t> offsets{0};
  std::vector<float> vals;
  RowTerms terms(size_t(c.rows));
  for (int64_t r = 0; r < c.rows; ++r) {
    const bool empty_row = r % 7 == 3, full_row = r % 5 == 1;
    for (int64_t k = 0; k < c.cols; ++k)
      if (!empty_row && (full_row || unit(rng) < c.density)) {
        bits[size_t(r * words + k / 32)] |= 1u << (k % 32);
        vals.push_back(random_weight(rng, bf16));
        terms[size_t(r)].emplace_back(vals.back(), k);
      }
    offsets.push_back(int64_t(vals.size()));
  }
  // Exactly nnz values, so a read past them is a bug the sanitizers and page ends can see.
  std::vector<uint16_t> vals16;
  for (float v : vals) vals16.push_back(to_bf16(v));

  BitmapMatrix w;
  w.rows = c.rows;
  w.cols = c.cols;
  w.bits = bits.data();
  w.offsets = offsets.data();
  w.value_type = c.value_type;
  w.values = bf16 ? (const void*)vals16.data() : (const void*)vals.data();
  if (c.forced == Forced::expansion_tables) {
    run_and_check({c.rows, c.cols, c.batch, c.bias, c.x_pad, c.act}, terms,
                  bitmap_tables_workspace_floats(w, c.batch, 2), rng,
                  [&](const DenseArgs& a) { bitmap_tables_linear(w, a); }, "bitmap table expansion");
    return;
  }
  if (c.forced == Forced::emulated_tiles) {
    run_and_check({c.rows, c.cols, c.batch, c.bias, c.x_pad, c.act}, terms,
                  amx_emulated_workspace_floats(c.cols, c.batch, 2), rng,
                  [&](const DenseArgs& a) { amx_emulated_linear(w, a); }, "bitmap emulated tiles");
    return;
  }
  if (c.forced == Forced::other_grouped_rule) {
    run_and_check({c.rows, c.cols, c.batch, c.bias, c.x_pad, c.act}, terms,
                  bitmap_other_rule_workspace_floats(w, c.batch, 2), rng,
                  [&](const DenseArgs& a) { bitmap_other_rule_linear(w, a); }, "bitmap other grouped rule");
    return;
  }
  const std::string label = std::string("bitmap isa=") + isa_name(isa) + " val=" + std::to_string(int(c.value_type)) +
                            " density=" + std::to_string(c.density);
  run_and_check({c.rows, c.cols, c.batch, c.bias, c.x_pad, c.act}, terms,
                workspace_floats(isa, w, c.batch, c.act, 2), rng,
                [&](const DenseArgs& a) { linear(isa, w, a); }, label.c_str());
}

}  // namespace

int main() {
  std::mt19937 rng(1234);
  const int64_t batches[] = {0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 24, 25, 31, 32, 33, 64, 70};
  const int64_t shapes[][2] = {{1, 1}, {3, 15}, {9, 17}, {5, 31}, {13, 33}, {64, 64}, {7, 0}, {6, 4097}};
  const double densities[] = {0.0, 0.3, 0.7, 1.0};
  int cases = 0;
  for (Isa isa : runnable_isas())
    for (const auto& s : shapes)
      for (int64_t batch : batches)
        for (double density : densities)
          for (ValueType vt : {ValueType::f32, ValueType::bf16}) {
            const bool bias = (cases % 3) != 0;
            const ActType act = cases % 4 == 1 ? ActType::bf16 : ActType::f32;
            run_case({s[0], s[1], batch, density, vt, bias, cases % 2 ? 0 : 5, act}, isa, rng);
            ++cases;
          }
  // Non-default tiles (decode list, pack column block): batched calls only, where they are
  // read; bf16 values with bf16 activations take the native path, which reads none of them.
  for (const TileParams& tiles : extra_tile_sets()) {
    tiles_under_test = tiles;
    for (Isa isa : runnable_isas())
      for (const auto& s : shapes)
        for (int64_t batch : {int64_t(8), int64_t(33), int64_t(70)})
          for (ValueType vt : {ValueType::f32, ValueType::bf16}) {
            run_case({s[0], s[1], batch, 0.7, vt, cases % 2 == 0, cases % 2 ? 0 : 5,
                      vt == ValueType::bf16 || cases % 4 == 1 ? ActType::bf16 : ActType::f32}, isa, rng);
            ++cases;
          }
  }
  // The batched path's column chunks (bitmap_linear_simd.h): tiny chunk budgets make 1-word
  // chunks of these shapes (and 2-word ones of 32-float tiles, batches 17-32, at 10000 bytes),
  // with a partial last word, rows beyond one 64-row block and a row's values split across
  // many chunks; the default budget chunks the 4097-column shape.
  const int64_t chunk_shapes[][2] = {{3, 129}, {11, 200}, {70, 1000}};
  for (int64_t bytes : {int64_t(1), int64_t(10000)}) {
    tiles_under_test = TileParams{};
    tiles_under_test.bitmap_chunk_bytes = bytes;
    for (Isa isa : runnable_isas())
      for (const auto& s : chunk_shapes)
        for (int64_t batch : {int64_t(8), int64_t(16), int64_t(17), int64_t(33), int64_t(70)})
          for (double density : {0.3, 1.0})
            for (ValueType vt : {ValueType::f32, ValueType::bf16}) {
              run_case({s[0], s[1], batch, density, vt, cases % 3 != 0, cases % 2 ? 0 : 5, ActType::f32}, isa, rng);
              ++cases;
            }
  }
  tiles_under_test = TileParams{};
  // Variants the dispatch would not pick here (forced_variants.h), on bf16 values and
  // activations over the same shapes and batches: the amx variant's tile kernel (amx_linear.h)
  // on emulated tiles (rows around its 32-row steps, cols around its 32-column tiles, a
  // 4097-column row across its 1024-column chunks, batches around its 16-row A tiles and their
  // pairs; the hardware variant runs above, among the runnable ISAs, where the CPU has AMX),
  // and the native bf16 paths' table expansion (bitmap_linear_bf16.h), which the dispatch takes
  // only without VBMI2, and their split between grouped and tiled by the other CPUs' rule
  // (grouped up to 16 rows, at 16 only below 45% density; on Zen 4 up to 24).
  const struct {
    Forced variant;
    bool runs;
    const char* skip;
  } forced[] = {
      {Forced::emulated_tiles, amx_emulation_runs(), "the emulated tile kernel: this CPU lacks AVX512-BF16 or VBMI2"},
      {Forced::expansion_tables, bitmap_tables_run(), "the table expansion: this CPU cannot run avx512bf16"},
      {Forced::other_grouped_rule, bitmap_tables_run(), "the other grouped rule: this CPU cannot run avx512bf16"}};
  for (const auto& f : forced) {
    if (!f.runs) {
      std::printf("skip %s\n", f.skip);
      continue;
    }
    for (const auto& s : shapes)
      for (int64_t batch : batches)
        for (double density : densities) {
          Case c{s[0], s[1], batch, density, ValueType::bf16, cases % 3 != 0, cases % 2 ? 0 : 5, ActType::bf16};
          c.forced = f.variant;
          run_case(c, Isa::scalar, rng);
          ++cases;
        }
  }
  std::printf("%d cases, %d failed\n", cases, failures);
  return failures == 0 ? 0 : 1;
}
