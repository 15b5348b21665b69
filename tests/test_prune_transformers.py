"""The pruning methods on a tiny randomly initialized GPT-2 from transformers (no download):
the tied lm_head, its Conv1D layers, a tokenizer's BatchEncoding, the meta device."""
import re
import warnings

import pytest
import torch

from sparsekern import prune

transformers = pytest.importorskip("transformers")
# Resolved here, at collection: transformers imports each model family on first use.
GPT2Config, GPT2LMHeadModel, BatchEncoding = transformers.GPT2Config, transformers.GPT2LMHeadModel, \
    transformers.BatchEncoding


def gpt2():
    torch.manual_seed(0)
    config = GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100, n_positions=16,
                        bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config).eval()


def encoding():
    """What a tokenizer returns: a BatchEncoding (a UserDict, so a Mapping, not a dict)."""
    ids = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(0))
    return BatchEncoding({"input_ids": ids, "attention_mask": torch.ones_like(ids)})


def test_tied_lm_head_is_found():
    assert prune.tied_weights(gpt2()) == {"transformer.wte.weight": ["lm_head.weight"],
                                          "lm_head.weight": ["transformer.wte.weight"]}


def test_magnitude_leaves_the_tied_embedding_alone_and_says_why():
    model = gpt2()
    embedding = model.transformer.wte.weight.detach().clone()
    with pytest.warns(UserWarning) as caught:
        prune.magnitude(model, 0.9, scope="layer")
    assert [str(w.message) for w in caught] == \
        ["lm_head.weight is tied to transformer.wte.weight: skipped; pass prune_tied=True to prune it"]
    assert caught[0].filename == __file__  # points at the user's call
    assert torch.equal(model.transformer.wte.weight, embedding)
    # GPT-2's Conv1D layers are pruned, each to 90% (their weight is [in, out])
    assert prune.layer_sparsity(model, exclude="lm_head") == pytest.approx(
        {f"transformer.h.0.{name}": 0.9 for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")},
        abs=1e-3)


def test_prune_tied_prunes_head_and_embedding_without_warnings():
    model = gpt2()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prune.magnitude(model, 0.9, scope="layer", prune_tied=True)
    assert (model.transformer.wte.weight == 0).float().mean().item() == pytest.approx(0.9, abs=1e-3)


def test_wanda_accepts_batch_encoding_and_compares_conv1d_weights_within_output_rows():
    model = gpt2()
    prune.wanda(model, [encoding(), encoding()], 0.5, prune_tied=True)
    assert (model.lm_head.weight_mask.sum(1) == 16).all()  # half of each row of 32
    c_fc = model.transformer.h[0].mlp.c_fc  # weight [in 32, out 128]: an output row is a column
    assert (c_fc.weight_mask.sum(0) == 16).all()


def test_one_batch_encoding_in_place_of_the_batches_is_a_clear_error():
    expected = ("batches is one BatchEncoding (keys ['input_ids', 'attention_mask']): "
                "pass an iterable of batches, e.g. [batch]")
    with pytest.raises(TypeError, match=re.escape(expected)):
        prune.wanda(gpt2(), encoding(), 0.5, prune_tied=True)


def test_meta_device_points_to_loading_weights():
    with torch.device("meta"):
        model = GPT2LMHeadModel(gpt2().config)
    with pytest.raises(ValueError, match=re.escape("GPT2LMHeadModel has weights on the meta device "
                                                   "(transformer.h.0.attn.c_attn,")):
        prune.magnitude(model, 0.5, prune_tied=True)
