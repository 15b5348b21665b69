"""sparsify(model): every selected nn.Linear (and transformers Conv1D) of a model replaced by a
SparseLinear, in place."""
import warnings
import weakref
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook
from torch.utils.weak import WeakIdKeyDictionary

from . import planner, prune
from .formats import LAYER_FORMATS, PACKED_FORMATS, check_mask
from .prune._linear import as_linear, is_conv1d, linear_mask, with_conv1d
from .prune._select import (WEIGHT_NAMES, Selector, check_materialized, lookalike_note, stacked_note, tied_weights,
                            wanted)
from .sparse_linear import AUTO, SparseLinear, check_format, check_not_parametrized

CHOICES = (*LAYER_FORMATS, AUTO)


class _Target(NamedTuple):
    """A Linear (or Conv1D) to replace: its first qualified name and every (parent, attribute,
    name) that holds it (a layer used at two places is one module, replaced at both)."""
    module: nn.Module
    name: str
    places: List[Tuple[nn.Module, str, str]]


def _linear_children(model: nn.Module) -> List[_Target]:
    """Every nn.Linear (or transformers Conv1D, GPT-2's linear layer with its weight stored
    [in, out]) below model that can be replaced, once per module.

    nn.MultiheadAttention's out_proj is skipped: its parent reads out_proj.weight directly
    (F.multi_head_attention_forward) instead of calling the module."""
    targets: Dict[int, _Target] = {}
    for parent_name, parent in model.named_modules():
        if isinstance(parent, nn.MultiheadAttention):
            continue
        # _modules, not named_children(), which lists a module held twice by one parent once.
        for attr, child in parent._modules.items():
            if isinstance(child, nn.Linear) or is_conv1d(child):
                name = f"{parent_name}.{attr}" if parent_name else attr
                targets.setdefault(id(child), _Target(child, name, [])).places.append((parent, attr, name))
    return list(targets.values())


def _split_tied(model: nn.Module, targets: List[_Target]) -> Tuple[List[_Target], List[Tuple[_Target, List[str]]]]:
    """(the targets whose weight no other module shares, [(target, the names tied to it)])."""
    ties = tied_weights(model)
    untied, tied = [], []
    for target in targets:
        others = [other for key in (f"{target.name}.{w}" for w in WEIGHT_NAMES) for other in ties.get(key, ())]
        if others:
            tied.append((target, others))
        else:
            untied.append(target)
    return untied, tied


def _keep_tied(tied: List[Tuple[_Target, List[str]]]) -> None:
    """Tied layers stay nn.Linear, with a warning: packing GPT-2's lm_head would cut its tie to
    the token embedding. A mask on a tied weight (pruned with prune_tied=True) is baked into
    the shared tensor, as saving needs (and as it would be by prune.finalize)."""
    for target, others in tied:
        baked = ""
        if getattr(target.module, "weight_mask", None) is not None:
            prune.finalize(target.module)
            baked = f"; its pruning mask is baked into the shared weight, which zeroes the same entries of {others[0]}"
        warnings.warn(f"{target.name}.weight is tied to {', '.join(others)}: {target.name} stays an nn.Linear "
                      f"(packing it would break the tie){baked}", stacklevel=3)


def _check_explicit_formats(formats: Dict[str, str], targets: List[_Target]) -> None:
    """Before anything is replaced: every target's mask fits the packed format given for it
    ({layer name: format}, from `format=` or the plan), so no model is left half-converted."""
    for target in targets:
        fmt = PACKED_FORMATS.get(formats[target.name])
        if fmt is None:
            continue
        linear = _as_linear(target.module)
        weight = getattr(linear, "weight_orig", linear.weight).detach()
        problem = fmt.incompatible(check_mask(weight, _mask(target.module)))
        if problem:
            raise ValueError(f"layer {target.name!r} cannot be stored as {fmt.name!r}: {problem}. Leave it out with "
                             f"exclude={target.name!r}, or use format='auto', which keeps such layers in a format "
                             f"that fits (or dense)")


