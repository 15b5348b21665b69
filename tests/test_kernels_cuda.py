"""CUDA kernels (sparsekern/ops_cuda.py, csrc/kernels/cuda) against the float64 masked-dense
reference: every dtype pair, CSR and 2:4, edge shapes, rows cut into pieces, the large-batch
tensor-core paths, strides, streams, CUDA graphs, opcheck, gradients and SparseLinear on the
GPU. Skipped without a CUDA build of sparsekern._C; the tests of the work split and of the
large-batch weight expansion run on the CPU, the rest need a GPU."""
import pytest
import torch
from torch import nn

import sparsekern as sk
from sparsekern import _backend
from sparsekern.formats import csr, nm

from conftest import assert_matches_reference, mask_24, random_sparse_weight

pytestmark = pytest.mark.skipif(not _backend._C.with_cuda,
                                reason="sparsekern._C was built without CUDA (SPARSEKERN_CUDA=off, or no nvcc found)")
if _backend._C.with_cuda:
    from sparsekern import ops_cuda


def gpu(test):
    """Marks a test that needs a CUDA GPU."""
    no_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU (torch.cuda.is_available() is False)")
    return pytest.mark.cuda(no_gpu(test))


F32, F16, BF16, F64 = torch.float32, torch.float16, torch.bfloat16, torch.float64
# (x dtype, values dtype): every pair of the kernels' three dtypes, and float64's fallbacks.
DTYPE_PAIRS = [(x, v) for x in (F32, F16, BF16) for v in (F32, F16, BF16)] + [(F64, F64), (F16, F64)]
# Test ids such as "x_float16-w_bfloat16" (pytest -k "x_float16 and w_bfloat16" picks a pair).
PAIR_IDS = [f"x_{str(x).removeprefix('torch.')}-w_{str(v).removeprefix('torch.')}" for x, v in DTYPE_PAIRS]
# (out, in, batch, density): batch 0, 1, each batch tile (1, 4, 8, 16) full and partial, the
# largest kernel batch (16) and the smallest tensor-core one (17); 1x1, odd and prime sizes,
# all-zero, fully dense, very sparse rows, rows longer than a piece, K > 65536 (int32).
CSR_SHAPES = [(1, 1, 1, 1.0), (7, 13, 0, 0.5), (61, 97, 3, 0.3), (33, 100, 8, 0.0), (256, 1024, 1, 0.1),
              (129, 1031, 16, 1.0), (64, 4096, 33, 0.02), (5, 70001, 2, 0.01), (40, 520, 4, 0.5),
              (9, 64, 5, 0.9), (12, 3000, 11, 0.7), (30, 2000, 17, 0.5)]
# in % 32 == 0 (vector chunks, rows cut into pieces from in = 2048) and in % 32 != 0 (one group
# per lane, an odd number of groups: half a metadata byte).
NM24_SHAPES = [(1, 4, 1), (3, 4, 9), (7, 12, 0), (5, 36, 3), (33, 100, 8), (17, 1040, 17), (6, 2052, 2),
               (256, 1024, 1), (64, 4096, 33), (9, 64, 5), (8, 4096, 13), (3, 2048, 16), (40, 96, 4)]


def _x(batch, in_features, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, in_features, generator=g).to(dtype).cuda()


def csr_case(out_features, in_features, density, value_dtype, seed=0):
    """(CsrTensors on the GPU, masked dense weight as stored, on the CPU); every 5th row empty."""
    g = torch.Generator().manual_seed(seed)
    weight, mask = random_sparse_weight(out_features, in_features, density, generator=g)
    mask[::5] = False
    packed = csr.pack(weight, mask, value_dtype)
    stored = csr.unpack(packed, (out_features, in_features))
    return csr.CsrTensors(*(t.cuda() for t in packed)), stored


def nm24_case(out_features, in_features, value_dtype, seed=0):
    """(Nm24Tensors on the GPU, masked dense weight as stored, on the CPU): groups keep 0, 1 or 2."""
    g = torch.Generator().manual_seed(seed)
    weight, _ = random_sparse_weight(out_features, in_features, 1.0, generator=g)
    packed = nm.pack(weight, mask_24(out_features, in_features, g), value_dtype)
    stored = nm.unpack(packed, (out_features, in_features))
    return nm.Nm24Tensors(*(t.cuda() for t in packed)), stored


