"""CUDA kernels (sparsekern/ops_cuda.py, csrc/kernels/cuda) against the float64 masked-dense
reference: every dtype pair, CSR and 2:4, edge shapes, strides, streams, opcheck, gradients and
SparseLinear on the GPU. Skipped without a GPU or without a CUDA build of sparsekern._C."""
import pytest
import torch
from torch import nn

import sparsekern as sk
from sparsekern import _backend
from sparsekern.formats import csr, nm

from conftest import assert_matches_reference, random_sparse_weight
from test_nm24_format import mask_24

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not _backend._C.with_cuda,
                       reason="sparsekern._C was built without CUDA (SPARSEKERN_CUDA=off, or no nvcc found)"),
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU (torch.cuda.is_available() is False)"),
]

F32, F16, BF16, F64 = torch.float32, torch.float16, torch.bfloat16, torch.float64
# (x dtype, values dtype): the kernels' own pairs, pairs ops_cuda casts values for, float64's fallback.
DTYPE_PAIRS = [(F32, F32), (F32, BF16), (F32, F16), (F16, F16), (BF16, BF16), (F16, F32), (BF16, F32),
               (F64, F64)]
# (out, in, batch, density): batch 0, 1, each batch tile (1, 4, 8) full and partial, more than
# 8 rows; 1x1, odd and prime sizes, all-zero, fully dense, very sparse rows, K > 65536 (int32).
CSR_SHAPES = [(1, 1, 1, 1.0), (7, 13, 0, 0.5), (61, 97, 3, 0.3), (33, 100, 8, 0.0), (256, 1024, 1, 0.1),
              (129, 1031, 17, 1.0), (64, 4096, 33, 0.02), (5, 70001, 2, 0.01), (40, 520, 4, 0.5),
              (9, 64, 5, 0.9)]
# in % 8 == 0 (vector loads) and in % 8 == 4 (an odd number of groups: scalar loads, half byte).
NM24_SHAPES = [(1, 4, 1), (3, 4, 9), (7, 12, 0), (5, 36, 3), (33, 100, 8), (17, 1040, 17), (6, 2052, 2),
               (256, 1024, 1), (64, 4096, 33), (9, 64, 5)]


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


def _check(y, x, stored, bias):
    assert y.is_cuda and y.dtype == x.dtype
    torch.cuda.synchronize()
    assert_matches_reference(y.cpu(), x.cpu(), stored, None if bias is None else bias.cpu())


@pytest.mark.parametrize("out_features, in_features, batch, density", CSR_SHAPES)
@pytest.mark.parametrize("x_dtype, value_dtype", DTYPE_PAIRS)
def test_csr_matches_reference(out_features, in_features, batch, density, x_dtype, value_dtype):
    packed, stored = csr_case(out_features, in_features, density, value_dtype, seed=batch)
    assert packed.col_idx.dtype == csr.index_dtype(in_features)
    x = _x(batch, in_features, x_dtype, seed=1)
    bias = _bias(out_features, x_dtype, seed=2) if batch % 2 else None
    y = torch.ops.sparsekern.csr_linear(x, *packed, bias, in_features, out_features)
    _check(y, x, stored, bias)


@pytest.mark.parametrize("out_features, in_features, batch", NM24_SHAPES)
@pytest.mark.parametrize("x_dtype, value_dtype", DTYPE_PAIRS)
def test_nm24_matches_reference(out_features, in_features, batch, x_dtype, value_dtype):
    packed, stored = nm24_case(out_features, in_features, value_dtype, seed=batch)
    x = _x(batch, in_features, x_dtype, seed=1)
    bias = _bias(out_features, x_dtype, seed=2) if batch % 2 else None
    y = torch.ops.sparsekern.nm24_linear(x, *packed, bias, in_features, out_features)
    _check(y, x, stored, bias)


def test_csr_one_nonzero_and_one_long_row():
    mask = torch.zeros(40, 5000, dtype=torch.bool)
    mask[3, 4321] = True
    mask[7] = True  # one full row among nearly empty ones: the unbalanced case
    weight, _ = random_sparse_weight(40, 5000, 1.0)
    packed = csr.pack(weight, mask, F16)
    stored = csr.unpack(packed, (40, 5000))
    x = _x(3, 5000, F16, seed=3)
    y = torch.ops.sparsekern.csr_linear(x, *(t.cuda() for t in packed), None, 5000, 40)
    _check(y, x, stored, None)


@pytest.mark.parametrize("fmt", ["csr", "2:4"])
def test_batch_beyond_one_grid_of_tiles(fmt):
    # grid.y holds at most 65535 tiles of 8 rows: larger batches loop inside the kernel.
    batch = 8 * 65535 + 13
    packed, stored = csr_case(3, 8, 0.5, F16) if fmt == "csr" else nm24_case(3, 8, F16)
    op = torch.ops.sparsekern.csr_linear if fmt == "csr" else torch.ops.sparsekern.nm24_linear
    x = _x(batch, 8, F16, seed=4)
    bias = _bias(3, F16, seed=5)
    _check(op(x, *packed, bias, 8, 3), x, stored, bias)


@pytest.mark.parametrize("fmt", ["csr", "2:4"])
@pytest.mark.parametrize("batch", [1, 6])
def test_3d_and_strided_inputs(fmt, batch):
    packed, stored = csr_case(10, 48, 0.4, F16) if fmt == "csr" else nm24_case(10, 48, F16)
    op = torch.ops.sparsekern.csr_linear if fmt == "csr" else torch.ops.sparsekern.nm24_linear
    bias = _bias(10, F16, seed=6)
    x3 = torch.randn(2, batch, 48, dtype=F16, device="cuda")
    y = op(x3, *packed, bias, 48, 10)
    assert y.shape == (2, batch, 10)
    _check(y, x3, stored, bias)
    wide = torch.randn(batch, 96, dtype=F16, device="cuda")
    for x in (wide[:, ::2], wide[:, 8:56], torch.randn(48, batch, dtype=F16, device="cuda").t()):
        _check(op(x, *packed, bias, 48, 10), x, stored, bias)


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


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_runs_on_the_device_of_its_inputs():
    packed, stored = csr_case(30, 64, 0.5, F16)
    packed = csr.CsrTensors(*(t.to("cuda:1") for t in packed))
    x = _x(2, 64, F16, seed=8).to("cuda:1")
    with torch.cuda.device(0):
        y = torch.ops.sparsekern.csr_linear(x, *packed, None, 64, 30)
    assert y.device == x.device
    _check(y, x, stored, None)


def test_mixed_devices_raise():
    packed, _ = csr_case(4, 8, 0.5, F32)
    with pytest.raises(ValueError, match="values is on cpu"):
        torch.ops.sparsekern.csr_linear(_x(1, 8, F32, 0), packed.row_ptr, packed.col_idx, packed.values.cpu(),
                                        None, 8, 4)


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
    pattern = (unpack(layer.packed()._replace(values=torch.ones_like(layer.values)), (24, 64)) != 0)
    torch.testing.assert_close(grad_w, ref_w.grad * pattern, **tol)
