"""First-order Taylor importance |w * dL/dw| (Molchanov et al. 2019).

nn.Linear (and ``types``) only: transformers' Conv1D layers (GPT-2) are left as they
are, named in a warning; magnitude, random, nm, wanda and sparsegpt prune them.
"""
from __future__ import annotations

import warnings
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
    mode, with gradients enabled (also inside ``torch.no_grad()``). Gradients come from
    torch.autograd.grad, so ``.grad`` fields are untouched; frozen weights
    (``requires_grad=False``) are scored too and stay frozen.
    """
    modules = select(model, include, exclude, types)
    params = [weight_param(module) for _, module in modules]
    scores = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    frozen = [p for p in params if not p.requires_grad]
    seen, reached = 0, set()
    try:
        for p in frozen:  # dL/dw of a frozen weight is as defined as any other
            p.requires_grad_(True)
        with torch.enable_grad():
            for batch in calibration(batches, "taylor"):
                grads = torch.autograd.grad(_checked_loss(loss_fn(model, batch), seen), params, allow_unused=True)
                for i, (score, param, grad) in enumerate(zip(scores, params, grads)):
                    if grad is not None:
                        score += (param.detach() * grad).abs().float()
                        reached.add(i)
                seen += 1
    finally:
        for p in frozen:
            p.requires_grad_(False)
    if seen == 0:
        raise ValueError("batches is empty: taylor needs at least one batch")
    unreached = [name for i, (name, _) in enumerate(modules) if i not in reached]
    if unreached:  # all-zero scores: ranked below every other weight, so pruned first
        warnings.warn(f"taylor: the loss does not depend on {len(unreached)} layer(s) ({', '.join(unreached[:3])}"
                      f"{', ...' if len(unreached) > 3 else ''}): their scores are 0, so they are pruned first. "
                      "Exclude them, or use a loss_fn that runs them", stacklevel=2)
    return {name: score for (name, _), score in zip(modules, scores)}


def _checked_loss(loss, index: int) -> torch.Tensor:
    """``loss`` if autograd can differentiate it, else a ValueError saying why."""
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ValueError(f"loss_fn returned {shape} for batch {index}: expected a scalar loss tensor "
                         "(reduce it, e.g. with .mean())")
    if loss.grad_fn is None:
        raise ValueError(f"loss_fn's loss for batch {index} has no gradient to the weights: compute it from "
                         "model(...) without torch.inference_mode(), .detach() or .item()")
    return loss


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
