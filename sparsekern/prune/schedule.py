"""Gradual pruning during fine-tuning on the cubic schedule of Zhu & Gupta 2017."""
from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ._masks import check_fraction
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


def _structured(model, sparsity, **kwargs):
    return structured(model, amount=sparsity, **kwargs)


# Each takes (model, sparsity, **kwargs); data-driven ones get batches / loss_fn via kwargs.
METHODS: dict[str, Callable[..., nn.Module]] = {
    "magnitude": magnitude, "random": random, "taylor": taylor, "wanda": wanda, "structured": _structured,
}


class GradualPruner:
    """Drive a pruning method along the cubic schedule while fine-tuning (Zhu & Gupta 2017).

    Call ``.step()`` after each ``optimizer.step()``. Every ``frequency`` steps from
    ``start_step`` to ``end_step`` (and at ``end_step``) it prunes to
    ``cubic_sparsity(t, ...)``; masks only grow, and they stay enforced in between.

    method: "magnitude", "random", "taylor", "wanda", "structured" (masking, not
        shrinking) or a callable ``f(model, sparsity=s, **method_kwargs)``.
    method_kwargs: passed on every call (scope=, include=, prune_tied=,
        max_layer_sparsity=, loss_fn= and batches= for taylor, batches= for wanda, ...).
    """

    def __init__(self, model: nn.Module, method: str | Callable[..., nn.Module] = "magnitude", *,
                 final_sparsity: float, start_step: int = 0, end_step: int, frequency: int = 1,
                 initial_sparsity: float = 0.0, **method_kwargs):
        if isinstance(method, str) and method not in METHODS:
            raise ValueError(f"method = {method!r}, expected one of {list(METHODS)} or a callable")
        self.final_sparsity = check_fraction(final_sparsity, "final_sparsity")
        self.initial_sparsity = check_fraction(initial_sparsity, "initial_sparsity")
        if not 0 <= start_step < end_step:
            raise ValueError(f"start_step = {start_step!r}, end_step = {end_step!r}: "
                             "expected 0 <= start_step < end_step")
        if not isinstance(frequency, int) or frequency < 1:
            raise ValueError(f"frequency = {frequency!r}, expected an integer >= 1")
        self.model, self.method_kwargs = model, method_kwargs
        self.method = METHODS[method] if isinstance(method, str) else method
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
            self.method(self.model, sparsity=target, **self.method_kwargs)
            self.sparsity = target
        return target
