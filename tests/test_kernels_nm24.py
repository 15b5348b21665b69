"""2:4 products: every CPU kernel variant against the float64 reference, the custom op
(opcheck, gradients) and SparseLinear(format="2:4")."""
import pytest
import torch
from torch import nn

import sparsekern as sk
from sparsekern import ops
from sparsekern.formats import nm

from conftest import assert_matches_reference, mask_24, random_sparse_weight


def case_24(out_features, in_features, seed=0, value_dtype=torch.float32, kept_per_group=None):
    """(packed, masked dense weight as stored): values never zero, some groups 1:4 or 0:4."""
    g = torch.Generator().manual_seed(seed)
    weight, _ = random_sparse_weight(out_features, in_features, 1.0, generator=g)
    mask = mask_24(out_features, in_features, g, kept_per_group)
    packed = nm.pack(weight, mask, value_dtype)
    return packed, nm.unpack(packed, (out_features, in_features), torch.float32)


# batch 0/1 and both sides of the kernels' batched-path threshold (4); in_features 4, odd
# out_features, in_features not a multiple of any vector width, and more than one column block.
@pytest.mark.parametrize("out_features, in_features, batch", [
    (1, 4, 1), (3, 4, 9), (7, 12, 0), (5, 36, 3), (33, 100, 8), (17, 1040, 17), (6, 2052, 2)])
@pytest.mark.parametrize("value_dtype", [torch.float32, torch.bfloat16])
def test_every_isa_matches_reference(isa, out_features, in_features, batch, value_dtype):
    packed, weight = case_24(out_features, in_features, seed=batch, value_dtype=value_dtype)
    x = torch.randn(batch, in_features)
    bias = torch.randn(out_features) if batch % 2 else None
    y = ops.linear_eager("2:4", x, packed, bias, in_features, out_features, isa=isa)
    assert y.dtype == torch.float32
    assert_matches_reference(y, x, weight, bias)


# bf16 values and activations, which avx512bf16 reads natively (vdpbf16ps): out_features not a
# multiple of 16, in_features a multiple of 4 but not of its 64-column chunk, batch 1, around
# its batch tile (8), 32 and 70. Other ISAs widen. A kernel made for one call has no
# rows-in-lanes copy, so every batch here runs the small-batch path; the next test keeps one.
@pytest.mark.parametrize("out_features, in_features", [(15, 68), (33, 132), (8, 4100)])
@pytest.mark.parametrize("batch", [1, 3, 9, 31, 32, 33, 70])
def test_bf16_activations_every_isa(isa, out_features, in_features, batch):
    packed, weight = case_24(out_features, in_features, seed=batch, value_dtype=torch.bfloat16)
    x = torch.randn(batch, 2 * in_features, dtype=torch.bfloat16)[:, ::2] if batch % 2 else \
        torch.randn(batch, in_features, dtype=torch.bfloat16)
    bias = torch.randn(out_features) if batch != 32 else None
    y = ops.linear_eager("2:4", x, packed, bias, in_features, out_features, isa=isa)
    assert y.dtype == torch.bfloat16
    assert_matches_reference(y, x, weight, bias)


# A kernel that lives across calls (a layer's, or the op path's cached one) builds the
# rows-in-lanes copy for bf16 batches from 3 (nm24_linear_bf16_lanes.h): batches around that
# threshold and its 8-row tile, rows around its 16-row blocks and 48-row panels, columns around
# its blocks of 128 groups (512 columns), strided x.
@pytest.mark.parametrize("out_features, in_features", [(15, 68), (49, 516), (97, 1040), (48, 4)])
@pytest.mark.parametrize("batch", [2, 3, 4, 8, 9, 17, 64])
def test_bf16_kept_kernel_every_isa(isa, out_features, in_features, batch):
    packed, weight = case_24(out_features, in_features, seed=batch + 1, value_dtype=torch.bfloat16)
    x = torch.randn(batch, 2 * in_features, dtype=torch.bfloat16)[:, ::2] if batch % 2 else \
        torch.randn(batch, in_features, dtype=torch.bfloat16)
    bias = torch.randn(out_features) if batch != 8 else None
    kernel = nm.kernel(packed, in_features, out_features)
    kernel.keep_layouts()
    for _ in range(2):  # the first call builds the copy, the second reuses it
        y = ops.run_kernel("2:4", kernel, x, bias, in_features, out_features, isa=isa)
        assert y.dtype == torch.bfloat16
        assert_matches_reference(y, x, weight, bias)


