"""Unstructured pruning by weight magnitude, and random pruning as the baseline."""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ._masks import MAX_LAYER_SPARSITY, magnitude_scores, prune_by_scores
from ._linear import with_conv1d
from ._select import Selector, prunable


def magnitude(model: nn.Module, sparsity: float | Mapping[str, float], scope: str = "global", *,
              max_layer_sparsity: float = MAX_LAYER_SPARSITY, include: Selector = None,
              exclude: Selector = None, types: tuple[type, ...] = (nn.Linear,),
              prune_tied: bool = False) -> nn.Module:
    """Zero the smallest-|w| weights (Han et al. 2015, "Learning both Weights and
    Connections for Efficient Neural Networks").

    sparsity: fraction in [0, 1) to zero; with ``scope="layer"`` it may be a dict
        {module name: sparsity} (e.g. from ``allocate``), missing names stay as they are.
    scope: "global" ranks all selected weights together (layers end up with different
        sparsities), "layer" gives each layer the same fraction, "row" each output row.
    max_layer_sparsity: under scope="global", no layer is pruned beyond this fraction
        (default 0.99; 1.0 removes the cap); what a capped layer cannot give is taken
        from the others, so the global target is still met. ValueError when it cannot be.
    Modules: every nn.Linear and transformers Conv1D (GPT-2) by default
    (``types=(nn.Linear, nn.Conv2d)`` adds convs),
    filtered by ``include``/``exclude`` (glob on qualified names, list, or predicate).
    A module whose weight is tied to another parameter (GPT-2's lm_head and token
    embedding) is skipped with a warning unless ``prune_tied=True``; so, with a
    warning, are linear-like modules of other types. A layer
    left with no weight at all gets a warning.
    Existing masks are kept and combined with. Returns ``model`` (modified in place).
    """
    modules = prunable(model, include, exclude, with_conv1d(model, types), prune_tied)
    scores = magnitude_scores(modules)
    prune_by_scores(modules, scores, sparsity, scope, max_layer_sparsity)
    return model


def random(model: nn.Module, sparsity: float | Mapping[str, float], scope: str = "global", *,
           seed: int | None = None, generator: torch.Generator | None = None,
           max_layer_sparsity: float = MAX_LAYER_SPARSITY, include: Selector = None,
           exclude: Selector = None, types: tuple[type, ...] = (nn.Linear,),
           prune_tied: bool = False) -> nn.Module:
    """Zero a uniformly random subset of weights: the baseline every importance
    criterion must beat (as in Blalock et al. 2020, "What is the State of Neural
    Network Pruning?"). Same arguments as ``magnitude`` (including ``max_layer_sparsity``
    and ``prune_tied``); ``seed`` or a CPU
    ``generator`` makes it reproducible. Returns ``model``."""
    if seed is not None and generator is not None:
        raise ValueError(f"give seed or generator, not both (seed = {seed!r})")
    if seed is not None:
        generator = torch.Generator().manual_seed(seed)
    modules = prunable(model, include, exclude, with_conv1d(model, types), prune_tied)
    scores = {name: torch.rand(module.weight.shape, generator=generator) for name, module in modules}
    prune_by_scores(modules, scores, sparsity, scope, max_layer_sparsity)
    return model
