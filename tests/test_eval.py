"""sk.eval: perplexity and token batches."""
import math
import re

import pytest
import torch
from torch import nn

import sparsekern as sk


class Uniform(nn.Module):
    """Equal logits over the vocabulary: perplexity is the vocabulary size."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab

    def forward(self, ids):
        return torch.zeros(*ids.shape, self.vocab)


class Bigram(nn.Module):
    """Log-probabilities from a table: the expected perplexity can be computed by hand."""

    def __init__(self, table):
        super().__init__()
        self.table = table.log()

    def forward(self, input_ids, attention_mask=None):
        return type("Output", (), {"logits": self.table[input_ids]})()


def test_uniform_model_has_the_vocabulary_size_as_perplexity():
    batches = [torch.randint(0, 7, (2, 5)), torch.randint(0, 7, (1, 9))]
    assert sk.eval.perplexity(Uniform(7), batches) == pytest.approx(7.0, rel=1e-6)  # float32 logits


def test_token_weighted_mean_and_attention_mask_and_logits_attribute():
    table = torch.tensor([[0.5, 0.5], [0.25, 0.75]], dtype=torch.float64)
    ids = [torch.tensor([[0, 1, 1, 0]]), torch.tensor([[1, 1]])]
    # predicted: 0->1 (0.5), 1->1 (0.75), 1->0 (0.25); second batch 1->1 (0.75)
    expected = math.exp(-(math.log(0.5) + 2 * math.log(0.75) + math.log(0.25)) / 4)
    assert sk.eval.perplexity(Bigram(table), ids) == pytest.approx(expected, rel=1e-9)
    masked = [{"input_ids": ids[0], "attention_mask": torch.tensor([[1, 1, 1, 0]])}]
    expected = math.exp(-(math.log(0.5) + math.log(0.75)) / 2)
    assert sk.eval.perplexity(Bigram(table), masked) == pytest.approx(expected, rel=1e-9)


def test_mode_is_restored_and_no_graph_is_built():
    model = nn.Sequential(nn.Embedding(5, 5))
    model.train()
    sk.eval.perplexity(model, [torch.randint(0, 5, (1, 4))])
    assert model.training
    model.eval()
    sk.eval.perplexity(model, [torch.randint(0, 5, (1, 4))])
    assert not model.training


def test_mixed_modes_are_restored_module_by_module():
    # A model training with a frozen part in eval mode: model.train() afterwards would wake it.
    model = nn.Sequential(nn.Embedding(5, 5), nn.Dropout(0.5))
    model.train()
    model[0].eval()
    sk.eval.perplexity(model, [torch.randint(0, 5, (1, 4))])
    assert [m.training for m in model.modules()] == [True, False, True]


def test_bad_batches_are_clear_errors():
    with pytest.raises(ValueError, match=re.escape("token ids shaped (3,): expected [batch, seq] with seq >= 2")):
        sk.eval.perplexity(Uniform(3), [torch.tensor([0, 1, 2])])
    with pytest.raises(ValueError, match="token_batches gave no token to score"):
        sk.eval.perplexity(Uniform(3), [])
    with pytest.raises(TypeError, match="expected logits"):
        sk.eval.perplexity(Words(), [torch.tensor([[1, 2]])])
    with pytest.raises(TypeError, match="a batch of type list: expected a tensor of token ids"):
        sk.eval.perplexity(Uniform(3), [[1, 2]])


class Words(nn.Module):
    def forward(self, ids):
        return "not logits"


def test_token_batches_concatenate_and_chunk():
    batches = sk.eval.token_batches(sk.eval.byte_tokenizer, ["abcd", "efgh"], seq_len=3, batch_size=2,
                                    separator="|")
    assert len(batches) == 1  # "abcd|efgh": 9 bytes, one batch of 2 x 3
    assert batches[0].tolist() == [list(b"abc"), list(b"d|e")]
    assert batches[0].dtype == torch.int64
    assert len(sk.eval.token_batches(sk.eval.byte_tokenizer, "x" * 100, 10, 2, max_batches=3)) == 3


def test_token_batches_take_hugging_face_style_tokenizers():
    class Tokenizer:
        def encode(self, text, add_special_tokens=True):
            assert add_special_tokens is False
            return [ord(c) - 96 for c in text]

    assert sk.eval.token_batches(Tokenizer(), "abcdef", 3, separator="")[0].tolist() == [[1, 2, 3]]
    as_mapping = sk.eval.token_batches(lambda text: {"input_ids": torch.tensor([[1, 2, 3, 4]])}, "t", 2)
    assert [b.tolist() for b in as_mapping] == [[[1, 2]], [[3, 4]]]


def test_token_batches_say_when_the_text_is_too_short():
    with pytest.raises(ValueError, match=re.escape("the texts give 5 tokens, fewer than one batch of 2 x 4 = 8")):
        sk.eval.token_batches(sk.eval.byte_tokenizer, "hello", 4, 2)
    with pytest.raises(ValueError, match="seq_len = 0, expected a positive integer"):
        sk.eval.token_batches(sk.eval.byte_tokenizer, "hello", 0)
    with pytest.raises(TypeError, match="tokenizer is a int"):
        sk.eval.token_batches(3, "hello", 2)
