// One dispatcher for every kernel family, built from the ISA table.
//
// A family is a struct naming its matrix type and declaring one specialization per ISA:
//
//   struct CsrFamily {
//     using Matrix = CsrMatrix;
//     template <Isa> static void run(const Matrix&, const DenseArgs&);          // f32 activations
//     template <Isa> static int64_t workspace_floats(const Matrix&, int64_t batch, int threads);
//     static bool reads_bf16(Isa, const Matrix&, int64_t batch);  // the variant takes bf16 x, y itself
//   };
//
// and each <family>_<isa>.cpp defines that ISA's two specializations (a missing one is a link
// error, not a silent fallback). The family's dispatch .cpp then defines its public entry
// points with dispatch_run / dispatch_workspace_floats below, which also widen bfloat16
// activations into the workspace for variants that read float32.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <utility>

#include "bf16.h"
#include "linear_args.h"

namespace sparsekern::cpu {
namespace {

template <typename Family, std::size_t... I>
constexpr auto run_table(std::index_sequence<I...>) {
  return std::array{&Family::template run<kAllIsas[I]>...};
}

template <typename Family, std::size_t... I>
constexpr auto workspace_table(std::index_sequence<I...>) {
  return std::array{&Family::template workspace_floats<kAllIsas[I]>...};
}

constexpr int64_t round_to_line(int64_t floats) { return (floats + 15) / 16 * 16; }

// Floats of workspace that widening takes (a float32 copy of x, a float32 y), after the kernel's own.
inline int64_t widening_floats(int64_t rows, int64_t cols, int64_t batch) {
  return round_to_line(batch * cols) + round_to_line(batch * rows);
}

template <typename Family>
int64_t own_workspace_floats(Isa isa, const typename Family::Matrix& w, int64_t batch, int num_threads) {
  static constexpr auto table = workspace_table<Family>(std::make_index_sequence<kIsaCount>{});
  return round_to_line(table[int(isa)](w, batch, num_threads));
}

template <typename Family>
int64_t dispatch_workspace_floats(Isa isa, const typename Family::Matrix& w, int64_t batch, ActType act,
                                int num_threads) {
  const int64_t own = own_workspace_floats<Family>(isa, w, batch, num_threads);
  const bool native = act == ActType::f32 || Family::reads_bf16(isa, w, batch);
  return native ? own : own + widening_floats(w.rows, w.cols, batch);
}

// y = x @ W.T + bias with the ISA's variant; a.workspace holds dispatch_workspace_floats(...).
template <typename Family>
void dispatch_run(Isa isa, const typename Family::Matrix& w, const DenseArgs& args) {
  DenseArgs a = args;
  a.tiles = sanitized(args.tiles);  // the kernels trust the tiles' ranges
  static constexpr auto table = run_table<Family>(std::make_index_sequence<kIsaCount>{});
  if (a.act_type == ActType::f32 || Family::reads_bf16(isa, w, a.batch)) return table[int(isa)](w, a);
  // bfloat16 activations: widen x (exact) behind the kernel's own workspace, run in float32,
  // round y to nearest even.
  float* x32 = a.workspace + own_workspace_floats<Family>(isa, w, a.batch, a.num_threads);
  float* y32 = x32 + round_to_line(a.batch * w.cols);
  const auto* x16 = static_cast<const uint16_t*>(a.x);
  for (int64_t b = 0; b < a.batch; ++b)
    for (int64_t k = 0; k < w.cols; ++k) x32[b * w.cols + k] = bf16_to_f32(x16[b * a.x_row_stride + k]);
  DenseArgs wide = a;
  wide.x = x32;
  wide.act_type = ActType::f32;
  wide.x_row_stride = w.cols;
  wide.y = y32;
  table[int(isa)](w, wide);
  auto* y16 = static_cast<uint16_t*>(a.y);
  for (int64_t i = 0; i < a.batch * w.rows; ++i) y16[i] = f32_to_bf16(y32[i]);
}

}  // namespace
}  // namespace sparsekern::cpu
