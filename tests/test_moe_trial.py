"""Defects found by trying sparsekern on tiny randomly initialized mixture-of-experts and
multimodal Hugging Face models (no download). Each test compares against a masked dense
model or a reference pruning, not only "no exception"."""
import copy
import warnings

import pytest
import torch
from torch import nn

import sparsekern as sk
from sparsekern import prune

transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install sparsekern[hf])")

VOCAB = 96


def batches(count=2, seq=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (2, seq), generator=g) for _ in range(count)]


def _model(class_name: str, config_name: str, **config):
    if not hasattr(transformers, class_name):
        pytest.skip(f"this transformers has no {class_name}")
    torch.manual_seed(0)
    common = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=64)
    return getattr(transformers, class_name)(getattr(transformers, config_name)(**common, **config)).eval()


# In this transformers the experts of every one of these are one [experts, ., .] Parameter per
# projection (fused), not nn.Linear modules.
MOE = {
    "mixtral": lambda: _model("MixtralForCausalLM", "MixtralConfig", intermediate_size=128, num_key_value_heads=2,
                              num_local_experts=4, num_experts_per_tok=2),
    "qwen2_moe": lambda: _model("Qwen2MoeForCausalLM", "Qwen2MoeConfig", intermediate_size=128,
                                num_key_value_heads=2, moe_intermediate_size=32, shared_expert_intermediate_size=64,
                                num_experts=4, num_experts_per_tok=2),
    "deepseek_v3": lambda: _model("DeepseekV3ForCausalLM", "DeepseekV3Config", intermediate_size=128,
                                  moe_intermediate_size=32, num_key_value_heads=4, n_routed_experts=4,
                                  num_experts_per_tok=2, n_shared_experts=1, first_k_dense_replace=1, kv_lora_rank=16,
                                  q_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16, n_group=1,
                                  topk_group=1),
    "gpt_oss": lambda: _model("GptOssForCausalLM", "GptOssConfig", intermediate_size=128, num_key_value_heads=2,
                              num_local_experts=4, num_experts_per_tok=2, head_dim=16,
                              layer_types=["sliding_attention", "full_attention"]),
}


def _fused(model):
    return [(name, p) for name, p in model.named_parameters() if p.ndim == 3]


def _linear_weights(model):
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))


def _record(call):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call()
    return [str(w.message) for w in caught]


@pytest.mark.parametrize("family", list(MOE))
def test_pruning_a_moe_names_the_fused_experts_it_leaves_and_their_share(family):
    # Asking for 50% of a Mixtral pruned its attention layers and lm_head alone, 7% of its
    # parameters: the experts, 84% of them, are 3-D Parameters no nn.Linear holds, and the only
    # warning named the routers.
    model = MOE[family]()
    fused = _fused(model)
    assert fused, "the experts are expected fused in this transformers"
    before = {name: p.detach().clone() for name, p in fused}
    total = sum(p.numel() for p in model.parameters())
    share = sum(p.numel() for _, p in fused) / total
    messages = _record(lambda: prune.magnitude(model, 0.5, scope="layer"))
    stacked = [m for m in messages if "stacked weight(s)" in m]
    assert len(stacked) == 1, messages
    assert stacked[0].startswith(f"{len(fused)} stacked weight(s) holding {share:.0%} of {type(model).__name__}'s "
                                 f"parameters are not pruned (first: {fused[0][0]!r}, shape {list(fused[0][1].shape)})")
    assert f"hold {_linear_weights(model) / total:.0%} of the parameters" in stacked[0]
    assert all(torch.equal(p, before[name]) for name, p in _fused(model))  # as said: untouched
    # Left out on purpose: no warning.
    model = MOE[family]()
    messages = _record(lambda: prune.magnitude(model, 0.5, scope="layer", exclude="*.experts*"))
    assert not [m for m in messages if "stacked weight(s)" in m], messages


