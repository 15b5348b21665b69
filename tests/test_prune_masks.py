"""Mask plumbing: the torch.nn.utils.prune convention, combining, optimizer enforcement,
interop with torch.nn.utils.prune, selection, finalize."""
import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

import sparsekern
from sparsekern import prune


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 8))


def zeros(module):
    return module.weight_mask == 0


def linears(model):
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def test_convention_is_torch_prune_reparametrization():
    model = mlp()
    before = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    prune.magnitude(model, 0.7)
    assert torch_prune.is_pruned(model)
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        assert isinstance(module.weight_orig, nn.Parameter)
        assert "weight_mask" in dict(module.named_buffers())
        assert "weight" not in dict(module.named_parameters(recurse=False))
        mask = module.weight_mask
        assert mask.shape == module.weight_orig.shape and mask.dtype == module.weight_orig.dtype
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
        assert torch.equal(module.weight, module.weight_orig * mask)
        # pruned values are gone from weight_orig too; kept ones untouched
        assert (module.weight_orig[mask == 0] == 0).all()
        assert torch.equal(module.weight_orig[mask == 1], before[name][mask == 1])
        hooks = [h for h in module._forward_pre_hooks.values() if isinstance(h, torch_prune.BasePruningMethod)]
        assert len(hooks) == 1


def test_global_scope_prunes_exact_count_of_smallest():
    model = mlp()
    original = {id(m): m.weight.detach().abs().clone() for m in linears(model)}
    prune.magnitude(model, 0.7)
    total = sum(m.weight.numel() for m in linears(model))
    assert sum(int(zeros(m).sum()) for m in linears(model)) == round(0.7 * total)
    largest_pruned = max(float(original[id(m)][zeros(m)].max()) for m in linears(model))
    smallest_kept = min(float(original[id(m)][~zeros(m)].min()) for m in linears(model))
    assert largest_pruned <= smallest_kept
    # global ranking: layers end up with different sparsities
    assert len(set(prune.layer_sparsity(model).values())) > 1


def test_layer_and_row_scope_give_each_group_the_same_fraction():
    model = mlp()
    prune.magnitude(model, 0.5, scope="layer")
    for m in linears(model):
        assert int(zeros(m).sum()) == round(0.5 * m.weight.numel())
    model = mlp()
    prune.magnitude(model, 0.25, scope="row")
    for m in linears(model):
        assert (zeros(m).sum(1) == round(0.25 * m.in_features)).all()


def test_per_layer_dict_sparsity():
    model = mlp()
    prune.magnitude(model, {"0": 0.5, "4": 0.75}, scope="layer")
    sparsity = prune.layer_sparsity(model)
    assert sparsity["0"] == pytest.approx(0.5) and sparsity["4"] == pytest.approx(0.75)
    assert sparsity["2"] == 0.0
    with pytest.raises(ValueError, match="'9'"):
        prune.magnitude(model, {"9": 0.5}, scope="layer")


@pytest.mark.parametrize("second", ["magnitude_lower", "random", "nm", "structured", "threshold"])
def test_repruning_never_revives(second):
    model = mlp()
    prune.magnitude(model, 0.6)
    first = {id(m): zeros(m).clone() for m in linears(model)}
    if second == "magnitude_lower":
        prune.magnitude(model, 0.2, scope="layer")
    elif second == "random":
        prune.random(model, 0.5, seed=3)
    elif second == "nm":
        prune.nm(model, 2, 4)
    elif second == "structured":
        prune.structured(model, 0.25)
    else:
        prune.threshold(model, 0.05)
    for m in linears(model):
        assert (zeros(m) | ~first[id(m)]).all(), "a pruned weight came back"
        assert (m.weight_orig[zeros(m)] == 0).all()
        assert torch.equal(m.weight, m.weight_orig * m.weight_mask)


def test_magnitude_on_a_pruned_model_counts_existing_zeros():
    model = mlp()
    prune.magnitude(model, 0.5)
    prune.magnitude(model, 0.8)
    assert prune.global_sparsity(model) == pytest.approx(0.8, abs=1e-3)


