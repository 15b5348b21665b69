"""finalize: bake every mask (and L0 gate) into plain weights.

Its own module because it needs both the mask plumbing (_masks) and the L0 gates (l0),
and l0 builds on _masks: living in _masks it had to import l0 lazily, a cycle."""
from __future__ import annotations

from torch import nn

from ._masks import unmask
from .l0 import gates_to_masks


def finalize(model: nn.Module) -> nn.Module:
    """Bake masks into the weights and drop the bookkeeping (``torch.nn.utils.prune.remove``
    semantics): ``weight`` becomes a plain Parameter holding zeros where pruned. Applies
    to masks made by sparsekern or torch.nn.utils.prune; L0 gates are first turned into
    masks (``l0_masks``). Returns ``model``."""
    gates_to_masks(model)
    for module in model.modules():
        unmask(module)
    return model
