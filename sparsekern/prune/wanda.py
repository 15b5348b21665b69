"""Wanda: one-shot pruning by |W| * ||X_j||_2 (Sun et al. 2024)."""
from __future__ import annotations

import warnings
from collections.abc import Iterable

import torch
from torch import nn

from ._data import calibration, run_model
from ._masks import effective_weight, prune_by_scores
from ._select import Selector, prunable, select
from .nm import apply_nm, check_nm


@torch.no_grad()
def wanda_scores(model: nn.Module, batches: Iterable, *, include: Selector = None,
                 exclude: Selector = None) -> dict[str, torch.Tensor]:
    """{nn.Linear name: |W| * ||X_j||_2}, where ||X_j|| is the L2 norm of input feature j
    over every token of every batch (Sun et al. 2024, "A Simple and Effective Pruning
    Approach for Large Language Models"). Batches: tensor -> model(x), mapping (dict,
    a tokenizer's BatchEncoding) -> model(**batch), tuple/list -> model(*batch); the
    model runs in its current mode.

    A Linear whose forward is never called (nn.MultiheadAttention.out_proj is used
    functionally) gets no input statistics: it falls back to |W| with a warning.
    """
    modules = select(model, include, exclude, (nn.Linear,))
    squares = {name: None for name, _ in modules}

    def collect(name):
        def hook(module, args):
            x = args[0].detach().reshape(-1, module.in_features).float()
            total = x.square().sum(0)
            squares[name] = total if squares[name] is None else squares[name] + total
        return hook

    handles = [module.register_forward_pre_hook(collect(name)) for name, module in modules]
    try:
        seen = 0
        for batch in calibration(batches, "wanda"):
            run_model(model, batch)
            seen += 1
    finally:
        for handle in handles:
            handle.remove()
    if seen == 0:
        raise ValueError("batches is empty: wanda needs at least one calibration batch")
    unseen = [name for name, total in squares.items() if total is None]
    if unseen:
        warnings.warn(f"wanda: no input reached {unseen} (called functionally?); "
                      "their scores fall back to |W|", stacklevel=3)
    return {name: effective_weight(module).abs().float()
            * (1.0 if squares[name] is None else squares[name].sqrt()[None, :])
            for name, module in modules}


def wanda(model: nn.Module, batches: Iterable, sparsity: float | None = None, *, n: int | None = None,
          m: int | None = None, include: Selector = None, exclude: Selector = None,
          prune_tied: bool = False) -> nn.Module:
    """One-shot Wanda pruning (Sun et al. 2024): score |W| * ||X_j||_2 from calibration
    ``batches``, compared within each output row. Give ``sparsity`` (unstructured,
    per row) or ``n`` and ``m`` (N:M along the input dimension). Every nn.Linear by
    default; tied weights are skipped unless ``prune_tied`` (see ``magnitude``).
    Returns ``model``."""
    if (sparsity is None) == (n is None and m is None) or (n is None) != (m is None):
        raise ValueError(f"give sparsity, or n and m (got sparsity={sparsity!r}, n={n!r}, m={m!r})")
    if sparsity is None:
        check_nm(n, m)
    modules = prunable(model, include, exclude, (nn.Linear,), prune_tied)
    scores = wanda_scores(model, batches, include=include, exclude=exclude)
    if sparsity is None:
        apply_nm(modules, n, m, scores)
    else:
        prune_by_scores(modules, scores, sparsity, "row")
    return model
