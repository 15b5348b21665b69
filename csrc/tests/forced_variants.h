// Kernels the dispatch would not pick on this CPU, called directly by the 2:4 and bitmap tests:
// - the tile kernels (amx_linear.h) on emulated tiles (amx_tiles_emulated.h): what the amx
//   variant feeds its tiles is checked on every CPU that has the AVX-512 parts those kernels
//   use, AMX or not;
// - bitmap's native bf16 paths (grouped and tiled) with the table expansion
//   (bitmap_linear_bf16.h), which the dispatch takes only on CPUs without VBMI2;
// - bitmap's native bf16 paths split between grouped and tiled by the other CPUs' rule
//   (bitmapbf16::GroupedRule: Zen 4 has its own), so both rules' batches run on any CPU.
// forced_variants.cpp is compiled with the amx variant's flags; this header is plain C++.
#pragma once

#include <cstdint>

#include "bitmap_linear.h"
#include "nm24_linear.h"

namespace sparsekern::test {

// Whether this CPU has every feature of the amx variant except the tiles themselves.
bool amx_emulation_runs();
int64_t amx_emulated_workspace_floats(int64_t cols, int64_t batch, int num_threads);
// bf16 values and activations, any batch.
void amx_emulated_linear(const cpu::Nm24Matrix& w, const cpu::DenseArgs& a);
void amx_emulated_linear(const cpu::BitmapMatrix& w, const cpu::DenseArgs& a);

// Whether this CPU runs the avx512bf16 variant (the table expansion needs no more).
bool bitmap_tables_run();
int64_t bitmap_tables_workspace_floats(const cpu::BitmapMatrix& w, int64_t batch, int num_threads);
// bf16 values and activations, any batch.
void bitmap_tables_linear(const cpu::BitmapMatrix& w, const cpu::DenseArgs& a);

// The same CPU check; the expansion this CPU's dispatch uses, the grouped rule it does not.
int64_t bitmap_other_rule_workspace_floats(const cpu::BitmapMatrix& w, int64_t batch, int num_threads);
void bitmap_other_rule_linear(const cpu::BitmapMatrix& w, const cpu::DenseArgs& a);

}  // namespace sparsekern::test
