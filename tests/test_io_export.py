"""A sparsified model under torch.compile (fullgraph), torch.export (saved, then run in a fresh
process) and ONNX (sparse on disk, checked, run in onnxruntime at other batch sizes, quiet)."""
import copy
import logging
import sys

import numpy as np
import pytest
import torch
from torch import nn

import sparsekern as sk

from conftest import random_sparse_weight, run_python


def sparse_model(width=64, density=0.1, formats=("csr", "dense", "csr"), seed=0):
    """Three layers (one kept dense, one without bias) with LayerNorm between."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(width, 96), nn.ReLU(), nn.Linear(96, 80), nn.LayerNorm(80),
                          nn.Linear(80, 16, bias=False))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for index, fmt in zip((0, 2, 4), formats):
            linear = model[index]
            weight, _ = random_sparse_weight(linear.out_features, linear.in_features, density, generator=g)
            linear.weight.copy_(weight)
            model[index] = sk.SparseLinear.from_dense(linear, format=fmt)
    return model.eval()


def test_compile_fullgraph_aot_eager_matches_eager():
    model = sparse_model()
    compiled = torch.compile(copy.deepcopy(model), fullgraph=True, backend="aot_eager")
    for shape in [(5, 64), (2, 3, 64)]:
        x = torch.randn(shape)
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), model(x))
    x = torch.randn(4, 64, requires_grad=True)
    compiled(x).sum().backward()  # autograd through the compiled graph (values and input grads)
    assert x.grad is not None and x.grad.shape == x.shape


def test_compile_fullgraph_inductor_matches_eager():
    model = sparse_model(width=32, formats=("csr", "csr", "csr"))
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)  # default backend: inductor, builds C++ with g++
    x = torch.randn(7, 32)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))


def test_export_saved_program_runs_in_fresh_process(tmp_path):
    model = sparse_model()
    x = torch.randn(6, 64)
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
    assert "sparsekern.csr_linear" in str(program.graph)  # the packed op, not a dense matmul
    torch.export.save(program, str(tmp_path / "model.pt2"))
    inputs = {"x6": x, "x3": torch.randn(3, 64)}
    torch.save(inputs, str(tmp_path / "inputs.pt"))
    script = (
        "import sys, torch, sparsekern\n"
        "d = sys.argv[1]\n"
        "program = torch.export.load(d + '/model.pt2')\n"
        "inputs = torch.load(d + '/inputs.pt')\n"
        "with torch.no_grad():\n"
        "    torch.save({k: program.module()(v) for k, v in inputs.items()}, d + '/outputs.pt')\n")
    run = run_python(["-c", script, str(tmp_path)], tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    outputs = torch.load(str(tmp_path / "outputs.pt"))
    with torch.no_grad():
        for key, value in inputs.items():
            torch.testing.assert_close(outputs[key], model(value))


def test_import_does_not_need_onnx(tmp_path):
    script = "import sys, sparsekern; assert 'onnx' not in sys.modules and 'onnxruntime' not in sys.modules"
    run = run_python(["-c", script], tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]


def test_onnx_export_is_sparse_checked_and_matches(tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")  # torch.onnx's exporter
    model = sparse_model(width=1024, density=0.1, formats=("csr", "csr", "csr"))
    path = tmp_path / "model.onnx"
    info = sk.export_onnx(model, (torch.randn(4, 1024),), str(path), dynamic_shapes=({0: "batch"},))
    assert info["sparse_constants"] == 3
    assert all(isinstance(model[i], sk.SparseLinear) for i in (0, 2, 4))  # the model is left as it was

    onnx.checker.check_model(str(path), full_check=True)
    proto = onnx.load(str(path))
    sparse = [node for node in proto.graph.node if node.op_type == "Constant"
              and node.attribute[0].name == "sparse_value"]
    assert len(sparse) == 3
    stored_nnz = sorted(node.attribute[0].sparse_tensor.values.dims[0] for node in sparse)
    assert stored_nnz == sorted(model[i].nnz for i in (0, 2, 4))

    dense_weight_bytes = sum(model[i].in_features * model[i].out_features * 4 for i in (0, 2, 4))
    ratio = path.stat().st_size / dense_weight_bytes
    print(f"ONNX file / dense fp32 weights at 90% sparsity: {ratio:.3f}x")
    assert ratio < 0.35  # 12 bytes per nonzero (fp32 value + int64 index) against 4 per weight

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    for batch in (1, 5):
        x = torch.randn(batch, 1024)
        (y,) = session.run(None, {name: x.numpy()})
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(y), model(x), rtol=1e-5, atol=1e-5)


def onnx_runtime():
    """onnxruntime, or a skip when the ONNX extra is not installed."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")  # torch.onnx's exporter
    return pytest.importorskip("onnxruntime")


