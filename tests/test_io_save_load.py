"""sparsekern.save / load / inspect_file and `sparsekern inspect`: round trips, file sizes,
version handling, prune bookkeeping, and files that lie (fuzzed with hypothesis)."""
import io
import json
import os
import struct
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.utils import prune as torch_prune

import sparsekern as sk
from sparsekern import io as skio

from conftest import random_sparse_weight, run_python



def zero_out(model: nn.Module, density: float, seed: int = 0) -> nn.Module:
    """Gives every nn.Linear of `model` a random pattern with `density` kept (never zero) values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                weight, _ = random_sparse_weight(m.out_features, m.in_features, density, generator=g)
                m.weight.copy_(weight)
    return model


class Net(nn.Module):
    """Linear layers with and without bias, a norm with running buffers, a nested module."""

    def __init__(self, width=40):
        super().__init__()
        self.fc1 = nn.Linear(width, 24)
        self.norm = nn.BatchNorm1d(24)
        self.block = nn.Sequential(nn.Linear(24, 16, bias=False), nn.ReLU(), nn.Linear(16, 8))

    def forward(self, x):
        return self.block(torch.relu(self.norm(self.fc1(x))))


def trained_net(density=0.3, formats=("csr", "csr", "csr"), value_dtype=None):
    torch.manual_seed(0)
    net = zero_out(Net(), density)
    net.train()
    net(torch.randn(32, 40))  # moves BatchNorm's running statistics off their defaults
    net.eval()
    for (parent, attr), fmt in zip([(net, "fc1"), (net.block, "0"), (net.block, "2")], formats):
        linear = getattr(parent, attr)
        mask = two_of_four(linear.weight) if fmt == "2:4" else None
        setattr(parent, attr, sk.SparseLinear.from_dense(linear, mask=mask, format=fmt, value_dtype=value_dtype))
    return net




def two_of_four(weight):
    """The 2:4 mask keeping the two largest |w| of every 4 consecutive inputs."""
    groups = weight.detach().abs().reshape(weight.shape[0], -1, 4)
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, groups.topk(2, dim=-1).indices, True)
    return keep.reshape(weight.shape)


def fresh_net():
    return Net().eval()


def saved_bytes(model) -> bytes:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "m.safetensors"
        sk.save(model, str(path))
        return path.read_bytes()


def split_file(data: bytes):
    """(safetensors header dict, data section) of a file's bytes."""
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


