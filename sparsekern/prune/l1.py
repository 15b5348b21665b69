"""Sparsity learned during training with an L1 penalty, then pruned by thresholding
(Han et al. 2015).

nn.Linear (and ``types``) only: transformers' Conv1D layers (GPT-2) are left as they
are, named in a warning; magnitude, random, nm, wanda and sparsegpt prune them.
"""
from __future__ import annotations

import torch
from torch import nn

from ._masks import REDUCTIONS, apply_mask, check_choice, effective_weight, weight_param
from ._select import Selector, prunable, select


def l1_penalty(model: nn.Module, reduction: str = "sum", *, include: Selector = None,
               exclude: Selector = None, types: tuple[type, ...] = (nn.Linear,)) -> torch.Tensor:
    """sum (or mean) of |w| over the selected weights, to add to the loss (times a
    small coefficient) so that unneeded weights shrink towards zero; then prune them
    with ``threshold`` (Han et al. 2015 compare L1 and L2 regularization for pruning)."""
    check_choice(reduction, REDUCTIONS, "reduction")
    weights = [weight_param(module) for _, module in select(model, include, exclude, types)]
    total = sum(w.abs().sum() for w in weights)
    return total / sum(w.numel() for w in weights) if reduction == "mean" else total


def threshold(model: nn.Module, value: float, *, include: Selector = None, exclude: Selector = None,
              types: tuple[type, ...] = (nn.Linear,), prune_tied: bool = False) -> nn.Module:
    """Prune every selected weight with |w| <= ``value`` (after ``l1_penalty`` training;
    Han et al. 2015). Tied weights are skipped unless ``prune_tied`` (see ``magnitude``).
    Returns ``model``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"value = {value!r}, expected a threshold >= 0")
    for name, module in prunable(model, include, exclude, types, prune_tied):
        apply_mask(module, effective_weight(module).abs() > value, name)
    return model
