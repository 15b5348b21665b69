"""What every pruning method selects: tied weights are skipped (with a warning) unless
prune_tied=True, linear-like modules of other types are named in a warning, and models on
the meta device get a clear error instead of torch's."""
import re
import warnings

import pytest
import torch
from torch import nn

from sparsekern import prune


class TiedLM(nn.Module):
    """An embedding whose weight is also the output head's, as in GPT-2."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(16, 8)
        self.body = nn.Linear(8, 8)
        self.head = nn.Linear(8, 16, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids):
        return self.head(torch.relu(self.body(self.embed(ids))))


def loss_fn(model, batch):
    return model(batch).square().sum()


IDS = [torch.arange(8).reshape(2, 4)]

# Every pruning method, called with extra keyword arguments.
METHODS = {
    "magnitude": lambda model, **kw: prune.magnitude(model, 0.5, **kw),
    "magnitude_layer": lambda model, **kw: prune.magnitude(model, 0.5, scope="layer", **kw),
    "random": lambda model, **kw: prune.random(model, 0.5, seed=0, **kw),
    "nm": lambda model, **kw: prune.nm(model, 2, 4, **kw),
    "structured": lambda model, **kw: prune.structured(model, 0.5, **kw),
    "taylor": lambda model, **kw: prune.taylor(model, loss_fn, IDS, 0.5, **kw),
    "wanda": lambda model, **kw: prune.wanda(model, IDS, 0.5, **kw),
    "wanda_nm": lambda model, **kw: prune.wanda(model, IDS, n=2, m=4, **kw),
    "threshold": lambda model, **kw: prune.threshold(model, 0.1, **kw),
    "l0_gates": lambda model, **kw: prune.l0_gates(model, **kw),
    "sensitivity": lambda model, **kw: prune.sensitivity(model, lambda m: 0.0, (0.5,), **kw),
}


def touched(module):
    """Pruned (masked) or gated by this call."""
    return hasattr(module, "weight_mask") or hasattr(module, "parametrizations")


def recorded(call):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = call()
    return result, [str(w.message) for w in caught]


def test_tied_weights_names_every_alias():
    model = TiedLM()
    assert prune.tied_weights(model) == {"embed.weight": ["head.weight"], "head.weight": ["embed.weight"]}
    assert prune.tied_weights(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))) == {}
    # still found once the head is masked: the shared Parameter is now head.weight_orig
    prune.magnitude(model, 0.5, include="head", prune_tied=True)
    assert prune.tied_weights(model) == {"embed.weight": ["head.weight_orig"], "head.weight_orig": ["embed.weight"]}


@pytest.mark.parametrize("method", METHODS.values(), ids=METHODS.keys())
def test_tied_weight_is_skipped_with_a_warning(method):
    model = TiedLM()
    embedding = model.embed.weight.detach().clone()
    _, messages = recorded(lambda: method(model))
    assert "head.weight is tied to embed.weight: skipped; pass prune_tied=True to prune it" in messages
    assert torch.equal(model.embed.weight, embedding)
    assert not touched(model.head)
    assert model.head.weight is model.embed.weight


def test_sensitivity_table_leaves_out_tied_layers():
    with pytest.warns(UserWarning, match="head.weight is tied"):
        table = prune.sensitivity(TiedLM(), lambda m: 0.0, (0.5,))
    assert list(table.metric) == ["body"]


@pytest.mark.parametrize("method", METHODS.values(), ids=METHODS.keys())
def test_prune_tied_opts_in(method):
    model = TiedLM()
    _, messages = recorded(lambda: method(model, prune_tied=True))
    assert not any("tied" in m for m in messages)
    if method is not METHODS["sensitivity"]:  # sensitivity restores the model
        assert touched(model.head)


def test_pruning_a_tied_head_prunes_the_embedding_too():
    model = TiedLM()
    prune.magnitude(model, 0.5, scope="layer", prune_tied=True)
    assert model.head.weight_orig is model.embed.weight  # still one parameter
    assert (model.embed.weight == 0).float().mean().item() == 0.5


def test_only_tied_layers_is_an_error_that_says_why():
    model = TiedLM()
    with pytest.raises(ValueError, match=re.escape("head.weight is tied to embed.weight")):
        prune.magnitude(model, 0.5, include="head")
    assert not touched(model.head)


# ------------------------------------------------------------------ look-alike linears

class Conv1D(nn.Module):
    """Shaped like transformers.pytorch_utils.Conv1D: a linear layer with weight [in, out],
    but without its ``nf`` attribute, so no method takes it for the real one."""

    def __init__(self, nf, nx):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(nx, nf))
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x):
        return x @ self.weight + self.bias


class Projection(nn.Module):
    """A custom linear layer: 2-D weight, no nn.Linear base."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(8, 8))

    def forward(self, x):
        return x @ self.weight.T


def mixed():
    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(10, 8), Conv1D(8, 8), nn.LayerNorm(8), Conv1D(8, 8), Projection(),
                         nn.Linear(8, 8))


@pytest.mark.parametrize("method", [METHODS[k] for k in ("magnitude", "nm", "wanda", "threshold", "l0_gates")],
                         ids=["magnitude", "nm", "wanda", "threshold", "l0_gates"])
def test_linear_lookalikes_are_named_in_one_warning(method):
    model = mixed()
    _, messages = recorded(lambda: method(model))
    lookalike = [m for m in messages if "look like linear layers" in m]
    assert len(lookalike) == 1, messages
    assert "3 module(s) that look like linear layers are not pruned (2 Conv1D, 1 Projection; first: '1')" \
        in lookalike[0]
    assert "only Linear modules are" in lookalike[0] and "is pruned by magnitude, random, nm, wanda and sparsegpt" \
        in lookalike[0]
    assert touched(model[5]) and not any(touched(model[i]) for i in (0, 1, 3, 4))


def test_lookalike_warning_respects_include_exclude_and_types():
    _, messages = recorded(lambda: prune.magnitude(mixed(), 0.5, exclude=["1", "3", "4"]))
    assert messages == []
    _, messages = recorded(lambda: prune.magnitude(mixed(), 0.5, types=(nn.Linear, Conv1D)))
    assert [m for m in messages if "look like" in m] == \
        ["1 module(s) that look like linear layers are not pruned (1 Projection; first: '4'): "
         "only Linear, Conv1D modules are"]


def test_model_with_only_lookalikes_says_why_nothing_is_pruned():
    with pytest.raises(ValueError, match=r"no prunable module \(Linear\).*2 Conv1D"):
        prune.magnitude(nn.Sequential(Conv1D(4, 4), Conv1D(4, 4)), 0.5)


# --------------------------------------------------------------------------- meta device

CALLS_ON_META = {**METHODS,
                 "layer_sparsity": lambda model: prune.layer_sparsity(model),
                 "global_sparsity": lambda model: prune.global_sparsity(model),
                 "l1_penalty": lambda model: prune.l1_penalty(model)}


@pytest.mark.parametrize("call", CALLS_ON_META.values(), ids=CALLS_ON_META.keys())
def test_meta_device_is_a_clear_error(call):
    with torch.device("meta"):
        model = nn.Sequential(nn.Embedding(16, 8), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    with pytest.raises(ValueError) as error:
        call(model)
    message = str(error.value)
    assert "Sequential has weights on the meta device (1, 3)" in message
    assert "hold no values" in message
    assert "sparsekern.load(model, path)" in message and "model.to_empty(device='cpu')" in message
    assert not touched(model[1])
