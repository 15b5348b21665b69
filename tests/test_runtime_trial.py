"""Packed layers run the ways users run models: under torch.autocast, from several threads at
once, pickled (plain pickle, torch.save, deepcopy) and on torch's fallback path under
torch.compile. Each defect a new-user trial found has its test here."""
import io
import pickle
import random
import threading
import warnings
from multiprocessing.reduction import ForkingPickler

import pytest
import torch
from torch import nn

import sparsekern as sk
from sparsekern import ops
from sparsekern.formats import PACKED_FORMATS

from conftest import assert_matches_reference

FORMATS = sorted(PACKED_FORMATS)


def layer_of(format, in_features=256, out_features=64, value_dtype=None, seed=0):
    torch.manual_seed(seed)
    linear = nn.Linear(in_features, out_features)
    if format == "2:4":
        sk.prune.nm(linear, n=2, m=4)
    else:
        sk.prune.magnitude(linear, sparsity=0.7)
    return sk.SparseLinear.from_dense(linear, format=format, value_dtype=value_dtype)


def weights_of(layer):
    return layer.dense_weight().double(), layer.bias.detach().double()


# ---- torch.autocast ------------------------------------------------------------------------

@pytest.mark.parametrize("format", FORMATS)
@pytest.mark.parametrize("value_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("autocast_dtype", [torch.bfloat16, torch.float16])
def test_autocast_casts_the_input_as_nn_linear_does(format, value_dtype, autocast_dtype):
    # An fp32 model under autocast returned fp32 from its packed layers where nn.Linear returns
    # the autocast dtype, on both the eager and the autograd path.
    layer = layer_of(format, value_dtype=value_dtype)
    x = torch.randn(5, layer.in_features)
    for grad in (False, True):
        with torch.autocast("cpu", dtype=autocast_dtype), torch.set_grad_enabled(grad):
            y = layer(x)
            assert nn.Linear(layer.in_features, 2)(x).dtype == autocast_dtype  # what users compare with
        assert y.dtype == autocast_dtype
        assert_matches_reference(y.detach(), x.to(autocast_dtype), *weights_of(layer))


def test_autocast_leaves_float64_and_disabled_regions_alone():
    layer = layer_of("csr")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(torch.randn(3, layer.in_features, dtype=torch.float64)).dtype == torch.float64
        with torch.autocast("cpu", enabled=False):
            x = torch.randn(3, layer.in_features)
            assert_matches_reference(layer(x), x, *weights_of(layer))


@pytest.mark.parametrize("format", FORMATS)
def test_autocast_gradients_reach_the_input_and_the_values(format):
    layer = layer_of(format)
    x = torch.randn(6, layer.in_features, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    y.float().sum().backward()
    weight, _ = weights_of(layer)
    assert x.grad.dtype == torch.float32 and layer.values.grad.dtype == torch.float32
    # dL/dx = ones @ W: a bf16 grad_y times W, rounded to bf16 once.
    assert_matches_reference(x.grad.bfloat16(), torch.ones(6, layer.out_features), weight.T)


@pytest.mark.parametrize("format", FORMATS)
def test_bf16_autocast_runs_a_bf16_copy_of_float32_values(format):
    """Float32 values under bf16 autocast run the native bf16 kernels on a bf16 copy of the
    values (as autocast casts nn.Linear's weights): the same output, bit for bit, as the layer
    stored in bf16; the copy counts in derived_bytes and follows in-place updates."""
    stored_fp32, stored_bf16 = layer_of(format), layer_of(format, value_dtype=torch.bfloat16)
    with torch.no_grad():
        for batch in (1, 5, 17, 64):
            x = torch.randn(batch, stored_fp32.in_features)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y = stored_fp32(x)
            assert torch.equal(y, stored_bf16(x.bfloat16()))
        copy_bytes = stored_fp32.values.numel() * 2
        assert stored_fp32.derived_bytes >= copy_bytes
        stored_fp32.values.mul_(-1)  # an in-place update the next call must see
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = stored_fp32(x)
    assert_matches_reference(y, x.bfloat16(), *weights_of(stored_fp32))
    sk.refresh(stored_fp32)
    assert stored_fp32.derived_bytes == 0


def test_bf16_autocast_without_derived_layouts_reads_the_float32_values():
    layer = layer_of("csr")
    x = torch.randn(17, layer.in_features)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        layer(x)  # builds the bf16 copy
    previous = sk.set_derived_layouts(False)
    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            y = layer(x)
            assert layer.derived_bytes == 0  # the copy dropped on the next call
        with torch.no_grad():  # the float32 values beside bf16 x, as without autocast
            assert torch.equal(y, layer(x.bfloat16()))
    finally:
        sk.set_derived_layouts(previous)


def test_autocast_under_torch_compile():
    layer = layer_of("2:4", value_dtype=torch.bfloat16)
    compiled = torch.compile(layer, fullgraph=True)
    x = torch.randn(4, layer.in_features)
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = compiled(x)
        assert compiled(x).dtype == torch.float32  # autocast off again: recompiled, not reused
    assert y.dtype == torch.bfloat16
    assert_matches_reference(y, x.bfloat16(), *weights_of(layer))


# ---- threads ---------------------------------------------------------------------------------

# Batches on every side of the kernels' switches (batch 1 paths, the derived layouts built on a
# layer's first call from batch 2 or 3, register-blocked and tiled batches).
BATCHES = (1, 2, 3, 4, 7, 16, 17, 64, 300)


@pytest.mark.parametrize("format", FORMATS)
@pytest.mark.parametrize("value_dtype", [torch.float32, torch.bfloat16])
def test_threads_calling_one_layer_get_the_single_threaded_results(format, value_dtype):
    # An inference server's threads share a layer whose derived layouts are built lazily, by
    # whichever call first wants them.
    single = layer_of(format, 1024, 256, value_dtype)
    g = torch.Generator().manual_seed(1)
    inputs = [torch.randn(b, 1024, generator=g).to(dtype) for b in BATCHES for dtype in (torch.float32, torch.bfloat16)]
    with torch.no_grad():
        expected = [single(x) for x in inputs]
    shared = layer_of(format, 1024, 256, value_dtype)  # fresh: no layout built yet
    wrong = []

    def serve(seed):
        order = list(range(len(inputs))) * 2
        random.Random(seed).shuffle(order)
        for i in order:
            with torch.set_grad_enabled(i % 3 == 0):  # the autograd path too
                y = shared(inputs[i])
            if not torch.equal(y, expected[i]):
                wrong.append(tuple(inputs[i].shape))

    threads = [threading.Thread(target=serve, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong


# ---- pickling --------------------------------------------------------------------------------

@pytest.mark.parametrize("format", FORMATS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_plain_pickle_round_trips(format, dtype):
    # pickle.dumps of a CSR or bitmap model succeeded, then pickle.loads failed ("UntypedStorage
    # has no attribute dtype"): torch's pickling of uint16/uint32 tensors (joblib, cloudpickle).
    model = nn.Sequential(layer_of(format), nn.ReLU()).to(dtype)
    x = torch.randn(3, 256).to(dtype)
    with torch.no_grad():
        expected = model(x)
        copy = pickle.loads(pickle.dumps(model))
        assert torch.equal(copy(x), expected)
    assert [t.dtype for t in copy[0].buffers()] == [t.dtype for t in model[0].buffers()]
    # torch.save of a model beside its own state_dict: one storage must not appear as two dtypes.
    buffer = io.BytesIO()
    torch.save({"model": model, "state_dict": model.state_dict()}, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    with torch.no_grad():
        assert torch.equal(loaded["model"](x), expected)


@pytest.mark.parametrize("format", ["csr", "bitmap"])
def test_pickling_a_shared_layer_keeps_its_buffers_shared(format):
    # What torch.multiprocessing sends to a worker: the index buffers stay in shared memory.
    layer = layer_of(format).share_memory()
    copy = ForkingPickler.loads(ForkingPickler.dumps(layer))
    for name, t in layer.named_buffers():
        mine = copy.get_buffer(name)
        assert mine.dtype == t.dtype and mine.is_shared() and torch.equal(mine, t)
    x = torch.randn(2, 256)
    with torch.no_grad():
        assert torch.equal(copy(x), layer(x))


# ---- torch's fallback path -----------------------------------------------------------------

@pytest.mark.parametrize("format", FORMATS)
@pytest.mark.parametrize("x_dtype, value_dtype", [(torch.float64, torch.float64), (torch.float32, torch.float16)])
def test_fallback_path_output_is_row_major(format, x_dtype, value_dtype):
    # CSR's torch path returned a transposed (column-major) y, which the op's fake declares
    # row-major: a compiled .double() or .half() model failed inductor's stride assert.
    layer = layer_of(format, 40, 12).to(value_dtype)
    x = torch.randn(2, 3, 40, dtype=x_dtype)
    torch.library.opcheck(ops.linear_op(format).default, (x, *layer.packed(), layer.bias, 40, 12),
                          test_utils=("test_faketensor",))
    with torch.no_grad():
        y = layer(x)
    assert y.is_contiguous()
    assert_matches_reference(y.to(x_dtype), x, *weights_of(layer))


def test_compiled_float64_model_runs():
    layer = layer_of("csr").double()
    x = torch.randn(4, 256, dtype=torch.float64)
    with torch.no_grad():
        y = torch.compile(layer, dynamic=True)(x)
    assert_matches_reference(y, x, *weights_of(layer))


# ---- float16 models --------------------------------------------------------------------------

@pytest.mark.parametrize("format", FORMATS)
def test_a_float16_model_is_packed_with_float32_values(format):
    # The CPU kernels read float32 and bf16 values: float16 ones ran torch's fallback, 8x
    # (CSR) to 200x (bitmap) slower than dense float16 at 4096 x 4096. float32 holds them exactly.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16))
    sk.prune.nm(model, n=2, m=4) if format == "2:4" else sk.prune.magnitude(model, sparsity=0.7)
    model = model.half()
    reference = [((m.weight_orig * m.weight_mask).detach().double(), m.bias.detach().double())
                 for m in (model[0], model[2])]
    sk.sparsify(model, format=format, progress=False)
    x = torch.randn(5, 64, dtype=torch.float16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning: the kernels run
        with torch.no_grad():
            hidden = model[0](x)
    assert model[0].values.dtype == torch.float32 and model[0].bias.dtype == torch.float16
    assert hidden.dtype == torch.float16
    assert_matches_reference(hidden, x, *reference[0])
    assert torch.equal(model[0].dense_weight().half().double(), reference[0][0])  # nothing rounded


def test_float16_values_asked_for_warn_that_they_run_the_fallback():
    layer = layer_of("csr").half()  # values converted after packing, as model.half() does
    with pytest.warns(UserWarning, match="float16 values runs torch's fallback"), torch.no_grad():
        y = layer(torch.randn(3, layer.in_features, dtype=torch.float16))
    assert y.dtype == torch.float16
