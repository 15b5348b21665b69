"""Sparsity learned during training with L0 regularization: hard-concrete gates on the
weights (Louizos et al. 2018), then masks from the gates' test-time estimator.

nn.Linear (and ``types``) only: transformers' Conv1D layers (GPT-2) are left as they
are, named in a warning; magnitude, random, nm, wanda and sparsegpt prune them.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parametrize

from ._masks import REDUCTIONS, apply_mask, check_choice, is_real, unmask
from ._select import Selector, prunable

# Hard-concrete stretch interval (gamma, zeta) and temperature beta, as in the paper.
GAMMA, ZETA, BETA = -0.1, 1.1, 2.0 / 3.0


class HardConcreteGate(nn.Module):
    """Parametrization weight -> weight * z with z ~ HardConcrete(log_alpha) while
    training and the deterministic test-time estimator in eval mode (Louizos et al.
    2018, "Learning Sparse Neural Networks through L0 Regularization").
    ``log_alpha`` has the weight's shape (per-weight gates) or [out, 1, ...] (neuron
    gates); ``fixed_mask`` is a mask the weight had before gating, kept enforced."""

    def __init__(self, weight: torch.Tensor, per: str, init_keep: float, fixed_mask: torch.Tensor | None):
        super().__init__()
        shape = weight.shape if per == "weight" else (weight.shape[0],) + (1,) * (weight.dim() - 1)
        init = math.log(init_keep / (1.0 - init_keep))
        self.log_alpha = nn.Parameter(torch.full(shape, init, device=weight.device, dtype=torch.float32))
        self.register_buffer("fixed_mask", fixed_mask)
        self.weights_per_gate = weight.numel() // self.log_alpha.numel()

    def deterministic(self) -> torch.Tensor:
        return (torch.sigmoid(self.log_alpha) * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.training:
            u = torch.rand_like(self.log_alpha).clamp(1e-6, 1.0 - 1e-6)
            s = torch.sigmoid((u.log() - (-u).log1p() + self.log_alpha) / BETA)
            z = (s * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)
        else:
            z = self.deterministic()
        gated = weight * z.to(weight.dtype)
        return gated if self.fixed_mask is None else gated * self.fixed_mask

    def expected_l0(self) -> torch.Tensor:
        """Expected number of nonzero weights: P(z != 0) summed, times weights per gate."""
        p_open = torch.sigmoid(self.log_alpha - BETA * math.log(-GAMMA / ZETA))
        return p_open.sum() * self.weights_per_gate


def l0_gates(model: nn.Module, per: str = "weight", init_keep: float = 0.9, *, include: Selector = None,
             exclude: Selector = None, types: tuple[type, ...] = (nn.Linear,),
             prune_tied: bool = False) -> list[nn.Parameter]:
    """Attach hard-concrete gates (Louizos et al. 2018) to every selected weight, as a
    ``torch.nn.utils.parametrize`` parametrization: the forward pass and the user's loop
    are unchanged except for adding ``lam * l0_penalty(model)`` to the loss. Build the
    optimizer after this call (the gates are new parameters; a higher learning rate for
    them helps, hence the returned list). Then ``l0_masks(model)`` turns gates into masks.

    per: "weight" (one gate per weight) or "neuron" (one per output row / channel).
    init_keep: initial log_alpha = log(init_keep / (1 - init_keep)) (the paper's
        droprate_init = 1 - init_keep). An existing mask is kept inside the gate.
    Tied weights are skipped unless ``prune_tied`` (see ``magnitude``).
    """
    check_choice(per, ("weight", "neuron"), "per")
    if not is_real(init_keep) or not 0.0 < init_keep < 1.0:
        raise ValueError(f"init_keep = {init_keep!r}, expected a number in (0, 1)")
    gates = []
    for name, module in prunable(model, include, exclude, types, prune_tied):
        if parametrize.is_parametrized(module, "weight"):
            raise ValueError(f"{name}.weight is already parametrized")
        fixed_mask = unmask(module)
        gate = HardConcreteGate(module.weight, per, init_keep, fixed_mask)
        parametrize.register_parametrization(module, "weight", gate)
        gates.append(gate.log_alpha)
    return gates


def _gates(model: nn.Module) -> list[HardConcreteGate]:
    return [m for m in model.modules() if isinstance(m, HardConcreteGate)]


def l0_penalty(model: nn.Module, reduction: str = "sum") -> torch.Tensor:
    """Expected L0 norm of the gated weights (Louizos et al. 2018, eq. 12): the expected
    number of nonzero weights ("sum"), or that over the number of gated weights ("mean",
    the expected density in [0, 1], convenient for choosing a coefficient)."""
    check_choice(reduction, REDUCTIONS, "reduction")
    gates = _gates(model)
    if not gates:
        raise ValueError(f"{type(model).__name__} has no L0 gates: call l0_gates(model) first")
    total = sum(gate.expected_l0() for gate in gates)
    if reduction == "mean":
        total = total / sum(gate.log_alpha.numel() * gate.weights_per_gate for gate in gates)
    return total


@torch.no_grad()
def gates_to_masks(model: nn.Module) -> int:
    """Replace each gate by the test-time estimator: weight *= z_hat, mask = z_hat > 0.
    Returns how many gates were replaced."""
    count = 0
    for name, module in model.named_modules():
        if not parametrize.is_parametrized(module, "weight"):
            continue
        stack = module.parametrizations.weight
        gate = stack[0]
        if not isinstance(gate, HardConcreteGate):
            continue
        if len(stack) != 1:
            raise ValueError(f"{type(module).__name__}.weight has other parametrizations stacked "
                             "on its L0 gate; remove them first")
        z = gate.deterministic()
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
        module.weight.mul_(z.to(module.weight.dtype))
        mask = (z > 0).expand_as(module.weight)
        apply_mask(module, mask if gate.fixed_mask is None else mask * gate.fixed_mask, name)
        count += 1
    return count


def l0_masks(model: nn.Module) -> nn.Module:
    """Turn every L0 gate into a deterministic mask (the paper's test-time estimator
    z_hat = min(1, max(0, sigmoid(log_alpha) (zeta - gamma) + gamma))), folding z_hat
    into the weights and removing the gates. Returns ``model``."""
    if gates_to_masks(model) == 0:
        raise ValueError(f"{type(model).__name__} has no L0 gates: call l0_gates(model) first")
    return model
