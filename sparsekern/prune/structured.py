"""Structured pruning: whole neurons (weight rows) or input channels (columns), masked
or physically removed so the model is smaller and faster with plain dense kernels.

nn.Linear (and ``types``) only: transformers' Conv1D layers (GPT-2) are left as they
are, named in a warning; magnitude, random, nm, wanda and sparsegpt prune them.
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

from ._masks import apply_mask, check_choice, check_fraction, effective_weight, keep_mask, mask_of
from ._select import Selector, prunable

# Modules that act on each feature independently and hold no per-feature state: unit i
# of the Linear before them only ever reaches unit i after them, so a unit can be
# removed from both sides.
ELEMENTWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Mish, nn.Tanh, nn.Sigmoid,
               nn.ELU, nn.SELU, nn.CELU, nn.Softplus, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh,
               nn.Identity, nn.Dropout)


def _unit_keep(weight: torch.Tensor, dim: int, norm: int, amount: float) -> torch.Tensor:
    """Bool [units]: False for the round(amount * units) units of lowest L-``norm``."""
    reduce_dims = [d for d in range(weight.dim()) if d != dim]
    norms = torch.linalg.vector_norm(weight.float(), ord=norm, dim=reduce_dims)
    return keep_mask(norms[None], round(amount * norms.numel()))[0]


def _linear_pairs(model: nn.Module):
    """(sequential, index of a Linear, index of the next Linear) where only ELEMENTWISE
    modules sit between them."""
    for seq in model.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        children = list(seq)
        for i, first in enumerate(children):
            if not isinstance(first, nn.Linear):
                continue
            j = i + 1
            while j < len(children) and isinstance(children[j], ELEMENTWISE):
                j += 1
            if j < len(children) and isinstance(children[j], nn.Linear):
                yield seq, i, j


def _sliced_linear(linear: nn.Linear, rows: torch.Tensor, cols: torch.Tensor) -> nn.Linear:
    """A new nn.Linear holding ``linear``'s kept rows and columns (mask carried over)."""
    weight = effective_weight(linear)[rows][:, cols]
    # skip_init: the values are overwritten, and initializing would consume the global RNG.
    with warnings.catch_warnings():  # every unit removed: structured() warned already
        warnings.filterwarnings("ignore", "Initializing zero-element tensors")
        new = nn.utils.skip_init(nn.Linear, weight.shape[1], weight.shape[0], bias=linear.bias is not None,
                                 device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if linear.bias is not None:
            new.bias.copy_(linear.bias[rows])
    mask = mask_of(linear)[rows][:, cols]
    if not bool(mask.all()):
        apply_mask(new, mask)
    return new.train(linear.training)


@torch.no_grad()
def _shrink_pair(seq: nn.Sequential, i: int, j: int, keep: torch.Tensor, fold_bias: bool) -> None:
    first, second = seq[i], seq[j]
    removed = ~keep
    if fold_bias and removed.any():
        # A unit whose weight row is masked still emits act(bias) for every input (act(0)
        # without a bias: sigmoid's 0.5); fold that constant into the next layer's bias so
        # shrinking equals masking the rows.
        weight = effective_weight(first)
        constant = first.bias[removed] if first.bias is not None else \
            torch.zeros(int(removed.sum()), dtype=weight.dtype, device=weight.device)
        for between in list(seq)[i + 1:j]:
            if not isinstance(between, nn.Dropout):
                constant = between(constant)
        shift = effective_weight(second)[:, removed] @ constant
        if second.bias is None and shift.any():
            second.bias = nn.Parameter(torch.zeros_like(shift))
        if second.bias is not None:
            second.bias += shift
    all_in = torch.ones(first.in_features, dtype=torch.bool, device=keep.device)
    all_out = torch.ones(second.out_features, dtype=torch.bool, device=keep.device)
    seq[i] = _sliced_linear(first, keep, all_in)
    seq[j] = _sliced_linear(second, all_out, keep)


def structured(model: nn.Module, amount: float, dim: int = 0, norm: int = 2, shrink: bool = False, *,
               include: Selector = None, exclude: Selector = None,
               types: tuple[type, ...] = (nn.Linear,), prune_tied: bool = False) -> nn.Module:
    """Remove the ``amount`` fraction of units with the lowest L1/L2 weight norm in each
    layer (Li et al. 2017, "Pruning Filters for Efficient ConvNets").

    dim=0: output neurons (weight rows; conv output channels); dim=1: input channels
    (weight columns). norm: 1 or 2.
    shrink=False: units are masked (zeroed) on every selected module (nn.Linear by
        default; ``types=(nn.Linear, nn.Conv2d)`` adds convs). The bias is kept.
    shrink=True: units are physically removed between pairs of nn.Linear in one
        nn.Sequential separated only by elementwise modules (ReLU, GELU, Dropout, ...):
        row i of the first (and its bias) and column i of the second go. dim=0 scores
        the first layer's rows (it must be selected), dim=1 the second's columns. The
        result equals shrink=False on the same units: for dim=0 a masked row still emits
        the constant act(bias_i) (act(0) without a bias), which is folded into the next
        layer's bias (one is added if needed). Modules are
        replaced: build the optimizer afterwards. Layers in no such pair (e.g. the
        classifier for dim=0, the first layer for dim=1) are left alone.
    Tied weights are skipped unless ``prune_tied`` (see ``magnitude``). Returns ``model``.
    """
    amount = check_fraction(amount, "amount")
    check_choice(dim, (0, 1), "dim")
    check_choice(norm, (1, 2), "norm")
    selected = prunable(model, include, exclude, types, prune_tied)
    if not shrink:
        for name, module in selected:
            keep = _unit_keep(effective_weight(module), dim, norm, amount)
            shape = [1] * module.weight.dim()
            shape[dim] = -1
            apply_mask(module, keep.view(shape).expand_as(module.weight), name)
        return model
    selected = {id(module) for _, module in selected}
    pairs = [(seq, i, j) for seq, i, j in _linear_pairs(model) if id(seq[i if dim == 0 else j]) in selected]
    if not pairs:
        raise ValueError(f"shrink=True with dim={dim}: no selected nn.Linear is followed (through "
                         "elementwise modules) by another nn.Linear in an nn.Sequential")
    # Shrinking must equal masking the same units (shrink=False): score every pair on
    # the full weights first, and go backwards so that a bias folded into a layer only
    # reaches the rows it keeps (a masked row never receives anything).
    keeps = [_unit_keep(effective_weight(seq[i] if dim == 0 else seq[j]), dim, norm, amount)
             for seq, i, j in pairs]
    names = {id(module): name for name, module in model.named_modules()}
    for (seq, i, j), keep in reversed(list(zip(pairs, keeps))):
        if not keep.any():  # as masking every weight of a layer warns (_masks._warn_emptied)
            warnings.warn(f"structured: every unit between {names[id(seq[i])]} and {names[id(seq[j])]} is removed "
                          f"(amount={amount} of {keep.numel()} rounds to all), so {names[id(seq[j])]} outputs a "
                          "constant whatever the input. Prune less, or exclude the pair", stacklevel=2)
        _shrink_pair(seq, i, j, keep, fold_bias=dim == 0)
    return model
