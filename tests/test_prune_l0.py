"""L0 regularization with hard-concrete gates (Louizos et al. 2018)."""
import math

import pytest
import torch
from torch import nn

from prune_fixtures import dense_accuracy, dense_model, digits, evaluate
from sparsekern import prune
from sparsekern.tools.training import train


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def test_gate_math():
    model = mlp()
    weight = model[0].weight.detach().clone()
    (log_alpha, _) = prune.l0_gates(model, init_keep=0.8)
    gate = model[0].parametrizations.weight[0]
    assert gate.log_alpha is log_alpha and log_alpha.shape == weight.shape
    assert torch.allclose(log_alpha, torch.full_like(weight, math.log(0.8 / 0.2)))
    with torch.no_grad():
        log_alpha.normal_(0, 3)
    # eval mode: the deterministic test-time estimator
    model.eval()
    z_hat = (torch.sigmoid(log_alpha) * (prune.ZETA - prune.GAMMA) + prune.GAMMA).clamp(0, 1)
    assert torch.allclose(model[0].weight, weight * z_hat)
    assert (z_hat == 0).any() and (z_hat == 1).any()  # the stretch reaches exact 0 and 1
    # train mode: stochastic gates in [0, 1], exact zeros and ones occur
    model.train()
    torch.manual_seed(0)
    z = model[0].weight / weight
    assert not torch.allclose(z, z_hat)
    assert (z >= 0).all() and (z <= 1 + 1e-6).all()
    assert (z == 0).any()
    # expected L0: P(z != 0) = sigmoid(log_alpha - beta log(-gamma / zeta)), summed
    p_open = torch.sigmoid(log_alpha - prune.BETA * math.log(-prune.GAMMA / prune.ZETA))
    second = model[2].parametrizations.weight[0].log_alpha
    p_second = torch.sigmoid(second - prune.BETA * math.log(-prune.GAMMA / prune.ZETA))
    expected = p_open.sum() + p_second.sum()
    assert torch.allclose(prune.l0_penalty(model), expected)
    assert torch.allclose(prune.l0_penalty(model, "mean"), expected / (8 * 16 + 16 * 4))
    # a Monte Carlo check that the penalty is the expected count of open gates
    with torch.no_grad():
        count = sum(int((model[0].weight != 0).sum()) for _ in range(400)) / 400
    assert count == pytest.approx(p_open.sum().item(), rel=0.03)  # std of the mean is ~0.5%


def test_l0_masks_equal_the_test_time_estimator_and_remove_gates():
    model = mlp()
    prune.l0_gates(model)
    with torch.no_grad():
        for gate in (m for m in model.modules() if isinstance(m, prune.HardConcreteGate)):
            gate.log_alpha.normal_(0, 3)
    x = torch.randn(5, 8)
    expected = model.eval()(x)
    prune.l0_masks(model)
    assert not any(isinstance(m, prune.HardConcreteGate) for m in model.modules())
    assert not hasattr(model[0], "parametrizations")
    assert isinstance(model[0].weight_orig, nn.Parameter) and hasattr(model[0], "weight_mask")
    assert torch.allclose(model(x), expected, atol=1e-6)
    assert 0 < prune.global_sparsity(model) < 1


def test_neuron_gates_and_existing_mask():
    model = mlp()
    prune.magnitude(model, 0.3, scope="layer")
    old = model[2].weight_mask.clone()
    gates = prune.l0_gates(model, per="neuron")
    assert gates[0].shape == (16, 1) and gates[1].shape == (4, 1)
    # each neuron gate controls in_features weights
    shift = prune.BETA * math.log(-prune.GAMMA / prune.ZETA)
    expected = sum(torch.sigmoid(g - shift).sum() * fan_in for g, fan_in in zip(gates, (8, 16)))
    assert torch.allclose(prune.l0_penalty(model), expected)
    with torch.no_grad():
        gates[0][:5] = -10.0  # close five neurons of the first layer
    prune.finalize(model)  # finalize turns gates into masks first, then bakes them
    assert (model[0].weight[:5] == 0).all() and (model[0].weight[5:] != 0).any()
    assert ((model[2].weight == 0) | (old == 1)).all()  # the earlier mask survived the gates


def test_l0_training_reaches_80_percent_sparsity_on_digits():
    data = digits()
    model = dense_model()
    gates = prune.l0_gates(model, init_keep=0.9)
    gate_ids = {id(g) for g in gates}
    weights = [p for p in model.parameters() if id(p) not in gate_ids]
    # the user's loop, plus the penalty: nothing else changes
    train(model, data.x_train, data.y_train, 15, penalty=lambda m: 2.0 * prune.l0_penalty(m, "mean"),
          param_groups=[{"params": weights}, {"params": gates, "lr": 0.1}])
    gated_accuracy = evaluate(model)
    prune.l0_masks(model)
    accuracy, sparsity = evaluate(model), prune.global_sparsity(model)
    print(f"\nL0: dense {dense_accuracy():.2f}%  ->  {accuracy:.2f}% at {sparsity:.1%} sparsity")
    assert accuracy == gated_accuracy
    assert sparsity >= 0.80
    assert accuracy >= dense_accuracy() - 1.5