def run_onnx(path, inputs):
    session = onnx_runtime().InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session, session.run(None, {name: x.numpy() for name, x in inputs.items()})


def test_onnx_export_has_a_dynamic_batch_and_named_io_by_default(tmp_path):
    onnx_runtime()
    model = sparse_model()
    path = tmp_path / "model.onnx"
    sk.export_onnx(model, (torch.randn(4, 64),), str(path))
    for batch in (1, 7):  # neither is the example's batch size
        x = torch.randn(batch, 64)
        session, (y,) = run_onnx(path, {"input": x})
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(y), model(x), rtol=1e-5, atol=1e-5)
    assert [i.name for i in session.get_inputs()] == ["input"]
    assert [o.name for o in session.get_outputs()] == ["output"]
    assert session.get_inputs()[0].shape == ["batch", 64]


def test_onnx_export_takes_names_and_dynamic_shapes(tmp_path):
    onnx_runtime()
    model = sparse_model()
    path = tmp_path / "model.onnx"
    sk.export_onnx(model, (torch.randn(2, 5, 64),), str(path), dynamic_shapes=({0: "batch", 1: "sequence"},),
                   input_names=["hidden"], output_names=["logits"])
    for shape in [(1, 3, 64), (3, 9, 64)]:
        x = torch.randn(shape)
        session, (y,) = run_onnx(path, {"hidden": x})
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(y), model(x), rtol=1e-5, atol=1e-5)
    assert [o.name for o in session.get_outputs()] == ["logits"]
    with pytest.raises(ValueError, match=r"input_names=\['a', 'b'\]: the exported graph has 1 input"):
        sk.export_onnx(model, (torch.randn(2, 64),), str(path), input_names=["a", "b"])


