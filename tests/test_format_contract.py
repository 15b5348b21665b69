"""The contract every registered packed format keeps, checked by looping over the registry:
a new format gets this coverage by registering (sparsekern/formats/__init__.py)."""
import pytest
import torch
from torch import nn

import sparsekern as sk
from sparsekern import ops
from sparsekern.formats import PACKED_FORMATS

from conftest import assert_matches_reference

FORMATS = sorted(PACKED_FORMATS)


def weight_and_mask(fmt, out_features=12, in_features=40, seed=0):
    """A weight and a mask the format can hold: random at 70%, or 2:4 (which every format
    holds) where the random one does not fit; one empty row and one with all its slots kept."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(out_features, in_features, generator=g)
    mask = torch.rand(out_features, in_features, generator=g) < 0.3
    if fmt.incompatible(mask) is not None:
        scores = torch.rand(out_features, in_features // 4, 4, generator=g)
        mask = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, scores.topk(2, dim=-1).indices, True)
        mask = mask.reshape(out_features, in_features)
    mask[0] = False
    assert fmt.incompatible(mask) is None
    return weight, mask


@pytest.fixture(params=FORMATS)
def fmt(request):
    return PACKED_FORMATS[request.param]


@pytest.mark.parametrize("value_dtype", [torch.float32, torch.bfloat16])
def test_pack_unpack_is_exact(fmt, value_dtype):
    weight, mask = weight_and_mask(fmt)
    tensors = fmt.pack(weight, mask, value_dtype)
    assert isinstance(tensors, fmt.layout) and tensors.values.dtype == value_dtype
    fmt.validate(tensors, weight.shape)
    expected = (weight * mask).to(value_dtype).to(torch.float32)
    assert torch.equal(fmt.unpack(tensors, weight.shape, torch.float32), expected)
    assert fmt.nnz(tensors) == int(torch.count_nonzero(expected))


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
@pytest.mark.parametrize("shape", [(0, 40), (12, 0), (0, 0)])
def test_empty_layers_pack_and_run(fmt, shape):
    # 2:4 failed to pack a layer without rows (a new-user trial).
    linear = nn.Linear(shape[1], shape[0])
    layer = sk.SparseLinear.from_dense(linear, format=fmt.name)
    fmt.validate(fmt.layout(*layer._packed_tensors()), shape)
    x = torch.randn(3, shape[1])
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            y = layer(x)
        assert torch.equal(y, torch.nn.functional.linear(x, torch.zeros(shape), linear.bias.detach()))


def test_skeleton_is_valid_and_empty(fmt):
    tensors = fmt.skeleton((12, 40), 30, torch.float32, None)
    fmt.validate(tensors, (12, 40))
    assert fmt.unpack(tensors, (12, 40)).abs().sum() == 0


def corruptions(tensors):
    """(what, corrupted tensors) for each field: one element short, and a foreign dtype."""
    for i, name in enumerate(tensors._fields):
        t = tensors[i]
        if t.numel():
            yield f"{name} truncated", tensors._replace(**{name: t.reshape(-1)[:-1].reshape(-1)})
        foreign = torch.int8 if t.is_floating_point() else torch.float64
        yield f"{name} as {foreign}", tensors._replace(**{name: t.to(foreign)})


def test_validate_rejects_each_corruption(fmt):
    weight, mask = weight_and_mask(fmt)
    tensors = fmt.pack(weight, mask)
    for what, bad in corruptions(tensors):
        with pytest.raises((ValueError, TypeError)):
            fmt.validate(bad, weight.shape)
            pytest.fail(f"{fmt.name}: validate accepted {what}")


def layer_of(fmt, value_dtype=None, bias=True):
    weight, mask = weight_and_mask(fmt)
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias)
    with torch.no_grad():
        linear.weight.copy_(weight * mask)
    return sk.SparseLinear.from_dense(linear, mask=mask, format=fmt.name, value_dtype=value_dtype)


def test_state_dict_round_trip(fmt):
    layer = layer_of(fmt)
    skeleton = sk.SparseLinear(layer.in_features, layer.out_features, format=fmt.name)
    skeleton.load_state_dict(layer.state_dict())
    x = torch.randn(3, layer.in_features)
    assert torch.equal(skeleton(x), layer(x))


def test_save_load_round_trip(fmt, tmp_path):
    model = nn.Sequential(layer_of(fmt, torch.bfloat16))
    sk.save(model, tmp_path / "m.safetensors")
    loaded = sk.load(nn.Sequential(nn.Linear(model[0].in_features, model[0].out_features)),
                     tmp_path / "m.safetensors")
    assert loaded[0].format == fmt.name
    x = torch.randn(2, model[0].in_features)
    assert torch.equal(loaded(x), model(x))


@pytest.mark.parametrize("x_shape", [(4, 40), (2, 3, 40), (0, 40)])
def test_opcheck(fmt, x_shape):
    layer = layer_of(fmt)
    tensors = layer.packed()
    x = torch.randn(x_shape, requires_grad=True)
    values = tensors.values.detach().clone().requires_grad_()
    args = (x, *tensors._replace(values=values), layer.bias, 40, 12)
    torch.library.opcheck(ops.linear_op(fmt.name).default, args)
    linear, grad_input, sampled_grad = (getattr(torch.ops.sparsekern, n).default for n in ops.op_names(fmt))
    tensors = tensors._replace(values=tensors.values.detach())  # backward ops: first derivatives only
    grad_y = torch.randn(*x_shape[:-1], 12)
    torch.library.opcheck(grad_input, (grad_y, *tensors, 40))
    torch.library.opcheck(sampled_grad, (grad_y, x.detach(), *tensors, 40))


@pytest.mark.parametrize("batch", [0, 1, 3, 17, 64, 97])
@pytest.mark.parametrize("value_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_matches_float64_reference_on_every_isa(fmt, isa, batch, value_dtype, x_dtype):
    layer = layer_of(fmt, value_dtype)
    x = torch.randn(batch, 40).to(x_dtype)
    y = ops.linear_eager(fmt.name, x, layer.packed(), layer.bias, 40, 12, isa=isa)
    assert y.dtype == x_dtype
    assert_matches_reference(y, x, layer.dense_weight(), layer.bias)


def test_gradients_match_float64_reference(fmt):
    layer = layer_of(fmt)
    x = torch.randn(5, 40, dtype=torch.float64, requires_grad=True)
    tensors = layer.packed()
    # No stored zeros: 2:4 defines the gradient of its padding zeros as 0 (they are not weights,
    # and must not train), which a finite difference cannot see. tests/test_kernels_nm24 checks it.
    values = tensors.values.detach().double()
    values = torch.where(values == 0, 0.5, values).requires_grad_()
    bias = layer.bias.detach().double().requires_grad_()
    torch.autograd.gradcheck(lambda x, v, b: ops.linear_op(fmt.name)(x, *tensors._replace(values=v), b, 40, 12),
                             (x, values, bias))


def test_compile_fullgraph_and_export(fmt):
    model = nn.Sequential(layer_of(fmt), nn.ReLU()).eval()
    x = torch.randn(5, 40)
    with torch.no_grad():
        expected = model(x)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), expected)
    program = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    assert f"sparsekern.{ops.op_names(fmt)[0]}" in str(program.graph)  # the packed op, not a dense matmul
    with torch.no_grad():
        assert program.module()(torch.randn(3, 40)).shape == (3, 12)  # the batch stays dynamic
        torch.testing.assert_close(program.module()(x), expected)
