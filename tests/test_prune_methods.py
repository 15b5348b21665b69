"""Each method's selection rule, checked exactly on small models."""
import copy
from collections import UserDict
from collections.abc import Mapping

import pytest
import torch
from torch import nn

from sparsekern import prune


def mlp(seed=0, hidden=32):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, hidden), nn.ReLU(), nn.Linear(hidden, 24), nn.GELU(), nn.Dropout(0.2),
                         nn.Linear(24, 8)).eval()


def linears(model):
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def weight_of(module):
    return (module.weight_orig * module.weight_mask).detach() if hasattr(module, "weight_mask") \
        else module.weight.detach()


# ------------------------------------------------------------------------------ N:M

@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8), (3, 8)])
def test_nm_pattern_exact(n, m):
    model = mlp()
    original = [lin.weight.detach().clone() for lin in linears(model)]
    prune.nm(model, n, m)
    for lin, weight in zip(linears(model), original):
        groups_mask = lin.weight_mask.reshape(-1, m)
        assert (groups_mask.sum(1) == n).all()
        # the kept n are the n largest |w| of each group of m consecutive inputs
        expected = torch.zeros_like(groups_mask)
        expected.scatter_(1, weight.abs().reshape(-1, m).topk(n, dim=1).indices, 1.0)
        assert torch.equal(groups_mask, expected)
        assert ((lin.weight.reshape(-1, m) != 0).sum(1) <= n).all()


def test_nm_with_scores_and_existing_mask():
    model = mlp()
    prune.magnitude(model, 0.6, scope="layer")
    before = [lin.weight_mask.clone() for lin in linears(model)]
    # scores that prefer the *smallest* weights: N:M follows the scores, not |w|
    scores = {name: -lin.weight_orig.detach().abs() for name, lin in model.named_modules()
              if isinstance(lin, nn.Linear)}
    prune.nm(model, 2, 4, scores=scores)
    for lin, old in zip(linears(model), before):
        mask = lin.weight_mask
        assert ((mask == 0) | (old == 1)).all()
        assert (mask.reshape(-1, 4).sum(1) <= 2).all()
    with pytest.raises(ValueError, match="'2'"):
        prune.nm(mlp(), 2, 4, scores={"0": scores["0"]})


def test_nm_rejects_in_features_not_multiple_of_m():
    model = nn.Sequential(nn.Linear(10, 8), nn.Linear(8, 4))
    with pytest.raises(ValueError, match="in_features = 10"):
        prune.nm(model, 2, 4)
    assert not hasattr(model[1], "weight_mask")  # checked before touching anything
    prune.nm(model, 2, 4, exclude="0")
    assert (model[1].weight_mask.reshape(-1, 4).sum(1) == 2).all()


# ----------------------------------------------------------------------- structured

@pytest.mark.parametrize("dim,norm", [(0, 1), (0, 2), (1, 1), (1, 2)])
def test_structured_masks_lowest_norm_units(dim, norm):
    model = mlp()
    weight = model[2].weight.detach().clone()
    prune.structured(model, 0.25, dim=dim, norm=norm, include="2")
    mask = model[2].weight_mask
    unit_mask = mask.amax(dim=1 - dim)
    assert torch.equal(mask, unit_mask.unsqueeze(1 - dim).expand_as(mask))  # whole rows / columns
    norms = torch.linalg.vector_norm(weight, ord=norm, dim=1 - dim)
    removed = unit_mask == 0
    assert int(removed.sum()) == round(0.25 * weight.shape[dim])
    assert norms[removed].max() <= norms[~removed].min()


def test_structured_conv_channels():
    conv = nn.Sequential(nn.Conv2d(3, 8, 3))
    prune.structured(conv, 0.5, dim=0, types=(nn.Conv2d,))
    per_channel = conv[0].weight_mask.flatten(1)
    assert (per_channel.amin(1) == per_channel.amax(1)).all()
    assert int((per_channel[:, 0] == 0).sum()) == 4


@pytest.mark.parametrize("dim", [0, 1])
def test_structured_shrink_equals_masking_and_removes_parameters(dim):
    model = mlp(hidden=40)
    prune.magnitude(model, 0.3, scope="layer")  # an existing mask is carried into the shrunk layers
    x = torch.randn(7, 16)
    masked = copy.deepcopy(model)
    # the pairs are (0, 2) and (2, 5): dim=0 never touches the classifier, dim=1 never the input
    prune.structured(masked, 0.5, dim=dim, exclude="5" if dim == 0 else "0")
    shrunk = prune.structured(model, 0.5, dim=dim, shrink=True)
    assert [lin.weight.shape for lin in linears(shrunk)] == [(20, 16), (12, 20), (8, 12)]
    assert sum(p.numel() for p in shrunk.parameters()) < sum(p.numel() for p in masked.parameters()) * 0.5
    assert torch.allclose(shrunk(x), masked(x), atol=1e-5)
    assert all(hasattr(lin, "weight_mask") for lin in linears(shrunk))
    # and it still trains as a normal model
    torch.optim.SGD(shrunk.parameters(), lr=0.1).zero_grad()
    shrunk.train()(x).sum().backward()