def test_dbrx_experts_stacked_as_2d_rows_are_named_too():
    # DBRX keeps its experts as [experts * ffn, d] Parameters of a module that has no `weight`:
    # pruning it at 50% pruned 13% of its parameters, without any warning.
    if not hasattr(transformers, "DbrxForCausalLM"):
        pytest.skip("this transformers has no DbrxForCausalLM")
    torch.manual_seed(0)
    config = transformers.DbrxConfig(d_model=64, n_heads=4, n_layers=2, max_seq_len=64, vocab_size=VOCAB,
                                     attn_config=dict(kv_n_heads=2, rope_theta=10000.0),
                                     ffn_config=dict(ffn_hidden_size=128, moe_num_experts=4, moe_top_k=2))
    model = transformers.DbrxForCausalLM(config).eval()
    experts = [(name, p) for name, p in model.named_parameters() if ".experts.mlp." in name]
    total = sum(p.numel() for p in model.parameters())
    share = sum(p.numel() for _, p in experts) / total
    messages = _record(lambda: prune.magnitude(model, 0.5, scope="layer"))
    assert any(m.startswith(f"6 stacked weight(s) holding {share:.0%} of DbrxForCausalLM's parameters are not pruned "
                            "(first: 'transformer.blocks.0.ffn.experts.mlp.w1', shape [512, 64])") for m in messages), \
        messages
    assert sk.summary(model).stacked_bytes == sum(p.numel() * p.element_size() for _, p in experts)


@pytest.mark.parametrize("method", ["nm", "wanda", "sparsegpt"])
def test_every_method_names_the_fused_experts(method):
    model = MOE["mixtral"]()
    calls = {"nm": lambda: prune.nm(model, 2, 4), "wanda": lambda: prune.wanda(model, batches(1), 0.5),
             "sparsegpt": lambda: prune.sparsegpt(model, batches(1), 0.5)}
    messages = _record(calls[method])
    assert any(m.startswith("4 stacked weight(s) holding 84% of MixtralForCausalLM's parameters are not pruned")
               for m in messages), messages


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sparsify_and_summary_of_a_moe_say_the_experts_stay_dense(dtype, tmp_path):
    # sk.summary listed the packed attention layers only and gave their total ("0.78x") as
    # if it were the model's, whose experts (84% of its weights) stayed dense unmentioned.
    model = MOE["mixtral"]().to(dtype)
    prune.nm(model, 2, 4, exclude="lm_head")
    masked = copy.deepcopy(model)
    messages = _record(lambda: sk.sparsify(model, format="2:4", exclude="lm_head", progress=False))
    assert any(m.startswith("4 stacked weight(s) holding 84% of MixtralForCausalLM's parameters are not sparsified")
               and "stay dense" in m for m in messages), messages
    summary = sk.summary(model)
    fused = _fused(model)
    expected = sum(p.numel() * p.element_size() for _, p in fused)
    assert summary.stacked_bytes == expected
    assert [name for name, _, _ in summary.stacked] == [name for name, _ in fused]
    total = summary.weight_bytes + expected
    ratio = total / (summary.dense_bytes + expected)
    assert (f"not in the table: 4 stacked weight(s) of {expected:,} bytes, dense (first: {fused[0][0]}, 4 x 256 x 64)"
            in str(summary))
    assert f"with them the total is {total:,} bytes, {ratio:.2f}x of dense" in str(summary)
    ids = batches(1)[0]
    with torch.no_grad():
        got, want = model(ids).logits, masked(ids).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4) if dtype == torch.float32 else \
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)
    if dtype == torch.float32:
        settings = dict(max_new_tokens=5, min_new_tokens=5, do_sample=False)
        assert torch.equal(model.generate(ids, **settings), masked.generate(ids, **settings))
    path = tmp_path / "mixtral.safetensors"
    sk.save(model, path)
    fresh = MOE["mixtral"]().to(dtype)
    sk.load(fresh, path)
    with torch.no_grad():
        assert torch.equal(fresh(ids).logits, got)


# ---- experts that receive no calibration token ----------------------------------------------------

