"""Unstructured pruning by weight magnitude, and random pruning as the baseline."""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ._masks import Selector, magnitude_scores, prune_by_scores, select


def magnitude(model: nn.Module, sparsity: float | Mapping[str, float], scope: str = "global", *,
              include: Selector = None, exclude: Selector = None,
              types: tuple[type, ...] = (nn.Linear,)) -> nn.Module:
    """Zero the smallest-|w| weights (Han et al. 2015, "Learning both Weights and
    Connections for Efficient Neural Networks").

    sparsity: fraction in [0, 1) to zero; with ``scope="layer"`` it may be a dict
        {module name: sparsity} (e.g. from ``allocate``), missing names stay as they are.
    scope: "global" ranks all selected weights together (layers end up with different
        sparsities), "layer" gives each layer the same fraction, "row" each output row.
    Modules: every nn.Linear by default (``types=(nn.Linear, nn.Conv2d)`` adds convs),
    filtered by ``include``/``exclude`` (glob on qualified names, list, or predicate).
    Existing masks are kept and combined with. Returns ``model`` (modified in place).
    """
    modules = select(model, include, exclude, types)
    scores = magnitude_scores(modules)
    prune_by_scores(modules, scores, sparsity, scope)
    return model


def random(model: nn.Module, sparsity: float | Mapping[str, float], scope: str = "global", *,
           seed: int | None = None, generator: torch.Generator | None = None,
           include: Selector = None, exclude: Selector = None,
           types: tuple[type, ...] = (nn.Linear,)) -> nn.Module:
    """Zero a uniformly random subset of weights: the baseline every importance
    criterion must beat (as in Blalock et al. 2020, "What is the State of Neural
    Network Pruning?"). Same arguments as ``magnitude``; ``seed`` or a CPU
    ``generator`` makes it reproducible. Returns ``model``."""
    if seed is not None and generator is not None:
        raise ValueError(f"give seed or generator, not both (seed = {seed!r})")
    if seed is not None:
        generator = torch.Generator().manual_seed(seed)
    modules = select(model, include, exclude, types)
    scores = {name: torch.rand(module.weight.shape, generator=generator) for name, module in modules}
    prune_by_scores(modules, scores, sparsity, scope)
    return model