def test_op_path_kernel_follows_in_place_updates():
    """The op path keeps a kernel per values tensor (with its rows-in-lanes copy for bf16);
    an in-place update of the values or the positions must reach the next call."""
    packed, weight = case_24(32, 64, seed=3, value_dtype=torch.bfloat16)
    x = torch.randn(16, 64, dtype=torch.bfloat16)
    assert_matches_reference(ops.linear_eager("2:4", x, packed, None, 64, 32), x, weight)
    packed.values.mul_(2)
    assert_matches_reference(ops.linear_eager("2:4", x, packed, None, 64, 32), x, 2 * weight)
    other, other_weight = case_24(32, 64, seed=4, value_dtype=torch.bfloat16)
    packed.values.copy_(other.values)
    packed.meta.copy_(other.meta)
    assert_matches_reference(ops.linear_eager("2:4", x, packed, None, 64, 32), x, other_weight)


@pytest.mark.parametrize("batch", [1, 9])
def test_3d_and_strided_inputs(isa, batch):
    packed, weight = case_24(10, 48, seed=2)
    bias = torch.randn(10)
    x3 = torch.randn(2, batch, 48)
    y = ops.linear_eager("2:4", x3, packed, bias, 48, 10, isa=isa)
    assert y.shape == (2, batch, 10)
    assert_matches_reference(y, x3, weight, bias)
    wide = torch.randn(batch, 96)
    for x in (wide[:, ::2], wide[:, 8:56], torch.randn(48, batch).t()):
        assert_matches_reference(ops.linear_eager("2:4", x, packed, bias, 48, 10, isa=isa), x, weight, bias)


def test_identity_input_reproduces_weight(isa):
    packed, weight = case_24(13, 40, seed=5)
    y = ops.linear_eager("2:4", torch.eye(40), packed, None, 40, 13, isa=isa)
    assert torch.equal(y, weight.t())


def test_bf16_activations_and_float64_fallback():
    packed, weight = case_24(9, 24, seed=6)
    x = torch.randn(5, 24)
    bias = torch.randn(9)
    y16 = ops.linear_eager("2:4", x.bfloat16(), packed, bias, 24, 9)
    assert y16.dtype == torch.bfloat16
    assert_matches_reference(y16, x.bfloat16(), weight, bias)
    y64 = ops.linear_eager("2:4", x.double(), (packed.values.double(), packed.meta), bias.double(), 24, 9)
    assert y64.dtype == torch.float64
    assert_matches_reference(y64, x.double(), weight, bias)


@pytest.mark.parametrize("args, message", [
    (dict(x=torch.randn(2, 20)), "x.shape\\[-1\\] = 20, expected in_features = 24"),
    (dict(meta=torch.zeros(9, 2, dtype=torch.uint8)), "meta must be uint8 \\(9, 3\\)"),
    (dict(values=torch.zeros(9, 11)), "values.shape = \\(9, 11\\)"),
    (dict(bias=torch.zeros(8)), "bias.shape"),
    (dict(in_features=22), "in_features % 4 == 0"),
])
def test_bad_arguments_raise_in_eager_and_fake_kernels(args, message):
    packed, _ = case_24(9, 24)
    call = dict(x=torch.randn(2, 24), values=packed.values, meta=packed.meta, bias=None,
                in_features=24, out_features=9)
    call.update(args)
    with pytest.raises(ValueError, match=message):
        ops.linear_eager("2:4", call["x"], (call["values"], call["meta"]), call["bias"], call["in_features"],
                         call["out_features"])
    with pytest.raises(ValueError, match=message), torch._subclasses.FakeTensorMode() as mode:
        fake = {k: mode.from_tensor(v) if isinstance(v, torch.Tensor) else v for k, v in call.items()}
        torch.ops.sparsekern.nm24_linear(**fake)


