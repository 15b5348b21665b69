"""Argument checks: every bad argument is a ValueError whose message carries the value."""
import re

import pytest
import torch
from torch import nn

from sparsekern import prune


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def loss_fn(model, batch):
    return model(batch).sum()


BATCHES = [torch.randn(2, 8)]


def raises_with(value):
    return pytest.raises(ValueError, match=re.escape(repr(value)))


@pytest.mark.parametrize("sparsity", [-0.1, 1.0, 1.5, "0.5", True, None])
@pytest.mark.parametrize("method", [
    lambda model, s: prune.magnitude(model, s),
    lambda model, s: prune.magnitude(model, s, scope="layer"),
    lambda model, s: prune.random(model, s, seed=0),
    lambda model, s: prune.taylor(model, loss_fn, BATCHES, s),
    lambda model, s: prune.wanda(model, BATCHES, s),
    lambda model, s: prune.structured(model, s),
], ids=["magnitude", "magnitude_layer", "random", "taylor", "wanda", "structured"])
def test_sparsity_outside_unit_interval(method, sparsity):
    model = mlp()
    with raises_with(sparsity):
        method(model, sparsity)
    assert not any(hasattr(m, "weight_mask") for m in model.modules())


def test_per_layer_sparsity_value_checked():
    with raises_with(1.2):
        prune.magnitude(mlp(), {"0": 1.2}, scope="layer")
    with pytest.raises(ValueError, match="scope='global'"):
        prune.magnitude(mlp(), {"0": 0.5})


@pytest.mark.parametrize("scope", ["globl", "", None])
def test_unknown_scope(scope):
    with raises_with(scope):
        prune.magnitude(mlp(), 0.5, scope=scope)
    with raises_with(scope):
        prune.taylor(mlp(), loss_fn, BATCHES, 0.5, scope=scope)


@pytest.mark.parametrize("n,m", [(3, 2), (0, 4), (2, 0), (2.0, 4), (-1, 4)])
def test_nm_bad_n_m(n, m):
    with pytest.raises(ValueError, match=re.escape(f"n = {n!r}, m = {m!r}")):
        prune.nm(mlp(), n, m)


def test_nm_in_features_not_multiple_of_m():
    with pytest.raises(ValueError, match="in_features = 8 is not a multiple of m = 3"):
        prune.nm(mlp(), 1, 3)


@pytest.mark.parametrize("call", [
    lambda model: prune.magnitude(model, 0.5),
    lambda model: prune.random(model, 0.5),
    lambda model: prune.nm(model),
    lambda model: prune.structured(model, 0.5),
    lambda model: prune.taylor(model, loss_fn, BATCHES, 0.5),
    lambda model: prune.wanda(model, BATCHES, 0.5),
    lambda model: prune.sensitivity(model, lambda m: 0.0),
    lambda model: prune.l1_penalty(model),
    lambda model: prune.threshold(model, 0.1),
    lambda model: prune.l0_gates(model),
    lambda model: prune.layer_sparsity(model),
], ids=["magnitude", "random", "nm", "structured", "taylor", "wanda", "sensitivity", "l1", "threshold", "l0",
        "layer_sparsity"])
def test_model_without_linear(call):
    with pytest.raises(ValueError, match="no prunable module .*Sequential"):
        call(nn.Sequential(nn.ReLU(), nn.Conv2d(1, 1, 1)))


def test_structured_bad_arguments():
    for kwargs, value in [({"dim": 2}, 2), ({"norm": 3}, 3), ({"norm": "fro"}, "fro")]:
        with raises_with(value):
            prune.structured(mlp(), 0.5, **kwargs)
    with raises_with(1.0):
        prune.structured(mlp(), 1.0)


def test_wanda_needs_sparsity_or_n_m():
    with pytest.raises(ValueError, match="sparsity=None, n=None, m=None"):
        prune.wanda(mlp(), BATCHES)
    with pytest.raises(ValueError, match="sparsity=0.5, n=2, m=4"):
        prune.wanda(mlp(), BATCHES, 0.5, n=2, m=4)
    with pytest.raises(ValueError, match="n=2, m=None"):
        prune.wanda(mlp(), BATCHES, n=2)
    with pytest.raises(ValueError, match="empty"):
        prune.wanda(mlp(), [], 0.5)


def test_random_seed_and_generator_together():
    with raises_with(3):
        prune.random(mlp(), 0.5, seed=3, generator=torch.Generator())


def test_threshold_and_penalty_arguments():
    with raises_with(-0.1):
        prune.threshold(mlp(), -0.1)
    with raises_with("avg"):
        prune.l1_penalty(mlp(), "avg")
    with pytest.raises(ValueError, match="no L0 gates"):
        prune.l0_penalty(mlp())
    with pytest.raises(ValueError, match="no L0 gates"):
        prune.l0_masks(mlp())
    with raises_with("channel"):
        prune.l0_gates(mlp(), per="channel")
    with raises_with(1.0):
        prune.l0_gates(mlp(), init_keep=1.0)


def test_gradual_pruner_arguments():
    with raises_with("l2"):
        prune.GradualPruner(mlp(), "l2", final_sparsity=0.5, end_step=10)
    with raises_with(1.0):
        prune.GradualPruner(mlp(), final_sparsity=1.0, end_step=10)
    with pytest.raises(ValueError, match="start_step = 10, end_step = 10"):
        prune.GradualPruner(mlp(), final_sparsity=0.5, start_step=10, end_step=10)
    with raises_with(0):
        prune.GradualPruner(mlp(), final_sparsity=0.5, end_step=10, frequency=0)


def test_sensitivity_and_allocate_arguments():
    with pytest.raises(ValueError, match=re.escape("[0.9, 0.5]")):
        prune.sensitivity(mlp(), lambda m: 0.0, [0.9, 0.5])
    with raises_with(1.0):
        prune.sensitivity(mlp(), lambda m: 0.0, [0.5, 1.0])
    table = prune.sensitivity(mlp(), lambda m: 0.0, [0.5])
    with raises_with(-0.5):
        prune.allocate(table, -0.5)


def test_score_shape_checked():
    with pytest.raises(ValueError, match=re.escape("(3, 3)")):
        prune.nm(mlp(), 2, 4, scores={"0": torch.ones(3, 3), "2": torch.ones(4, 16)})
