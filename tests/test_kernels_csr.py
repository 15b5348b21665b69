"""The CSR kernels, every ISA variant called directly, against the float64 masked-dense reference."""
import pytest
import torch

from sparsekern import ops
from sparsekern.formats import csr

from conftest import assert_matches_reference, random_sparse_weight

SHAPES = [(1, 1), (3, 5), (17, 31), (64, 97), (257, 129)]
BATCHES = [0, 1, 2, 16, 17, 65]
DENSITIES = [0.0, 0.03, 0.5, 1.0]


def run(isa, x, weight, mask, bias, value_dtype=torch.float32):
    packed = csr.pack(weight, mask, value_dtype)
    out_features, in_features = weight.shape
    y = ops.linear_eager("csr", x, packed, bias, in_features, out_features, isa=isa)
    return y, csr.unpack(packed, weight.shape, torch.float64)


@pytest.mark.parametrize("value_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
def test_shapes_batches_densities(isa, shape, value_dtype):
    g = torch.Generator().manual_seed(sum(shape))
    for density in DENSITIES:
        weight, mask = random_sparse_weight(*shape, density, generator=g)
        bias = torch.randn(shape[0], generator=g)
        for batch in BATCHES:
            x = torch.randn(batch, shape[1], generator=g)
            y, stored = run(isa, x, weight, mask, bias if batch % 2 else None, value_dtype)
            assert_matches_reference(y, x, stored, bias if batch % 2 else None)


# A kernel that lives across calls (a layer's, or the op path's cached one) builds the
# column-chunked copy (csr_chunks.h) for batched calls, for matrices with a fifth of their
# weights kept or more, where x's tiles outgrow L1 (CsrFamily::wants_chunks): columns around its
# 256-column chunks, rows around its 32-row blocks, batches around the tile widths, strided x;
# bf16 weights and activations (native on avx512bf16, widened elsewhere) and float32 ones.
# Sparser matrices keep reading the canonical buffers.
@pytest.mark.parametrize("out_features, in_features", [(33, 2049), (70, 2560)])
@pytest.mark.parametrize("density", [0.5, 0.1])
@pytest.mark.parametrize("batch", [2, 16, 17, 33, 97])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_kept_kernel_every_isa(isa, out_features, in_features, density, batch, dtype):
    g = torch.Generator().manual_seed(batch)
    weight, mask = random_sparse_weight(out_features, in_features, density, generator=g)
    packed = csr.pack(weight, mask, dtype)
    stored = csr.unpack(packed, weight.shape, torch.float64)
    x = torch.randn(batch, 2 * in_features, generator=g).to(dtype)[:, ::2] if batch % 2 else \
        torch.randn(batch, in_features, generator=g).to(dtype)
    bias = torch.randn(out_features, generator=g) if batch != 16 else None
    kernel = csr.kernel(packed, in_features, out_features)
    kernel.keep_layouts()
    for _ in range(2):  # the first call builds the copy, the second reuses it
        y = ops.run_kernel("csr", kernel, x, bias, in_features, out_features, isa=isa)
        assert y.dtype == dtype
        assert_matches_reference(y, x, stored, bias)
    assert (kernel.derived_bytes() > 0) == (isa != "scalar" and density > 0.2)


def test_op_path_chunked_copy_follows_in_place_updates():
    """The op path keeps a kernel per values tensor, with its column-chunked copy for bf16
    batches; an in-place update of the values or the columns must reach the next call."""
    g = torch.Generator().manual_seed(5)
    weight, mask = random_sparse_weight(40, 2100, 0.5, generator=g)
    packed = csr.pack(weight, mask, torch.bfloat16)
    stored = csr.unpack(packed, weight.shape, torch.float64)
    x = torch.randn(16, 2100, generator=g).bfloat16()
    assert_matches_reference(ops.linear_eager("csr", x, packed, None, 2100, 40), x, stored)
    packed.values.mul_(2)
    assert_matches_reference(ops.linear_eager("csr", x, packed, None, 2100, 40), x, 2 * stored)
    packed.col_idx.copy_((packed.col_idx.long() + 1).remainder(2100).to(packed.col_idx.dtype))
    moved = csr.unpack(packed, weight.shape, torch.float64)
    assert_matches_reference(ops.linear_eager("csr", x, packed, None, 2100, 40), x, moved)


def test_empty_rows_get_bias(isa):
    weight, mask = random_sparse_weight(9, 40, 0.5)
    mask[::2] = False  # every other row empty
    bias = torch.arange(9, dtype=torch.float32)
    for batch in (1, 20):
        x = torch.randn(batch, 40)
        y, stored = run(isa, x, weight, mask, bias)
        assert torch.equal(y[:, ::2], bias[::2].expand(batch, -1))
        assert_matches_reference(y, x, stored, bias)


def test_one_nonzero(isa):
    weight = torch.zeros(7, 11)
    weight[3, 5] = 1.5
    x = torch.randn(4, 11)
    y, stored = run(isa, x, weight, None, None)
    assert torch.equal(y[:, 3], 1.5 * x[:, 5])
    assert torch.count_nonzero(y) == 4


def test_int32_indices_beyond_65536_columns(isa):
    weight, mask = random_sparse_weight(3, 70_001, 0.001)
    weight[0, 70_000] = 2.0
    mask[0, 70_000] = True
    packed = csr.pack(weight, mask)
    assert packed.col_idx.dtype == torch.int32
    for batch in (1, 5):
        x = torch.randn(batch, 70_001)
        y, stored = run(isa, x, weight, mask, None)
        assert_matches_reference(y, x, stored)


@pytest.mark.parametrize("batch", [1, 33])
def test_strided_and_3d_inputs(isa, batch):
    weight, mask = random_sparse_weight(20, 24, 0.3)
    bias = torch.randn(20)
    wide = torch.randn(batch, 48)
    for x in (wide[:, ::2], wide[:, :24], torch.randn(24, batch).t()):  # non-contiguous views
        y, stored = run(isa, x, weight, mask, bias)
        assert_matches_reference(y, x, stored, bias)
    x3 = torch.randn(2, batch, 24)
    y, stored = run(isa, x3, weight, mask, bias)
    assert_matches_reference(y, x3, stored, bias)


@pytest.mark.parametrize("x_dtype", [torch.bfloat16, torch.float16])
def test_half_precision_activations_come_back_in_their_dtype(isa, x_dtype):
    weight, mask = random_sparse_weight(30, 50, 0.2)
    x = torch.randn(6, 50).to(x_dtype)
    y, stored = run(isa, x, weight, mask, None)
    assert y.dtype == x_dtype
    assert_matches_reference(y, x, stored)


def test_isas_agree_with_scalar_oracle(isa):
    weight, mask = random_sparse_weight(300, 200, 0.1)
    x = torch.randn(40, 200)
    oracle, _ = run("scalar", x, weight, mask, None)
    y, _ = run(isa, x, weight, mask, None)
    torch.testing.assert_close(y, oracle, rtol=1e-5, atol=1e-5)