@pytest.mark.parametrize("value_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("x_shape", [(4, 12), (2, 3, 12), (0, 12)])
def test_opcheck(value_dtype, x_shape):
    packed, _ = case_24(6, 12, value_dtype=value_dtype)
    x = torch.randn(x_shape, requires_grad=True)
    values = packed.values.clone().requires_grad_(value_dtype == torch.float32)
    bias = torch.randn(6, requires_grad=True)
    torch.library.opcheck(torch.ops.sparsekern.nm24_linear.default, (x, values, packed.meta, bias, 12, 6))
    grad_y = torch.randn(*x_shape[:-1], 6)
    torch.library.opcheck(torch.ops.sparsekern.nm24_linear_grad_input.default,
                          (grad_y, packed.values, packed.meta, 12))
    torch.library.opcheck(torch.ops.sparsekern.nm24_sampled_grad.default,
                          (grad_y, x.detach(), packed.values, packed.meta, 12))


def test_gradcheck_float64():
    # Two kept per group, so no padding: the gradient of a stored zero is 0 by definition
    # (below), which a finite difference cannot see.
    packed, _ = case_24(5, 8, seed=1, kept_per_group=2)
    x = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)
    values = packed.values.double().requires_grad_()
    bias = torch.randn(5, dtype=torch.float64, requires_grad=True)
    fn = lambda x, v, b: torch.ops.sparsekern.nm24_linear(x, v, packed.meta, b, 8, 5)
    assert torch.autograd.gradcheck(fn, (x, values, bias))


def test_padding_zeros_get_no_gradient():
    # Groups keeping 1 or 0 weights store zeros that are not weights: a gradient there would
    # let fine-tuning grow back what the mask pruned. The kept values get the masked-dense one.
    packed, weight = case_24(30, 40, seed=2)
    assert bool((packed.values == 0).any())  # the case has padding
    x = torch.randn(8, 40)
    values = packed.values.clone().requires_grad_()
    torch.ops.sparsekern.nm24_linear(x, values, packed.meta, None, 40, 30).square().sum().backward()
    w_ref = weight.clone().requires_grad_()
    (x @ w_ref.T).square().sum().backward()
    expected = torch.where(weight != 0, w_ref.grad, 0)
    got = nm.unpack(nm.Nm24Tensors(values.grad, packed.meta), (30, 40), torch.float32)
    assert bool((values.grad[packed.values == 0] == 0).all())
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_gradients_match_masked_dense():
    packed, weight = case_24(30, 40, seed=3, kept_per_group=2)
    mask = nm.mask_of(packed, (30, 40))
    x = torch.randn(2, 8, 40, requires_grad=True)
    values = packed.values.clone().requires_grad_()
    bias = torch.randn(30, requires_grad=True)
    y = torch.ops.sparsekern.nm24_linear(x, values, packed.meta, bias, 40, 30)
    grad_y = torch.randn_like(y)
    y.backward(grad_y)

    x_ref = x.detach().double().requires_grad_()
    w_ref = weight.double().requires_grad_()
    b_ref = bias.detach().double().requires_grad_()
    torch.nn.functional.linear(x_ref, w_ref, b_ref).backward(grad_y.double())
    torch.testing.assert_close(x.grad, x_ref.grad.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bias.grad, b_ref.grad.float(), rtol=1e-5, atol=1e-5)
    expected = w_ref.grad[mask].reshape(30, 20).float()  # stored order is column order in a row
    torch.testing.assert_close(values.grad, expected, rtol=1e-5, atol=1e-5)


# ---- SparseLinear -----------------------------------------------------------------------------

