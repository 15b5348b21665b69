"""Mask plumbing shared by every pruning method: argument checks,
score -> mask selection, attaching/combining masks, and sparsity reports.

Convention (the rest of sparsekern relies on it): a pruned module uses
torch.nn.utils.prune's reparametrization. It has ``weight_orig`` (Parameter),
``weight_mask`` (buffer, 0/1 in the weight's dtype) and ``weight = weight_orig *
weight_mask`` recomputed by torch's forward pre-hook. ``weight_orig`` is also zeroed
at pruned positions, so pruned values are gone, not merely hidden, and re-zeroed after
every torch.optim step (see ``_after_optimizer_step``).
"""
from __future__ import annotations

import contextlib
import math
import numbers
import warnings
import weakref
from collections.abc import Mapping

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils import prune as torch_prune
from torch.optim.optimizer import register_optimizer_step_post_hook

from ._linear import out_in, stored, with_conv1d
from ._select import Selector, select

SCOPES = ("global", "layer", "row")
REDUCTIONS = ("sum", "mean")  # of the l1 and l0 penalties
# Default cap on any one layer's sparsity under scope="global": ranking all weights
# together can otherwise take every weight of a layer whose weights are small (a layer
# that then outputs only its bias).
MAX_LAYER_SPARSITY = 0.99


# --------------------------------------------------------------------------- checks

