"""SparseLinear, sparsify and summary: the public API contract (docs/design.md)."""
import copy
import os

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

import sparsekern as sk
import sparsekern.tools.timing  # noqa: F401  (sk.tools.timing, replaced by fake timers)
from sparsekern.formats import csr

from conftest import assert_matches_reference, random_sparse_weight, run_python


def pruned_linear(in_features=24, out_features=16, density=0.3, bias=True, seed=0):
    torch.manual_seed(seed)
    linear = nn.Linear(in_features, out_features, bias=bias)
    weight, mask = random_sparse_weight(out_features, in_features, density,
                                        generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        linear.weight.copy_(weight)
    return linear


@pytest.mark.parametrize("bias", [True, False])
def test_from_dense_to_dense_is_exact(bias):
    linear = pruned_linear(bias=bias)
    layer = sk.SparseLinear.from_dense(linear)
    back = layer.to_dense()
    assert isinstance(back, nn.Linear)
    assert torch.equal(back.weight, linear.weight)
    assert (back.bias is None) == (not bias)
    if bias:
        assert torch.equal(back.bias, linear.bias)


@pytest.mark.parametrize("shape", [(5, 24), (2, 3, 24), (24,), (0, 24)])
def test_forward_matches_reference_any_leading_dims(shape):
    linear = pruned_linear()
    layer = sk.SparseLinear.from_dense(linear)
    x = torch.randn(shape)
    for grad_mode in (torch.no_grad, torch.enable_grad):
        with grad_mode():
            y = layer(x)
        assert_matches_reference(y, x, linear.weight, linear.bias)


def test_non_contiguous_input_and_no_bias():
    linear = pruned_linear(bias=False)
    layer = sk.SparseLinear.from_dense(linear)
    x = torch.randn(24, 10).t()
    assert_matches_reference(layer(x), x, linear.weight)


def test_mask_sources_torch_prune_explicit_and_zeros():
    linear = pruned_linear(density=1.0)
    torch_prune.random_unstructured(linear, "weight", amount=0.6)
    layer = sk.SparseLinear.from_dense(linear)
    assert torch.equal(csr.mask_of(layer.packed(), (16, 24)), linear.weight_mask.bool())
    x = torch.randn(3, 24)
    assert_matches_reference(layer(x), x, linear.weight, linear.bias)

    explicit = torch.zeros(16, 24, dtype=torch.bool)
    explicit[0, :5] = True
    layer = sk.SparseLinear.from_dense(pruned_linear(density=1.0), mask=explicit)
    assert layer.nnz == 5
    with pytest.raises(ValueError, match=r"mask.shape = \(24, 16\), expected weight.shape = \(16, 24\)"):
        sk.SparseLinear.from_dense(linear, mask=explicit.t())


def test_properties_and_repr():
    linear = pruned_linear(40, 10, density=0.25)
    layer = sk.SparseLinear.from_dense(linear)
    nnz = int(linear.weight.count_nonzero())
    assert layer.format == "csr" and layer.nnz == nnz
    assert layer.sparsity == pytest.approx(1 - nnz / 400)
    text = repr(layer)
    for part in ("in_features=40", "out_features=10", "format=csr", f"nnz={nnz}", "sparsity="):
        assert part in text
    dense = sk.SparseLinear.from_dense(linear, format="dense")
    assert dense.format == "dense" and dense.nnz == nnz
    torch.testing.assert_close(dense(torch.ones(1, 40)), layer(torch.ones(1, 40)))


def test_to_dtype_moves_values_and_keeps_indices():
    linear = pruned_linear()
    layer = sk.SparseLinear.from_dense(linear).to(torch.bfloat16)
    assert layer.values.dtype == torch.bfloat16 and layer.col_idx.dtype == torch.uint16
    x = torch.randn(4, 24).to(torch.bfloat16)
    y = layer(x)
    assert y.dtype == torch.bfloat16
    assert_matches_reference(y, x, layer.dense_weight(), layer.bias)

    layer64 = sk.SparseLinear.from_dense(linear).double()
    x64 = torch.randn(4, 24, dtype=torch.float64)
    assert_matches_reference(layer64(x64), x64, linear.weight, linear.bias)


def test_bf16_values_with_fp32_activations():
    linear = pruned_linear()
    layer = sk.SparseLinear.from_dense(linear, value_dtype=torch.bfloat16)
    assert layer.values.dtype == torch.bfloat16 and layer.bias.dtype == torch.float32
    x = torch.randn(7, 24)
    y = layer(x)
    assert y.dtype == torch.float32
    assert_matches_reference(y, x, layer.dense_weight(), layer.bias)


def test_state_dict_round_trip_into_skeleton():
    layer = sk.SparseLinear.from_dense(pruned_linear())
    skeleton = sk.SparseLinear(24, 16)
    assert skeleton.nnz == 0
    skeleton.load_state_dict(layer.state_dict())
    assert skeleton.nnz == layer.nnz
    x = torch.randn(3, 24)
    assert torch.equal(skeleton(x), layer(x))


def test_corrupted_state_dict_is_refused():
    state = sk.SparseLinear.from_dense(pruned_linear()).state_dict()
    state["col_idx"] = state["col_idx"].clone()
    state["col_idx"][0] = 60_000
    with pytest.raises(ValueError, match="out of range"):
        sk.SparseLinear(24, 16).load_state_dict(state)


def test_training_updates_values_and_keeps_the_pattern():
    layer = sk.SparseLinear.from_dense(pruned_linear())
    pattern = csr.mask_of(layer.packed(), (16, 24)).clone()
    before = layer.values.detach().clone()
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    x, target = torch.randn(8, 24), torch.randn(8, 16)
    loss = nn.functional.mse_loss(layer(x), target)
    loss.backward()
    opt.step()
    assert not torch.equal(layer.values.detach(), before)
    assert torch.equal(csr.mask_of(layer.packed(), (16, 24)), pattern)
    assert nn.functional.mse_loss(layer(x), target) < loss


def mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Sequential(nn.Linear(64, 64), nn.ReLU()),
                          nn.Linear(64, 8))
    return model