def join_file(header: dict, body: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


# ---- round trips ---------------------------------------------------------------------------

@pytest.mark.parametrize("formats, value_dtype", [
    (("csr", "csr", "csr"), None),
    (("csr", "dense", "csr"), None),
    (("csr", "csr", "dense"), torch.bfloat16),
    (("csr", "dense", "2:4"), None),
    (("2:4", "csr", "2:4"), torch.bfloat16),
])
def test_round_trip_into_model_built_from_code(tmp_path, formats, value_dtype):
    model = trained_net(formats=formats, value_dtype=value_dtype)
    path = tmp_path / "m.safetensors"
    sk.save(model, str(path))
    skeleton = fresh_net()
    assert sk.load(skeleton, str(path)) is skeleton
    layers = [skeleton.fc1, skeleton.block[0], skeleton.block[2]]
    assert [type(m) for m in layers] == [sk.SparseLinear] * 3
    assert [m.format for m in layers] == list(formats)
    originals = [model.fc1, model.block[0], model.block[2]]
    for got, want in zip(layers, originals):
        for (name, a), (_, b) in zip(got.state_dict().items(), want.state_dict().items()):
            assert a.dtype == b.dtype and torch.equal(a, b), name
        assert isinstance(got.bias, nn.Parameter) or got.bias is None
    assert torch.equal(skeleton.norm.running_mean, model.norm.running_mean)
    assert int(skeleton.norm.num_batches_tracked) == 1
    x = torch.randn(5, 40)
    with torch.no_grad():
        assert torch.equal(skeleton(x), model(x))


def test_loaded_model_trains(tmp_path):
    model = trained_net()
    sk.save(model, str(tmp_path / "m.safetensors"))
    loaded = sk.load(fresh_net().train(), str(tmp_path / "m.safetensors"))
    loaded(torch.randn(8, 40)).sum().backward()
    assert loaded.fc1.values.grad is not None and loaded.fc1.values.grad.shape == loaded.fc1.values.shape


def test_load_into_sparsified_skeleton_with_other_nnz(tmp_path):
    model = trained_net(density=0.3)
    sk.save(model, str(tmp_path / "m.safetensors"))
    skeleton = trained_net(density=0.8)  # same architecture, different patterns and nnz
    sk.load(skeleton, str(tmp_path / "m.safetensors"))
    assert skeleton.fc1.nnz == model.fc1.nnz
    x = torch.randn(3, 40)
    with torch.no_grad():
        assert torch.equal(skeleton(x), model(x))


def test_tied_tensors_stored_once_and_tied_after_load(tmp_path):
    def tied():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Embedding(300, 64), nn.Linear(64, 64), nn.Linear(64, 300, bias=False))
        model[2].weight = model[0].weight
        return model

    model = tied()
    zero_out(model[1], 0.2)
    model[1] = sk.SparseLinear.from_dense(model[1])
    path = tmp_path / "m.safetensors"
    sk.save(model, str(path))
    assert set(load_file(str(path))) == {"0.weight", "1.row_ptr", "1.col_idx", "1.values", "1.bias"}
    assert path.stat().st_size < 300 * 64 * 4 * 1.3  # the 300 x 64 table once, not twice
    loaded = sk.load(tied(), str(path))
    assert loaded[2].weight is loaded[0].weight
    tokens = torch.tensor([[1, 5, 299]])
    with torch.no_grad():
        assert torch.equal(loaded(tokens), model(tokens))


# ---- the model and the file disagree -------------------------------------------------------

def test_wrong_shape_names_the_layer_and_leaves_model_unchanged(tmp_path):
    sk.save(trained_net(), str(tmp_path / "m.safetensors"))
    other = Net(width=41)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(ValueError, match=r"layer 'fc1'.*in_features=40.*in_features=41"):
        sk.load(other, str(tmp_path / "m.safetensors"))
    assert isinstance(other.fc1, nn.Linear)
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())


def test_missing_and_extra_tensors_are_named(tmp_path):
    sk.save(trained_net(), str(tmp_path / "m.safetensors"))
    model = fresh_net()
    model.extra = nn.Linear(2, 2)
    with pytest.raises(ValueError, match=r"missing from the file \['extra.bias', 'extra.weight'\]"):
        sk.load(model, str(tmp_path / "m.safetensors"))
    model = fresh_net()
    del model.norm
    with pytest.raises(ValueError, match=r"not in the model \['norm.bias'"):
        sk.load(model, str(tmp_path / "m.safetensors"))


def test_dtype_of_other_tensors_must_match(tmp_path):
    sk.save(trained_net(), str(tmp_path / "m.safetensors"))
    model = fresh_net()
    model.norm.double()
    with pytest.raises(ValueError, match=r"norm.weight is float32 \[24\] in the file, the model expects float64 "
                       r"\[24\] \(a model saved in float32: call model.to\(torch.float32\) before loading\)"):
        sk.load(model, str(tmp_path / "m.safetensors"))


def test_layer_where_model_has_another_module(tmp_path):
    sk.save(trained_net(), str(tmp_path / "m.safetensors"))
    model = fresh_net()
    model.fc1 = nn.Conv1d(40, 24, 1)
    with pytest.raises(ValueError, match=r"layer 'fc1': the model has a Conv1d there"):
        sk.load(model, str(tmp_path / "m.safetensors"))


# ---- pruning bookkeeping -------------------------------------------------------------------

