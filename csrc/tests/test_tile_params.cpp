// Cache sizes and tile derivation (tile_params.h): the caches the kernels were measured with
// give the measured constants, larger caches give larger tiles, anything sanitizes into the
// ranges the kernels rely on, and CPUID (the fallback) agrees with /sys where both answer.
// The kernels' results under non-default tiles are checked in the kernel tests.
#include <cstdint>
#include <cstdio>
#include <initializer_list>

#include "tile_params.h"

using namespace sparsekern::cpu;

namespace {

int failures = 0;

void check(bool ok, const char* what) {
  if (!ok) {
    std::printf("FAIL %s\n", what);
    ++failures;
  }
}

bool same(const TileParams& a, const TileParams& b) {
  return a.nm24_block_rows == b.nm24_block_rows && a.nm24_block_cols == b.nm24_block_cols &&
         a.pack_col_block == b.pack_col_block && a.bitmap_decode_cols == b.bitmap_decode_cols &&
         a.bitmap_chunk_bytes == b.bitmap_chunk_bytes;
}

bool legal(const TileParams& t) {
  return t.nm24_block_rows >= 2 && t.nm24_block_rows % 2 == 0 && t.nm24_block_cols >= 16 &&
         t.nm24_block_cols % 16 == 0 && t.nm24_block_rows * t.nm24_block_cols <= kMaxNm24BlockFloats &&
         t.pack_col_block >= 1 && t.bitmap_decode_cols >= 32 && t.bitmap_decode_cols % 32 == 0 &&
         t.bitmap_decode_cols <= kMaxBitmapDecodeCols && t.nm24_register_batch_max >= 0 &&
         t.nm24_register_batch_max <= 8 && t.bitmap_chunk_bytes >= 1;
}

}  // namespace

int main() {
  // The constants were measured on 48 KiB L1d / 1 MiB L2 (Zen 4 and 5): derivation keeps them.
  check(same(tile_params_for({48 << 10, 1 << 20, 32 << 20}), TileParams{}), "48 KiB / 1 MiB gives TileParams{}");
  check(same(tile_params_for({0, 0, 0}), TileParams{}), "unknown caches give TileParams{}");
  // Twice the L2 (Intel Xeon): twice the 2:4 block, within the workspace bound.
  const TileParams big = tile_params_for({48 << 10, 2 << 20, 0});
  check(big.nm24_block_rows == 2 * TileParams{}.nm24_block_rows, "2 MiB L2 doubles the 2:4 block rows");
  check(legal(big), "2 MiB L2 tiles are legal");
  const TileParams small = tile_params_for({32 << 10, 256 << 10, 0});
  check(small.pack_col_block < TileParams{}.pack_col_block &&
            small.bitmap_decode_cols < TileParams{}.bitmap_decode_cols && small.bitmap_chunk_bytes == 32 << 10,
        "32 KiB L1d gives smaller L1 tiles");
  check(legal(small) && legal(tile_params_for({1 << 30, 1 << 30, 0})) && legal(tile_params_for({1, 1, 1})),
        "extreme caches give legal tiles");
  for (const TileParams& t : {TileParams{0, 0, 0, 0}, TileParams{-5, -1, -3, -7, -2, -9}, TileParams{7, 36, 5, 100},
                              TileParams{1 << 20, 1 << 20, 1 << 20, 1 << 20, 1 << 20}})
    check(legal(sanitized(t)), "sanitized tiles are legal");
  check(same(sanitized(TileParams{}), TileParams{}), "sanitizing the defaults keeps them");

  const CacheSizes sys = detect_cache_sizes(), id = cpuid_cache_sizes();
  std::printf("caches: L1d %lld, L2 %lld, L3 %lld bytes (CPUID alone: %lld, %lld, %lld)\n", (long long)sys.l1d,
              (long long)sys.l2, (long long)sys.l3, (long long)id.l1d, (long long)id.l2, (long long)id.l3);
  check(sys.l1d > 0 && sys.l2 > 0, "this CPU's L1d and L2 are known");
  // L3 may differ (/sys reports cpu0's share, CPUID the whole cache on some CPUs); L1d and L2 not.
  if (id.l1d > 0) check(id.l1d == sys.l1d, "CPUID and /sys agree on L1d");
  if (id.l2 > 0) check(id.l2 == sys.l2, "CPUID and /sys agree on L2");
  std::printf("%d failed\n", failures);
  return failures == 0 ? 0 : 1;
}
