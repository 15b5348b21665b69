"""Export and deployment as a new user tries it: loading into a model built on the meta device,
saving and loading compiled models, TorchScript. Outputs are compared with the masked dense
reference (F.linear over the pruned weights)."""
import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparsekern as sk


class Net(nn.Module):
    """Two Linear layers around LayerNorm and BatchNorm, a persistent scalar buffer and a plain
    Linear whose weight is tied to an Embedding's (kept out of sparsify)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(16, 64)
        self.fc1 = nn.Linear(64, 32)
        self.norm = nn.LayerNorm(32)
        self.bn = nn.BatchNorm1d(32)
        self.fc2 = nn.Linear(32, 64)
        self.head = nn.Linear(64, 16, bias=False)
        self.head.weight = self.embed.weight
        self.register_buffer("scale", torch.tensor(2.0))

    def forward(self, x):
        return self.head(self.fc2(self.bn(self.norm(self.fc1(x)))) * self.scale)


def pruned_net(fmt="csr", seed=0):
    """(sparsified net, dense reference with the same pruned weights), both in eval mode."""
    torch.manual_seed(seed)
    net = Net().eval()
    with torch.no_grad():
        net.norm.weight.uniform_(0.5, 1.5)
        net.bn.running_mean.uniform_(-1, 1)
        net.bn.running_var.uniform_(1, 2)
        net.bn.num_batches_tracked.fill_(7)
        net.scale.fill_(3.0)
    if fmt == "2:4":
        sk.prune.nm(net, 2, 4, include=["fc1", "fc2"])
    else:
        sk.prune.magnitude(net, sparsity=0.7, scope="layer", include=["fc1", "fc2"])
    sk.prune.finalize(net)
    reference = copy.deepcopy(net)
    sk.sparsify(net, format=fmt, include=["fc1", "fc2"], batch_sizes=(1,))
    return net, reference


def masked_dense(reference: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The reference net's output, written out with F.linear over its (already pruned) weights."""
    r = reference
    h = F.linear(x, r.fc1.weight, r.fc1.bias)
    h = F.layer_norm(h, (32,), r.norm.weight, r.norm.bias, r.norm.eps)
    h = F.batch_norm(h, r.bn.running_mean, r.bn.running_var, r.bn.weight, r.bn.bias, False, 0.0, r.bn.eps)
    h = F.linear(h, r.fc2.weight, r.fc2.bias) * r.scale
    return F.linear(h, r.head.weight)


# ---- sk.load into a model built on the meta device ----------------------------------------

@pytest.mark.parametrize("fmt", ["csr", "2:4", "bitmap"])
@pytest.mark.parametrize("device", [None, "cpu"])
def test_load_into_a_model_built_on_meta_fills_every_tensor(tmp_path, fmt, device):
    # Before: the tensors outside the SparseLinear layers were copied into meta tensors, a
    # no-op, and the model failed on its first call ("Tensor on device meta is not on the
    # expected device cpu!").
    net, reference = pruned_net(fmt)
    path = str(tmp_path / "m.safetensors")
    sk.save(net, path)
    with torch.device("meta"):
        skeleton = Net().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "copying ... to a meta parameter ... is a no-op"
        sk.load(skeleton, path, device=device)
    tensors = dict(skeleton.named_parameters(remove_duplicate=False))
    tensors.update(skeleton.named_buffers())
    assert not [name for name, t in tensors.items() if t.is_meta]
    assert skeleton.head.weight is skeleton.embed.weight  # tied in the model, stored once: still tied
    assert isinstance(skeleton.norm.weight, nn.Parameter) and skeleton.norm.weight.requires_grad
    assert int(skeleton.bn.num_batches_tracked) == 7 and float(skeleton.scale) == 3.0
    x = torch.randn(5, 64)
    with torch.no_grad():
        torch.testing.assert_close(skeleton(x), masked_dense(reference, x), rtol=1e-5, atol=1e-5)