@pytest.mark.parametrize("act", [nn.Sigmoid, nn.ReLU])
def test_structured_shrink_equals_masking_without_a_first_bias(act):
    # A removed unit of a bias-free layer still emits act(0): 0.5 through a sigmoid, folded
    # into the next layer's bias (which a ReLU, emitting 0, leaves as it was: none here).
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 6, bias=False), act(), nn.Linear(6, 3, bias=False))
    masked = copy.deepcopy(model)
    prune.structured(masked, 0.5, dim=0, include="0")
    prune.structured(model, 0.5, dim=0, include="0", shrink=True)
    x = torch.randn(4, 8)
    assert model[0].out_features == 3
    torch.testing.assert_close(model(x), masked(x))
    assert (model[2].bias is None) == (act is nn.ReLU)


def test_structured_shrink_that_removes_every_unit_warns():
    model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))
    with pytest.warns(UserWarning, match="every unit between 0 and 2 is removed"):
        prune.structured(model, 0.99, dim=0, include="0", shrink=True)
    assert model[0].out_features == 0


def test_structured_shrink_needs_a_pair():
    with pytest.raises(ValueError, match="dim=0"):
        prune.structured(nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2)), 0.5, shrink=True)


# ---------------------------------------------------------------------------- taylor

def loss_fn(model, batch):
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


def test_taylor_scores_are_abs_weight_times_gradient_summed_over_batches():
    model = mlp()
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.randn(5, 16, generator=generator), torch.randint(0, 8, (5,), generator=generator))
               for _ in range(3)]
    scores = prune.taylor_scores(model, loss_fn, batches)
    expected = torch.zeros_like(model[2].weight)
    for batch in batches:
        model.zero_grad()
        loss_fn(model, batch).backward()
        expected += (model[2].weight * model[2].weight.grad).abs().detach()
    assert torch.allclose(scores["2"], expected, rtol=1e-5, atol=1e-8)
    model.zero_grad(set_to_none=True)
    prune.taylor(model, loss_fn, batches, 0.5)
    assert all(p.grad is None for p in model.parameters())  # .grad left alone
    assert prune.global_sparsity(model) == pytest.approx(0.5, abs=1e-3)
    with pytest.raises(ValueError, match="empty"):
        prune.taylor(mlp(), loss_fn, [], 0.5)


# ----------------------------------------------------------------------------- wanda

def test_wanda_scores_and_per_row_selection():
    model = mlp()
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randn(4, 3, 16, generator=generator) * torch.linspace(0.01, 10, 16) for _ in range(2)]
    scores = prune.wanda_scores(model, batches)
    x = torch.cat(batches).reshape(-1, 16)
    assert torch.allclose(scores["0"], model[0].weight.detach().abs() * x.norm(dim=0), rtol=1e-5)
    with torch.no_grad():
        hidden = model[1](model[0](x))
    assert torch.allclose(scores["2"], model[2].weight.detach().abs() * hidden.norm(dim=0), rtol=1e-4)
    prune.wanda(model, batches, 0.5)
    for lin in linears(model):
        assert (lin.weight_mask.sum(1) == lin.in_features // 2).all()  # compared per output row
    # large-norm inputs are kept far more often than small ones in the first layer
    kept = model[0].weight_mask.mean(0)
    assert kept[8:].mean() > 0.8 and kept[:8].mean() < 0.2, kept


class DictModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 8)

    def forward(self, inputs, scale):
        return self.proj(inputs * scale)


def test_wanda_dict_batches_and_nm():
    model = DictModel()
    batches = [{"inputs": torch.randn(3, 8), "scale": 2.0} for _ in range(2)]
    prune.wanda(model, batches, n=2, m=4)
    assert (model.proj.weight_mask.reshape(-1, 4).sum(1) == 2).all()


class Batch(Mapping):
    """A read-only mapping that is not a dict, like a tokenizer's output."""

    def __init__(self, **items):
        self.items_ = items

    def __getitem__(self, key):
        return self.items_[key]

    def __iter__(self):
        return iter(self.items_)

    def __len__(self):
        return len(self.items_)


@pytest.mark.parametrize("kind", [Batch, UserDict], ids=["Mapping", "UserDict"])
def test_wanda_accepts_any_mapping_batch(kind):
    model = DictModel()
    batches = [kind(inputs=torch.randn(3, 8), scale=2.0) for _ in range(2)]
    expected = prune.wanda_scores(model, [dict(batch) for batch in batches])["proj"]
    assert torch.equal(prune.wanda_scores(model, batches)["proj"], expected)
    prune.wanda(model, batches, 0.5)
    assert (model.proj.weight_mask.sum(1) == 4).all()


