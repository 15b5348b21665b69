"""Cache-derived tiles (csrc/kernels/cpu/tile_params.h) as Python sees them: the cache sizes
the planner and benchmarks read, and per-kernel tiles that change the blocking, never the
product (the C++ kernel tests sweep tiles against a float64 reference on every ISA)."""
import pytest
import torch

from sparsekern import _backend, planner
from sparsekern.formats import PACKED_FORMATS
from sparsekern.ops import kernel_bias, run_kernel

_C = _backend._C


def test_cache_sizes_come_from_the_kernels_reading():
    sizes = planner.cache_sizes()
    assert sizes == _C.cpu_caches()
    assert set(sizes) == {"L1d", "L2", "L3"}
    assert all(isinstance(v, int) and v >= 0 for v in sizes.values())


def test_tiles_follow_the_caches():
    default = _C.TileParams().as_dict()
    assert _C.tile_params_for(48 << 10, 1 << 20).as_dict() == default  # the measured CPU's constants
    caches = planner.cache_sizes()
    assert _C.tile_params().as_dict() == _C.tile_params_for(caches["L1d"], caches["L2"], caches["L3"]).as_dict()
    assert _C.tile_params_for(48 << 10, 2 << 20).nm24_block_rows > default["nm24_block_rows"]


@pytest.mark.parametrize("format", ["csr", "2:4", "bitmap"])
@pytest.mark.parametrize("batch", [9, 70])
def test_kernel_tiles_change_blocking_not_results(format, batch):
    torch.manual_seed(0)
    out_features, in_features = 50, 2056
    weight = torch.randn(out_features, in_features)
    if format == "2:4":
        keep = torch.zeros(out_features, in_features // 4, 4, dtype=torch.bool)
        keep[..., :2] = True
        mask = keep.reshape(out_features, in_features)
    else:
        mask = torch.rand(out_features, in_features) < 0.3
    fmt = PACKED_FORMATS[format]
    tensors = fmt.layout(*(t.contiguous() for t in fmt.pack(weight, mask, torch.float32)))
    bias = kernel_bias(torch.randn(out_features))
    x = torch.randn(batch, in_features)
    kernel = fmt.kernel(tensors, in_features, out_features)
    assert kernel.tiles.as_dict() == _C.tile_params().as_dict()
    expected = run_kernel(format, kernel, x, bias, in_features, out_features)
    tiny = _C.TileParams()
    tiny.nm24_block_rows, tiny.nm24_block_cols, tiny.pack_col_block, tiny.bitmap_decode_cols = 2, 16, 3, 32
    tiny.bitmap_chunk_bytes = 1  # bitmap's batched path in chunks of one word
    kernel.tiles = tiny
    assert kernel.tiles.nm24_block_rows == 2
    got = run_kernel(format, kernel, x, bias, in_features, out_features)
    reference = x.double() @ (weight * mask).double().T + bias.double()
    torch.testing.assert_close(got.double(), reference, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