def test_load_into_meta_warns_about_tensors_the_file_cannot_fill(tmp_path):
    class WithFrequencies(Net):  # a non-persistent buffer, as rotary embeddings keep
        def __init__(self):
            super().__init__()
            self.register_buffer("freqs", torch.ones(4), persistent=False)

    net, _ = pruned_net()
    path = str(tmp_path / "m.safetensors")
    sk.save(net, path)
    with torch.device("meta"):
        skeleton = WithFrequencies()
    with pytest.warns(UserWarning, match=r"\['freqs'\] are not in the file .* stay on meta"):
        sk.load(skeleton, path)
    assert skeleton.freqs.is_meta and not skeleton.fc2.values.is_meta and not skeleton.norm.weight.is_meta


# ---- sk.save / sk.load of a torch.compile'd model ------------------------------------------

def test_a_compiled_model_saves_under_its_own_names_and_loads_into_a_plain_one(tmp_path):
    # Before: the file named every tensor "_orig_mod.<name>" and sk.load into the model built
    # from code raised "layer '_orig_mod.fc1': the model has no such module".
    net, reference = pruned_net("bitmap")
    compiled = torch.compile(net, backend="eager")
    x = torch.randn(5, 64)
    with torch.no_grad():
        compiled(x)
    path = str(tmp_path / "m.safetensors")
    sk.save(compiled, path)
    assert set(sk.inspect_file(path).header.layers) == {"fc1", "fc2"}
    fresh = Net().eval()
    assert sk.load(fresh, path) is fresh
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), masked_dense(reference, x), rtol=1e-5, atol=1e-5)


def test_a_plain_file_loads_into_a_compiled_model(tmp_path):
    # Before: "layer '_orig_mod.fc1': tensors do not match the model: missing from the file [...]".
    net, reference = pruned_net("csr")
    path = str(tmp_path / "m.safetensors")
    sk.save(net, path)
    compiled = torch.compile(Net().eval(), backend="eager")
    assert sk.load(compiled, path) is compiled
    assert isinstance(compiled._orig_mod.fc1, sk.SparseLinear)
    x = torch.randn(5, 64)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), masked_dense(reference, x), rtol=1e-5, atol=1e-5)


# ---- TorchScript ---------------------------------------------------------------------------

def test_jit_script_names_the_ways_that_work_and_trace_matches_the_reference(tmp_path):
    # Before: torch.jit.script failed inside forward with "try blocks aren't supported".
    net, reference = pruned_net("2:4")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch deprecates torch.jit's script and trace
        warnings.simplefilter("ignore", DeprecationWarning)
        with pytest.raises(RuntimeError, match=r"SparseLinear cannot be compiled by torch\.jit\.script.*jit\.trace"):
            torch.jit.script(net)
        assert isinstance(net.fc1, sk.SparseLinear)  # the model is left as it was
        traced = torch.jit.trace(net, (torch.randn(4, 64),))
        traced.save(str(tmp_path / "traced.pt"))
        loaded = torch.jit.load(str(tmp_path / "traced.pt"))
    x = torch.randn(7, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), masked_dense(reference, x), rtol=1e-5, atol=1e-5)


def test_onnx_export_of_a_compiled_model_runs_in_onnxruntime(tmp_path):
    # Before: torch.export failed on the wrapper's (*args, **kwargs) forward with "Detected
    # mismatch between the structure of `inputs` and `dynamic_shapes`".
    pytest.importorskip("onnx", reason="sk.export_onnx needs onnx")
    pytest.importorskip("onnxscript", reason="sk.export_onnx needs onnxscript")
    ort = pytest.importorskip("onnxruntime", reason="running the graph needs onnxruntime")
    net, reference = pruned_net("csr")
    compiled = torch.compile(net, backend="eager")
    path = str(tmp_path / "m.onnx")
    sk.export_onnx(compiled, (torch.randn(3, 64),), path)
    x = torch.randn(6, 64)  # another batch size: the batch dimension is dynamic
    (y,) = ort.InferenceSession(path).run(None, {"input": x.numpy()})
    torch.testing.assert_close(torch.from_numpy(y), masked_dense(reference, x), rtol=1e-5, atol=1e-5)