def test_model_with_prune_masks_is_refused_with_advice(tmp_path):
    model = Net()
    torch_prune.l1_unstructured(model.fc1, "weight", amount=0.5)
    with pytest.raises(ValueError, match=r"'fc1'.*pruning mask.*sparsify.*finalize"):
        sk.save(model, str(tmp_path / "m.safetensors"))
    assert not (tmp_path / "m.safetensors").exists()
    sk.sparsify(model, format="csr")  # packs the masked layer: nothing left to refuse
    sk.save(model, str(tmp_path / "m.safetensors"))
    assert sk.load(Net(), str(tmp_path / "m.safetensors")).fc1.sparsity == pytest.approx(0.5)


def test_finalized_model_saves_its_plain_linear_layers(tmp_path):
    model = Net()
    torch_prune.l1_unstructured(model.fc1, "weight", amount=0.5)
    torch_prune.remove(model.fc1, "weight")
    sk.save(model, str(tmp_path / "m.safetensors"))
    assert "fc1.weight_orig" not in load_file(str(tmp_path / "m.safetensors"))
    loaded = sk.load(Net(), str(tmp_path / "m.safetensors"))
    assert isinstance(loaded.fc1, nn.Linear) and torch.equal(loaded.fc1.weight, model.fc1.weight)


def test_bare_layer_is_refused(tmp_path):
    with pytest.raises(ValueError, match="wrap a single layer"):
        sk.save(sk.SparseLinear.from_dense(nn.Linear(4, 4)), str(tmp_path / "m.safetensors"))


# ---- file size -----------------------------------------------------------------------------

def dense_state_dict_bytes(model) -> int:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def big_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 1024))


@pytest.mark.parametrize("value_dtype, limit", [(torch.float32, 0.20), (torch.bfloat16, 0.13)])
def test_file_size_follows_nonzeros(tmp_path, value_dtype, limit):
    dense = zero_out(big_mlp(), density=0.1)
    dense_bytes = dense_state_dict_bytes(dense)
    sparse = sk.sparsify(zero_out(big_mlp(), density=0.1), format="csr", value_dtype=value_dtype)
    path = tmp_path / "m.safetensors"
    sk.save(sparse, str(path))
    ratio = path.stat().st_size / dense_bytes
    print(f"90% sparse, {value_dtype} values: {path.stat().st_size:,} / {dense_bytes:,} bytes = {ratio:.3f}x")
    assert ratio <= limit
    assert ratio >= limit - 0.1  # 6 (fp32) or 4 (bf16) bytes per nonzero: not suspiciously small


def test_file_size_2_4(tmp_path):
    dense = big_mlp()
    dense_bytes = dense_state_dict_bytes(dense)
    sk.prune.nm(dense, n=2, m=4)
    sparse = sk.sparsify(dense, format="2:4")
    path = tmp_path / "m.safetensors"
    sk.save(sparse, str(path))
    ratio = path.stat().st_size / dense_bytes
    print(f"2:4 fp32: {ratio:.3f}x")
    assert ratio <= 0.6
    loaded = sk.load(big_mlp(), str(path))
    assert loaded[0].format == "2:4"
    x = torch.randn(3, 1024)
    with torch.no_grad():
        assert torch.equal(loaded(x), sparse(x))


# ---- versions and foreign files ------------------------------------------------------------

def with_sparsekern_header(data: bytes, edit) -> bytes:
    header, body = split_file(data)
    meta = json.loads(header["__metadata__"]["sparsekern"])
    edit(meta)
    header["__metadata__"]["sparsekern"] = json.dumps(meta)
    return join_file(header, body)


def test_newer_format_version_says_upgrade(tmp_path):
    def bump(meta):
        meta["format_version"] = skio.FORMAT_VERSION + 1
    path = tmp_path / "m.safetensors"
    path.write_bytes(with_sparsekern_header(saved_bytes(trained_net()), bump))
    with pytest.raises(ValueError, match=r"format version 2, but this sparsekern reads only up to version 1: upgrade"):
        sk.load(fresh_net(), str(path))