def _check_plan(plan: Dict[str, str]) -> None:
    for name, pinned in plan.items():
        try:
            check_format(pinned, LAYER_FORMATS)
        except ValueError as e:
            raise ValueError(f"plan[{name!r}]: {e}") from None


def sparsify(model: nn.Module, format: str = AUTO, *, include: Selector = None, exclude: Selector = None,
             batch_sizes: Sequence[int] = planner.DEFAULT_BATCH_SIZES, value_dtype: Optional[torch.dtype] = None,
             progress: Optional[bool] = None, plan: Optional[Dict[str, str]] = None) -> nn.Module:
    """Replaces the selected nn.Linear layers of `model` by SparseLinear, in place; returns the model.

    format: a packed format ('csr', '2:4', ...), 'dense', or 'auto': per layer, the packed
        format that measured fastest against dense on this machine over the sizes in
        `batch_sizes`, if it won by 10% over them together and lost at none (planner.pick_format;
        only formats that can hold the layer's mask; `summary` says why).
        With an explicit packed format (or one a plan pins), a layer whose mask cannot take it
        raises a ValueError naming the layer, before any layer is replaced.
    include / exclude: which layers, by the selectors sparsekern.prune takes (a glob on the
        qualified name, a list of globs, or a predicate f(name, module)).
    batch_sizes: the batch sizes 'auto' times (a decode-only service: (1,)).
    value_dtype: the dtype packed weights are stored in; None keeps each layer's weight dtype
        (float16 on CPU: float32, which the kernels read; SparseLinear.from_dense).
        Layers made or kept dense keep their weight's dtype, in which 'auto' timed them.
    progress: show a progress bar (default: when writing to a terminal).
    plan: {layer name: format}, e.g. sk.summary(model).plan from an earlier run: pins the
        choices (no timing) for the layers it names. Plan entries and include/exclude that
        reach no layer warn.

    Masks attached by sparsekern.prune or torch.nn.utils.prune decide the pattern, else the
    weights' zeros. nn.MultiheadAttention's out_proj stays an nn.Linear (its parent reads the
    weight itself), and so does a Linear whose weight is tied to another module's (GPT-2's
    lm_head), with a warning (a mask on it, from prune_tied=True, is baked into the shared
    weight); transformers' Conv1D (GPT-2) is packed as its transpose, and linear-like modules
    of other types are named in a warning. A Linear used at several places is packed once,
    for all of them. The new layers keep the replaced ones' train/eval mode and frozen
    parameters. torch's fused encoder fast path is turned off where it would read a packed
    weight. A model on the meta device is refused with the way to load it, and an L0-gated
    (parametrized) weight until prune.l0_masks. A bare nn.Linear as `model` is returned
    converted.
    """
    check_format(format, CHOICES)
    batch_sizes = planner.check_batch_sizes(batch_sizes)
    plan = dict(plan or {})
    _check_plan(plan)
    if isinstance(model, nn.Linear):
        return SparseLinear.from_dense(model, format=format, value_dtype=value_dtype, batch_sizes=batch_sizes)
    from tqdm.auto import tqdm

    targets = [t for t in _linear_children(model) if wanted(t.name, t.module, include, exclude)]
    check_materialized(model, [(t.name, t.module) for t in targets])
    for target in targets:  # before any layer is replaced
        check_not_parametrized(target.module, target.name)
    skipped = lookalike_note(model, include, exclude, with_conv1d(model, (nn.Linear, SparseLinear)))
    targets, tied = _split_tied(model, targets)
    formats = {t.name: plan.get(t.name, format) for t in targets}
    _check_explicit_formats(formats, targets)
    _keep_tied(tied)
    if skipped:
        warnings.warn(skipped.replace("are not pruned", "are not sparsified"), stacklevel=2)
    stacked = stacked_note(model, include, exclude, with_conv1d(model, (nn.Linear, SparseLinear)),
                           [t.module for t in targets], packing=True)
    if stacked:  # fused MoE experts: most of such a model's weights stay dense
        warnings.warn(stacked, stacklevel=2)
    _warn_unmatched(plan, formats, include, exclude, targets or tied)
    bar = tqdm(targets, desc="sparsify", unit="layer", disable=None if progress is None else not progress)
    for target in bar:
        bar.set_postfix_str(target.name, refresh=False)
        layer = SparseLinear.from_dense(_as_linear(target.module), _mask(target.module), format=formats[target.name],
                                        value_dtype=value_dtype, batch_sizes=batch_sizes)
        layer.take_mode_of(target.module)  # a Conv1D's, not its transposed copy's
        if target.name in plan:
            layer.choice_note = "pinned by plan"
        for parent, attr, _ in target.places:
            setattr(parent, attr, layer)
        _watch_replaced(target.module)
    for module in model.modules():
        if isinstance(module, nn.MultiheadAttention):
            # Layers that stay nn.Linear keep their pruned zeros, without the mask
            # bookkeeping that would otherwise stop sparsekern.save.
            prune.finalize(module.out_proj)
        elif isinstance(module, (nn.TransformerEncoderLayer, nn.TransformerEncoder)):
            _keep_off_fused_encoder(module)
    return model


