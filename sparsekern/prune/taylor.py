"""First-order Taylor importance |w * dL/dw| (Molchanov et al. 2019).

nn.Linear (and ``types``) only: transformers' Conv1D layers (GPT-2) are left as they
are, named in a warning; magnitude, random, nm, wanda and sparsegpt prune them.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
from torch import nn

from ._data import calibration
from ._masks import MAX_LAYER_SPARSITY, prune_by_scores, weight_param
from ._select import Selector, prunable, select

LossFn = Callable[[nn.Module, object], torch.Tensor]


def taylor_scores(model: nn.Module, loss_fn: LossFn, batches: Iterable, *, include: Selector = None,
                  exclude: Selector = None, types: tuple[type, ...] = (nn.Linear,)) -> dict[str, torch.Tensor]:
    """{module name: sum over batches of |w * dL/dw|}, shaped like each weight
    (Molchanov et al. 2019, "Importance Estimation for Neural Network Pruning").

    loss_fn(model, batch) -> scalar loss, called once per batch in the model's current
    mode. Gradients come from torch.autograd.grad, so ``.grad`` fields are untouched.
    """
    modules = select(model, include, exclude, types)
    params = [weight_param(module) for _, module in modules]
    scores = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    seen = 0
    for batch in calibration(batches, "taylor"):
        grads = torch.autograd.grad(loss_fn(model, batch), params, allow_unused=True)
        for score, param, grad in zip(scores, params, grads):
            if grad is not None:
                score += (param.detach() * grad).abs().float()
        seen += 1
    if seen == 0:
        raise ValueError("batches is empty: taylor needs at least one batch")
    return {name: score for (name, _), score in zip(modules, scores)}


def taylor(model: nn.Module, loss_fn: LossFn, batches: Iterable, sparsity: float | Mapping[str, float],
           scope: str = "global", *, max_layer_sparsity: float = MAX_LAYER_SPARSITY, include: Selector = None,
           exclude: Selector = None, types: tuple[type, ...] = (nn.Linear,),
           prune_tied: bool = False) -> nn.Module:
    """Prune the weights with the lowest first-order Taylor importance |w * dL/dw|
    accumulated over ``batches`` (Molchanov et al. 2019). ``loss_fn(model, batch)``
    returns the loss; ``sparsity``, ``scope``, ``max_layer_sparsity`` (the cap on any
    layer under scope="global", default 0.99) and ``prune_tied`` as in ``magnitude``.
    Returns ``model``."""
    modules = prunable(model, include, exclude, types, prune_tied)
    scores = taylor_scores(model, loss_fn, batches, include=include, exclude=exclude, types=types)
    prune_by_scores(modules, scores, sparsity, scope, max_layer_sparsity)
    return model
