"""Pruning and sparsifying tiny randomly initialized Hugging Face models (no download): Llama,
Mistral, Qwen2 and BERT (nn.Linear projections), GPT-2 (transformers' Conv1D, weight stored
[in, out]); generate with the KV cache after sparsify."""
import copy

import pytest
import torch

import sparsekern as sk
from sparsekern import prune

transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install sparsekern[hf])")

VOCAB = 96


def build(family):
    torch.manual_seed(0)
    small = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 vocab_size=VOCAB, max_position_embeddings=64)
    if family == "llama":
        return transformers.LlamaForCausalLM(transformers.LlamaConfig(num_key_value_heads=2, **small)).eval()
    if family == "mistral":
        return transformers.MistralForCausalLM(transformers.MistralConfig(num_key_value_heads=2, **small)).eval()
    if family == "qwen2":
        return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(num_key_value_heads=2, **small)).eval()
    if family == "gpt2":
        config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=VOCAB, n_positions=64,
                                         bos_token_id=0, eos_token_id=0)
        return transformers.GPT2LMHeadModel(config).eval()
    if family == "bert":
        return transformers.BertModel(transformers.BertConfig(**small), add_pooling_layer=False).eval()
    raise ValueError(family)


FAMILIES = ["llama", "mistral", "qwen2", "gpt2", "bert"]
METHODS = {
    "magnitude": lambda model, batches: prune.magnitude(model, 0.5, scope="layer"),
    "wanda": lambda model, batches: prune.wanda(model, batches, 0.5),
    "sparsegpt-2:4": lambda model, batches: prune.sparsegpt(model, batches, n=2, m=4),
}


def batches(count=2, seq=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (2, seq), generator=g) for _ in range(count)]


def output(model, ids):
    with torch.no_grad():
        out = model(ids)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def prune_quietly(method, model):
    # GPT-2's lm_head is tied to its token embedding: skipped with a warning
    with pytest.warns(UserWarning, match="tied") if isinstance(model, transformers.GPT2LMHeadModel) else \
            _no_warning():
        METHODS[method](model, batches())


class _no_warning:
    def __enter__(self):
        import warnings
        self.catcher = warnings.catch_warnings()
        self.catcher.__enter__()
        warnings.simplefilter("error")

    def __exit__(self, *exc):
        self.catcher.__exit__(*exc)


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("family", FAMILIES)
def test_prune_then_sparsify_matches_the_masked_dense_model(family, method):
    model = build(family)
    dense = copy.deepcopy(model)
    prune_quietly(method, model)
    sparsities = prune.layer_sparsity(model, exclude="lm_head")
    assert len(sparsities) == 2 * {"gpt2": 4, "bert": 6}.get(family, 7)  # every projection, Conv1D included
    assert all(s == pytest.approx(0.5, abs=0.01) for s in sparsities.values()), sparsities
    masked = copy.deepcopy(model)
    ids = batches(1, seed=7)[0]
    assert not torch.allclose(output(masked, ids), output(dense, ids), atol=1e-3)  # pruning changed it
    sk.sparsify(model, format="2:4" if method.endswith("2:4") else "csr", exclude="lm_head", progress=False)
    layers = [m for m in model.modules() if isinstance(m, sk.SparseLinear)]
    assert len(layers) == len(sparsities)
    assert not any(m.training for m in model.modules())  # built in eval mode, Conv1D layers included
    torch.testing.assert_close(output(model, ids), output(masked, ids), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_generate_after_sparsify_fp32_and_bf16(family):
    model = build(family)
    prune_quietly("sparsegpt-2:4", model)
    masked = copy.deepcopy(model)
    sk.sparsify(model, format="2:4", exclude="lm_head", progress=False)
    prompt = batches(1, seq=8, seed=3)[0][:1]
    settings = dict(max_new_tokens=12, min_new_tokens=12, do_sample=False, use_cache=True, pad_token_id=0)
    expected = masked.generate(prompt, **settings)
    got = model.generate(prompt, **settings)
    assert got.shape == (1, 20)
    assert torch.equal(got, expected)
    model, masked = model.to(torch.bfloat16), masked.to(torch.bfloat16)
    got = model.generate(prompt, **settings)
    assert got.shape == (1, 20) and torch.equal(got[:, :8], prompt)
    # one step in bf16: the same logits as the masked dense model, to bf16 rounding
    torch.testing.assert_close(output(model, prompt).float(), output(masked, prompt).float(), rtol=0.05, atol=0.05)


def test_save_and_load_into_a_fresh_gpt2_with_conv1d(tmp_path):
    model = build("gpt2")
    prune_quietly("magnitude", model)
    sk.sparsify(model, format="csr", exclude="lm_head", progress=False)
    sk.save(model, tmp_path / "gpt2.safetensors")
    fresh = build("gpt2")
    sk.load(fresh, tmp_path / "gpt2.safetensors")
    assert isinstance(fresh.transformer.h[0].attn.c_attn, sk.SparseLinear)
    ids = batches(1, seed=5)[0]
    torch.testing.assert_close(output(fresh, ids), output(model, ids))


def test_sequential_calibration_finds_the_decoder_stack_and_takes_a_name():
    from sparsekern.prune._calibrate import find_blocks
    assert find_blocks(build("llama"))[0] == "model.layers"
    assert find_blocks(build("gpt2"))[0] == "transformer.h"
    assert find_blocks(build("bert"))[0] == "encoder.layer"
    one, other = build("llama"), build("llama")
    prune.wanda(one, batches(), 0.5, sequential=True)
    prune.wanda(other, batches(), 0.5, blocks="model.layers")
    for a, b in zip(one.modules(), other.modules()):
        if hasattr(a, "weight_mask"):
            assert torch.equal(a.weight_mask, b.weight_mask)


def test_perplexity_of_a_hugging_face_model():
    model = build("llama")
    value = sk.eval.perplexity(model, batches())
    assert 0.5 * VOCAB < value < 2 * VOCAB  # random init: near uniform over the vocabulary


def test_gpt2_pruned_with_its_tied_head_keeps_the_tie_through_sparsify():
    model = build("gpt2")
    prune.magnitude(model, 0.5, scope="layer", prune_tied=True)
    with pytest.warns(UserWarning, match="lm_head.weight is tied to transformer.wte.weight"):
        sk.sparsify(model, format="csr", progress=False)
    assert type(model.lm_head) is torch.nn.Linear and model.lm_head.weight is model.transformer.wte.weight
    assert float((model.transformer.wte.weight == 0).float().mean()) == pytest.approx(0.5, abs=0.01)
    ids = batches(1, seq=8, seed=3)[0][:1]
    out = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 12)
