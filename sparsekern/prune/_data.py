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
    place of the iterable of batches: iterating it would yield its keys as batches, and a
    batch without rows (see ``_check_not_empty``)."""
    if isinstance(batches, Mapping):  # now, not on the first batch
        raise TypeError(f"batches is one {type(batches).__name__} (keys {list(batches)[:4]}): "
                        "pass an iterable of batches, e.g. [batch]")
    return _checked(progress(batches, desc), desc)


def _checked(batches: Iterable, desc: str) -> Iterable:
    for index, batch in enumerate(batches):
        _check_not_empty(batch, index, desc)
        yield batch


def _check_not_empty(batch, index: int, desc: str) -> None:
    """A batch whose tensors hold no element (batch size or length 0) would add nothing to the
    statistics: a method that saw only such batches would prune on zeros (sparsegpt: every
    weight), so it is refused."""
    if isinstance(batch, Mapping):
        tensors = list(batch.values())
    elif isinstance(batch, (tuple, list)):
        tensors = list(batch)
    else:
        tensors = [batch]
    empty = next((t for t in tensors if isinstance(t, torch.Tensor) and t.numel() == 0), None)
    if empty is not None:
        raise ValueError(f"{desc}: calibration batch {index} holds a tensor shaped {tuple(empty.shape)}, with no "
                         "elements: give batches with at least one row and one token")


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