def _bias(out_features, dtype, seed):
    return torch.randn(out_features, generator=torch.Generator().manual_seed(seed)).to(dtype).cuda()


def _bias_for(batch, out_features, x_dtype):
    """None, a bias in x's dtype, or a float32 bias (added in float32 without a cast), by batch."""
    if batch % 2:
        return _bias(out_features, x_dtype, seed=2)
    return _bias(out_features, F32, seed=2) if batch % 4 == 2 else None


def _check(y, x, stored, bias):
    assert y.is_cuda and y.dtype == x.dtype
    torch.cuda.synchronize()
    assert_matches_reference(y.cpu(), x.cpu(), stored, None if bias is None else bias.cpu())


# ---- on the CPU: the work split and the large-batch weight ----------------------------------

def _random_row_ptr(rows, generator, longest=3000):
    lengths = torch.randint(0, longest, (rows,), generator=generator)
    lengths[::3] = 0  # empty rows, and rows starting at every offset within a chunk
    return torch.cat((torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)))


@pytest.mark.parametrize("seed", range(5))
def test_csr_pieces_cover_every_row_in_aligned_steps(seed):
    row_ptr = _random_row_ptr(50, torch.Generator().manual_seed(seed))
    piece, chunk = ops_cuda.CSR_PIECE, _backend._C.cuda_csr_chunk
    table = ops_cuda.csr_pieces(row_ptr)
    assert table.dtype == torch.int64 and table.shape[1] == 4
    begin, end, row, count = table.unbind(1)
    assert row.tolist() == sorted(row.tolist()) and set(row.tolist()) == set(range(50))
    for r in range(50):
        mine = table[row == r]
        assert (mine[:, 3] == mine.shape[0]).all(), "each piece knows its row's piece count"
        assert mine[0, 0] == row_ptr[r] and mine[-1, 1] == row_ptr[r + 1], "first and last piece meet the row's ends"
        assert (mine[1:, 0] == mine[:-1, 1]).all(), "pieces are contiguous and in order"
        assert mine.shape[0] == 1 or (mine[:, 1] > mine[:, 0]).all(), "only a lone piece may be empty"
    # The kernel loads whole chunks from the piece's first aligned position: one warp step.
    first_chunk = begin - begin % chunk
    assert ((end - first_chunk) <= piece).all()
    later = torch.cat((torch.tensor([False]), row[1:] == row[:-1]))
    assert (begin[later] % chunk == 0).all(), "only a row's first piece may start mid-chunk"


def test_csr_pieces_of_no_rows_and_of_empty_rows():
    assert ops_cuda.csr_pieces(torch.zeros(1, dtype=torch.int64)).shape == (0, 4)
    assert ops_cuda.csr_pieces(torch.zeros(4, dtype=torch.int64)).tolist() == [[0, 0, r, 1] for r in range(3)]


def test_nm24_pieces_per_row():
    warps = 132 * 64  # an H100 SXM / H200
    assert ops_cuda.nm24_pieces_per_row(4096, 4096, warps) == 1  # rows for half the warps: whole rows
    assert ops_cuda.nm24_pieces_per_row(11008, 4096, warps) == 1
    assert ops_cuda.nm24_pieces_per_row(1024, 4096, warps) == 4  # a short layer: pieces, every SM busy
    assert ops_cuda.nm24_pieces_per_row(1024, 11008, warps) == 4
    assert ops_cuda.nm24_pieces_per_row(256, 11008, warps) == 10
    assert ops_cuda.nm24_pieces_per_row(1, 1000, warps) == 1  # narrower than a piece
    assert ops_cuda.nm24_pieces_per_row(100000, 4096, warps) == 1  # enough rows already
    assert ops_cuda.nm24_pieces_per_row(0, 4096, warps) == 4