def is_real(value) -> bool:
    """A real number: int, float, or NumPy's (np.float32 is no float subclass); not bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_fraction(value, name: str = "sparsity") -> float:
    """Return ``value`` as a float in [0, 1), else raise ValueError naming it."""
    if not is_real(value) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} = {value!r}, expected a number in [0, 1)")
    return float(value)


def check_cap(value, name: str = "max_layer_sparsity") -> float:
    """Return ``value`` as a float in (0, 1] (1 means no cap), else raise ValueError naming it."""
    if not is_real(value) or not 0.0 < value <= 1.0:
        raise ValueError(f"{name} = {value!r}, expected a number in (0, 1]")
    return float(value)


def check_choice(value, choices, name: str):
    if value not in choices:
        raise ValueError(f"{name} = {value!r}, expected one of {list(choices)}")
    return value


# ------------------------------------------------------------------- mask accessors

def is_masked(module: nn.Module) -> bool:
    return hasattr(module, "weight_orig") and hasattr(module, "weight_mask")


def weight_param(module: nn.Module) -> torch.Tensor:
    """The trainable tensor behind ``weight``: ``weight_orig`` once pruned."""
    return module.weight_orig if is_masked(module) else module.weight


def mask_of(module: nn.Module) -> torch.Tensor:
    """Current 0/1 mask (all ones when the module was never pruned)."""
    return module.weight_mask if is_masked(module) else torch.ones_like(module.weight)


@torch.no_grad()
def effective_weight(module: nn.Module) -> torch.Tensor:
    """The weight the module computes with now, detached. Read it from
    ``weight_orig * weight_mask``: ``module.weight`` is only refreshed on forward."""
    return weight_param(module) * mask_of(module) if is_masked(module) else module.weight.detach()


def magnitude_scores(modules: list[tuple[str, nn.Module]]) -> dict[str, torch.Tensor]:
    return {name: effective_weight(module).abs() for name, module in modules}


# -------------------------------------------------------------- attach and enforce

# Modules masked by us. After any optimizer step their weight_orig is re-zeroed (stale
# momentum / Adam state could otherwise move pruned entries) and ``weight`` refreshed,
# so fine-tuning needs no change to the user's loop.
_MASKED: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()
_hook_handle = None


@torch.no_grad()
def _refresh(module: nn.Module) -> None:
    module.weight_orig.mul_(module.weight_mask)
    # Same value as torch's pre-hook computes on forward, so ``weight`` is never stale
    # (modules used functionally, like MultiheadAttention.out_proj, never run that hook).
    # Without a graph: a ``weight`` with grad_fn would make the model fail to deepcopy.
    module.weight = module.weight_orig * module.weight_mask


def _enroll(module: nn.Module, args) -> None:
    """Forward pre-hook: a deep copy (or unpickled copy) of a masked module is not in
    _MASKED, but it must run forward before any step can change it; that enrolls it."""
    _MASKED.add(module)


def _after_load(module: nn.Module, incompatible_keys) -> None:
    """Load-state-dict post-hook: ``load_state_dict`` copies into ``weight_orig`` and
    ``weight_mask`` in place, so ``weight`` (what nn.MultiheadAttention and the fused
    encoder path read without calling the module) still held the old values."""
    if is_masked(module):
        _refresh(module)


def _attention_pre_hook(attention: nn.MultiheadAttention, args) -> None:
    """Forward pre-hook on nn.MultiheadAttention: it passes ``out_proj.weight`` to
    F.multi_head_attention_forward without calling out_proj, so torch's pre-hook never
    recomputes it; ``_refresh`` stores it without autograd, and out_proj never trained.
    Recompute it here, under the caller's grad mode, as torch's hook does."""
    out_proj = attention.out_proj
    if is_masked(out_proj):
        out_proj.weight = out_proj.weight_orig * out_proj.weight_mask


def follow_attention(model: nn.Module) -> None:
    """Give every nn.MultiheadAttention in ``model`` the hook above (once; it does
    nothing until its out_proj is masked). Every pruning method calls it (``prunable``)."""
    for module in model.modules():
        if isinstance(module, nn.MultiheadAttention) \
                and _attention_pre_hook not in module._forward_pre_hooks.values():
            module.register_forward_pre_hook(_attention_pre_hook)


def _keep_order(module: nn.Module, old: str, new: str, order: list[str]) -> None:
    """Put parameter ``new`` where ``old`` was in ``order`` (the names before torch's
    prune re-registered the weight last): model.parameters() then lists the same tensors
    in the same order before and after pruning, so an optimizer's state_dict saved with
    one order loads into an optimizer built with the other (a checkpoint resumed)."""
    params = module._parameters
    names = [new if name == old else name for name in order]
    names += [name for name in params if name not in names]
    items = [(name, params[name]) for name in names if name in params]
    params.clear()
    params.update(items)


def _after_optimizer_step(optimizer, args, kwargs) -> None:
    for module in list(_MASKED):
        if is_masked(module):
            _refresh(module)
        else:  # finalized or removed by torch.nn.utils.prune.remove
            _MASKED.discard(module)


def apply_mask(module: nn.Module, mask: torch.Tensor, name: str | None = None) -> None:
    """Attach ``mask`` to ``module.weight``, ANDed with any existing mask (ours or one
    made by torch.nn.utils.prune), so a pruned weight is never revived. Warns, naming
    the module (``name``, else its type), when this leaves no weight at all."""
    global _hook_handle
    if parametrize.is_parametrized(module, "weight"):
        raise ValueError(f"{type(module).__name__}.weight is parametrized (L0 gates?): "
                         "call sparsekern.prune.l0_masks(model) before pruning it again")
    mask = mask.to(device=module.weight.device, dtype=module.weight.dtype)
    if mask.shape != module.weight.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} != weight shape {tuple(module.weight.shape)}")
    was_empty = is_masked(module) and not bool(module.weight_mask.any())
    if is_masked(module):
        with torch.no_grad():
            module.weight_mask.mul_(mask)
    else:
        order = list(module._parameters)
        torch_prune.custom_from_mask(module, "weight", mask)
        _keep_order(module, "weight", "weight_orig", order)
    if not was_empty and not bool(module.weight_mask.any()):
        _warn_emptied(module, name)
    _refresh(module)
    _MASKED.add(module)
    if _enroll not in module._forward_pre_hooks.values():
        module.register_forward_pre_hook(_enroll)
    if _after_load not in module._load_state_dict_post_hooks.values():
        module.register_load_state_dict_post_hook(_after_load)
    if _hook_handle is None:
        _hook_handle = register_optimizer_step_post_hook(_after_optimizer_step)


def _warn_emptied(module: nn.Module, name: str | None) -> None:
    output = "only its bias" if getattr(module, "bias", None) is not None else "zeros"
    warnings.warn(f"{name or type(module).__name__} is now 100% sparse: every weight is pruned, so it outputs "
                  f"{output} whatever its input. Prune it less: exclude it, give per-layer sparsities with "
                  "scope='layer', or keep max_layer_sparsity below 1 with scope='global'", stacklevel=3)


def unmask(module: nn.Module) -> torch.Tensor | None:
    """Bake the mask into ``module.weight`` (a plain Parameter again) and return the
    mask, or None when the module was not masked."""
    if not is_masked(module):
        return None
    _refresh(module)
    mask = module.weight_mask.detach().clone()
    order = list(module._parameters)
    torch_prune.remove(module, "weight")
    _keep_order(module, "weight_orig", "weight", order)
    _MASKED.discard(module)
    for hooks, ours in ((module._forward_pre_hooks, _enroll), (module._load_state_dict_post_hooks, _after_load)):
        for key, hook in list(hooks.items()):
            if hook is ours:
                del hooks[key]
    return mask


@contextlib.contextmanager
def restoring(module: nn.Module):
    """Undo, on exit, whatever pruning happens to ``module`` inside the block (used to
    try a pruning level on one layer without copying the model)."""
    was_masked = is_masked(module)
    saved_weight = weight_param(module).detach().clone()
    saved_mask = module.weight_mask.clone() if was_masked else None
    try:
        yield module
    finally:
        if not was_masked:
            unmask(module)
        with torch.no_grad():
            weight_param(module).copy_(saved_weight)
            if was_masked:
                module.weight_mask.copy_(saved_mask)
        if was_masked:
            _refresh(module)


# ---------------------------------------------------------------- scores -> masks

def keep_mask(scores: torch.Tensor, drop: int) -> torch.Tensor:
    """0/1 mask over a [groups, size] score matrix that drops the ``drop`` lowest
    scores in every row. One primitive for global/layer/row scopes and N:M groups."""
    mask = torch.ones_like(scores, dtype=torch.bool)
    if drop > 0:
        lowest = torch.topk(scores, drop, dim=1, largest=False).indices
        mask.scatter_(1, lowest, False)
    return mask


def masked_scores(scores: Mapping[str, torch.Tensor], name: str, module: nn.Module) -> torch.Tensor:
    """``scores[name]`` checked against the weight's shape, in fp32, with already-pruned
    entries at -inf: they rank below everything, so they are dropped first and
    re-pruning only ever adds zeros."""
    if name not in scores:
        raise ValueError(f"scores has no entry for layer {name!r}")
    score = scores[name]
    if score.shape != module.weight.shape:
        raise ValueError(f"scores[{name!r}] shape {tuple(score.shape)} != weight shape "
                         f"{tuple(module.weight.shape)}")
    score = score.detach().to(device=module.weight.device, dtype=torch.float32)
    return score.masked_fill(mask_of(module) == 0, -math.inf)


def _at_most(fraction: float, size: int) -> int:
    """floor(fraction * size), with slack for float error (0.29 * 100 is 28.999...)."""
    return min(size, math.floor(fraction * size + 1e-6))


def _global_drops(masked: dict[str, torch.Tensor], sparsity: float, cap: float) -> dict[str, int]:
    """How many weights each layer loses so that the round(sparsity * total) lowest
    scores over all layers go, except that no layer goes beyond ``cap`` of its weights
    (already-pruned weights count, and stay pruned). Water-filling: rank the uncapped
    layers together; a layer whose share exceeds its cap is fixed at the cap (a higher
    threshold would only take more from it) and the others are ranked again for the
    rest of the budget, until no layer exceeds its cap."""
    limit = {name: max(_at_most(cap, s.numel()), int((s == -math.inf).sum())) for name, s in masked.items()}
    total = sum(s.numel() for s in masked.values())
    budget = round(sparsity * total)
    if budget > sum(limit.values()):
        raise ValueError(f"sparsity = {sparsity!r} cannot be reached with max_layer_sparsity = {cap!r}: at most "
                         f"{sum(limit.values()) / total:.4f} of these weights can be pruned without a layer going "
                         "beyond it; lower sparsity or raise max_layer_sparsity (1.0 removes the cap)")
    drops, free = {}, list(masked)
    while True:
        flat = torch.cat([masked[name].flatten().cpu() for name in free])[None]
        dropped = ~keep_mask(flat, budget)[0]
        counts = {name: int(part.sum()) for name, part in zip(free, dropped.split([masked[n].numel() for n in free]))}
        over = [name for name in free if counts[name] > limit[name]]
        if not over:  # at least one layer stays free: the budget never exceeds the free layers' limits
            return drops | counts
        for name in over:
            drops[name] = limit[name]
            budget -= limit[name]
            free.remove(name)


def prune_by_scores(modules: list[tuple[str, nn.Module]], scores: Mapping[str, torch.Tensor],
                    sparsity: float | Mapping[str, float], scope: str = "global",
                    max_layer_sparsity: float = MAX_LAYER_SPARSITY) -> None:
    """Mask the lowest-scoring weights. ``scope``: "global" ranks all selected weights
    together, but takes no layer beyond ``max_layer_sparsity`` (what a capped layer
    cannot give is taken from the others); "layer" ranks within each layer
    (``sparsity`` may then be a dict name -> sparsity), "row" within each output row
    (Wanda's comparison group)."""
    check_choice(scope, SCOPES, "scope")
    cap = check_cap(max_layer_sparsity)
    if isinstance(sparsity, Mapping):
        if scope == "global":
            raise ValueError("per-layer sparsity (a dict) needs scope='layer' or 'row', got scope='global'")
        unknown = set(sparsity) - {name for name, _ in modules}
        if unknown:
            raise ValueError(f"sparsity names unknown layers: {sorted(unknown)}")
        per_layer = {name: check_fraction(sparsity.get(name, 0.0), f"sparsity[{name!r}]") for name, _ in modules}
    else:
        per_layer = dict.fromkeys((name for name, _ in modules), check_fraction(sparsity))
    masked = {name: masked_scores(scores, name, module) for name, module in modules}

    if scope == "global":
        drops = _global_drops(masked, float(sparsity), cap)  # validated above, in per_layer
    for name, module in modules:
        if scope == "row":  # rows are outputs: a Conv1D's stored weight is [in, out]
            rows = out_in(module, masked[name])
            keep = stored(module, keep_mask(rows, round(per_layer[name] * rows.shape[1])))
        else:
            groups = masked[name].reshape(1, -1)
            drop = drops[name] if scope == "global" else round(per_layer[name] * groups.shape[1])
            keep = keep_mask(groups, drop).view_as(module.weight)
        apply_mask(module, keep, name)


# ------------------------------------------------------------------------- reports

def layer_sparsity(model: nn.Module, include: Selector = None, exclude: Selector = None,
                   types: tuple[type, ...] = (nn.Linear,)) -> dict[str, float]:
    """Fraction of zero entries in each selected module's effective weight (nn.Linear
    covers transformers' Conv1D too); 0.0 for a weight without entries, as
    SparseLinear.sparsity says (the mean of none was NaN)."""
    return {name: (effective_weight(m) == 0).float().mean().item() if m.weight.numel() else 0.0
            for name, m in select(model, include, exclude, with_conv1d(model, types))}


def global_sparsity(model: nn.Module, include: Selector = None, exclude: Selector = None,
                    types: tuple[type, ...] = (nn.Linear,)) -> float:
    """Fraction of zero weights over all selected modules, weighted by size; 0.0 when they hold
    no weights at all (layers with a zero dimension: was a ZeroDivisionError)."""
    modules = select(model, include, exclude, with_conv1d(model, types))
    zeros = sum(int((effective_weight(m) == 0).sum()) for _, m in modules)
    total = sum(m.weight.numel() for _, m in modules)
    return zeros / total if total else 0.0
