"""sparsekern.summary(model): a per-layer table of format, shape, sparsity and bytes."""
from typing import Dict, List, NamedTuple, Tuple

from torch import nn

from .prune._select import stacked_weights
from .sparse_linear import SparseLinear


class LayerRow(NamedTuple):
    name: str
    format: str
    out_features: int
    in_features: int
    sparsity: float
    weight_bytes: int
    dense_bytes: int
    note: str
    # The cache tiles pack-time tuning chose ("" for this CPU's defaults or no tuning); a default,
    # so rows pickled before the column existed still load.
    tuning: str = ""
    # Bytes of the in-memory layouts the layer's kernel built (SparseLinear.derived_bytes).
    derived_bytes: int = 0


class Summary:
    """Rows for every SparseLinear and nn.Linear of a model. print(summary) (str()) gives the
    table: layer, format, shape, sparsity, weight bytes and their ratio to dense, why
    sparsify chose the format, and the cache tiles pack-time tuning chose (`tuning`,
    planner.choose_tiles), then the stacked 3-D weights no row covers (fused mixture-of-experts
    experts, left dense: `.stacked`, `.stacked_bytes`) and the bytes of in-memory layouts the
    kernels have built, if any (`.derived_bytes`); `.plan` gives the choices back for
    sparsify(plan=...)."""

    def __init__(self, rows: List[LayerRow], stacked: List[Tuple[str, Tuple[int, ...], int]] = ()):
        self.rows = rows
        # (name, shape, bytes) of the 3-D stacked weights (fused MoE experts) no row covers: dense,
        # and in an MoE model most of its weights, so the totals above must not pass for the model's.
        self.stacked = list(stacked)

    @property
    def stacked_bytes(self) -> int:
        """Bytes of the stacked 3-D weights (fused mixture-of-experts experts) left dense."""
        return sum(size for _, _, size in self.stacked)

    @property
    def plan(self) -> Dict[str, str]:
        """{layer name: format} of every SparseLinear: pass it to sparsify(plan=...) to make the
        same choices again without timing (on another run, or another copy of the model)."""
        return {r.name: r.format for r in self.rows if r.format != "nn.Linear"}

    @property
    def weight_bytes(self) -> int:
        return sum(r.weight_bytes for r in self.rows)

    @property
    def dense_bytes(self) -> int:
        return sum(r.dense_bytes for r in self.rows)

    @property
    def derived_bytes(self) -> int:
        """Bytes of the in-memory layouts the layers' kernels have built so far (not saved)."""
        return sum(getattr(r, "derived_bytes", 0) for r in self.rows)

    def __str__(self) -> str:
        # The tuning column only where tuning kept something: most machines keep the defaults.
        tuned = any(getattr(r, "tuning", "") for r in self.rows)
        header = ("layer", "format", "shape (out x in)", "sparsity", "weight bytes", "vs dense", "note",
                  *(("tuning",) if tuned else ()))
        lines = [header]
        for r in self.rows:
            lines.append((r.name, r.format, f"{r.out_features} x {r.in_features}", f"{r.sparsity:.1%}",
                          f"{r.weight_bytes:,}", f"{r.weight_bytes / r.dense_bytes:.2f}x" if r.dense_bytes else "-", r.note,
                          *((getattr(r, "tuning", ""),) if tuned else ())))
        total = self.dense_bytes
        lines.append(("total", "", "", "", f"{self.weight_bytes:,}",
                      f"{self.weight_bytes / max(total, 1):.2f}x", "", *(("",) if tuned else ())))
        widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
        text = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in lines]
        text.insert(1, "  ".join("-" * w for w in widths))
        if self.stacked_bytes:
            name, shape, _ = self.stacked[0]
            with_them = self.weight_bytes + self.stacked_bytes
            text.append(f"not in the table: {len(self.stacked)} stacked weight(s) of {self.stacked_bytes:,} bytes, "
                        f"dense (first: {name}, {' x '.join(map(str, shape))}): fused mixture-of-experts layers "
                        "keep their experts' matrices stacked in one parameter, which sparsify does not pack; "
                        f"with them the total is {with_them:,} bytes, "
                        f"{with_them / max(total + self.stacked_bytes, 1):.2f}x of dense")
        if self.derived_bytes:
            text.append(f"in memory besides: {self.derived_bytes:,} bytes of layouts the kernels built for "
                        "batched calls (SparseLinear.derived_bytes; not saved)")
        return "\n".join(text)

    __repr__ = __str__


def summary(model: nn.Module) -> Summary:
    """Per layer: format, shape, sparsity, bytes of the stored weight and of its dense form; then
    the stacked 3-D weights (fused mixture-of-experts experts) that no row covers, if any."""
    rows = []
    for name, module in model.named_modules():
        if isinstance(module, SparseLinear):
            dtype = module.value_dtype
            dense = module.in_features * module.out_features * dtype.itemsize
            rows.append(LayerRow(name or "(model)", module.format, module.out_features, module.in_features,
                                 module.sparsity, module.weight_bytes, dense, module.choice_note,
                                 getattr(module, "tuning_note", ""), module.derived_bytes))
        elif isinstance(module, nn.Linear):
            w = module.weight
            zeros = 1 - float(w.count_nonzero()) / max(w.numel(), 1)
            rows.append(LayerRow(name or "(model)", "nn.Linear", module.out_features, module.in_features,
                                 zeros, w.numel() * w.element_size(), w.numel() * w.element_size(),
                                 "not sparsified", ""))
    stacked = [(name, tuple(p.shape), p.numel() * p.element_size())
               for name, p in stacked_weights(model, types=(nn.Linear, SparseLinear))]
    return Summary(rows, stacked)