@pytest.mark.parametrize("in_features", [1, 37, 70001])
def test_csr_dense_weight_is_the_stored_weight(in_features):
    weight, mask = random_sparse_weight(23, in_features, 0.2, generator=torch.Generator().manual_seed(3))
    mask[::4] = False
    packed = csr.pack(weight, mask, BF16)
    dense = ops_cuda.csr_dense_weight(*packed, in_features, F32)
    assert dense.dtype == F32 and torch.equal(dense, csr.unpack(packed, (23, in_features)).to(F32))


# ---- on the GPU ------------------------------------------------------------------------------

@gpu
@pytest.mark.parametrize("out_features, in_features, batch, density", CSR_SHAPES)
@pytest.mark.parametrize("x_dtype, value_dtype", DTYPE_PAIRS, ids=PAIR_IDS)
def test_csr_matches_reference(out_features, in_features, batch, density, x_dtype, value_dtype):
    packed, stored = csr_case(out_features, in_features, density, value_dtype, seed=batch)
    assert packed.col_idx.dtype == csr.index_dtype(in_features)
    x = _x(batch, in_features, x_dtype, seed=1)
    bias = _bias_for(batch, out_features, x_dtype)
    y = torch.ops.sparsekern.csr_linear(x, *packed, bias, in_features, out_features)
    _check(y, x, stored, bias)


@gpu
@pytest.mark.parametrize("out_features, in_features, batch", NM24_SHAPES)
@pytest.mark.parametrize("x_dtype, value_dtype", DTYPE_PAIRS, ids=PAIR_IDS)
def test_nm24_matches_reference(out_features, in_features, batch, x_dtype, value_dtype, monkeypatch):
    # The kernel at every batch tile (1, 4, 8, 16), though the op sends batches over
    # SPARSE_MAX_BATCH["2:4"] to torch's semi-structured path; 17 and 33 go there still.
    monkeypatch.setitem(ops_cuda.SPARSE_MAX_BATCH, "2:4", 16)
    packed, stored = nm24_case(out_features, in_features, value_dtype, seed=batch)
    x = _x(batch, in_features, x_dtype, seed=1)
    bias = _bias_for(batch, out_features, x_dtype)
    y = torch.ops.sparsekern.nm24_linear(x, *packed, bias, in_features, out_features)
    _check(y, x, stored, bias)


@gpu
@pytest.mark.parametrize("batch", [1, 5, 16])
def test_csr_one_nonzero_and_one_long_row(batch):
    mask = torch.zeros(40, 5000, dtype=torch.bool)
    mask[3, 4321] = True
    mask[7] = True  # one full row among nearly empty ones: cut into pieces, summed by the last
    weight, _ = random_sparse_weight(40, 5000, 1.0)
    packed = csr.pack(weight, mask, F16)
    stored = csr.unpack(packed, (40, 5000))
    x = _x(batch, 5000, F16, seed=3)
    bias = _bias(40, F32, seed=4)
    y = torch.ops.sparsekern.csr_linear(x, *(t.cuda() for t in packed), bias, 5000, 40)
    _check(y, x, stored, bias)


@gpu
@pytest.mark.parametrize("fmt", ["csr", "2:4"])
def test_kernels_loop_over_batch_tiles(fmt, monkeypatch):
    # The kernels are correct for any batch (the op sends large ones to the tensor cores):
    # 40 rows are tiles of 16, 16 and 8, in rows cut into pieces.
    monkeypatch.setitem(ops_cuda.SPARSE_MAX_BATCH, fmt, 10 ** 9)
    packed, stored = csr_case(20, 4096, 0.5, BF16) if fmt == "csr" else nm24_case(20, 4096, BF16)
    op = torch.ops.sparsekern.csr_linear if fmt == "csr" else torch.ops.sparsekern.nm24_linear
    x = _x(40, 4096, F16, seed=4)
    bias = _bias(20, F16, seed=5)
    _check(op(x, *packed, bias, 4096, 20), x, stored, bias)


