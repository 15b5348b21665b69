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
    # lm_head is GPT-2's only nn.Linear: skipping it leaves nothing, and the error says why
    with pytest.raises(ValueError) as error:
        prune.magnitude(model, 0.9)
    message = str(error.value)
    assert "lm_head.weight is tied to transformer.wte.weight: skipped; pass prune_tied=True to prune it" in message
    assert "4 module(s) that look like linear layers are not pruned (4 Conv1D; " \
           "first: 'transformer.h.0.attn.c_attn')" in message
    assert torch.equal(model.transformer.wte.weight, embedding)


def test_prune_tied_prunes_head_and_embedding_and_warns_once_about_conv1d():
    model = gpt2()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prune.magnitude(model, 0.9, prune_tied=True)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and messages[0].startswith("4 module(s) that look like linear layers are not "
                                                         "pruned (4 Conv1D;"), messages
    assert caught[0].filename == __file__  # points at the user's call
    assert (model.transformer.wte.weight == 0).float().mean().item() == pytest.approx(0.9, abs=1e-3)


def test_wanda_accepts_batch_encoding():
    model = gpt2()
    with pytest.warns(UserWarning, match="Conv1D"):
        prune.wanda(model, [encoding(), encoding()], 0.5, prune_tied=True)
    assert (model.lm_head.weight_mask.sum(1) == 16).all()  # half of each row of 32


def test_one_batch_encoding_in_place_of_the_batches_is_a_clear_error():
    expected = ("batches is one BatchEncoding (keys ['input_ids', 'attention_mask']): "
                "pass an iterable of batches, e.g. [batch]")
    with pytest.warns(UserWarning, match="Conv1D"), pytest.raises(TypeError, match=re.escape(expected)):
        prune.wanda(gpt2(), encoding(), 0.5, prune_tied=True)


def test_meta_device_points_to_loading_weights():
    with torch.device("meta"):
        model = GPT2LMHeadModel(gpt2().config)
    with pytest.raises(ValueError, match=re.escape("GPT2LMHeadModel has weights on the meta device (lm_head)")):
        prune.magnitude(model, 0.5, prune_tied=True)
