"""Which modules a pruning method touches, shared by every method: include/exclude
filtering, tied weights (skipped unless asked for), a warning about linear-like modules
that a method does not prune, and a clear error on the meta device."""
from __future__ import annotations

import collections
import fnmatch
import warnings
from collections.abc import Callable, Iterable

from torch import nn

# include= / exclude= accept a glob pattern on qualified module names ("encoder.*"),
# a list of patterns, or a predicate ``f(name, module) -> bool``.
Selector = str | Iterable[str] | Callable[[str, nn.Module], bool] | None

# Where a module keeps the Parameter behind ``weight``: itself, ``weight_orig`` once
# masked (torch.nn.utils.prune), the parametrization's ``original`` under L0 gates.
WEIGHT_NAMES = ("weight", "weight_orig", "parametrizations.weight.original")

# 2-D weights that are lookup tables, not linear maps.
_NOT_LINEAR = (nn.Linear, nn.Embedding, nn.EmbeddingBag)


def check_arguments(model, include: Selector, exclude: Selector, types) -> tuple[type, ...]:
    """Raise TypeError naming the argument when ``model``, ``include``/``exclude`` or
    ``types`` has the wrong type (torch's own errors name none of them), and return
    ``types`` as a tuple (a single class is accepted)."""
    if not isinstance(model, nn.Module):
        hint = " (a state_dict? load it into the model first)" if isinstance(model, dict) else ""
        raise TypeError(f"model is of type {type(model).__name__}{hint}: expected a torch.nn.Module")
    for name, selector in (("include", include), ("exclude", exclude)):
        # A list, not any iterable: a generator would be used up by the first module it is matched against.
        ok = selector is None or isinstance(selector, str) or callable(selector) or (
            isinstance(selector, (list, tuple, set, frozenset)) and all(isinstance(p, str) for p in selector))
        if not ok:
            raise TypeError(f"{name} = {selector!r}: expected a glob on module names, a list of globs, "
                            "or a predicate f(name, module)")
    if isinstance(types, type):
        types = (types,)
    if not isinstance(types, tuple) or not types or not all(isinstance(t, type) for t in types):
        raise TypeError(f"types = {types!r}: expected a tuple of module classes, e.g. (nn.Linear, nn.Conv2d)")
    return types


def _matches(selector: Selector, name: str, module: nn.Module) -> bool:
    if callable(selector):
        return bool(selector(name, module))
    patterns = [selector] if isinstance(selector, str) else list(selector)
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def wanted(name: str, module: nn.Module, include: Selector, exclude: Selector) -> bool:
    return (include is None or _matches(include, name, module)) \
        and (exclude is None or not _matches(exclude, name, module))