@pytest.mark.parametrize("fmt", ["csr", "dense"])
def test_sparsify_replaces_every_linear(fmt):
    model = mlp()
    sk.prune.magnitude(model, sparsity=0.8)
    x = torch.randn(5, 32)
    expected = model(x)
    out = sk.sparsify(model, format=fmt)
    assert out is model
    layers = [m for m in model.modules() if isinstance(m, sk.SparseLinear)]
    assert len(layers) == 3 and all(m.format == fmt for m in layers)
    assert not any(type(m) is nn.Linear for m in model.modules())
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)


def fake_rounds(ratio):
    """A stand-in for timing.time_rounds: the baseline (the first candidate: dense) takes `ratio`
    times as long as the others."""
    def time_rounds(candidates, rounds=7, round_seconds=0.005):
        baseline = next(iter(candidates))
        return {name: [1e-5 * (ratio if name == baseline else 1.0)] * rounds for name in candidates}
    return time_rounds


def test_sparsify_auto_keeps_dense_layers_dense_and_says_why(monkeypatch):
    monkeypatch.setattr(sk.tools.timing, "time_rounds", fake_rounds(4.0))
    model = nn.Sequential(nn.Linear(512, 512), nn.Linear(512, 512))
    with torch.no_grad():
        model[1].weight[torch.rand(512, 512) < 0.99] = 0
    sk.sparsify(model, format="auto", progress=False)
    assert model[0].format == "dense" and "sparsity 0%" in model[0].choice_note
    assert model[1].format == "csr" and "csr measured 4.00x at batch 1, 4.00x at batch 64" in model[1].choice_note
    table = str(sk.summary(model))
    assert "csr measured" in table and "sparsity 0%" in table


def test_summary_table():
    model = mlp()
    sk.prune.magnitude(model, sparsity=0.9)
    sk.sparsify(model, format="csr", progress=False)
    report = sk.summary(model)
    assert [r.name for r in report.rows] == ["0", "2.0", "3"]
    assert all(r.format == "csr" for r in report.rows)
    assert report.weight_bytes < 0.2 * report.dense_bytes
    text = str(report)
    assert "64 x 32" in text and "total" in text
    assert "tuning" not in text.splitlines()[0]  # no tuning here (conftest): no empty column


def test_summary_counts_the_kernels_in_memory_layouts():
    # A CSR layer with half its weights kept and 2048 columns: its batched calls outgrow L1 and
    # build the column-chunked copy on every non-scalar ISA (CsrFamily::wants_chunks).
    torch.manual_seed(0)
    linear = nn.Linear(2048, 64)
    with torch.no_grad():
        linear.weight[torch.rand(64, 2048) < 0.5] = 0
    layer = sk.SparseLinear.from_dense(linear, format="csr")
    model = nn.Sequential(layer)
    assert layer.derived_bytes == 0 and sk.summary(model).derived_bytes == 0
    assert "in memory besides" not in str(sk.summary(model))
    with torch.no_grad():
        layer(torch.randn(8, 2048))
    built = layer.derived_bytes
    assert (built > 0) == (sk.cpu_isa() != "scalar")
    report = sk.summary(model)
    assert report.derived_bytes == built
    assert (f"{built:,} bytes" in str(report)) == (built > 0)
    layer.load_state_dict(layer.state_dict())  # new tensors: the next call builds a new kernel
    with torch.no_grad():
        layer(torch.randn(1, 2048))
    assert layer.derived_bytes == 0  # batch 1 builds no copy


