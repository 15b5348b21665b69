// Cache sizes of this CPU and the tile sizes the kernels derive from them.
//
// The kernels' blocking was first tuned on one CPU (Zen 4/5: 48 KiB L1d, 1 MiB L2); the same
// constants on a CPU with a 2 MiB L2 leave half of it unused. So the sizes are read at run
// time and the tiles are fractions of them, with fractions chosen so that a 48 KiB L1d and a
// 1 MiB L2 give exactly the constants measured there (TileParams{} holds those values).
//
// Framework-free: no allocation on the kernels' path, no printing.
#pragma once

#include <cstdint>

namespace sparsekern::cpu {

// Bytes of the data caches one core sees: L1d and L2 per core, L3 as cpu0's share (the
// whole L3 of its complex or socket). 0 where neither the OS nor CPUID says.
struct CacheSizes {
  int64_t l1d = 0;
  int64_t l2 = 0;
  int64_t l3 = 0;
};

// The tile sizes of the kernels that block for a cache; the defaults are the values derived
// for 48 KiB L1d and 1 MiB L2 (the constants these kernels were measured with).
struct TileParams {
  // 2:4 batched path (nm24_linear_simd.h): a block of W decoded per thread, rows x cols; the
  // decoded block takes rows * cols * 4 bytes and should fill about 3/8 of L2, leaving the
  // rest to the activation tile and the output.
  int64_t nm24_block_rows = 48;
  int64_t nm24_block_cols = 2048;
  // Columns per job when x is transposed into batch tiles (csr_spmm_simd.h pack_transposed):
  // the tile rows being written (columns x up to 64 floats) stay within about 1/3 of L1d.
  int64_t pack_col_block = 64;
  // Columns whose set bits the bitmap batched path decodes per pass: the list (4 bytes per
  // column at most) stays within about 1/12 of L1d beside the activation tile's lines.
  int64_t bitmap_decode_cols = 1024;
  // Bytes of the activation tile one column chunk of the bitmap batched path reads (its rows
  // of T floats a column): about L1d, so that the chunk's part of the tile stays there
  // (bitmap_linear_simd.h).
  int64_t bitmap_chunk_bytes = 48 << 10;
  // Not a cache tile but a variant choice the tuner may change: 2:4 batches from 4 up to this
  // (at most 8, one register tile) decode into registers instead of the workspace
  // (nm24_linear_simd.h's register path); 0 turns that path off.
  int64_t nm24_register_batch_max = 0;
};

// Bounds the kernels rely on (sanitized() enforces them).
// 2:4 workspace per thread, whatever the tiles: 3/8 of a 2 MiB L2 (the largest per-core L2 of
// x86 servers today); a larger L2 gets this block.
inline constexpr int64_t kMaxNm24BlockFloats = 2 * 48 * 2048;
inline constexpr int64_t kMaxBitmapDecodeCols = 4096;          // the decode list lives on the stack

// Reads the sizes: /sys/devices/system/cpu/cpu0/cache/index*/{level,type,size} first, then
// CPUID (leaf 4 on Intel, 0x8000001D on AMD).
CacheSizes detect_cache_sizes();
// What CPUID alone says (the fallback; tests compare it with /sys).
CacheSizes cpuid_cache_sizes();
// detect_cache_sizes() of this process, read once.
const CacheSizes& cpu_caches();
// The sizes the kernels assume where detection found none: 48 KiB L1d, 1 MiB L2.
inline int64_t l1d_or_default(const CacheSizes& c) { return c.l1d > 0 ? c.l1d : 48 << 10; }
inline int64_t l2_or_default(const CacheSizes& c) { return c.l2 > 0 ? c.l2 : 1 << 20; }
// The tiles for caches `c`, sanitized (missing sizes as l1d_or_default, l2_or_default say).
TileParams tile_params_for(const CacheSizes& c);
// tile_params_for(cpu_caches()), computed once: what the Python module passes every kernel.
const TileParams& tile_params();
// `t` moved into the ranges the kernels need: 2:4 block rows a positive even number, block
// columns a positive multiple of 16 (whole SIMD chunks of metadata), the block within
// kMaxNm24BlockFloats, the pack block >= 1, decode columns a multiple of 32 in [32,
// kMaxBitmapDecodeCols], the register batch in [0, 8], the chunk bytes >= 1. Any value is
// safe to pass; the dispatchers sanitize what they get.
TileParams sanitized(const TileParams& t);

}  // namespace sparsekern::cpu