@gpu
@pytest.mark.parametrize("fmt", ["csr", "2:4"])
@pytest.mark.parametrize("batch", [1, 4, 5, 16, 17, 300])
def test_large_batches_go_to_the_tensor_cores(fmt, batch, monkeypatch):
    kernel = "csr_spmm_cuda" if fmt == "csr" else "nm24_linear_cuda"
    launches = []
    real = getattr(_backend._C, kernel)
    monkeypatch.setattr(_backend._C, kernel, lambda *args: launches.append(args) or real(*args))
    packed, stored = csr_case(128, 256, 0.2, F16) if fmt == "csr" else nm24_case(128, 256, F16)
    op = torch.ops.sparsekern.csr_linear if fmt == "csr" else torch.ops.sparsekern.nm24_linear
    x = _x(batch, 256, F16, seed=6)
    bias = _bias(128, F32, seed=7)
    _check(op(x, *packed, bias, 256, 128), x, stored, bias)
    assert len(launches) == (1 if batch <= ops_cuda.SPARSE_MAX_BATCH[fmt] else 0)


@gpu
def test_semi_structured_weight_follows_in_place_updates():
    packed, stored = nm24_case(64, 256, F16)
    x = _x(32, 256, F16, seed=8)
    _check(torch.ops.sparsekern.nm24_linear(x, *packed, None, 256, 64), x, stored, None)
    with torch.no_grad():
        packed.values.mul_(-2)  # an optimizer step: the cached compressed weight is stale
    _check(torch.ops.sparsekern.nm24_linear(x, *packed, None, 256, 64), x, stored * -2, None)


@gpu
@pytest.mark.parametrize("fmt", ["csr", "2:4"])
def test_captured_in_a_cuda_graph(fmt):
    packed, stored = csr_case(300, 4096, 0.1, F16) if fmt == "csr" else nm24_case(300, 4096, F16)
    op = torch.ops.sparsekern.csr_linear if fmt == "csr" else torch.ops.sparsekern.nm24_linear
    x = _x(1, 4096, F16, seed=9)
    bias = _bias(300, F16, seed=10)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        op(x, *packed, bias, 4096, 300)  # the first call builds the piece table, which synchronizes
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = op(x, *packed, bias, 4096, 300)
    x.copy_(_x(1, 4096, F16, seed=11))
    graph.replay()
    _check(y, x, stored, bias)
    graph.replay()  # replays reuse the workspace: it must come back zeroed each time
    _check(y, x, stored, bias)


@gpu
@pytest.mark.parametrize("fmt", ["csr", "2:4"])
@pytest.mark.parametrize("batch", [1, 6])
def test_3d_and_strided_inputs(fmt, batch):
    """3-d x, and row views whose start or row stride is not 16-byte aligned: 2:4's chunked
    kernel then gathers x element by element instead of loading 16-byte vectors."""
    packed, stored = csr_case(10, 64, 0.4, F16) if fmt == "csr" else nm24_case(10, 64, F16)
    op = torch.ops.sparsekern.csr_linear if fmt == "csr" else torch.ops.sparsekern.nm24_linear
    bias = _bias(10, F16, seed=6)
    x3 = torch.randn(2, batch, 64, dtype=F16, device="cuda")
    y = op(x3, *packed, bias, 64, 10)
    assert y.shape == (2, batch, 10)
    _check(y, x3, stored, bias)
    wide = torch.randn(batch, 128, dtype=F16, device="cuda")
    odd_stride = torch.randn(batch, 68, dtype=F16, device="cuda")[:, :64]
    for x in (wide[:, ::2], wide[:, 8:72], wide[:, 1:65], odd_stride, torch.randn(64, batch, dtype=F16, device="cuda").t()):
        _check(op(x, *packed, bias, 64, 10), x, stored, bias)


@gpu
@pytest.mark.parametrize("fmt", ["csr", "2:4"])
def test_runs_on_the_current_stream(fmt):
    packed, stored = csr_case(300, 2048, 0.1, F16) if fmt == "csr" else nm24_case(300, 2048, F16)
    op = torch.ops.sparsekern.csr_linear if fmt == "csr" else torch.ops.sparsekern.nm24_linear
    stream = torch.cuda.Stream()
    source = _x(4, 2048, F16, seed=7)
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        # x is written late on the side stream: a kernel on any other stream would read it unwritten.
        torch.cuda._sleep(50_000_000)
        x = source * 1
        y = op(x, *packed, None, 2048, 300)
    stream.synchronize()
    _check(y, source, stored, None)


