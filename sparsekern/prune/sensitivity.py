"""Per-layer sensitivity analysis and sparsity allocation from it.

nn.Linear (and ``types``) only: transformers' Conv1D layers (GPT-2) are left as they
are, named in a warning; magnitude, random, nm, wanda and sparsegpt prune them.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

from ._data import progress
from ._masks import check_fraction, restoring
from ._select import Selector, prunable
from .magnitude import magnitude


@dataclass
class SensitivityTable:
    """metric[layer][i]: ``eval_fn`` with only ``layer`` pruned to ``sparsities[i]``."""
    sparsities: list[float]
    baseline: float
    metric: dict[str, list[float]]
    params: dict[str, int]
    higher_is_better: bool = True

    def loss(self, layer: str) -> list[float]:
        """Metric lost at each sparsity (>= 0, and never smaller at a higher sparsity:
        pruning more is not assumed to help; small gains are noise)."""
        sign = 1.0 if self.higher_is_better else -1.0
        losses, worst = [], 0.0
        for value in self.metric[layer]:
            worst = max(worst, sign * (self.baseline - value))
            losses.append(worst)
        return losses

    def __str__(self) -> str:
        name_width = max(len("layer"), *(len(name) for name in self.metric))
        header = f"{'layer':<{name_width}}  {'params':>9}  " + "  ".join(f"{s:>7.0%}" for s in self.sparsities)
        lines = [f"sensitivity (baseline metric {self.baseline:.4g}, "
                 f"{'higher' if self.higher_is_better else 'lower'} is better)", header, "-" * len(header)]
        for name, values in self.metric.items():
            lines.append(f"{name:<{name_width}}  {self.params[name]:>9,}  "
                         + "  ".join(f"{v:>7.4g}" for v in values))
        return "\n".join(lines)


def sensitivity(model: nn.Module, eval_fn: Callable[[nn.Module], float],
                sparsities: Sequence[float] = (0.5, 0.7, 0.8, 0.9, 0.95), *, higher_is_better: bool = True,
                include: Selector = None, exclude: Selector = None,
                types: tuple[type, ...] = (nn.Linear,), prune_tied: bool = False) -> SensitivityTable:
    """Prune one layer at a time by magnitude to each of ``sparsities``, evaluate with
    ``eval_fn(model) -> float`` (e.g. validation accuracy), and restore the layer (Han
    et al. 2015, Fig. 6; Li et al. 2017, Sec. 3.2). The model is unchanged afterwards.
    Tied weights are skipped unless ``prune_tied`` (see ``magnitude``). Feed the table
    to ``allocate``."""
    values = [check_fraction(s, "sparsities[i]") for s in sparsities]
    if not values or sorted(set(values)) != values:
        raise ValueError(f"sparsities = {list(sparsities)!r}, expected a non-empty increasing list")
    modules = prunable(model, include, exclude, types, prune_tied)
    table = SensitivityTable(values, _metric(eval_fn, model, "the unpruned model"), {name: [] for name, _ in modules},
                             {name: module.weight.numel() for name, module in modules}, higher_is_better)
    trials = [(name, module, s) for name, module in modules for s in values]
    for name, module, s in progress(trials, "sensitivity"):
        with restoring(module):
            magnitude(module, s, scope="layer", types=types)
            table.metric[name].append(_metric(eval_fn, model, f"{name} at sparsity {s}"))
    return table


def _metric(eval_fn: Callable[[nn.Module], float], model: nn.Module, what: str) -> float:
    """``eval_fn(model)`` as a float; a NaN or infinity would rank as "no loss" (every
    comparison with NaN is False), so ``allocate`` would prune that layer most."""
    value = float(eval_fn(model))
    if not math.isfinite(value):
        raise ValueError(f"eval_fn returned {value} for {what}: it must return a finite number "
                         "(a diverged loss? evaluate in float32, or on more data)")
    return value


def _lower_hull(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Lower convex hull of points sorted by x (Andrew's monotone chain)."""
    hull: list[tuple[float, float]] = []
    for x, y in points:
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (x2 - x1) * (y - y1) - (y2 - y1) * (x - x1) <= 0:  # hull[-1] lies on or above
                hull.pop()
            else:
                break
        hull.append((x, y))
    return hull


def allocate(table: SensitivityTable, target: float) -> dict[str, float]:
    """Per-layer sparsities whose parameter-weighted mean is exactly ``target`` with
    the least total metric loss, treating each layer's loss as piecewise linear between
    measured points (its convex hull; exact for that model) and losses as additive.
    Spend the pruning budget on the cheapest (loss per pruned weight) segments first.
    Apply with ``magnitude(model, allocation, scope="layer")``."""
    target = check_fraction(target, "target")
    total = sum(table.params.values())
    reachable = sum(n * table.sparsities[-1] for n in table.params.values()) / total
    if target > reachable:
        raise ValueError(f"target = {target}, but the table reaches at most {reachable:.4f} "
                         f"(highest measured sparsity {table.sparsities[-1]})")
    segments = []  # (loss per pruned weight, layer, sparsity from, sparsity to)
    for name, n in table.params.items():
        hull = _lower_hull([(0.0, 0.0), *zip(table.sparsities, table.loss(name))])
        for (s0, l0), (s1, l1) in zip(hull, hull[1:]):
            segments.append(((l1 - l0) / (n * (s1 - s0)), name, s0, s1))
    segments.sort(key=lambda segment: segment[0])  # stable; convexity keeps each layer's order
    allocation = dict.fromkeys(table.params, 0.0)
    budget = target * total
    for _, name, s0, s1 in segments:
        if budget <= 0:
            break
        step = min(s1 - s0, budget / table.params[name])
        allocation[name] = s0 + step
        budget -= step * table.params[name]
    return allocation