def test_onnx_export_prints_nothing(tmp_path):
    onnx_runtime()
    # A fresh process: torch.onnx prints some of its notes only at the first export of a process.
    script = (
        "import sys, torch, sparsekern as sk\n"
        "linear = torch.nn.Linear(32, 16)\n"
        "with torch.no_grad():\n"
        "    linear.weight[:, ::2] = 0\n"
        "model = torch.nn.Sequential(sk.SparseLinear.from_dense(linear), torch.nn.ReLU()).eval()\n"
        "sk.export_onnx(model, (torch.randn(2, 3, 32),), sys.argv[1] + '/model.onnx')\n")
    run = run_python(["-c", script, str(tmp_path)], tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (run.stdout, run.stderr) == ("", "")
    assert (tmp_path / "model.onnx").is_file()


EVALUATION_NOTE = "Evaluation failed: cannot reshape array of size 6 into shape (4,)"


def export_logging_a_note(monkeypatch, fail=False):
    """Makes torch.onnx.export log the note the onnxscript optimizer logs when its constant folder
    cannot evaluate a node (then export, or fail)."""
    export = torch.onnx.export

    def noisy_export(*args, **kwargs):
        logging.getLogger("onnxscript.optimizer._constant_folding").warning(EVALUATION_NOTE)
        if fail:
            raise RuntimeError("export failed")
        return export(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", noisy_export)


def test_onnx_exporter_notes_go_to_debug_not_stderr(tmp_path, monkeypatch, caplog, capfd):
    onnx_runtime()
    export_logging_a_note(monkeypatch)
    caplog.set_level(logging.DEBUG, logger="sparsekern.onnx_export")
    sk.export_onnx(sparse_model(), (torch.randn(4, 64),), str(tmp_path / "model.onnx"))
    notes = [(r.name, r.levelno) for r in caplog.records if EVALUATION_NOTE in r.getMessage()]
    assert notes == [("sparsekern.onnx_export", logging.DEBUG)]
    assert capfd.readouterr() == ("", "")


def test_onnx_exporter_notes_of_a_failed_export_keep_their_level(tmp_path, monkeypatch, caplog):
    onnx_runtime()
    export_logging_a_note(monkeypatch, fail=True)
    model = sparse_model()
    with pytest.raises(RuntimeError, match="export failed"):
        sk.export_onnx(model, (torch.randn(4, 64),), str(tmp_path / "model.onnx"))
    notes = [(r.name, r.levelno) for r in caplog.records if EVALUATION_NOTE in r.getMessage()]
    assert notes == [("onnxscript.optimizer._constant_folding", logging.WARNING)]
    assert isinstance(model[0], sk.SparseLinear)  # the layers are put back


@pytest.mark.parametrize("missing", ["onnx", "onnxscript"])
def test_onnx_export_without_the_extra_names_it(missing, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, missing, None)  # makes `import missing` fail
    model = sparse_model()
    path = tmp_path / "model.onnx"
    with pytest.raises(ImportError, match=rf'needs the {missing} package: pip install "sparsekern\[onnx\]"'):
        sk.export_onnx(model, (torch.randn(4, 64),), str(path))
    assert not path.exists() and isinstance(model[0], sk.SparseLinear)


def test_onnx_export_of_bitmap_layers_is_sparse_and_matches(tmp_path):
    onnx_runtime()
    model = sparse_model(width=256, density=0.1, formats=("bitmap", "bitmap", "bitmap"))
    path = tmp_path / "model.onnx"
    info = sk.export_onnx(model, (torch.randn(2, 256),), str(path))
    assert info["sparse_constants"] == 3  # 12 B per nonzero at 10% density beats 4 B per weight
    x = torch.randn(3, 256)
    _, (y,) = run_onnx(path, {"input": x})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(y), model(x), rtol=1e-5, atol=1e-5)


def test_onnx_export_of_a_bf16_model(tmp_path):
    # onnxruntime's CPU provider has no bf16 Gemm: a bf16 graph warns; the float32 copy the
    # warning names runs there and matches the bf16 model (a new-user trial).
    onnx_runtime()
    model = sparse_model(formats=("csr", "bitmap", "dense")).to(torch.bfloat16)
    x = torch.randn(3, 64)
    with pytest.warns(UserWarning, match="float32 copy of the model"):
        sk.export_onnx(model, (x.bfloat16(),), str(tmp_path / "bf16.onnx"))
    path = tmp_path / "fp32.onnx"
    sk.export_onnx(copy.deepcopy(model).float(), (x,), str(path))
    _, (y,) = run_onnx(path, {"input": x})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(y), model(x.bfloat16()).float(), rtol=2e-2, atol=2e-2)


def test_onnx_export_of_a_float16_model_from_one_tensor(tmp_path):
    # One tensor as example_inputs was split into its rows ("too many positional arguments");
    # a float16 model packs float32 values (the CPU kernels' dtype) and exports as float16.
    onnx_runtime()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16)).eval()
    sk.prune.magnitude(model, sparsity=0.8, scope="layer")
    model = sk.sparsify(model.half(), format="csr", progress=False)
    x = torch.randn(3, 64, dtype=torch.float16)
    path = tmp_path / "fp16.onnx"
    sk.export_onnx(model, x, str(path))
    _, (y,) = run_onnx(path, {"input": x})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(y), model(x), rtol=2e-3, atol=2e-3)


def sparse_constants(path):
    """{initializer name: dense numpy array} of the file's sparse Constant nodes."""
    import onnx
    from onnx import numpy_helper

    result = {}
    for node in onnx.load(str(path)).graph.node:
        if node.op_type == "Constant" and node.attribute[0].name == "sparse_value":
            sparse = node.attribute[0].sparse_tensor
            values, indices = numpy_helper.to_array(sparse.values), numpy_helper.to_array(sparse.indices)
            dense = np.zeros(int(np.prod(sparse.dims)), dtype=values.dtype)
            dense[indices] = values
            result[node.output[0]] = dense.reshape(tuple(sparse.dims))
    return result