def test_plain_safetensors_file_is_not_a_sparsekern_file(tmp_path):
    save_file({"fc1.weight": torch.zeros(2, 2)}, str(tmp_path / "p.safetensors"))
    with pytest.raises(ValueError, match="not written by sparsekern.save"):
        sk.load(fresh_net(), str(tmp_path / "p.safetensors"))


def test_pickle_file_is_refused(tmp_path):
    torch.save(fresh_net().state_dict(), str(tmp_path / "m.pt"))
    with pytest.raises(ValueError, match="header length"):
        sk.load(fresh_net(), str(tmp_path / "m.pt"))


# ---- files that lie ------------------------------------------------------------------------

# The fuzzed file: CSR layers, and a 2:4 one once that format exists.
VALID = saved_bytes(trained_net(formats=("csr", "csr", "2:4")))
HEADER_END = 8 + struct.unpack("<Q", VALID[:8])[0]


def load_bytes(data: bytes):
    """Loads `data` into a fresh model: returns the model, or the ValueError it raised.
    Any other exception fails the test."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "m.safetensors"
        path.write_bytes(data)
        try:
            model = sk.load(fresh_net(), str(path))
        except ValueError as e:
            return e
    with torch.no_grad():  # whatever loaded was validated: the kernels must run on it
        y = model(torch.randn(2, 40))
    assert y.shape == (2, 8)
    return model


def retensored(edit) -> bytes:
    """VALID with its tensors changed by `edit(dict)` and re-saved with the same metadata."""
    header, _ = split_file(VALID)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "m.safetensors"
        path.write_bytes(VALID)
        tensors = load_file(str(path))
        edit(tensors)
        save_file(tensors, str(path), metadata=header["__metadata__"])
        return path.read_bytes()


def test_valid_file_loads():
    assert isinstance(load_bytes(VALID), nn.Module)


@pytest.mark.parametrize("edit, message", [
    (lambda t: t["fc1.col_idx"].__setitem__(3, 40), r"col_idx\[3\] = 40 is out of range \[0, 40\)"),
    (lambda t: t["fc1.col_idx"].__setitem__(0, 65535), r"col_idx\[0\] = 65535 is out of range"),
    (lambda t: t["fc1.row_ptr"].__setitem__(5, 10**12), r"row_ptr decreases|row_ptr must run"),
    (lambda t: t["fc1.row_ptr"].__setitem__(-1, 0), r"row_ptr must run from 0 to nnz"),
    (lambda t: t["block.0.col_idx"].__setitem__(slice(0, 2), torch.tensor([5, 5]).to(torch.uint16)),
     r"not strictly increasing"),
    (lambda t: t.__setitem__("fc1.col_idx", t["fc1.col_idx"].to(torch.int16)), r"col_idx is int16"),
    (lambda t: t.__setitem__("fc1.values", t["fc1.values"][:-1].clone()), r"values has shape .* nnz ="),
    (lambda t: t.__setitem__("fc1.bias", t["fc1.bias"].double()), r"bias is float64"),
    (lambda t: t.pop("fc1.bias"), r"header says bias = True but the file lacks"),
])
def test_valid_container_with_bad_contents(edit, message):
    with pytest.raises(ValueError, match=message):
        raise load_bytes(retensored(edit))


@pytest.mark.parametrize("field, value, message", [
    ("format", "coo", "format 'coo' is not one this sparsekern knows"),
    ("in_features", -1, "in_features = -1"),
    ("in_features", True, "in_features = True"),
    ("out_features", 2**40, "out_features = 1099511627776"),
    ("nnz", 10**9, "nnz = 1000000000"),
    ("nnz", "12", "nnz = '12'"),
    ("dtype", "int8", "dtype 'int8'"),
    ("bias", 1, "bias = 1"),
])
def test_forged_layer_record(tmp_path, field, value, message):
    def forge(meta):
        meta["layers"]["fc1"][field] = value
    with pytest.raises(ValueError, match=message):
        raise load_bytes(with_sparsekern_header(VALID, forge))


@pytest.mark.parametrize("edit, message", [
    # A size is bounded by torch's int64, not by the data section (a tensor with no elements
    # may have any other size); a forged one must still match its byte range, inside the file.
    (lambda h: h.__setitem__("fc1.values", {**h["fc1.values"], "shape": [2**62]}), "F32 \\[4611686018427387904\\] needs"),
    (lambda h: h.__setitem__("fc1.values", {**h["fc1.values"], "shape": [2**63]}), "shape .* must be a list"),
    (lambda h: h.__setitem__("fc1.values", {**h["fc1.values"], "shape": [0, 2**32, 2**32]}), "shape .* must be a list"),
    (lambda h: h.__setitem__("fc1.values", {**h["fc1.values"], "shape": [0, 1.5]}), "shape .* must be a list"),
    (lambda h: h.__setitem__("fc1.values", {**h["fc1.values"], "shape": [2**40], "data_offsets": [0, 2**42]}),
     "data ends at byte 4398046511104"),
    (lambda h: h.__setitem__("fc1.values", {**h["fc1.values"], "shape": [7]}), "hold .* bytes, but F32 \\[7\\] needs 28"),
    (lambda h: h.__setitem__("fc1.values", {**h["fc1.values"], "shape": [-1]}), "shape"),
    (lambda h: h.__setitem__("fc1.values", {**h["fc1.values"], "data_offsets": [0, 2**70]}), "data_offsets"),
    (lambda h: h.__setitem__("fc1.values", {**h["fc1.values"], "dtype": "F99"}), "unknown dtype"),
    (lambda h: h.__setitem__("fc1.values", [1, 2]), "must have exactly"),
    (lambda h: h["__metadata__"].__setitem__("sparsekern", "{"), "not valid JSON"),
    (lambda h: h["__metadata__"].__setitem__("sparsekern", "[" * 100000), "not valid JSON"),
    (lambda h: h["__metadata__"].__setitem__("sparsekern", "[]"), "no valid format_version"),
])
def test_forged_safetensors_header(edit, message):
    header, body = split_file(VALID)
    edit(header)
    with pytest.raises(ValueError, match=message):
        raise load_bytes(join_file(header, body))


def test_forged_header_length():
    for length in (0, 2**63, len(VALID)):
        with pytest.raises(ValueError, match="header length"):
            raise load_bytes(struct.pack("<Q", length) + VALID[8:])


# SPARSEKERN_FUZZ_EXAMPLES=5000 for a deeper run than CI's.
FUZZ = settings(max_examples=int(os.environ.get("SPARSEKERN_FUZZ_EXAMPLES", 60)), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.integers(0, len(VALID) - 1))
def test_fuzz_truncated_file_is_refused(length):
    result = load_bytes(VALID[:length])
    assert isinstance(result, ValueError), f"a file cut to {length} bytes loaded"


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(1, 255)), min_size=1, max_size=4))
def test_fuzz_byte_flips_anywhere(flips):
    data = bytearray(VALID)
    for position, xor in flips:
        data[position] ^= xor
    load_bytes(bytes(data))  # loads (a changed value) or raises ValueError; nothing else


@FUZZ
@given(st.lists(st.tuples(st.integers(8, HEADER_END - 1), st.integers(1, 255)), min_size=1, max_size=3))
def test_fuzz_byte_flips_in_header(flips):
    data = bytearray(VALID)
    for position, xor in flips:
        data[position] ^= xor
    load_bytes(bytes(data))


JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.text(max_size=8)
                    | st.floats(allow_nan=False),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                    max_leaves=8)


@FUZZ
@given(st.sampled_from(["fc1", "block.0", "block.2"]),
       st.sampled_from(["format", "in_features", "out_features", "bias", "dtype", "bias_dtype", "nnz"]), JSON)
def test_fuzz_forged_layer_fields(layer, field, value):
    def forge(meta):
        meta["layers"][layer][field] = value
    load_bytes(with_sparsekern_header(VALID, forge))


@FUZZ
@given(st.sampled_from(["fc1.row_ptr", "fc1.col_idx", "fc1.values", "norm.running_var"]),
       st.sampled_from(["dtype", "shape", "data_offsets"]), JSON)
def test_fuzz_forged_tensor_entries(name, field, value):
    header, body = split_file(VALID)
    header[name][field] = value
    load_bytes(join_file(header, body))


@FUZZ
@given(st.sampled_from(["fc1.col_idx", "block.0.col_idx", "fc1.row_ptr"]), st.integers(0, 10**6),
       st.integers(0, 2**16 - 1))
def test_fuzz_bad_indices_in_valid_container(name, position, value):
    def edit(tensors):
        t = tensors[name]
        t[position % t.numel()] = value
    result = load_bytes(retensored(edit))
    if isinstance(result, nn.Module):  # only an in-range, still-sorted change may load
        layer = result.get_submodule(name.rpartition(".")[0])
        sk.formats.csr.validate(layer.packed(), (layer.out_features, layer.in_features))


@FUZZ
@given(st.integers(0, 10**6), st.integers(0, 255))
def test_fuzz_2_4_positions_in_valid_container(position, value):
    def edit(tensors):
        t = tensors["block.2.meta"].view(-1)
        t[position % t.numel()] = value
    result = load_bytes(retensored(edit))
    if isinstance(result, nn.Module):  # only valid position pairs may load
        layer = result.block[2]
        sk.formats.nm.validate(layer.packed(), (layer.out_features, layer.in_features))


# ---- inspect -------------------------------------------------------------------------------

def test_inspect_reads_only_the_header(tmp_path):
    path = tmp_path / "m.safetensors"
    model = trained_net(formats=("csr", "dense", "csr"))
    sk.save(model, str(path))
    info = sk.inspect_file(str(path))
    assert list(info.header.layers) == ["fc1", "block.0", "block.2"]
    fc1 = info.header.layers["fc1"]
    assert (fc1.format, fc1.out_features, fc1.in_features, fc1.nnz) == ("csr", 24, 40, model.fc1.nnz)
    assert info.layer_bytes("fc1") == model.fc1.weight_bytes + 24 * 4  # row_ptr, col_idx, values, bias
    assert info.layer_bytes("block.0") == 16 * 24 * 4
    # Damage the data only: the header is still readable, so inspect still works.
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    assert sk.inspect_file(str(path)).header.layers["fc1"] == fc1


def test_inspect_cli(tmp_path):
    path = tmp_path / "m.safetensors"
    model = trained_net(formats=("csr", "dense", "csr"))
    sk.save(model, str(path))
    run = run_python(["-m", "sparsekern", "inspect", str(path)], tmp_path)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert "format version 1, 3 SparseLinear layers (2 packed, 1 dense)" in lines[0]
    rows = {line.split()[0]: line.split() for line in lines[3:]}
    assert rows["fc1"][1:5] == ["csr", "24", "x", "40"]
    assert rows["fc1"][6] == f"{model.fc1.sparsity:.1%}"
    assert rows["block.0"][1] == "dense"
    assert rows["fc1"][7] == f"{model.fc1.weight_bytes + 24 * 4:,}"
    assert "other tensors" in run.stdout

    path.write_bytes(path.read_bytes()[:100])
    run = run_python(["-m", "sparsekern", "inspect", str(path)], tmp_path)
    assert run.returncode == 1
    assert "sparsekern inspect:" in run.stderr and "header length" in run.stderr
