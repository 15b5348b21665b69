"""A sparsified model under torch.compile (fullgraph), torch.export (saved, then run in a fresh
process) and ONNX (sparse on disk, checked, run in onnxruntime)."""
import copy

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