def _qualified(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def tied_weights(model: nn.Module) -> dict[str, list[str]]:
    """{parameter name: the other names of the same Parameter object} for every
    parameter shared between modules, e.g. GPT-2's
    {"transformer.wte.weight": ["lm_head.weight"], "lm_head.weight": ["transformer.wte.weight"]}
    (``named_parameters()`` lists a shared parameter once, under its first name).
    Pruning, sparsifying or saving one name changes, or must keep, all of them. A module
    used at two places (registered under two names) is one layer, not a tie: its own
    names are not listed."""
    names = collections.defaultdict(list)  # id(parameter) -> [(name, id(owning module))]
    for module_name, module in model.named_modules(remove_duplicate=False):
        for param_name, param in module._parameters.items():
            if param is not None:
                names[id(param)].append((_qualified(module_name, param_name), id(module)))
    ties = {}
    for group in names.values():
        for name, owner in group:
            others = [other for other, other_owner in group if other_owner != owner]
            if others:
                ties[name] = others
    return ties


def _looks_linear(module: nn.Module, types: tuple[type, ...]) -> bool:
    """A linear layer of a type the method does not prune: transformers' Conv1D (GPT-2),
    recognized by class name so transformers need not be imported, or any module with
    its own 2-D weight that is not an nn.Linear (nor an embedding)."""
    from ..sparse_linear import SparseLinear  # here: sparse_linear is imported after prune

    # SparseLinear layers have their own note (_packed_note); their `weight` is a dense copy.
    if isinstance(module, types) or isinstance(module, (*_NOT_LINEAR, SparseLinear)):
        return False
    weight = getattr(module, "weight", None)
    return type(module).__name__ == "Conv1D" or (weight is not None and getattr(weight, "ndim", 0) == 2)


def lookalike_note(model: nn.Module, include: Selector, exclude: Selector, types: tuple[type, ...]) -> str | None:
    """A warning naming the linear-like modules that pass include/exclude but are not
    pruned, or None when there are none."""
    found = [(name, module) for name, module in model.named_modules()
             if _looks_linear(module, types) and wanted(name, module, include, exclude)]
    if not found:
        return None
    counts = collections.Counter(type(module).__name__ for _, module in found)
    kinds = ", ".join(f"{count} {kind}" for kind, count in counts.items())
    note = (f"{len(found)} module(s) that look like linear layers are not pruned ({kinds}; first: "
            f"{found[0][0]!r}): only {_kinds(types)} modules are")
    if "Conv1D" in counts:
        note += (". transformers' Conv1D (a linear layer storing its weight as [in, out]) is pruned by "
                 "magnitude, random, nm, wanda and sparsegpt, and converted by sparsify")
    return note


def stacked_weights(model: nn.Module, include: Selector = None, exclude: Selector = None,
                    types: tuple[type, ...] = (nn.Linear,)) -> list[tuple[str, nn.Parameter]]:
    """[(qualified name, parameter)] of the fused expert weights in modules that pass
    include/exclude and are neither of ``types`` nor convolutions, embeddings or SparseLinear:
    3-D parameters holding several matrices, [count, ., .], as transformers' mixture-of-experts
    layers (Mixtral, Qwen-MoE, OLMoE, DeepSeek-V3, GPT-OSS, ...) store their experts (one
    matrix per expert in ``experts.gate_up_proj`` [experts, 2 * intermediate, hidden], which no
    nn.Linear holds), and 2-D ones other than a ``weight`` (which ``lookalike_note`` names) or a
    bias in modules named like experts, as DBRX stacks its experts' rows ([experts * ffn, d]).
    In such models they are most of the weights, so leaving them out must be said."""
    from torch.nn.modules.conv import _ConvNd
    from ..sparse_linear import SparseLinear  # here: sparse_linear is imported after prune

    found = []
    for name, module in model.named_modules():
        if isinstance(module, (*types, *_NOT_LINEAR, _ConvNd, SparseLinear)):
            continue
        stacks = []
        for param_name, param in module.named_parameters(recurse=False):
            stack = param.ndim == 3 and param.shape[0] > 1  # [1, n, d] is a position embedding, not a stack
            rows = (param.ndim == 2 and "expert" in name.lower() and param_name != "weight"
                    and "bias" not in param_name)
            if stack or rows:
                stacks.append((_qualified(name, param_name), param))
        if stacks and _selected(name, module, include, exclude):
            found += stacks
    return found


def _selected(name: str, module: nn.Module, include: Selector, exclude: Selector) -> bool:
    """wanted(), for a module that is not a layer: a user's callable selector is written for the
    layers it picks (`lambda name, m: m.out_features == 8`) and may fail on anything else; then
    the module counts as selected, so that its stacked weights are still named (a warning only)."""
    try:
        return wanted(name, module, include, exclude)
    except (AttributeError, TypeError, ValueError, KeyError, IndexError):
        return True


def stacked_note(model: nn.Module, include: Selector, exclude: Selector, types: tuple[type, ...],
                 selected: list[nn.Module], packing: bool = False) -> str | None:
    """A warning naming the stacked (fused expert) weights that pass include/exclude, which no
    pruning method prunes and sparsify does not pack (``packing``: the wording for sparsify),
    with their share of the model's parameters and that of the ``selected`` modules; None
    when there are none. A user who asks for 50% of a Mixtral and gets 50% of its attention
    layers alone (a few percent of the model) learns it here."""
    stacked = stacked_weights(model, include, exclude, types)
    if not stacked:
        return None
    total = max(sum(p.numel() for p in model.parameters()), 1)
    left = sum(p.numel() for _, p in stacked)
    chosen = sum(_weight_size(m) for m in selected)
    first, param = stacked[0]
    verb = "sparsified" if packing else "pruned"
    note = (f"{len(stacked)} stacked weight(s) holding {left / total:.0%} of {type(model).__name__}'s parameters "
            f"are not {verb} (first: {first!r}, shape {list(param.shape)}): fused mixture-of-experts layers keep "
            "their experts' matrices stacked in such parameters, which are not layers sparsekern can "
            f"{'pack (they stay dense)' if packing else 'prune'}. The {len(selected)} layer(s) {verb} hold "
            f"{chosen / total:.0%} of the parameters")
    if not packing:
        note += ": the sparsity asked for applies to them alone"
    return note + " (exclude= the experts' modules to leave them out without this warning)"


def _weight_size(module: nn.Module) -> int:
    for name in WEIGHT_NAMES:  # the stored Parameter: a masked or gated `weight` is computed
        try:
            return module.get_parameter(name).numel()
        except AttributeError:
            continue
    return 0


def _kinds(types: tuple[type, ...]) -> str:
    return ", ".join(t.__name__ for t in types)


def _packed_note(model: nn.Module, include: Selector, exclude: Selector) -> str | None:
    """A note naming the SparseLinear layers that pass include/exclude (no method prunes
    packed layers), or None when there are none."""
    from ..sparse_linear import SparseLinear  # here: sparse_linear is imported after prune

    packed = [name for name, module in model.named_modules()
              if isinstance(module, SparseLinear) and wanted(name, module, include, exclude)]
    if not packed:
        return None
    return (f"its {len(packed)} SparseLinear layer(s) are already packed: prune before sparsekern.sparsify "
            f"(layer.to_dense() gives an nn.Linear back; first: {packed[0]!r})")


def _nothing_selected(model: nn.Module, include: Selector, exclude: Selector, types: tuple[type, ...],
                      notes: list[str]) -> ValueError:
    message = (f"no prunable module ({_kinds(types)}) in {type(model).__name__} with "
               f"include={include!r}, exclude={exclude!r}")
    packed = _packed_note(model, include, exclude)
    return ValueError("; ".join([message, *notes, *([packed] if packed else [])]))


def check_materialized(model: nn.Module, modules: list[tuple[str, nn.Module]]) -> None:
    """Raise ValueError when a selected module's parameters are on the meta device:
    they have shapes but no values, and torch's own errors on them are cryptic."""
    on_meta = [name or type(module).__name__ for name, module in modules
               if any(p.is_meta for p in module.parameters())]
    if on_meta:
        shown = ", ".join(on_meta[:3]) + (f" and {len(on_meta) - 3} more" if len(on_meta) > 3 else "")
        raise ValueError(
            f"{type(model).__name__} has weights on the meta device ({shown}): meta tensors have a shape "
            "but hold no values, so there is nothing to prune or measure. Load the weights first: fill a "
            "model built on a real device with sparsekern.load(model, path) or model.load_state_dict(...), "
            "or materialize this one with model.to_empty(device='cpu') and then "
            "model.load_state_dict(state_dict), and prune after that")


def select(model: nn.Module, include: Selector = None, exclude: Selector = None,
           types: tuple[type, ...] = (nn.Linear,)) -> list[tuple[str, nn.Module]]:
    """Every module of ``types`` (default: every nn.Linear) whose qualified name passes
    ``include`` (default: all) and not ``exclude``: what reports and penalties cover.
    Raises ValueError when nothing is left, since pruning nothing is always a mistake,
    and when a selected module is on the meta device."""
    types = check_arguments(model, include, exclude, types)
    chosen = [(name, module) for name, module in model.named_modules()
              if isinstance(module, types) and wanted(name, module, include, exclude)]
    if not chosen:
        raise _nothing_selected(model, include, exclude, types, [])
    check_materialized(model, chosen)
    return chosen


def prunable(model: nn.Module, include: Selector = None, exclude: Selector = None,
             types: tuple[type, ...] = (nn.Linear,), prune_tied: bool = False) -> list[tuple[str, nn.Module]]:
    """The modules a pruning method prunes: those of ``select`` minus, unless
    ``prune_tied``, those whose weight is tied to another parameter (see
    ``tied_weights``): pruning GPT-2's lm_head would zero the token embedding it
    shares, which must be asked for. Warns about every tied module it skips and about
    linear-like modules of other types (transformers' Conv1D for the methods that
    take nn.Linear only), so nothing is skipped
    silently; raises ValueError, saying why, when nothing is left."""
    types = check_arguments(model, include, exclude, types)
    lookalikes = lookalike_note(model, include, exclude, types)
    notes = [lookalikes] if lookalikes else []
    tied = {} if prune_tied else tied_weights(model)
    kept = []
    for name, module in model.named_modules():
        if not isinstance(module, types) or not wanted(name, module, include, exclude):
            continue
        others = next((tied[key] for key in (_qualified(name, w) for w in WEIGHT_NAMES) if key in tied), None)
        if others:
            notes.append(f"{_qualified(name, 'weight')} is tied to {', '.join(others)}: skipped; "
                         "pass prune_tied=True to prune it")
        else:
            kept.append((name, module))
    if not kept:
        raise _nothing_selected(model, include, exclude, types, notes)
    packed = _packed_note(model, include, exclude)
    if packed:  # some layers pruned, the packed ones not: the sparsity asked for is not the model's
        notes.append(f"{type(model).__name__}: {packed}; they are not pruned")
    check_materialized(model, kept)
    stacked = stacked_note(model, include, exclude, types, [module for _, module in kept])
    if stacked:
        notes.append(stacked)
    for note in notes:
        warnings.warn(note, stacklevel=3)  # the caller of the pruning method
    from ._masks import follow_attention  # here: _masks imports this module

    follow_attention(model)  # before any mask: MultiheadAttention reads out_proj.weight itself
    return kept
