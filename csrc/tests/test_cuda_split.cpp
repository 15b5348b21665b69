// Host test of the CUDA kernels' work split (csrc/kernels/cuda/split.h), which the kernels run
// on the device: the pieces of a row cover it exactly, in order, evenly; the persistent grid
// never exceeds what the SMs hold nor what the items need. Runs without a GPU. Exit code 0
// when all pass.
#include <cstdint>
#include <cstdio>

#include "split.h"

using namespace sparsekern::gpu;

namespace {

int failures = 0;

void expect(bool ok, const char* what, int64_t a, int64_t b, int64_t c) {
  if (ok) return;
  ++failures;
  std::printf("FAIL %s (%lld, %lld, %lld)\n", what, (long long)a, (long long)b, (long long)c);
}

void check_pieces(int64_t units, int64_t pieces) {
  int64_t next = 0, smallest = units, largest = 0;
  for (int64_t p = 0; p < pieces; ++p) {
    const UnitRange r = piece_range(units, pieces, p);
    expect(r.begin == next, "pieces are contiguous and in order", units, pieces, p);
    expect(r.end >= r.begin, "pieces are not reversed", units, pieces, p);
    expect(pieces > units || r.end > r.begin, "no empty piece when pieces <= units", units, pieces, p);
    next = r.end;
    smallest = r.end - r.begin < smallest ? r.end - r.begin : smallest;
    largest = r.end - r.begin > largest ? r.end - r.begin : largest;
  }
  expect(next == units, "pieces cover every unit", units, pieces, next);
  expect(largest - smallest <= 1, "pieces differ by at most one unit", units, pieces, largest - smallest);
}

}  // namespace

int main() {
  const int64_t units[] = {0, 1, 2, 3, 7, 31, 32, 128, 344, 1000, 65537};
  const int64_t pieces[] = {1, 2, 3, 4, 5, 8, 33, 100};
  for (int64_t u : units)
    for (int64_t p : pieces) check_pieces(u, p);
  // A count past 32 bits: the arithmetic is int64_t throughout.
  check_pieces(int64_t(1) << 40, 7);

  // persistent_blocks(items, warps per block, resident blocks)
  expect(persistent_blocks(0, 8, 1056) == 0, "no items, no blocks", 0, 8, 1056);
  expect(persistent_blocks(1, 8, 1056) == 1, "one item, one block", 1, 8, 1056);
  expect(persistent_blocks(8, 8, 1056) == 1, "eight items, one block of eight warps", 8, 8, 1056);
  expect(persistent_blocks(9, 8, 1056) == 2, "nine items, two blocks", 9, 8, 1056);
  expect(persistent_blocks(16384, 8, 1056) == 1056, "capped at the resident blocks", 16384, 8, 1056);
  std::printf("%s: %d failures\n", failures ? "FAILED" : "passed", failures);
  return failures ? 1 : 0;
}
