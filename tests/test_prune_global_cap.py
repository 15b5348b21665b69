"""scope="global" never empties a layer: max_layer_sparsity caps each layer and the rest of
the budget comes from the others; any method that leaves a layer with no weight warns."""
import re

import pytest
import torch
from torch import nn

from sparsekern import prune


def small_second_layer():
    """Two layers whose second has ~100x smaller weights: a global ranking at 90% would
    take every one of them."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 64))
    with torch.no_grad():
        model[2].weight.mul_(0.01)
    return model


def loss_fn(model, batch):
    return model(batch).square().sum()


def test_global_scope_caps_each_layer_and_still_meets_the_target():
    model = prune.magnitude(small_second_layer(), 0.9)
    assert prune.layer_sparsity(model)["2"] == 16220 / 16384  # floor(0.99 * 16384) weights
    assert prune.global_sparsity(model) == round(0.9 * 2 * 16384) / (2 * 16384)


GLOBAL_METHODS = {
    "magnitude": lambda model, s, **kw: prune.magnitude(model, s, **kw),
    "random": lambda model, s, **kw: prune.random(model, s, seed=0, **kw),
    "taylor": lambda model, s, **kw: prune.taylor(model, loss_fn, [torch.randn(4, 10)], s, **kw),
}


@pytest.mark.parametrize("method", GLOBAL_METHODS.values(), ids=GLOBAL_METHODS.keys())
def test_every_global_method_takes_the_cap(method):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 100), nn.ReLU(), nn.Linear(100, 10))
    # a cap equal to the target leaves one way to meet it: every layer exactly at the cap
    method(model, 0.9, max_layer_sparsity=0.9)
    assert prune.layer_sparsity(model) == pytest.approx({"0": 0.9, "2": 0.9}, abs=1e-6)


def test_capped_budget_goes_to_the_lowest_scores_of_the_other_layers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32), nn.Linear(32, 32), nn.Linear(32, 32))
    with torch.no_grad():
        model[0].weight.mul_(0.001)
    weights = {name: layer.weight.detach().abs().clone() for name, layer in model.named_children()}
    prune.magnitude(model, 0.5, max_layer_sparsity=0.75)
    assert int((model[0].weight_mask == 0).sum()) == 768  # capped at 0.75 * 1024
    assert prune.global_sparsity(model) == 0.5
    # the two other layers are ranked together: every weight they drop is below every one they keep
    dropped = torch.cat([weights[n][model[int(n)].weight_mask == 0] for n in ("1", "2")])
    kept = torch.cat([weights[n][model[int(n)].weight_mask == 1] for n in ("1", "2")])
    assert dropped.max() <= kept.min()


def test_no_cap_reproduces_the_plain_global_ranking_and_warns_about_the_empty_layer():
    with pytest.warns(UserWarning, match=re.escape("2 is now 100% sparse: every weight is pruned, so it outputs "
                                                   "only its bias")):
        model = prune.magnitude(small_second_layer(), 0.9, max_layer_sparsity=1.0)
    assert prune.layer_sparsity(model)["2"] == 1.0


def test_existing_masks_above_the_cap_stay_and_count():
    model = small_second_layer()
    prune.magnitude(model, {"2": 0.995}, scope="layer")
    prune.magnitude(model, 0.9)
    assert prune.layer_sparsity(model)["2"] == round(0.995 * 16384) / 16384  # never revived
    assert prune.global_sparsity(model) == round(0.9 * 2 * 16384) / (2 * 16384)


def test_unreachable_target_is_an_error_before_any_change():
    model = small_second_layer()
    with pytest.raises(ValueError, match=re.escape("sparsity = 0.8 cannot be reached with max_layer_sparsity = 0.5")):
        prune.magnitude(model, 0.8, max_layer_sparsity=0.5)
    assert not hasattr(model[0], "weight_mask")


@pytest.mark.parametrize("cap", [0, 0.0, 1.5, -0.1, True, "0.9", None])
def test_bad_cap(cap):
    with pytest.raises(ValueError, match=re.escape(f"max_layer_sparsity = {cap!r}")):
        prune.magnitude(small_second_layer(), 0.5, max_layer_sparsity=cap)


EMPTYING = {
    "layer_scope": lambda model: prune.magnitude(model, 0.9, scope="layer"),  # round(0.9 * 2) = 2 of 2
    "row_scope": lambda model: prune.magnitude(model, 0.9, scope="row"),
    "threshold": lambda model: prune.threshold(model, 100.0),
    "structured": lambda model: prune.structured(model, 0.9),
}


@pytest.mark.parametrize("method", EMPTYING.values(), ids=EMPTYING.keys())
def test_any_method_warns_when_a_layer_is_emptied(method):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 1, bias=False))
    with pytest.warns(UserWarning, match=re.escape("0 is now 100% sparse") + ".*outputs zeros whatever its input"):
        method(model)
    assert prune.layer_sparsity(model) == {"0": 1.0}