def test_cuda_kernels_registered_on_import():
    import sys
    assert "sparsekern.ops_cuda" in sys.modules, "sparsekern/__init__.py must import ops_cuda when _C.with_cuda"


@gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_runs_on_the_device_of_its_inputs():
    packed, stored = csr_case(30, 64, 0.5, F16)
    packed = csr.CsrTensors(*(t.to("cuda:1") for t in packed))
    x = _x(2, 64, F16, seed=8).to("cuda:1")
    with torch.cuda.device(0):
        y = torch.ops.sparsekern.csr_linear(x, *packed, None, 64, 30)
    assert y.device == x.device
    _check(y, x, stored, None)


@gpu
def test_mixed_devices_raise():
    packed, _ = csr_case(4, 8, 0.5, F32)
    with pytest.raises(ValueError, match="values is on cpu"):
        torch.ops.sparsekern.csr_linear(_x(1, 8, F32, 0), packed.row_ptr, packed.col_idx, packed.values.cpu(),
                                        None, 8, 4)


@gpu
@pytest.mark.parametrize("fmt", ["csr", "2:4"])
def test_opcheck(fmt):
    packed, _ = csr_case(12, 40, 0.3, F32) if fmt == "csr" else nm24_case(12, 40, F32)
    values = packed.values.clone().requires_grad_()
    rest = tuple(packed)[:-1] if fmt == "csr" else (packed.meta,)
    x = _x(3, 40, F32, 9).requires_grad_()
    bias = _bias(12, F32, 10).requires_grad_()
    if fmt == "csr":
        torch.library.opcheck(torch.ops.sparsekern.csr_linear.default, (x, *rest, values, bias, 40, 12))
    else:
        torch.library.opcheck(torch.ops.sparsekern.nm24_linear.default, (x, values, *rest, bias, 40, 12))


@gpu
@pytest.mark.parametrize("fmt", ["csr", "2:4"])
@pytest.mark.parametrize("dtype", [F32, F16])
def test_sparse_linear_on_gpu(fmt, dtype):
    """The user's path: SparseLinear moved to the GPU, in inference and with gradients."""
    torch.manual_seed(11)
    linear = nn.Linear(64, 24)
    mask = mask_24(24, 64, torch.Generator().manual_seed(12)) if fmt == "2:4" else torch.rand(24, 64) < 0.3
    layer = sk.SparseLinear.from_dense(linear, mask=mask, format=fmt).to("cuda", dtype)
    dense = layer.to_dense()
    stored = dense.weight.detach().cpu()
    x = torch.randn(5, 64, dtype=dtype, device="cuda")
    with torch.no_grad():
        _check(layer(x), x, stored, dense.bias.detach())

    x.requires_grad_()
    layer(x).float().square().sum().backward()
    ref_x = x.detach().double().requires_grad_()
    ref_w = stored.double().cuda().requires_grad_()
    ref_b = dense.bias.detach().double().requires_grad_()
    nn.functional.linear(ref_x, ref_w, ref_b).square().sum().backward()
    tol = dict(rtol=2e-2, atol=2e-2) if dtype == F16 else dict(rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(x.grad.double(), ref_x.grad, **tol)
    torch.testing.assert_close(layer.bias.grad.double(), ref_b.grad, **tol)
    packed_grad = layer.packed()._replace(values=layer.values.grad)
    unpack = csr.unpack if fmt == "csr" else nm.unpack
    grad_w = unpack(packed_grad, (24, 64)).double()
    # The trained positions: CSR's stored entries; 2:4's nonzero slots (its zero slots are padding).
    kept = torch.ones_like(layer.values) if fmt == "csr" else (layer.values != 0).to(layer.values.dtype)
    pattern = unpack(layer.packed()._replace(values=kept), (24, 64)) != 0
    torch.testing.assert_close(grad_w, ref_w.grad * pattern, **tol)