def test_bare_linear_is_returned_converted():
    layer = sk.sparsify(pruned_linear(), format="csr")
    assert isinstance(layer, sk.SparseLinear)


def test_bad_inputs_name_the_value():
    layer = sk.SparseLinear.from_dense(pruned_linear())
    with pytest.raises(ValueError, match="x.shape\\[-1\\] = 23, expected in_features = 24"):
        layer(torch.randn(2, 23))
    with pytest.raises(TypeError, match="x.dtype = torch.int64"):
        layer(torch.ones(2, 24, dtype=torch.int64))
    with pytest.raises(ValueError, match="meta"):
        layer(torch.randn(2, 24, device="meta"))
    with pytest.raises(ValueError, match="format = '3:4'"):
        sk.SparseLinear.from_dense(pruned_linear(), format="3:4")
    with pytest.raises(TypeError, match="takes an nn.Linear, got Conv2d"):
        sk.SparseLinear.from_dense(nn.Conv2d(2, 2, 1))
    with pytest.raises(ValueError, match="nnz = 500"):
        sk.SparseLinear(10, 10, nnz=500)


def test_torch_compile_fullgraph_matches_eager():
    model = mlp()
    sk.prune.magnitude(model, sparsity=0.9)
    sk.sparsify(model, format="csr", progress=False)
    x = torch.randn(4, 32)
    compiled = torch.compile(copy.deepcopy(model), fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))


def test_sparsify_leaves_attention_out_proj_and_keeps_the_encoder_working():
    torch.manual_seed(0)
    block = nn.TransformerEncoderLayer(32, 4, dim_feedforward=64, batch_first=True).eval()
    sk.prune.magnitude(block, sparsity=0.5, scope="layer")
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        expected = block(x)
        sk.sparsify(block, format="csr", progress=False)
        got = block(x)
    out_proj = block.self_attn.out_proj
    assert type(out_proj) is not sk.SparseLinear and not hasattr(out_proj, "weight_mask")
    assert float((out_proj.weight == 0).float().mean()) == pytest.approx(0.5, abs=0.01)
    assert isinstance(block.linear1, sk.SparseLinear) and isinstance(block.linear2, sk.SparseLinear)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_sparsified_encoder_stack_with_padding_mask_runs_unfused():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 4, dim_feedforward=64, batch_first=True)
    encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=True).eval()
    sk.prune.magnitude(encoder, sparsity=0.5, scope="layer")
    x = torch.randn(2, 5, 32)
    padding = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    with torch.no_grad():
        sk.prune.finalize(encoder)
        expected = encoder(x, src_key_padding_mask=padding)
        sk.sparsify(encoder, format="csr", progress=False)
        got = encoder(x, src_key_padding_mask=padding)
    # Only unpadded positions are defined: torch's fused path writes zeros at padded ones.
    torch.testing.assert_close(got[~padding], expected[~padding], rtol=1e-4, atol=1e-5)


def dense_of(layer):
    return layer.dense_weight().to(torch.float32), None if layer.bias is None else layer.bias.float()