def test_torch_prune_mask_is_honoured_and_combined():
    model = mlp()
    torch_prune.random_unstructured(model[0], "weight", amount=0.4)
    torch_mask = model[0].weight_mask.clone()
    prune.magnitude(model, 0.5, scope="layer")
    mask = model[0].weight_mask
    assert ((mask == 0) | (torch_mask == 1)).all()  # torch's zeros kept
    assert int((mask == 0).sum()) == round(0.5 * mask.numel())
    # still one torch pruning hook, computing weight from the combined mask
    x = torch.randn(3, 16)
    assert torch.allclose(model[0](x), x @ (model[0].weight_orig * mask).T + model[0].bias)
    # torch.nn.utils.prune applied on top of ours combines too, and torch's remove works
    ours = mask.clone()
    torch_prune.l1_unstructured(model[0], "weight", amount=10)
    assert ((model[0].weight_mask == 0) | (ours == 1)).all()
    assert int((model[0].weight_mask == 0).sum()) == int((ours == 0).sum()) + 10
    torch_prune.remove(model[0], "weight")
    assert int((model[0].weight == 0).sum()) >= int((ours == 0).sum()) + 10


def _train_steps(model, optimizer, steps=5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(8, 16, generator=generator)
        loss = model(x).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


OPTIMIZERS = {
    "sgd_momentum_wd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-2),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
}


@pytest.mark.parametrize("make_optimizer", OPTIMIZERS.values(), ids=OPTIMIZERS.keys())
def test_mask_survives_optimizer_steps(make_optimizer):
    model = mlp()
    # The optimizer exists before pruning and has momentum / Adam state everywhere,
    # which would move pruned entries of weight_orig if nothing re-zeroed them.
    optimizer = make_optimizer(model.parameters())
    _train_steps(model, optimizer)
    prune.magnitude(model, 0.8)
    masks = {id(m): m.weight_mask.clone() for m in linears(model)}
    _train_steps(model, optimizer, seed=1)
    for m in linears(model):
        assert torch.equal(m.weight_mask, masks[id(m)])
        assert (m.weight_orig[m.weight_mask == 0] == 0).all()
        assert torch.equal(m.weight.detach(), (m.weight_orig * m.weight_mask).detach())  # not stale
        assert (m.weight_orig[m.weight_mask == 1] != 0).all()
    assert prune.global_sparsity(model) == pytest.approx(0.8, abs=1e-3)
    # and the weights still train
    before = {id(m): m.weight_orig.detach().clone() for m in linears(model)}
    _train_steps(model, optimizer, seed=2)
    assert any(not torch.equal(before[id(m)], m.weight_orig) for m in linears(model))


def test_mask_enforced_on_a_deep_copy():
    model = mlp()
    optimizer = OPTIMIZERS["sgd_momentum_wd"](model.parameters())
    _train_steps(model, optimizer)  # momentum everywhere
    prune.magnitude(model, 0.8)
    clone, clone_optimizer = copy.deepcopy((model, optimizer))
    prune.finalize(model)  # the original's bookkeeping is independent of the copy's
    _train_steps(clone, clone_optimizer, seed=1)
    for m in linears(clone):
        assert (m.weight_orig[m.weight_mask == 0] == 0).all()
        assert torch.equal(m.weight.detach(), (m.weight_orig * m.weight_mask).detach())
    assert prune.global_sparsity(clone) == pytest.approx(0.8, abs=1e-3)


def test_without_enforcement_momentum_would_move_pruned_entries():
    """Control for the test above: a mask made by torch.nn.utils.prune alone is not
    re-zeroed, so weight_orig drifts at pruned positions; that is what we prevent."""
    model = mlp()
    optimizer = OPTIMIZERS["sgd_momentum_wd"](model.parameters())
    _train_steps(model, optimizer)
    torch_prune.l1_unstructured(model[2], "weight", amount=0.8)
    _train_steps(model, optimizer, seed=1)
    assert (model[2].weight_orig[model[2].weight_mask == 0] != 0).any()


def test_finalize_bakes_masks_and_drops_bookkeeping():
    model = mlp()
    prune.magnitude(model, 0.75)
    torch_prune.random_unstructured(model[2], "weight", amount=0.1)  # a torch container too
    x = torch.randn(5, 16)
    expected = model(x)
    sparsity = prune.layer_sparsity(model)
    assert prune.finalize(model) is model
    assert not torch_prune.is_pruned(model)
    for m in linears(model):
        assert isinstance(m.weight, nn.Parameter)
        assert not hasattr(m, "weight_orig") and not hasattr(m, "weight_mask")
        assert not m._forward_pre_hooks
    assert set(model.state_dict()) == set(mlp().state_dict())
    assert torch.allclose(model(x), expected)
    assert prune.layer_sparsity(model) == sparsity


def test_include_exclude_and_types():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8, 4), nn.Linear(4, 2))
    prune.magnitude(model, 0.5, include="2")
    assert hasattr(model[2], "weight_mask") and not hasattr(model[3], "weight_mask")
    prune.magnitude(model, 0.5, exclude=["2", "0"])
    assert hasattr(model[3], "weight_mask")
    prune.magnitude(model, 0.5, scope="layer", types=(nn.Conv2d,))
    assert int((model[0].weight_mask == 0).sum()) == round(0.5 * model[0].weight.numel())
    model = mlp()
    prune.random(model, 0.5, seed=0, include=lambda name, m: m.out_features == 8)
    assert [hasattr(m, "weight_mask") for m in linears(model)] == [False, False, True]
    with pytest.raises(ValueError, match="exclude='\\*'"):
        prune.magnitude(model, 0.5, exclude="*")