def test_onnx_export_of_a_bf16_model_stores_its_weights_sparse(tmp_path):
    # A new-user trial: the bf16 graph's weights were written dense (numpy sees onnx's
    # bfloat16 as kind "V", not "f"), so a 90%-sparse bf16 model gave a dense-sized file.
    onnx_runtime()
    model = sparse_model(width=256, density=0.1, formats=("csr", "bitmap", "csr")).to(torch.bfloat16)
    path = tmp_path / "bf16.onnx"
    with pytest.warns(UserWarning, match="float32 copy of the model"):
        info = sk.export_onnx(model, (torch.randn(2, 256, dtype=torch.bfloat16),), str(path))
    assert info["sparse_constants"] == 3  # 10 B per nonzero (bf16 + int64 index) against 2 B per weight
    stored = sorted((a.shape, a.astype(np.float32).tobytes()) for a in sparse_constants(path).values())
    expected = sorted(((model[i].out_features, model[i].in_features),
                       model[i].dense_weight().float().numpy().tobytes()) for i in (0, 2, 4))
    assert stored == expected  # the very weights, rounded nowhere
    dense_bytes = sum(model[i].in_features * model[i].out_features * 2 for i in (0, 2, 4))
    assert path.stat().st_size < 0.7 * dense_bytes


class TokenModel(nn.Module):
    """Token ids in, like an LLM: an embedding, then two layers without bias (as Llama's)."""

    def __init__(self, value_dtype=None):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(32, 64)
        g = torch.Generator().manual_seed(0)
        layers = []
        for out_features, in_features in ((96, 64), (32, 96)):
            linear = nn.Linear(in_features, out_features, bias=False)
            with torch.no_grad():
                linear.weight.copy_(random_sparse_weight(out_features, in_features, 0.2, generator=g)[0])
            layers.append(sk.SparseLinear.from_dense(linear, format="csr", value_dtype=value_dtype))
        self.up, self.down = layers

    def forward(self, ids):
        return self.down(torch.relu(self.up(self.embed(ids))))


def test_onnx_export_of_token_inputs_takes_the_models_dtype(tmp_path):
    # A new-user trial: an fp32 LLM with bf16 values (value_dtype=torch.bfloat16), exported with
    # token ids, failed ONNX's type checks ("B has inconsistent type tensor(bfloat16)"): with no
    # floating input the dense stand-ins kept the values' bf16.
    onnx_runtime()
    model = TokenModel(value_dtype=torch.bfloat16).eval()
    ids = torch.randint(0, 32, (2, 5))
    path = tmp_path / "tokens.onnx"
    sk.export_onnx(model, (ids,), str(path), dynamic_shapes=({0: "batch", 1: "sequence"},))
    other = torch.randint(0, 32, (3, 7))
    _, (y,) = run_onnx(path, {"input": other})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(y), model(other), rtol=1e-5, atol=1e-5)
    # A bf16 model fed token ids makes a bf16 graph: the warning says so, as for bf16 inputs.
    with pytest.warns(UserWarning, match="bfloat16 weights with inputs of no floating dtype export a bfloat16 graph"):
        sk.export_onnx(TokenModel().to(torch.bfloat16).eval(), (ids,), str(tmp_path / "bf16.onnx"))


class SharedLayer(nn.Module):
    """One SparseLinear at two attributes, as sparsify leaves a Linear used at two places."""

    def __init__(self):
        super().__init__()
        linear = nn.Linear(64, 64)
        with torch.no_grad():
            linear.weight.copy_(random_sparse_weight(64, 64, 0.05, generator=torch.Generator().manual_seed(0))[0])
        self.first = self.second = sk.SparseLinear.from_dense(linear)

    def forward(self, x):
        return self.second(torch.relu(self.first(x)))


def test_onnx_export_of_a_layer_used_twice(tmp_path):
    # A new-user trial: the layer was swapped for its dense stand-in at its first attribute only
    # (named_children() names a module once), and the export failed on the sparsekern op left at
    # the second ("No ONNX function found for sparsekern.csr_linear").
    onnx_runtime()
    model = SharedLayer().eval()
    path = tmp_path / "shared.onnx"
    info = sk.export_onnx(model, (torch.randn(2, 64),), str(path))
    assert info == {"sparse_constants": 1, "initializers": 1}  # the weights once, shared as in the model
    assert model.first is model.second and isinstance(model.second, sk.SparseLinear)  # put back at both
    x = torch.randn(3, 64)
    _, (y,) = run_onnx(path, {"input": x})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(y), model(x), rtol=1e-5, atol=1e-5)