class _Expert(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.up, self.down = nn.Linear(dim, hidden, bias=False), nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        return self.down(torch.relu(self.up(x)))


class _MoE(nn.Module):
    """Top-1 routing by the largest of the first ``experts`` features, every expert called on
    its selection even when empty, as older transformers' Mixtral did (and remote-code MoE
    models still do)."""

    def __init__(self, dim=16, hidden=32, experts=4):
        super().__init__()
        self.experts = nn.ModuleList(_Expert(dim, hidden) for _ in range(experts))

    def forward(self, x):
        flat = x.reshape(-1, x.shape[-1])
        route = flat[:, :len(self.experts)].argmax(-1)
        out = torch.zeros_like(flat)
        for i, expert in enumerate(self.experts):
            tokens = torch.where(route == i)[0]
            out.index_add_(0, tokens, expert(flat[tokens]))
        return out.reshape(x.shape)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList(_MoE() for _ in range(2))

    def forward(self, x):
        for layer in self.layers:
            x = x + layer(x)
        return x


def _routed_batch():
    """Layer 0: 15 tokens to expert 0, one to expert 1, none to experts 2 and 3."""
    x = torch.randn(2, 8, 16, generator=torch.Generator().manual_seed(3))
    x[..., :4] = torch.tensor([5.0, 0.0, -1.0, -1.0])
    x[1, 7, :2] = torch.tensor([0.0, 5.0])
    return x


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_an_expert_that_no_calibration_token_reached_is_pruned_by_magnitude(method):
    # Called on an empty selection, an expert's statistics were those of zero inputs, not none:
    # sparsegpt took every input for dead and zeroed the whole expert (100% sparsity, silently),
    # wanda scored every weight 0 and kept an arbitrary half.
    torch.manual_seed(0)
    model = _Net()
    reference = copy.deepcopy(model)
    messages = _record(lambda: getattr(prune, method)(model, [_routed_batch()], 0.5))
    unseen = [f"layers.0.experts.{e}.{p}" for e in (2, 3) for p in ("up", "down")]
    # What the fallback promises: |W| per row (wanda), magnitude without reconstruction over the
    # layer (sparsegpt: H = I, one column block).
    prune.magnitude(reference, 0.5, scope="row" if method == "wanda" else "layer", include=unseen)
    for name in unseen:
        got, want = model.get_submodule(name), reference.get_submodule(name)
        assert (got.weight == 0).float().mean() == 0.5, name
        assert torch.equal(got.weight, want.weight), name
    assert any(m.startswith(f"{method}: no input reached {unseen}") and "no calibration token was routed" in m
               for m in messages), messages
    one_token = model.get_submodule("layers.0.experts.1.up").weight  # one token: rank-1 statistics
    assert torch.isfinite(one_token).all() and (one_token == 0).float().mean() == 0.5
    with torch.no_grad():
        assert torch.isfinite(model(_routed_batch())).all()


# ---- multimodal ------------------------------------------------------------------------------------

def llava():
    if not hasattr(transformers, "LlavaForConditionalGeneration"):
        pytest.skip("this transformers has no LlavaForConditionalGeneration")
    torch.manual_seed(0)
    vision = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                           num_attention_heads=4, image_size=32, patch_size=8, projection_dim=32)
    text = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    config = transformers.LlavaConfig(vision_config=vision, text_config=text, image_token_index=127,
                                      vision_feature_layer=-1, projector_hidden_act="gelu")
    model = transformers.LlavaForConditionalGeneration(config).eval()
    ids = torch.randint(3, 120, (2, 24), generator=torch.Generator().manual_seed(1))
    ids[:, 2:18] = 127  # (32 / 8)^2 image tokens
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    return model, dict(input_ids=ids, pixel_values=pixels, attention_mask=torch.ones_like(ids))


def test_llava_language_model_pruned_and_packed_alone_matches_the_masked_model():
    # Coverage (no defect found): include= keeps the vision tower and projector dense, the
    # calibration batches carry pixel_values, generate runs with the image.
    model, batch = llava()
    vision = {name: p.detach().clone() for name, p in model.named_parameters() if "language_model" not in name}
    prune.wanda(model, [batch], 0.5, include="model.language_model.*")
    masked = copy.deepcopy(model)
    sk.sparsify(model, format="csr", include="model.language_model.*", progress=False)
    packed = [name for name, m in model.named_modules() if isinstance(m, sk.SparseLinear)]
    assert len(packed) == 14 and all(name.startswith("model.language_model.") for name in packed)
    assert all(torch.equal(p, vision[name]) for name, p in model.named_parameters() if name in vision)
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, masked(**batch).logits, rtol=1e-4, atol=1e-4)
    settings = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert torch.equal(model.generate(**batch, **settings), masked.generate(**batch, **settings))


class _FusedExperts(nn.Module):
    """Experts stacked in one 3-D Parameter, as transformers 5 keeps them: no nn.Linear."""

    def __init__(self):
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.randn(4, 16, 8))


def test_a_callable_selector_written_for_layers_still_works_beside_fused_experts():
    # Looking for stacked weights asked the user's selector about every module (Sequential,
    # ReLU, the experts): `m.out_features` raised AttributeError from inside prune.random.
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), _FusedExperts(), nn.Linear(8, 4))
    caught = _record(lambda: prune.random(model, 0.5, seed=0, include=lambda name, m: m.out_features == 8))
    assert hasattr(model[0], "weight_mask") and not hasattr(model[3], "weight_mask")
    assert any("stacked weight(s)" in text and "'2.gate_up_proj'" in text for text in caught)
