"""Gradual pruning during fine-tuning on the cubic schedule of Zhu & Gupta 2017."""
from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping

import torch
from torch import nn

from ._masks import apply_mask, check_fraction, follow_attention, is_masked
from .magnitude import magnitude, random
from .structured import structured
from .taylor import taylor
from .wanda import wanda


def cubic_sparsity(step: int, final_sparsity: float, start_step: int, end_step: int,
                   initial_sparsity: float = 0.0) -> float:
    """s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3, clamped to [t0, t0 + n dt]
    (Zhu & Gupta 2017, "To prune, or not to prune"); here t0 = start_step and
    t0 + n dt = end_step."""
    progress = min(max((step - start_step) / max(end_step - start_step, 1), 0.0), 1.0)
    return final_sparsity + (initial_sparsity - final_sparsity) * (1.0 - progress) ** 3


# Each takes (model, sparsity=, **kwargs) (structured calls it amount=); data-driven ones
# get batches / loss_fn via kwargs.
METHODS: dict[str, Callable[..., nn.Module]] = {
    "magnitude": magnitude, "random": random, "taylor": taylor, "wanda": wanda, "structured": structured,
}


def _check_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} = {value!r}, expected an integer step count")
    return value


class GradualPruner:
    """Drive a pruning method along the cubic schedule while fine-tuning (Zhu & Gupta 2017).

    Call ``.step()`` after each ``optimizer.step()``. Every ``frequency`` steps from
    ``start_step`` to ``end_step`` (and at ``end_step``) it prunes to
    ``cubic_sparsity(t, ...)``; masks only grow, and they stay enforced in between.

    method: "magnitude", "random", "taylor", "wanda", "structured" (masking, not
        shrinking) or a callable ``f(model, sparsity=s, **method_kwargs)``.
    method_kwargs: passed on every call (scope=, include=, prune_tied=,
        max_layer_sparsity=, loss_fn= and batches= for taylor, batches= for wanda, ...);
        checked against the method's signature here, not first at ``start_step``.

    Checkpoints: ``state_dict()`` holds the step count, the last target and every mask of
    the model by module name. To resume, build the model, optimizer and pruner as before,
    then ``pruner.load_state_dict(...)`` (attaches the masks, so that the model's pruned
    ``weight_orig`` / ``weight_mask`` keys load), ``model.load_state_dict(...)`` and
    ``optimizer.load_state_dict(...)``.
    """

    def __init__(self, model: nn.Module, method: str | Callable[..., nn.Module] = "magnitude", *,
                 final_sparsity: float, start_step: int = 0, end_step: int, frequency: int = 1,
                 initial_sparsity: float = 0.0, **method_kwargs):
        if isinstance(method, str) and method not in METHODS:
            raise ValueError(f"method = {method!r}, expected one of {list(METHODS)} or a callable")
        if not isinstance(method, str) and not callable(method):
            raise TypeError(f"method = {method!r}, expected one of {list(METHODS)} or a callable")
        self.final_sparsity = check_fraction(final_sparsity, "final_sparsity")
        self.initial_sparsity = check_fraction(initial_sparsity, "initial_sparsity")
        if self.initial_sparsity > self.final_sparsity:  # masks only grow: the schedule could not go down
            raise ValueError(f"initial_sparsity = {initial_sparsity!r} > final_sparsity = {final_sparsity!r}")
        # Integers: with a float step t == end_step (the final prune) could never hold.
        if not 0 <= _check_int(start_step, "start_step") < _check_int(end_step, "end_step"):
            raise ValueError(f"start_step = {start_step!r}, end_step = {end_step!r}: "
                             "expected 0 <= start_step < end_step")
        if _check_int(frequency, "frequency") < 1:
            raise ValueError(f"frequency = {frequency!r}, expected an integer >= 1")
        self.model, self.method_kwargs = model, method_kwargs
        self.method = METHODS[method] if isinstance(method, str) else method
        self._fraction_name = "amount" if self.method is structured else "sparsity"
        try:
            signature = inspect.signature(self.method)
        except (TypeError, ValueError):  # none to read (a C function): its first call checks the arguments
            signature = None
        if signature is not None:
            try:  # a misspelled or missing argument fails now, not at start_step hours later
                signature.bind(model, **{self._fraction_name: self.final_sparsity}, **method_kwargs)
            except TypeError as error:
                raise TypeError(f"method_kwargs {sorted(method_kwargs)} do not fit method {method!r}: "
                                f"{error}") from None
        self.start_step, self.end_step, self.frequency = start_step, end_step, frequency
        self.step_count = 0
        self.sparsity = 0.0  # target of the last pruning call

    def step(self) -> float | None:
        """Advance one step; prune when the schedule says so. Returns the sparsity
        pruned to, or None when this step did not prune."""
        self.step_count += 1
        t = self.step_count
        if not self.start_step <= t <= self.end_step:
            return None
        if (t - self.start_step) % self.frequency and t != self.end_step:
            return None
        target = cubic_sparsity(t, self.final_sparsity, self.start_step, self.end_step, self.initial_sparsity)
        if target > 0:
            self.method(self.model, **{self._fraction_name: target}, **self.method_kwargs)
            self.sparsity = target
        return target

    def state_dict(self) -> dict:
        """{"step_count", "sparsity", "masks": {module name: bool mask}} (see the class docs)."""
        masks = {name: module.weight_mask.detach().bool().clone()
                 for name, module in self.model.named_modules() if is_masked(module)}
        return {"step_count": self.step_count, "sparsity": self.sparsity, "masks": masks}

    def load_state_dict(self, state: Mapping) -> None:
        """Continue from ``state_dict()``: restore the counters and attach the masks (ANDed
        with any the model has) before the model's own ``load_state_dict``."""
        missing = {"step_count", "sparsity", "masks"} - set(state)
        if missing:
            raise ValueError(f"state lacks {sorted(missing)}: pass what GradualPruner.state_dict() returned")
        modules = dict(self.model.named_modules())
        unknown = sorted(set(state["masks"]) - set(modules))
        if unknown:
            raise ValueError(f"state has masks for modules the model does not have: {unknown[:3]}")
        follow_attention(self.model)
        for name, mask in state["masks"].items():
            apply_mask(modules[name], torch.as_tensor(mask), name)
        self.step_count, self.sparsity = int(state["step_count"]), float(state["sparsity"])