@pytest.mark.parametrize("fmt", ["csr", "2:4"])
def test_cached_kernel_never_goes_stale(fmt):
    """The fast path's cached kernel object follows every way a layer's tensors change."""
    import io

    def fresh(seed):
        linear = nn.Linear(32, 8)
        torch.manual_seed(seed)
        sk.prune.nm(linear, 2, 4) if fmt == "2:4" else sk.prune.magnitude(linear, sparsity=0.7)
        return sk.SparseLinear.from_dense(linear, format=fmt)

    def check(layer):
        # float32 and bf16 activations: bf16 ones with bf16 values from batch 3 read a copy of
        # the 2:4 values in another layout (nm24_lanes.h), which must follow too.
        for x_ in (x, x.bfloat16()):
            with torch.no_grad():
                y = layer(x_)
            weight, bias = dense_of(layer)
            assert_matches_reference(y, x_.to(y.dtype), weight, bias)

    layer, other = fresh(0), fresh(1)
    x = torch.randn(8, 32)
    check(layer)
    layer.load_state_dict(other.state_dict())          # buffers replaced (CSR) or copied into
    check(layer)
    layer.values = nn.Parameter(layer.values.detach() * 2)  # assignment
    check(layer)
    with torch.no_grad():
        layer.bias.mul_(3)                              # in-place update of the bias
        layer.values.mul_(-1)
    check(layer)
    layer.to(torch.bfloat16)                            # _apply: every tensor replaced
    check(layer)
    with torch.no_grad():
        layer.bias.add_(1)                              # a bf16 bias is read through a cached fp32 copy
    check(layer)
    with torch.no_grad():
        layer.values.mul_(-1)                           # in-place update of bf16 values
    check(layer)
    buffer = io.BytesIO()
    torch.save(layer, buffer)
    buffer.seek(0)
    for copy_ in (copy.deepcopy(layer), torch.load(buffer, weights_only=False)):
        check(copy_)


def test_layers_made_under_inference_mode_run():
    """Inference tensors keep no version counter: the kernel cache must not ask for one."""
    with torch.inference_mode():
        model = nn.Sequential(nn.Linear(32, 16), nn.Linear(16, 8))
        sk.prune.magnitude(model, sparsity=0.5, scope="layer")
        model = sk.sparsify(model, "csr")
        x = torch.randn(4, 32)
        y = model(x)
        y_again = model(x)
    assert torch.equal(y, y_again)
    first = model[0]
    weight, bias = dense_of(first)
    assert_matches_reference(first(x), x, weight, bias)


def half_sparse_csr_layer():
    """A CSR layer whose batched calls build the column-chunked copy (on non-scalar ISAs)."""
    if sk.cpu_isa() == "scalar":
        pytest.skip("the scalar kernels build no derived layouts")
    torch.manual_seed(0)
    linear = nn.Linear(2048, 64)
    with torch.no_grad():
        linear.weight[torch.rand(64, 2048) < 0.5] = 0
    return sk.SparseLinear.from_dense(linear, format="csr")


def test_derived_layouts_can_be_turned_off_and_on():
    layer = half_sparse_csr_layer()
    x = torch.randn(8, 2048)
    with torch.no_grad():
        with_copy = layer(x)
        assert layer.derived_bytes > 0
        previous = sk.set_derived_layouts(False)
        try:
            assert previous is True
            without = layer(x)  # the next call drops the copy
            assert layer.derived_bytes == 0
            layer(x)
            assert layer.derived_bytes == 0
        finally:
            sk.set_derived_layouts(previous)
        torch.testing.assert_close(without, with_copy, rtol=1e-4, atol=1e-4)
        layer(x)
        assert layer.derived_bytes > 0
    with pytest.raises(TypeError, match="True or False"):
        sk.set_derived_layouts(0)


def test_derived_layouts_off_reach_the_op_path():
    # The dispatcher's path (here: an input that needs gradients) keeps its own kernels.
    layer = half_sparse_csr_layer()
    values = layer._parameters["values"]
    x = torch.randn(8, 2048, requires_grad=True)

    def op_kernel_bytes():
        layer(x).sum().backward()
        return sk.ops._op_kernels[values][1].derived_bytes()

    assert op_kernel_bytes() > 0
    previous = sk.set_derived_layouts(False)
    try:
        assert op_kernel_bytes() == 0
    finally:
        sk.set_derived_layouts(previous)
    assert op_kernel_bytes() > 0


@pytest.mark.parametrize("setting, built", [("0", False), ("off", False), ("1", True), (None, True)])
def test_derived_layouts_env_sets_the_default(setting, built, tmp_path):
    if sk.cpu_isa() == "scalar":
        pytest.skip("the scalar kernels build no derived layouts")
    code = ("import torch, sparsekern as sk; l = torch.nn.Linear(2048, 64); l.weight.data[:, ::2] = 0; "
            "s = sk.SparseLinear.from_dense(l, format='csr'); torch.set_grad_enabled(False); "
            "s(torch.randn(8, 2048)); print(s.derived_bytes)")
    env = {key: value for key, value in os.environ.items() if key != "SPARSEKERN_DERIVED_LAYOUTS"}
    if setting is not None:
        env["SPARSEKERN_DERIVED_LAYOUTS"] = setting
    out = run_python(["-c", code], cwd=tmp_path, env={**env, "SPARSEKERN_TUNE": "0"})
    assert out.returncode == 0, out.stderr
    assert (int(out.stdout) > 0) == built
