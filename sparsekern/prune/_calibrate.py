"""Calibration passes shared by the data-driven one-shot methods (wanda, sparsegpt):
statistics of every selected layer's inputs, gathered through forward pre-hooks, then a
pruning step.

Two ways to run it:
- all at once: one pass of the whole model over the batches, then every layer pruned;
- sequentially (Wanda's and SparseGPT's own recipe for LLMs): the inputs of the first
  block of the decoder stack, and every block's other arguments, are captured, then block
  by block the calibration inputs run through that block alone, its layers are pruned, and
  the pruned block's outputs become the next block's inputs. Block i so sees what blocks 0..i-1 produce *after*
  they were pruned, and only one block's activations are held at a time.
"""
from __future__ import annotations

import contextlib
import copy
import warnings
import weakref
from collections.abc import Callable, Iterable

import torch
from torch import nn

from ._data import calibration, progress, run_model
from ._linear import in_features

# Keyword arguments through which a block reaches the KV cache: calibration runs without one.
_CACHE_KWARGS = ("cache", "past_key_values", "past_key_value", "layer_past")


class _Stop(Exception):
    """Raised by the hook on the first block once its inputs are captured: the rest of the
    model need not run."""


def find_blocks(model: nn.Module, blocks: str | None = None) -> tuple[str, nn.ModuleList] | None:
    """(name, module list) of the decoder (or encoder) stack: ``blocks`` names it
    ("model.layers"), else the nn.ModuleList of at least 2 children of one class holding
    the most parameters (Llama's model.layers, GPT-2's transformer.h, BERT's
    encoder.layer). None when the model has none."""
    if blocks is not None:
        if not isinstance(blocks, str):
            raise TypeError(f"blocks = {blocks!r}: expected the qualified name of a module list, e.g. 'model.layers'")
        try:
            found = model.get_submodule(blocks)
        except AttributeError:
            raise ValueError(f"blocks = {blocks!r}: {type(model).__name__} has no such module") from None
        if not isinstance(found, (nn.ModuleList, nn.Sequential)) or len(found) < 2:
            raise ValueError(f"blocks = {blocks!r} is a {type(found).__name__} of {len(list(found.children()))} "
                             "children: expected an nn.ModuleList (or nn.Sequential) of at least 2 blocks")
        return blocks, found
    best, best_size = None, 0
    for name, module in model.named_modules():
        children = list(module.children()) if isinstance(module, nn.ModuleList) else []
        if len(children) < 2 or len({type(c) for c in children}) != 1:
            continue
        size = sum(p.numel() for p in module.parameters())
        if size > best_size:
            best, best_size = (name, module), size
    return best


@contextlib.contextmanager
def _without_cache(model: nn.Module):
    """Hugging Face models keep a KV cache when config.use_cache: calibration must not."""
    config = getattr(model, "config", None)
    saved = getattr(config, "use_cache", None)
    if saved is not None:
        config.use_cache = False
    try:
        yield
    finally:
        if saved is not None:
            config.use_cache = saved


