"""Calibration-batch helpers shared by the data-driven methods (taylor, wanda, sensitivity)."""
from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn
from tqdm.auto import tqdm


def progress(iterable: Iterable, desc: str, total: int | None = None) -> Iterable:
    """tqdm bar that hides itself when stderr is not a terminal (``disable=None``)."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    return tqdm(iterable, desc=desc, total=total, disable=None, leave=False)


def calibration(batches: Iterable, desc: str) -> Iterable:
    """``progress`` over ``batches``, refusing one mapping (a tokenizer's output) given in
    place of the iterable of batches: iterating it would yield its keys as batches."""
    if isinstance(batches, Mapping):
        raise TypeError(f"batches is one {type(batches).__name__} (keys {list(batches)[:4]}): "
                        "pass an iterable of batches, e.g. [batch]")
    return progress(batches, desc)


def run_model(model: nn.Module, batch) -> torch.Tensor:
    """Call ``model`` on a batch: a tensor -> ``model(batch)``, a mapping (dict, or a
    tokenizer's BatchEncoding, a UserDict) -> ``model(**batch)``, a tuple or list ->
    ``model(*batch)``."""
    if isinstance(batch, torch.Tensor):
        return model(batch)
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    raise TypeError(f"batch of type {type(batch).__name__}: expected a Tensor, a mapping (dict, BatchEncoding), "
                    "a tuple or a list")
