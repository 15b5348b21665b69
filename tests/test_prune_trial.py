"""Defects found by a new-user trial of the pruning and training flows: checkpoint and
resume of gradual pruning, nn.MultiheadAttention's out_proj under masks, Taylor scores
of frozen weights, sensitivity with a non-finite metric, and arguments of the wrong type."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparsekern as sk
from sparsekern import prune


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))


def encoder_layer(seed: int = 0) -> nn.TransformerEncoderLayer:
    torch.manual_seed(seed)
    return nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)


def masks(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: buffer.clone() for name, buffer in model.named_buffers() if name.endswith("weight_mask")}


# ------------------------------------------------------------ gradual pruning checkpoints

def _train(model, optimizer, pruner, steps, data):
    """Gradient accumulation over two half batches per optimizer step, then the pruner."""
    for x, y in data[:steps]:
        optimizer.zero_grad()
        for half_x, half_y in zip(x.chunk(2), y.chunk(2)):
            (F.cross_entropy(model(half_x), half_y) / 2).backward()
        optimizer.step()
        pruner.step()


def test_gradual_pruning_resumes_from_a_checkpoint_to_the_same_masks_and_weights():
    generator = torch.Generator().manual_seed(1)
    data = [(torch.randn(32, 16, generator=generator), torch.randint(0, 8, (32,), generator=generator))
            for _ in range(12)]

    def setup(seed):  # the optimizer is built before anything is pruned, as in a plain loop
        model = mlp(seed)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        pruner = prune.GradualPruner(model, final_sparsity=0.8, end_step=8, frequency=2, scope="layer")
        return model, optimizer, pruner

    uninterrupted, optimizer, pruner = setup(0)
    _train(uninterrupted, optimizer, pruner, 12, data)
    assert prune.layer_sparsity(uninterrupted) == pytest.approx({"0": 0.8, "2": 0.8}, abs=1 / 256)

    model, optimizer, pruner = setup(0)
    _train(model, optimizer, pruner, 5, data)  # stop between two pruning steps
    checkpoint = copy.deepcopy({"model": model.state_dict(), "pruner": pruner.state_dict(),
                                "optimizer": optimizer.state_dict()})

    # A fresh process: another initialization; this time the optimizer is built after the
    # masks are back (its parameter order must not depend on that).
    fresh = mlp(seed=7)
    fresh_pruner = prune.GradualPruner(fresh, final_sparsity=0.8, end_step=8, frequency=2, scope="layer")
    fresh_pruner.load_state_dict(checkpoint["pruner"])
    fresh.load_state_dict(checkpoint["model"])
    fresh_optimizer = torch.optim.Adam(fresh.parameters(), lr=1e-2)
    fresh_optimizer.load_state_dict(checkpoint["optimizer"])
    assert fresh_pruner.step_count == 5
    _train(fresh, fresh_optimizer, fresh_pruner, 12, data[5:])

    assert masks(fresh).keys() == masks(uninterrupted).keys()
    for name, expected in masks(uninterrupted).items():
        assert torch.equal(masks(fresh)[name], expected), name
    for name, expected in uninterrupted.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[name], expected, msg=name)


def test_pruning_keeps_the_order_of_the_parameters():
    model = mlp()
    before = [id(p) for p in model.parameters()]
    prune.magnitude(model, 0.5)
    assert [id(p) for p in model.parameters()] == before
    assert [name for name, _ in model.named_parameters()] == ["0.weight_orig", "0.bias", "2.weight_orig", "2.bias"]
    prune.finalize(model)
    assert [name for name, _ in model.named_parameters()] == ["0.weight", "0.bias", "2.weight", "2.bias"]


def test_pruner_state_for_another_model_is_a_clear_error():
    state = {"step_count": 3, "sparsity": 0.5, "masks": {"encoder.0": torch.ones(32, 16, dtype=torch.bool)}}
    with pytest.raises(ValueError, match="encoder.0"):
        prune.GradualPruner(mlp(), final_sparsity=0.5, end_step=4).load_state_dict(state)
    with pytest.raises(ValueError, match="step_count"):
        prune.GradualPruner(mlp(), final_sparsity=0.5, end_step=4).load_state_dict({"masks": {}})


def test_gradual_pruner_checks_its_arguments_before_training():
    model = mlp()
    with pytest.raises(TypeError, match="scop"):  # was a TypeError first at start_step
        prune.GradualPruner(model, final_sparsity=0.5, end_step=4, scop="layer")
    with pytest.raises(TypeError, match="loss_fn"):
        prune.GradualPruner(model, "taylor", final_sparsity=0.5, end_step=4)
    with pytest.raises(TypeError, match="end_step"):  # t == 3.5 never held: no final prune
        prune.GradualPruner(model, final_sparsity=0.5, end_step=3.5)
    with pytest.raises(ValueError, match="initial_sparsity"):  # masks only grow
        prune.GradualPruner(model, final_sparsity=0.5, initial_sparsity=0.8, end_step=4)
    pruner = prune.GradualPruner(model, "structured", final_sparsity=0.5, end_step=2, exclude="2")
    pruner.step(), pruner.step()
    assert prune.layer_sparsity(model)["0"] == 0.5


# ------------------------------------------------------- nn.MultiheadAttention's out_proj

def test_attention_out_proj_trains_after_pruning():
    layer = encoder_layer()
    prune.magnitude(layer, 0.5, scope="layer")
    out_proj = layer.self_attn.out_proj
    before = out_proj.weight_orig.detach().clone()
    optimizer = torch.optim.Adam(layer.parameters(), lr=1e-2)
    x = torch.randn(2, 5, 16)
    for _ in range(2):
        optimizer.zero_grad()
        layer(x).pow(3).sum().backward()
        optimizer.step()
    assert out_proj.weight_orig.grad is not None  # was None: out_proj.weight had no graph
    assert not torch.equal(out_proj.weight_orig, before)
    assert not out_proj.weight_orig[out_proj.weight_mask == 0].any()


def test_load_state_dict_into_a_pruned_model_updates_what_attention_reads():
    layer = encoder_layer().eval()
    prune.magnitude(layer, 0.5, scope="layer")
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        expected = layer(x)  # the fused encoder path reads out_proj.weight itself
    fresh = encoder_layer(seed=1).eval()
    prune.magnitude(fresh, 0.0, scope="layer")
    fresh.load_state_dict(layer.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), expected)


# --------------------------------------------------------------------------------- taylor

def _loss(model, batch):
    return F.cross_entropy(model(batch[0]), batch[1])


def test_taylor_scores_frozen_weights_and_runs_under_no_grad():
    batches = [(torch.randn(32, 16), torch.randint(0, 8, (32,)))]
    expected = prune.taylor_scores(mlp(), _loss, batches)
    model = mlp().requires_grad_(False)  # a frozen model; was "does not require grad"
    with torch.no_grad():
        scores = prune.taylor_scores(model, _loss, batches)
    for name in expected:
        torch.testing.assert_close(scores[name], expected[name])
    assert not any(p.requires_grad for p in model.parameters())


def test_taylor_loss_that_autograd_cannot_use_is_a_clear_error():
    x = torch.randn(8, 16)
    with pytest.raises(ValueError, match=r"loss_fn returned \(8, 8\)"):
        prune.taylor(mlp(), lambda model, batch: model(batch), [x], 0.5)
    with pytest.raises(ValueError, match="no gradient"):
        prune.taylor(mlp(), lambda model, batch: model(batch).sum().detach(), [x], 0.5)


def test_taylor_warns_about_layers_the_loss_does_not_reach():
    model = mlp()
    with pytest.warns(UserWarning, match=r"does not depend on 1 layer\(s\) \(2\)"):
        prune.taylor(model, lambda model, batch: model[0](batch).square().mean(), [torch.randn(8, 16)], 0.5)


# ---------------------------------------------------------------------------- sensitivity

def test_sensitivity_refuses_a_non_finite_metric():
    """A NaN ranked as "no loss" (comparisons with NaN are False), so allocate pruned the
    diverged layer most."""
    x = torch.randn(8, 16)

    @torch.no_grad()
    def eval_fn(model):
        return float("nan") if (model[2].weight == 0).float().mean() > 0.8 else float(model(x).square().mean())

    with pytest.raises(ValueError, match="eval_fn returned nan for 2 at sparsity 0.9"):
        prune.sensitivity(mlp(), eval_fn, (0.5, 0.9), higher_is_better=False)


# --------------------------------------------------------------- arguments of wrong types

def test_arguments_of_the_wrong_type_are_named():
    model = mlp()
    with pytest.raises(TypeError, match="model is of type OrderedDict .a state_dict"):
        prune.magnitude(model.state_dict(), 0.5)
    with pytest.raises(TypeError, match="include = 3"):
        prune.magnitude(model, 0.5, include=3)
    with pytest.raises(TypeError, match="exclude = <generator"):  # used up by the first module it met
        prune.l1_penalty(model, exclude=(name for name in ["0"]))
    with pytest.raises(TypeError, match="types = "):
        prune.structured(model, 0.5, types=[nn.Linear])
    with pytest.raises(ValueError, match="init_keep = '0.5'"):
        prune.l0_gates(model, init_keep="0.5")
    assert prune.layer_sparsity(model, types=nn.Linear) == {"0": 0.0, "2": 0.0}  # one class is fine


def test_numpy_numbers_are_fractions():
    model = prune.magnitude(mlp(), np.float32(0.5), scope="layer")
    assert prune.layer_sparsity(model) == {"0": 0.5, "2": 0.5}


def test_pruning_a_partly_packed_model_names_the_packed_layers():
    """The packed layer was skipped silently: magnitude(model, 0.8) then left the model
    far below 80% while global_sparsity (nn.Linear only) said 80%."""
    model = mlp()
    sk.sparsify(model, format="csr", include="2")
    with pytest.warns(UserWarning, match=r"1 SparseLinear layer\(s\) are already packed.*first: '2'\); they are not"):
        prune.magnitude(model, 0.8)