# ------------------------------------------------------------------------- L1 / threshold

def test_l1_penalty_and_threshold():
    model = mlp()
    expected = sum(lin.weight.abs().sum() for lin in linears(model))
    assert torch.allclose(prune.l1_penalty(model), expected)
    total = sum(lin.weight.numel() for lin in linears(model))
    assert torch.allclose(prune.l1_penalty(model, "mean"), expected / total)
    prune.l1_penalty(model).backward()
    assert model[0].weight.grad is not None
    weights = [lin.weight.detach().clone() for lin in linears(model)]
    prune.threshold(model, 0.05)
    for lin, weight in zip(linears(model), weights):
        assert torch.equal(lin.weight_mask == 0, weight.abs() <= 0.05)


# ------------------------------------------------------------------ sensitivity / allocate

def test_sensitivity_restores_the_model_and_prints():
    model = mlp()
    prune.magnitude(model, 0.2, include="2")
    state = copy.deepcopy(model.state_dict())
    x = torch.randn(20, 16)
    with torch.no_grad():
        reference = model(x)
        table = prune.sensitivity(model, lambda m: -float((m(x) - reference).square().mean()), (0.5, 0.9))
    assert set(model.state_dict()) == set(state)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert not hasattr(model[0], "weight_mask")
    assert table.baseline == 0.0
    assert all(len(v) == 2 for v in table.metric.values())
    assert all(a >= b for v in table.metric.values() for a, b in zip(v, v[1:]))  # more pruning, more error
    text = str(table)
    assert all(name in text for name in ("0", "2", "5", "50%", "90%", "params"))


def test_allocate_meets_target_and_spares_sensitive_layers():
    table = prune.SensitivityTable(
        sparsities=[0.5, 0.9], baseline=90.0,
        metric={"robust": [90.0, 89.5], "fragile": [80.0, 20.0], "middle": [89.0, 85.0]},
        params={"robust": 1000, "fragile": 1000, "middle": 2000})
    allocation = prune.allocate(table, 0.5)
    pruned = sum(table.params[k] * s for k, s in allocation.items())
    assert pruned == pytest.approx(0.5 * 4000)
    assert allocation["robust"] == pytest.approx(0.9)
    assert allocation["fragile"] == 0.0
    assert allocation["middle"] == pytest.approx(0.55)
    with pytest.raises(ValueError, match="0.95"):
        prune.allocate(table, 0.95)


def test_allocation_applies_per_layer():
    model = mlp()
    prune.magnitude(model, {"0": 0.25, "2": 0.5, "5": 0.125}, scope="layer")
    assert prune.layer_sparsity(model) == {"0": 0.25, "2": 0.5, "5": 0.125}


# -------------------------------------------------------------------------- schedule

def test_cubic_schedule_formula():
    assert prune.cubic_sparsity(0, 0.9, 0, 100) == 0.0
    assert prune.cubic_sparsity(100, 0.9, 0, 100) == pytest.approx(0.9)
    assert prune.cubic_sparsity(50, 0.9, 0, 100) == pytest.approx(0.9 * (1 - 0.5 ** 3))
    assert prune.cubic_sparsity(60, 0.8, 20, 120, 0.2) == pytest.approx(0.8 + (0.2 - 0.8) * 0.6 ** 3)
    assert prune.cubic_sparsity(500, 0.9, 0, 100) == pytest.approx(0.9)


def test_gradual_pruner_follows_the_schedule():
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    pruner = prune.GradualPruner(model, "magnitude", final_sparsity=0.8, start_step=2, end_step=12, frequency=3)
    applied, measured = {}, {}
    for step in range(1, 16):
        loss = model.train()(torch.randn(4, 16)).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        target = pruner.step()
        if target is not None:
            applied[step] = target
            measured[step] = prune.global_sparsity(model)
    assert list(applied) == [2, 5, 8, 11, 12]
    for step, target in applied.items():
        assert target == pytest.approx(prune.cubic_sparsity(step, 0.8, 2, 12))
        assert measured[step] == pytest.approx(target, abs=1e-3)
    assert prune.global_sparsity(model) == pytest.approx(0.8, abs=1e-3)


def test_gradual_pruner_with_a_callable_method():
    calls = []
    model = mlp()
    pruner = prune.GradualPruner(model, lambda m, sparsity: calls.append(sparsity), final_sparsity=0.5,
                                 start_step=0, end_step=4)
    for _ in range(6):
        pruner.step()
    assert calls == pytest.approx([prune.cubic_sparsity(t, 0.5, 0, 4) for t in range(1, 5)])