def _hidden(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _with_hidden(args: tuple, kwargs: dict, hidden: torch.Tensor) -> tuple[tuple, dict]:
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


def _capture_block_inputs(model: nn.Module, stack: nn.ModuleList, batches: Iterable, desc: str) -> list:
    """Per batch, [(args, kwargs)] of each block's first call in one forward of the model (which
    stops after the last block): block 0's in full, later blocks' with None where the hidden
    states go, which calibration fills in with the outputs of the blocks before them as pruned.
    Later blocks keep the other arguments the stack gave them: T5's blocks 1..n take the
    relative position bias block 0 computed and returned (block 0's None made them compute
    none), Gemma 2 and 3 give sliding-window and global layers different masks (Gemma 3 also
    different rotary embeddings). A block the model did not call takes block 0's arguments."""
    captured = []
    last = len(stack) - 1

    def hook_for(i):
        def hook(module, args, kwargs):
            calls = captured[-1]
            if calls[i] is not None:  # called twice in one forward: its first call counts
                return
            if not args and "hidden_states" not in kwargs:
                raise TypeError(f"{type(module).__name__} was called without a positional input or hidden_states=: "
                                "cannot calibrate it block by block; pass sequential=False")
            kwargs = {k: (None if k in _CACHE_KWARGS else (False if k == "use_cache" else v))
                      for k, v in kwargs.items()}
            args = tuple(args)
            if i > 0:  # not this forward's hidden states: holding them would keep every block's
                args, kwargs = _with_hidden(args, kwargs, None)
            calls[i] = (args, kwargs)
            if i == last:
                raise _Stop
        return hook

    handles = [block.register_forward_pre_hook(hook_for(i), with_kwargs=True) for i, block in enumerate(stack)]
    try:
        for batch in calibration(batches, desc):
            captured.append([None] * len(stack))
            try:
                run_model(model, batch)
            except _Stop:
                pass
            calls = captured[-1]
            if calls[0] is None:
                raise ValueError(f"the model returned without calling its first block ({type(stack[0]).__name__}): "
                                 "pass blocks= naming the stack the model runs, or sequential=False")
            for i in range(1, len(stack)):
                if calls[i] is None:
                    calls[i] = _with_hidden(*calls[0], None)
    finally:
        for handle in handles:
            handle.remove()
    return captured


class _Group:
    """Modules fed one stats object: so far every one of them received the same tensor
    objects, in the same order (or none). ``joinable``: first batch, every member has
    received only the tensor the stats hold. ``pending``/``seen``: later batches, the
    batch's tensor, held until every member has received it, and the members that have."""

    def __init__(self, name: str, stats):
        self.members, self.stats, self.joinable, self.pending, self.seen = [name], stats, False, None, set()


class _Collector:
    """Forward pre-hooks feeding each module's 2-D input to its stats (``stats[name]``).

    With ``share``, modules that receive the same tensor object (Llama's q/k/v projections,
    gate/up) share one stats object, fed once per tensor, which the pruning step
    recognizes by identity to do its work once per distinct input. Sharing is decided
    by object identity within one batch (one forward: ``end_batch`` marks its end), never
    across batches, where a freed tensor's id can be reused:
    - first batch: a module whose first input is, by identity, the first input of a group
      that has seen nothing else joins it (no add); any other module gets its own group;
    - later batches: a group's tensor is added once every member has received that same
      object once. A member receiving another tensor, or a second one, or no tensor when
      others did, ends the group: each member gets its own copy of the stats (which hold
      only what all of them received) plus what it received itself since.
    Sums so match, operation for operation, what one stats object per module would hold.
    Without ``share``, one stats object per module, fed on every call."""

    def __init__(self, modules: list[tuple[str, nn.Module]], make_stats: Callable, share: bool = False):
        self.make_stats, self.share, self.batches = make_stats, share, 0
        self.modules = dict(modules)
        self.groups: dict[str, _Group] = {}
        self.first_inputs: dict[int, tuple[weakref.ref, _Group]] = {}  # first batch: id -> (tensor, group)
        self.handles = [module.register_forward_pre_hook(self._hook(name)) for name, module in modules]
        self._own = {} if share else {name: make_stats(name, module) for name, module in modules}

    @property
    def stats(self) -> dict:
        """name -> stats; modules of one group hold the same object."""
        own = dict(self._own)
        for name, group in self.groups.items():
            own[name] = group.stats
        for name, module in self.modules.items():
            if name not in own:  # never called
                own[name] = self._own.setdefault(name, self.make_stats(name, module))
        return own

    def _add(self, name: str, x: torch.Tensor, stats) -> None:
        if x.numel() == 0:
            # A call on no token: an MoE expert no token was routed to, which older transformers'
            # Mixtral (and remote-code MoE models) still call on the empty selection. Added, it
            # would make stats of zero inputs, not none: sparsegpt would take every input for
            # dead and zero the whole expert, wanda would score every weight 0 (an arbitrary
            # mask). Skipped, a layer that only ever got such calls is "unseen": |W|, with a warning.
            return
        stats.add(x.detach().reshape(-1, in_features(self.modules[name])))

    def _hook(self, name: str):
        def hook(module, args):
            if not self.share:
                self._add(name, args[0], self._own[name])
            elif self.batches == 0:
                self._first_batch(name, args[0])
            else:
                self._later_batch(name, args[0])
        return hook

    def _first_batch(self, name: str, x: torch.Tensor) -> None:
        group = self.groups.get(name)
        if group is None:
            entry = self.first_inputs.get(id(x))
            leader = entry[1] if entry is not None and entry[0]() is x else None
            if (leader is not None and leader.joinable
                    and in_features(self.modules[leader.members[0]]) == in_features(self.modules[name])):
                leader.members.append(name)  # the same first tensor: the stats already hold it
                self.groups[name] = leader
                return
            group = self.groups[name] = _Group(name, self.make_stats(name, self.modules[name]))
            self._add(name, x, group.stats)
            group.joinable = True
            # A weak reference: holding the tensor would keep every input of the batch alive.
            self.first_inputs[id(x)] = (weakref.ref(x), group)
            return
        if len(group.members) > 1:
            self._split(group)  # all of them received x, which the stats hold
        group = self.groups[name]
        group.joinable = False  # a second tensor
        self._add(name, x, group.stats)

    def _later_batch(self, name: str, x: torch.Tensor) -> None:
        group = self.groups.get(name)
        if group is None:  # first called after the first batch: on its own
            group = self.groups[name] = _Group(name, self.make_stats(name, self.modules[name]))
        if len(group.members) > 1:
            if name not in group.seen and (not group.seen or x is group.pending):
                group.pending = x
                group.seen.add(name)
                if len(group.seen) == len(group.members):
                    self._add(name, x, group.stats)
                    group.pending = None
                return
            self._split(group)
            group = self.groups[name]
        self._add(name, x, group.stats)

    def _split(self, group: _Group) -> None:
        """Each member on its own, from the stats all of them share, plus the pending
        tensor for those that received it."""
        group.joinable = False
        for i, name in enumerate(group.members):
            own = group.stats if i == len(group.members) - 1 else copy.deepcopy(group.stats)
            if group.pending is not None and name in group.seen:
                self._add(name, group.pending, own)
            self.groups[name] = _Group(name, own)

    def end_batch(self) -> None:
        for group in {id(g): g for g in self.groups.values()}.values():
            if group.pending is not None and len(group.members) > 1 and len(group.seen) < len(group.members):
                self._split(group)  # some members received nothing this batch
        for group in self.groups.values():
            group.pending, group.seen = None, set()
        self.first_inputs.clear()
        self.batches += 1

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _collect_then_prune(modules, make_stats, share, prune_group, forwards, desc) -> None:
    """Runs ``forwards`` (one call per calibration batch) with the modules' stats collected,
    then prunes them."""
    collector = _Collector(modules, make_stats, share)
    try:
        for forward in forwards:
            forward()
            collector.end_batch()
    finally:
        collector.remove()
    if collector.batches == 0:
        raise ValueError(f"batches is empty: {desc} needs at least one calibration batch")
    stats = collector.stats
    prune_group([(name, module, stats[name]) for name, module in modules])


def _pass(model, modules, batches, make_stats, prune_group, desc, share) -> None:
    """One pass of the whole model over the batches, then the modules pruned."""
    forwards = (lambda batch=batch: run_model(model, batch) for batch in calibration(batches, desc))
    _collect_then_prune(modules, make_stats, share, prune_group, forwards, desc)


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable, modules: list[tuple[str, nn.Module]], make_stats: Callable,
              prune_group: Callable, *, sequential: bool | None, blocks: str | None, desc: str,
              share: bool = False) -> None:
    """Collect ``make_stats(name, module)`` objects (``.add(x)`` takes the module's input as
    [tokens, in_features]) and call ``prune_group([(name, module, stats), ...])``:
    block by block when ``sequential`` (None: when a block stack is found), else once.
    Layers outside the stack (lm_head) are calibrated last, on the pruned model.
    ``share``: layers that receive the same tensor objects share one stats object (see
    ``_Collector``), which ``prune_group`` can recognize by identity."""
    if sequential is not None and not isinstance(sequential, bool):
        raise TypeError(f"sequential = {sequential!r}: expected True, False or None (auto)")
    found = find_blocks(model, blocks) if sequential is not False else None
    if sequential and found is None:
        raise ValueError(f"sequential=True, but {type(model).__name__} has no stack of blocks (an nn.ModuleList "
                         "of at least 2 modules of one class): name it with blocks=, or pass sequential=False")
    if found is None:
        with _without_cache(model):
            _pass(model, modules, batches, make_stats, prune_group, desc, share)
        return
    stack_name, stack = found
    if not isinstance(batches, (list, tuple)):
        batches = list(batches)  # iterated once per pass
    prefixes = [f"{stack_name}.{i}." if stack_name else f"{i}." for i in range(len(stack))]
    inside = [[(n, m) for n, m in modules if n.startswith(p)] for p in prefixes]
    outside = [(n, m) for n, m in modules if not any(n.startswith(p) for p in prefixes)]
    with _without_cache(model):
        calls = _capture_block_inputs(model, stack, batches, desc)
        if not calls:
            raise ValueError(f"batches is empty: {desc} needs at least one calibration batch")
        inputs = [batch[0] for batch in calls]
        for i, block in enumerate(progress(stack, f"{desc} blocks")):
            if inside[i]:
                forwards = (lambda args=args, kwargs=kwargs, block=block: block(*args, **kwargs)
                            for args, kwargs in inputs)
                _collect_then_prune(inside[i], make_stats, share, prune_group, forwards, desc)
            if i + 1 < len(stack):  # the next block's inputs: its own arguments, this block's output as pruned
                inputs = [_with_hidden(*batch[i + 1], _first(block(*args, **kwargs)))
                          for batch, (args, kwargs) in zip(calls, inputs)]
        del inputs, calls
        if outside:
            _pass(model, outside, batches, make_stats, prune_group, desc, share)


def _first(output):
    return output[0] if isinstance(output, (tuple, list)) else output


def warn_unseen(method: str, names: list[str], fallback: str) -> None:
    if names:
        warnings.warn(f"{method}: no input reached {names} (called functionally, or mixture-of-experts experts "
                      f"that no calibration token was routed to?); {fallback}", stacklevel=4)
