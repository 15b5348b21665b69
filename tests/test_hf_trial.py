"""Defects found by trying sparsekern on tiny randomly initialized Hugging Face models beyond
Llama (no download): T5, Gemma 3, ... Each test compares against the masked dense model or
a reference calibration, not only "no exception"."""
import copy

import pytest
import torch

import sparsekern as sk
from sparsekern import prune

transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install sparsekern[hf])")

VOCAB = 96


def batches(count=2, seq=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (2, seq), generator=g) for _ in range(count)]


def t5(encoder_only=False):
    torch.manual_seed(0)
    config = transformers.T5Config(vocab_size=VOCAB, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                                   decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    cls = transformers.T5EncoderModel if encoder_only else transformers.T5ForConditionalGeneration
    return cls(config).eval()


def gemma3():
    if not hasattr(transformers, "Gemma3ForCausalLM"):
        pytest.skip("this transformers has no Gemma3ForCausalLM")
    torch.manual_seed(0)
    # A sliding window shorter than the calibration sequences: the two layers' masks differ.
    config = transformers.Gemma3TextConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, vocab_size=VOCAB, max_position_embeddings=64, sliding_window=4,
        layer_types=["sliding_attention", "full_attention"])
    return transformers.Gemma3ForCausalLM(config).eval()


def test_t5_runs_and_generates_with_packed_feed_forward_layers():
    # T5's feed-forward reads wo.weight.dtype on every call: packed layers had no `weight`,
    # so every forward of a sparsified T5 raised AttributeError.
    model = t5()
    prune.nm(model, 2, 4)
    masked = copy.deepcopy(model)
    sk.sparsify(model, format="2:4", progress=False)
    assert isinstance(model.encoder.block[0].layer[1].DenseReluDense.wo, sk.SparseLinear)
    ids = batches(1)[0]
    with torch.no_grad():
        got = model(ids, decoder_input_ids=ids[:, :5]).logits
        expected = masked(ids, decoder_input_ids=ids[:, :5]).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    settings = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert torch.equal(model.generate(ids, **settings), masked.generate(ids, **settings))


def test_packed_layer_weight_reads_as_the_dense_weight_and_refuses_writes():
    layer = torch.nn.Linear(16, 8)
    prune.magnitude(layer, 0.5)
    expected = layer.weight.detach().clone()
    packed = sk.SparseLinear.from_dense(layer, format="csr")
    weight = packed.weight
    assert (weight.shape, weight.dtype, weight.device) == (expected.shape, packed.values.dtype, expected.device)
    assert torch.equal(weight, expected) and torch.equal(weight.t() @ torch.eye(8), expected.t())
    assert torch.equal(copy.deepcopy(weight), expected) and torch.equal(weight.detach(), expected)
    for write in (lambda: weight.mul_(2), lambda: weight.data.normal_(), lambda: weight.detach().zero_(),
                  lambda: torch.mul(expected, 2, out=weight)):
        with pytest.raises(RuntimeError, match="read-only"):  # would not reach the packed values
            write()
    assert torch.equal(packed.dense_weight(), expected)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        packed.nothing
    # Pruning a model holding it names it as packed, not also as a linear-like module (it has a
    # 2-D `weight` now).
    import warnings
    model = torch.nn.Sequential(packed, torch.nn.Linear(8, 8))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prune.magnitude(model, 0.5)
    assert [str(w.message) for w in caught if "SparseLinear" in str(w.message)] == [
        "Sequential: its 1 SparseLinear layer(s) are already packed: prune before sparsekern.sparsify "
        "(layer.to_dense() gives an nn.Linear back; first: '0'); they are not pruned"]


@pytest.mark.parametrize("build, stack, batch", [
    (lambda: t5(encoder_only=True), "encoder.block", lambda x: x),
    (t5, "decoder.block", lambda x: dict(input_ids=x, decoder_input_ids=x[:, :8])),
    (gemma3, "model.layers", lambda x: x),
], ids=["t5-encoder", "t5-decoder", "gemma3"])
def test_sequential_calibration_gives_each_block_its_own_arguments(build, stack, batch):
    # Blocks after the first were called with the first block's arguments: T5's got no relative
    # position bias (block 0 computes it and the stack passes it on), Gemma 3's global layer
    # got the sliding layer's mask and rotary embeddings. Block by block must equal pruning each
    # block in a pass of the whole model, once the blocks before it are pruned.
    data = [batch(x) for x in batches()]
    expected, got = build(), build()
    for i in range(2):
        prune.wanda(expected, data, 0.5, include=f"{stack}.{i}.*", sequential=False)
    prune.wanda(got, data, 0.5, include=f"{stack}.*", blocks=stack)
    masks = {name: m.weight_mask for name, m in expected.named_modules() if hasattr(m, "weight_mask")}
    assert any(name.startswith(f"{stack}.1.") for name in masks)
    for name, m in got.named_modules():
        if hasattr(m, "weight_mask"):
            assert torch.equal(m.weight_mask, masks.pop(name)), name
    assert not masks


class _T5FeedForwardOutput(torch.nn.Module):
    """The end of T5's feed-forward: casts its input to wo.weight's dtype before wo."""

    def __init__(self):
        super().__init__()
        self.wo = torch.nn.Linear(16, 8, bias=False)

    def forward(self, x):
        if isinstance(self.wo.weight, torch.Tensor) and x.dtype != self.wo.weight.dtype:
            x = x.to(self.wo.weight.dtype)
        return self.wo(x)


@pytest.mark.parametrize("fmt", ["csr", "2:4", "bitmap"])
def test_a_compiled_model_reading_a_packed_weight_runs_in_one_graph(fmt):
    # Eager answers (an inference tensor, then a PackedWeight) failed or broke the graph inside
    # torch.compile; there the weight is unpacked in the graph, which must trace whole (CSR's
    # and bitmap's unpacking had shapes that depend on the data: a graph break per read).
    model = _T5FeedForwardOutput()
    prune.nm(model) if fmt == "2:4" else prune.magnitude(model, 0.5)
    masked = copy.deepcopy(model)
    sk.sparsify(model, format=fmt, progress=False)
    x = torch.randn(3, 16)
    with torch.no_grad():
        torch._dynamo.reset()
        assert torch._dynamo.explain(model)(x).graph_break_count == 0
        got = torch.compile(model, backend="aot_eager", fullgraph=True)(x)
        torch.testing.assert_close(got, masked(x), rtol=1e-5, atol=1e-5)