def test_random_is_reproducible_and_uniform():
    a, b, c = mlp(), mlp(), mlp()
    prune.random(a, 0.5, seed=7)
    prune.random(b, 0.5, generator=torch.Generator().manual_seed(7))
    prune.random(c, 0.5, seed=8)
    assert torch.equal(a[2].weight_mask, b[2].weight_mask)
    assert not torch.equal(a[2].weight_mask, c[2].weight_mask)
    # random ignores magnitude: the kept set is not the largest weights
    d = mlp()
    prune.magnitude(d, 0.5)
    assert not torch.equal(a[2].weight_mask, d[2].weight_mask)


def test_sparse_linear_from_dense_reads_our_mask_after_training():
    model = mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    prune.magnitude(model, 0.8)
    _train_steps(model, optimizer)
    layer = sparsekern.SparseLinear.from_dense(model[2], format="csr")
    assert layer.nnz == int(model[2].weight_mask.sum())
    assert torch.equal(layer.to_dense().weight.detach(), (model[2].weight_orig * model[2].weight_mask).detach())
    x = torch.randn(4, 32)
    assert torch.allclose(layer(x), model[2](x), atol=1e-5)


def test_sparsity_reports():
    model = mlp()
    prune.magnitude(model, 0.5, scope="layer")
    assert prune.layer_sparsity(model) == {"0": 0.5, "2": 0.5, "4": 0.5}
    assert prune.global_sparsity(model) == pytest.approx(0.5, abs=1e-3)
    copy_ = copy.deepcopy(model)  # deep copies keep working masks
    assert prune.layer_sparsity(copy_) == prune.layer_sparsity(model)


def test_sparsity_reports_of_layers_without_weights():
    # A new-user trial (sparsekern demo --hidden 0): global_sparsity raised ZeroDivisionError and
    # layer_sparsity said NaN for layers with a zero dimension; SparseLinear.sparsity says 0.0.
    empty = nn.Sequential(nn.Linear(4, 0), nn.ReLU(), nn.Linear(0, 3))
    assert prune.layer_sparsity(empty) == {"0": 0.0, "2": 0.0}
    assert prune.global_sparsity(empty) == 0.0
    assert sparsekern.SparseLinear.from_dense(empty[0]).sparsity == 0.0
    mixed = nn.Sequential(nn.Linear(4, 0), nn.Linear(4, 4))
    with torch.no_grad():
        mixed[1].weight[0] = 0
    assert prune.layer_sparsity(mixed) == {"0": 0.0, "1": 0.25}
    assert prune.global_sparsity(mixed) == 0.25
