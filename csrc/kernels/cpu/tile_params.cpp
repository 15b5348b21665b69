// Cache sizes (sysfs, then CPUID) and the tiles derived from them: see tile_params.h.
// Compiled without ISA flags: it runs on any x86-64 CPU.
#include "tile_params.h"

#include <algorithm>
#include <cstdio>
#include <string>

#include "cpu_features.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#endif

namespace sparsekern::cpu {
namespace {

// "48K", "1024K", "32M" (the kernel's format) as bytes; 0 when unreadable.
int64_t parse_size(const std::string& text) {
  std::size_t used = 0;
  int64_t n = 0;
  try {
    n = std::stoll(text, &used);
  } catch (...) {
    return 0;
  }
  const char unit = used < text.size() ? text[used] : ' ';
  const int64_t scale = unit == 'K' ? 1 << 10 : unit == 'M' ? 1 << 20 : unit == 'G' ? int64_t(1) << 30 : 1;
  return n > 0 ? n * scale : 0;
}

// The first word of a small text file, or "" when it cannot be read. C stdio, not
// std::ifstream: with torch loaded, an ifstream here crashed (see python/checks.h).
std::string first_word(const std::string& path) {
  std::FILE* file = std::fopen(path.c_str(), "r");
  if (!file) return "";
  char word[64] = {};
  const bool read = std::fscanf(file, "%63s", word) == 1;
  std::fclose(file);
  return read ? word : "";
}

// Fills what /sys says about cpu0's data caches; leaves the others 0.
void read_sysfs(CacheSizes* c) {
  for (int i = 0; i < 16; ++i) {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(i) + "/";
    const std::string level = first_word(dir + "level"), type = first_word(dir + "type");
    const int64_t bytes = parse_size(first_word(dir + "size"));
    if (level == "1" && type == "Data") c->l1d = bytes;
    else if (level == "2" && type == "Unified") c->l2 = bytes;
    else if (level == "3" && type == "Unified") c->l3 = bytes;
  }
}

#if defined(__x86_64__) || defined(_M_X64)
// Deterministic cache parameters: Intel's leaf 4 and AMD's leaf 0x8000001D share a layout
// (type in EAX[4:0], level in EAX[7:5], ways / partitions / line size / sets minus one).
void read_cpuid(CacheSizes* c) {
  unsigned a, b, cx, d;
  if (!__get_cpuid(0, &a, &b, &cx, &d)) return;
  const bool amd = amd_family() != 0;
  const unsigned leaf = amd ? 0x8000001Du : 4u;
  if (amd && __get_cpuid_max(0x80000000u, nullptr) < leaf) return;
  if (!amd && a < leaf) return;
  for (unsigned sub = 0; sub < 16; ++sub) {
    __cpuid_count(leaf, sub, a, b, cx, d);
    const unsigned type = a & 31, level = (a >> 5) & 7;
    if (type == 0) break;  // no more caches
    const int64_t bytes = int64_t((b >> 22) + 1) * (((b >> 12) & 1023) + 1) * ((b & 4095) + 1) * (int64_t(cx) + 1);
    if (level == 1 && type == 1 && c->l1d == 0) c->l1d = bytes;
    else if (level == 2 && type == 3 && c->l2 == 0) c->l2 = bytes;
    else if (level == 3 && type == 3 && c->l3 == 0) c->l3 = bytes;
  }
}
#else
void read_cpuid(CacheSizes*) {}
#endif

int64_t round_down(int64_t v, int64_t multiple) { return v / multiple * multiple; }

}  // namespace

CacheSizes detect_cache_sizes() {
  CacheSizes c;
  read_sysfs(&c);
  if (c.l1d == 0 || c.l2 == 0 || c.l3 == 0) read_cpuid(&c);  // containers may hide /sys
  return c;
}

CacheSizes cpuid_cache_sizes() {
  CacheSizes c;
  read_cpuid(&c);
  return c;
}

const CacheSizes& cpu_caches() {
  static const CacheSizes sizes = detect_cache_sizes();
  return sizes;
}

TileParams tile_params_for(const CacheSizes& c) {
  const int64_t l1 = l1d_or_default(c), l2 = l2_or_default(c);
  TileParams t;
  t.nm24_block_cols = 2048;  // long rows: every block ends in reductions of all accumulators
  // 3/8 of L2 of decoded rows (4 bytes per weight position), whole tiles of 1 or 3 pairs.
  t.nm24_block_rows = std::max<int64_t>(6, round_down(l2 * 3 / 8 / (t.nm24_block_cols * 4), 6));
  // 1/3 of L1d of tile rows, up to 64 floats wide (the widest tile), whole 16-column blocks.
  t.pack_col_block = std::max<int64_t>(16, round_down(l1 / 3 / (64 * 4), 16));
  // 1/12 of L1d of int32 offsets, whole 32-column words.
  t.bitmap_decode_cols = round_down(l1 / 12 / 4, 32);
  t.bitmap_chunk_bytes = l1;
  return sanitized(t);
}

const TileParams& tile_params() {
  static const TileParams tiles = tile_params_for(cpu_caches());
  return tiles;
}

TileParams sanitized(const TileParams& t) {
  TileParams s = t;
  s.nm24_block_cols = std::clamp<int64_t>(round_down(t.nm24_block_cols, 16), 16, kMaxNm24BlockFloats / 2);
  const int64_t max_rows = kMaxNm24BlockFloats / s.nm24_block_cols / 2 * 2;
  s.nm24_block_rows = std::clamp<int64_t>(round_down(t.nm24_block_rows, 2), 2, max_rows);
  s.pack_col_block = std::max<int64_t>(1, t.pack_col_block);
  s.bitmap_decode_cols = std::clamp<int64_t>(round_down(t.bitmap_decode_cols, 32), 32, kMaxBitmapDecodeCols);
  s.nm24_register_batch_max = std::clamp<int64_t>(t.nm24_register_batch_max, 0, 8);
  s.bitmap_chunk_bytes = std::max<int64_t>(1, t.bitmap_chunk_bytes);
  return s;
}

}  // namespace sparsekern::cpu
