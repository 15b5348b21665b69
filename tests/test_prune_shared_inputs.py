"""Layers that receive the same input tensor (Llama's q/k/v projections, gate/up) share one
Hessian and one factorization in sparsegpt: the results must be those of one Hessian per
layer, bit for bit, and sharing must hold only where the tensor is the same on every batch."""
import copy
import importlib

import pytest
import torch
from torch import nn

from sparsekern import prune
from sparsekern.prune._calibrate import _Collector
from sparsekern.prune.sparsegpt import Hessian

sparsegpt_module = importlib.import_module("sparsekern.prune.sparsegpt")


class Branchy(nn.Module):
    """a, b, c read one tensor, unless the mode of the batch says otherwise."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.c = nn.Linear(4, 3), nn.Linear(4, 3), nn.Linear(4, 3)

    def forward(self, x, mode):
        h = x * 2.0
        if mode == "same":
            return self.a(h) + self.b(h) + self.c(h)
        if mode == "b-differs":
            return self.a(h) + self.b(h + 1.0) + self.c(h)
        if mode == "b-missing":
            return self.a(h) + self.c(h)
        if mode == "a-twice":
            return self.a(h) + self.a(h) + self.b(h) + self.c(h)
        if mode == "raw":  # the batch tensor itself, the same object if a batch repeats
            return self.a(x) + self.b(x) + self.c(x)
        raise ValueError(mode)


def collect(model, batches, share):
    modules = [(n, getattr(model, n)) for n in "abc"]
    collector = _Collector(modules, Hessian, share)
    with torch.no_grad():
        for x, mode in batches:
            model(x, mode)
            collector.end_batch()
    collector.remove()
    return collector.stats


def tensors(count, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(5, 4, generator=g) for _ in range(count)]


@pytest.mark.parametrize("modes", [
    ["same", "same", "same"],
    ["same", "b-differs", "same"],
    ["b-differs", "same"],
    ["same", "b-missing", "same"],
    ["b-missing", "same"],
    ["same", "a-twice", "same"],
    ["a-twice", "same"],
])
def test_shared_stats_equal_one_per_layer(modes):
    model = Branchy()
    batches = list(zip(tensors(len(modes)), modes))
    shared, alone = collect(model, batches, True), collect(model, batches, False)
    for name in "abc":
        assert shared[name].count == alone[name].count
        assert torch.equal(shared[name].sum, alone[name].sum), name
    # shared only where every batch fed the three layers one tensor, once each
    assert (shared["a"] is shared["b"] is shared["c"]) == all(mode == "same" for mode in modes)
    if modes[0] in ("b-differs", "b-missing") and all(mode == "same" for mode in modes[1:]):
        assert shared["a"] is shared["c"] and shared["b"] is not shared["a"]


def test_a_batch_given_twice_is_counted_twice():
    model, x = Branchy(), tensors(1)[0]
    shared, alone = collect(model, [(x, "raw"), (x, "raw")], True), collect(model, [(x, "raw"), (x, "raw")], False)
    assert shared["a"] is shared["b"] is shared["c"]
    assert shared["a"].count == alone["a"].count == 10
    assert torch.equal(shared["a"].sum, alone["a"].sum)


transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install sparsekern[hf])")


def tiny_llama():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=96,
                                      max_position_embeddings=64)
    return transformers.LlamaForCausalLM(config).eval()


def llama_batches(count=3):
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, 96, (2, 16), generator=g) for _ in range(count)]


def counting(monkeypatch):
    """Records the layer names of every factorization."""
    calls, factor = [], sparsegpt_module._upper_inverse_factor

    def wrapper(hessian, damp, names):
        calls.append(sorted(n.rsplit(".", 1)[-1] for n in names))
        return factor(hessian, damp, names)

    monkeypatch.setattr(sparsegpt_module, "_upper_inverse_factor", wrapper)
    return calls


@pytest.mark.parametrize("kwargs", [dict(n=2, m=4), dict(sparsity=0.5, sequential=False)])
def test_llama_shared_factorizations_give_the_per_layer_weights(monkeypatch, kwargs):
    model = tiny_llama()
    reference = copy.deepcopy(model)
    calls = counting(monkeypatch)
    prune.sparsegpt(model, llama_batches(), **kwargs)
    per_block = [["k_proj", "q_proj", "v_proj"], ["o_proj"], ["gate_proj", "up_proj"], ["down_proj"]]
    assert sorted(calls) == sorted(per_block * 2 + [["lm_head"]])  # 4 per block instead of 7

    monkeypatch.setattr(sparsegpt_module, "_SHARE_INPUTS", False)
    del calls[:]
    prune.sparsegpt(reference, llama_batches(), **kwargs)
    assert len(calls) == 7 * 2 + 1
    for (name, got), (_, want) in zip(model.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(got, want), name


def test_an_mlp_without_shared_inputs_factorizes_every_layer(monkeypatch):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    reference = copy.deepcopy(model)
    batches = tensors(3)
    batches = [torch.cat([x, x], dim=1) for x in batches]
    calls = counting(monkeypatch)
    prune.sparsegpt(model, batches, 0.5)
    assert sorted(calls) == [["0"], ["2"], ["4"]]
    monkeypatch.setattr(sparsegpt_module, "_SHARE_INPUTS", False)
    prune.sparsegpt(reference, batches, 0.5)
    for (name, got), (_, want) in zip(model.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(got, want), name


def test_a_singular_shared_hessian_warns_with_every_layer_of_the_group():
    model = Branchy()
    x = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])  # four identical inputs: H singular
    with pytest.warns(UserWarning, match=r"sparsegpt: layers \['a', 'b', 'c'\] \(one shared input\): its Hessian "
                                         r"is singular with damp=1e-20; pruned with damp=0.1 instead"):
        prune.sparsegpt(model, [(x, "raw")], 0.5, damp=1e-20, sequential=False)
