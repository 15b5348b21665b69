"""N:M semi-structured pruning (2:4 is what sparse tensor cores and our 2:4 kernels run)."""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ._masks import apply_mask, keep_mask, magnitude_scores, masked_scores
from ._linear import in_features, out_in, stored, with_conv1d
from ._select import Selector, prunable


def nm(model: nn.Module, n: int = 2, m: int = 4, scores: Mapping[str, torch.Tensor] | None = None, *,
       include: Selector = None, exclude: Selector = None, prune_tied: bool = False) -> nn.Module:
    """Keep the ``n`` highest-scoring of every ``m`` consecutive weights along the input
    dimension of each row (Mishra et al. 2021, "Accelerating Sparse Deep Neural
    Networks"; Zhou et al. 2021, "Learning N:M Fine-grained Structured Sparse Neural
    Networks From Scratch").

    scores: {module name: tensor shaped like its weight}, e.g. from ``taylor_scores``
        or ``wanda_scores``; default |w|.
    nn.Linear and transformers Conv1D modules (every one by default, see
    ``include``/``exclude``); tied
    weights are skipped unless ``prune_tied`` (see ``magnitude``).
    Raises ValueError when 1 <= n <= m fails or when a layer's in_features is not a
    multiple of m (no padding: the 2:4 format needs whole groups). Existing masks are
    combined with, so a group may end up with fewer than n nonzeros. Returns ``model``.
    """
    check_nm(n, m)
    modules = prunable(model, include, exclude, with_conv1d(model, (nn.Linear,)), prune_tied)
    apply_nm(modules, n, m, magnitude_scores(modules) if scores is None else scores)
    return model


def check_nm(n, m) -> None:
    if isinstance(n, bool) or isinstance(m, bool) or not isinstance(n, int) or not isinstance(m, int) \
            or not 1 <= n <= m:
        raise ValueError(f"n = {n!r}, m = {m!r}: expected integers with 1 <= n <= m")


def check_nm_inputs(modules: list[tuple[str, nn.Module]], m: int) -> None:
    """ValueError naming the first layer whose in_features is not a multiple of m (no
    padding: the 2:4 format needs whole groups); methods that prune block by block call it
    before pruning any."""
    for name, module in modules:
        if in_features(module) % m:
            raise ValueError(f"{name}: in_features = {in_features(module)} is not a multiple of m = {m}")


def apply_nm(modules: list[tuple[str, nn.Module]], n: int, m: int, scores: Mapping[str, torch.Tensor]) -> None:
    """The N:M masks of ``nm`` on already selected modules (shared with ``wanda``).
    Checks every layer's in_features before masking any."""
    check_nm_inputs(modules, m)
    for name, module in modules:
        rows = out_in(module, masked_scores(scores, name, module))  # groups run along the inputs
        keep = keep_mask(rows.reshape(-1, m), m - n).view(rows.shape)
        apply_mask(module, stored(module, keep), name)
