"""Wanda: one-shot pruning by |W| * ||X_j||_2 (Sun et al. 2024)."""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ._calibrate import calibrate, warn_unseen
from ._linear import out_in, stored, with_conv1d
from ._masks import effective_weight, prune_by_scores, unmask
from ._select import Selector, prunable, select
from .nm import apply_nm, check_nm, check_nm_inputs


class InputNorms:
    """Running sum over tokens of each input feature's square, for one layer."""

    def __init__(self, name: str, module: nn.Module):
        self.total = None

    def add(self, x: torch.Tensor) -> None:
        square = x.float().square().sum(0)
        self.total = square if self.total is None else self.total + square


def _scores(module: nn.Module, norms: InputNorms) -> torch.Tensor:
    """|W| * ||X_j||, shaped like the stored weight (|W| when no input was seen)."""
    weight = effective_weight(module).abs().float()
    if norms.total is None:
        return weight
    return stored(module, out_in(module, weight) * norms.total.sqrt()[None, :])


def _group_scores(group) -> dict[str, torch.Tensor]:
    """The scores of a calibrated group [(name, module, norms)], with a warning naming the
    layers no input reached."""
    warn_unseen("wanda", [name for name, _, norms in group if norms.total is None],
                "their scores fall back to |W|")
    return {name: _scores(module, norms) for name, module, norms in group}


@torch.no_grad()
def wanda_scores(model: nn.Module, batches: Iterable, *, include: Selector = None,
                 exclude: Selector = None) -> dict[str, torch.Tensor]:
    """{layer name: |W| * ||X_j||_2}, where ||X_j|| is the L2 norm of input feature j
    over every token of every batch (Sun et al. 2024, "A Simple and Effective Pruning
    Approach for Large Language Models"), from one pass of the whole model (no pruning
    between layers). Every nn.Linear and transformers Conv1D; scores are shaped like the
    stored weight. Batches: tensor -> model(x), mapping (dict, a tokenizer's
    BatchEncoding) -> model(**batch), tuple/list -> model(*batch); the model runs in its
    current mode.

    A Linear whose forward is never called (nn.MultiheadAttention.out_proj is used
    functionally) gets no input statistics: it falls back to |W| with a warning.
    """
    modules = select(model, include, exclude, with_conv1d(model, (nn.Linear,)))
    scores = {}

    def keep(group):
        scores.update(_group_scores(group))

    calibrate(model, batches, modules, InputNorms, keep, sequential=False, blocks=None, desc="wanda")
    return scores


def wanda(model: nn.Module, batches: Iterable, sparsity: float | None = None, *, n: int | None = None,
          m: int | None = None, include: Selector = None, exclude: Selector = None,
          prune_tied: bool = False, sequential: bool | None = None, blocks: str | None = None,
          finalize: bool = False) -> nn.Module:
    """One-shot Wanda pruning (Sun et al. 2024): score |W| * ||X_j||_2 from calibration
    ``batches``, compared within each output row. Give ``sparsity`` (unstructured,
    per row) or ``n`` and ``m`` (N:M along the input dimension). Every nn.Linear and
    transformers Conv1D (GPT-2) by default; tied weights are skipped unless
    ``prune_tied`` (see ``magnitude``).

    sequential: prune block by block, each block calibrated on the outputs of the blocks
        before it as already pruned, as the paper does for LLMs (None: when the model has
        a stack of blocks; False: one pass of the dense model). ``blocks`` names the stack
        ("model.layers"), else it is found (see ``sparsegpt``).
    finalize: bake each block's masks in as soon as it is pruned (as ``finalize``): no
        ``weight_orig``/``weight_mask`` copies, so a large model's peak memory stays near
        its own size. Returns ``model``."""
    if (sparsity is None) == (n is None and m is None) or (n is None) != (m is None):
        raise ValueError(f"give sparsity, or n and m (got sparsity={sparsity!r}, n={n!r}, m={m!r})")
    if sparsity is None:
        check_nm(n, m)
    if not isinstance(finalize, bool):
        raise TypeError(f"finalize = {finalize!r}: expected True or False")
    modules = prunable(model, include, exclude, with_conv1d(model, (nn.Linear,)), prune_tied)
    if sparsity is None:  # every layer's shape checked before any is pruned
        check_nm_inputs(modules, m)

    def prune_group(group):
        scores = _group_scores(group)
        chosen = [(name, module) for name, module, _ in group]
        if sparsity is None:
            apply_nm(chosen, n, m, scores)
        else:
            prune_by_scores(chosen, scores, sparsity, "row")
        if finalize:
            for _, module in chosen:
                unmask(module)

    calibrate(model, batches, modules, InputNorms, prune_group, sequential=sequential, blocks=blocks,
              desc="wanda")
    return model
