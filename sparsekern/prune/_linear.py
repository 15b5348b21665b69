"""Linear layers as the pruning methods see them: nn.Linear and transformers' Conv1D.

GPT-2's Conv1D is a linear layer that stores its weight transposed, [in, out], and
computes ``x @ weight + bias``. It is recognized by class name (and its ``nf``
attribute), so transformers need not be installed or imported. Methods that support it
(magnitude, random, nm, wanda, sparsegpt) select it through ``with_conv1d`` and read or
write its weight as [out, in] through ``out_in`` / ``stored``; masks and scores always
have the stored weight's shape, as ``apply_mask`` expects."""
from __future__ import annotations

import torch
from torch import nn

from ._select import check_arguments


def is_conv1d(module: nn.Module) -> bool:
    weight = getattr(module, "weight_orig", getattr(module, "weight", None))
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and getattr(weight, "ndim", 0) == 2


def with_conv1d(model: nn.Module, types: tuple[type, ...]) -> tuple[type, ...]:
    """``types`` plus the Conv1D classes found in ``model`` when ``types`` covers
    nn.Linear: a method that takes every linear layer takes GPT-2's too."""
    types = check_arguments(model, None, None, types)
    if nn.Linear not in types:
        return types
    found = {type(m) for m in model.modules() if is_conv1d(m)}
    return (*types, *sorted(found - set(types), key=lambda t: t.__qualname__))


def in_features(module: nn.Module) -> int:
    return module.weight.shape[0] if is_conv1d(module) else module.in_features


def out_in(module: nn.Module, tensor: torch.Tensor) -> torch.Tensor:
    """A tensor shaped like the module's stored weight, seen as [out, in] (a view)."""
    return tensor.T if is_conv1d(module) else tensor


# Transposing is its own inverse: [out, in] back to the stored layout.
stored = out_in


def as_linear(module: nn.Module) -> nn.Linear:
    """An nn.Linear computing what ``module`` (a Conv1D) computes: what ``sparsify``
    packs (with the mask from ``linear_mask``). The weight is copied, not shared."""
    weight = getattr(module, "weight_orig", module.weight).detach()
    linear = nn.Linear(weight.shape[0], weight.shape[1], bias=module.bias is not None,
                       device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        linear.weight.copy_(weight.T)
        if module.bias is not None:
            linear.bias.copy_(module.bias.detach())
    return linear


def linear_mask(module: nn.Module) -> torch.Tensor | None:
    """The mask attached to ``module`` (None if none) as [out, in]."""
    mask = getattr(module, "weight_mask", None)
    return None if mask is None else out_in(module, mask.detach()).contiguous()