def _warn_unmatched(plan: Dict[str, str], formats: Dict[str, str], include: Selector, exclude: Selector,
                    selected: list) -> None:
    """A plan entry or a selector that reaches no layer is most likely a typo: said, not ignored."""
    unused = [name for name in plan if name not in formats]
    if unused:
        warnings.warn(f"plan names {unused[:5]}{' ...' if len(unused) > 5 else ''}, which this call does not "
                      "sparsify (no such nn.Linear, or left out by include/exclude or a tie)", stacklevel=3)
    if not selected and (include is not None or exclude is not None):
        warnings.warn(f"include={include!r}, exclude={exclude!r} select no nn.Linear: nothing is sparsified",
                      stacklevel=3)


def _as_linear(module: nn.Module) -> nn.Linear:
    """The nn.Linear to pack: the module itself, or a Conv1D's weight transposed."""
    return as_linear(module) if is_conv1d(module) else module


def _mask(module: nn.Module):
    """The attached mask as [out, in] (None: from_dense reads the Linear's own)."""
    return linear_mask(module) if is_conv1d(module) else None


def _fused_encoder_off(module, args):
    """Forward pre-hook that changes nothing: its presence is what turns off the fused path."""


def _keep_off_fused_encoder(module: nn.Module) -> None:
    # In eval mode under no_grad, torch's encoder layers take a fused C++ path that reads
    # linear1.weight / linear2.weight as dense tensors, which a SparseLinear does not have.
    # Torch skips that path for a layer with forward hooks, and for an encoder stack whose
    # use_nested_tensor is False; this costs about a microsecond per layer call.
    if not any(isinstance(m, SparseLinear) for m in module.modules()):
        return
    if isinstance(module, nn.TransformerEncoder):
        module.use_nested_tensor = False
    elif _fused_encoder_off not in module._forward_pre_hooks.values():
        module.register_forward_pre_hook(_fused_encoder_off)


# ---- optimizers built before sparsify ------------------------------------------------------------
#
# sparsify puts new Parameters in the model (packed values, a copied bias): an optimizer built
# before it keeps stepping the replaced Linear's tensors, which nothing reads any more, so the
# model silently stops training. A step of such an optimizer warns, once per optimizer.

_replaced = WeakIdKeyDictionary()  # parameters of the layers sparsify replaced
_warned = weakref.WeakSet()  # optimizers already warned
_pre_step_hook = None


def _watch_replaced(module: nn.Module) -> None:
    global _pre_step_hook
    for param in module.parameters(recurse=False):
        _replaced[param] = True
    if _pre_step_hook is None:
        _pre_step_hook = register_optimizer_step_pre_hook(_warn_if_stale)


def _warn_if_stale(optimizer, args, kwargs) -> None:
    if not _replaced or optimizer in _warned:
        return
    if any(param in _replaced for group in optimizer.param_groups for param in group["params"]):
        _warned.add(optimizer)
        warnings.warn(f"{type(optimizer).__name__} steps parameters of layers that sparsekern.sparsify replaced "
                      "(it packs new ones), so those layers no longer train: build the optimizer after sparsify, "
                      "from model.parameters()", stacklevel=3)