def linear_24(in_features=32, out_features=11, bias=True, seed=0):
    packed, weight = case_24(out_features, in_features, seed=seed)
    linear = nn.Linear(in_features, out_features, bias=bias)
    with torch.no_grad():
        linear.weight.copy_(weight)
    return linear, nm.mask_of(packed, (out_features, in_features))


@pytest.mark.parametrize("bias", [True, False])
def test_sparse_linear_24(bias):
    linear, _ = linear_24(bias=bias)
    layer = sk.SparseLinear.from_dense(linear, format="2:4", value_dtype=None)
    assert layer.format == "2:4" and layer.values.shape == (11, 16) and layer.meta.shape == (11, 4)
    for x in (torch.randn(5, 32), torch.randn(2, 3, 32), torch.randn(3, 64)[:, ::2]):
        assert_matches_reference(layer(x), x, linear.weight.detach(), linear.bias)
    back = layer.to_dense()
    assert torch.equal(back.weight, linear.weight) and torch.equal(layer.dense_weight(), linear.weight)
    assert layer.nnz == int(linear.weight.count_nonzero())
    assert layer.sparsity == pytest.approx(1 - layer.nnz / (11 * 32))
    assert layer.weight_bytes == 11 * 16 * 4 + 11 * 4
    assert "format=2:4" in repr(layer) and "dtype=float32" in repr(layer)
    assert "2:4" in str(sk.summary(nn.Sequential(layer)))


def test_mask_attribute_decides_and_bad_masks_raise():
    linear, mask = linear_24()
    with torch.no_grad():
        linear.weight.copy_(torch.randn(11, 32))
    linear.weight_mask = mask.float()
    layer = sk.SparseLinear.from_dense(linear, format="2:4")
    assert torch.equal(layer.dense_weight(), linear.weight.detach() * mask)
    linear.weight_mask = torch.ones(11, 32)
    with pytest.raises(ValueError, match="not 2:4: row 0, group 0"):
        sk.SparseLinear.from_dense(linear, format="2:4")
    with pytest.raises(ValueError, match="in_features % 4 == 0"):
        sk.SparseLinear.from_dense(nn.Linear(10, 3), format="2:4")


def test_state_dict_round_trip_and_validation():
    linear, _ = linear_24()
    layer = sk.SparseLinear.from_dense(linear, format="2:4", value_dtype=torch.bfloat16)
    skeleton = sk.SparseLinear(32, 11, format="2:4")
    skeleton.load_state_dict(layer.state_dict())
    assert torch.equal(skeleton.dense_weight(), layer.dense_weight().float())
    x = torch.randn(3, 32)
    assert torch.equal(skeleton(x), layer(x))
    bad = dict(layer.state_dict())
    bad["meta"] = bad["meta"].clone()
    bad["meta"][4, 1] = 0x55  # positions 1 and 1
    with pytest.raises(ValueError, match="meta row 4, group 2: positions 1 and 1"):
        skeleton.load_state_dict(bad)
    bad["meta"] = bad["meta"][:, :3]
    with pytest.raises(ValueError, match="meta.shape"):
        skeleton.load_state_dict(bad)


def test_autograd_and_compile_through_the_layer():
    linear, _ = linear_24()
    layer = sk.SparseLinear.from_dense(linear, format="2:4")
    x = torch.randn(4, 32, requires_grad=True)
    layer(x).sum().backward()
    assert layer.values.grad.shape == (11, 16) and x.grad.shape == (4, 32)
    compiled = torch.compile(layer, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), layer(x))


def test_auto_offers_24_only_for_24_masks():
    model = nn.Sequential(nn.Linear(256, 256), nn.Linear(256, 256))
    with torch.no_grad():
        model[0].weight.copy_(nm.unpack(nm.pack(model[0].weight, mask_24(256, 256, torch.Generator(), 2)),
                                        (256, 256)))
        model[1].weight[torch.rand(256, 256) < 0.6] = 0
    sk.sparsify(model, format="auto", progress=False)
    assert "2:4 measured" in model[0].choice_note and "csr measured" in model[0].choice_note
    assert "2:4" not in model[1].choice_note
