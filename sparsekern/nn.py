"""SparseLinear (a drop-in nn.Linear over packed sparse weights), sparsify, summary."""
from typing import Dict, Iterable, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from . import _backend, ops
from .formats import csr as csr_format
from .formats.csr import CsrTensors
from .timing import time_interleaved

FORMATS = ("csr", "dense")
CHOICES = FORMATS + ("auto",)
_CSR_BUFFERS = ("row_ptr", "col_idx", "values")


def _check_format(format: str, allowed: Sequence[str]) -> None:
    if format not in allowed:
        raise ValueError(f"format = {format!r}, expected one of {', '.join(map(repr, allowed))}")


class SparseLinear(nn.Module):
    """y = x @ W.T + b with W stored packed ('csr') or dense ('dense').

    Takes x [..., in_features] of any strides, returns [..., out_features] like nn.Linear.
    CSR buffers: row_ptr [out + 1] int64, col_idx [nnz] uint16/int32 (buffers) and
    values [nnz] (a Parameter: a pruned model can be fine-tuned in packed form).
    Build one with `SparseLinear.from_dense(linear)`; `SparseLinear(in, out, nnz=0)` is an
    empty skeleton that `load_state_dict` fills with any nnz.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, format: str = "csr",
                 nnz: int = 0, dtype: Optional[torch.dtype] = None, device=None):
        super().__init__()
        _check_format(format, FORMATS)
        if in_features < 0 or out_features < 0:
            raise ValueError(f"in_features = {in_features} and out_features = {out_features} must be >= 0")
        if not 0 <= nnz <= in_features * out_features:
            raise ValueError(f"nnz = {nnz}, expected 0 .. {in_features * out_features}")
        self.in_features, self.out_features, self.format = in_features, out_features, format
        dtype = dtype or torch.get_default_dtype()
        if format == "csr":
            row_ptr = torch.zeros(out_features + 1, dtype=torch.int64, device=device)
            row_ptr[-1] = nnz  # a valid (if lopsided) CSR until a state_dict fills it
            self.register_buffer("row_ptr", row_ptr)
            self.register_buffer("col_idx", torch.zeros(nnz, dtype=csr_format.index_dtype(in_features),
                                                        device=device))
            self.values = nn.Parameter(torch.zeros(nnz, dtype=dtype, device=device))
        else:
            self.weight = nn.Parameter(torch.zeros(out_features, in_features, dtype=dtype, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device)) if bias else None
        self.choice_note = ""  # why sparsify(format="auto") chose this format

    @classmethod
    def from_dense(cls, linear: nn.Linear, mask: Optional[torch.Tensor] = None, format: str = "csr",
                   value_dtype: Optional[torch.dtype] = None) -> "SparseLinear":
        """Packs an nn.Linear. mask=None takes the mask that sparsekern.prune or
        torch.nn.utils.prune attached (`weight_mask`), else the weight's own zeros.
        value_dtype (e.g. torch.bfloat16) stores the weights in another dtype than the bias."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"from_dense takes an nn.Linear, got {type(linear).__name__}")
        _check_format(format, CHOICES)
        # Under a pruning reparametrization `weight` is only refreshed by forward(): read the
        # parameter the optimizer updates and the mask itself.
        weight = getattr(linear, "weight_orig", linear.weight).detach()
        if mask is None:
            mask = getattr(linear, "weight_mask", None)
        mask = csr_format._check_mask(weight, mask)
        has_bias = linear.bias is not None
        if format == "auto":
            format, note = _choose_format(weight, mask, has_bias, value_dtype)
        else:
            note = ""
        layer = cls(linear.in_features, linear.out_features, bias=has_bias, format=format,
                    dtype=weight.dtype, device=weight.device)
        with torch.no_grad():
            if format == "csr":
                packed = csr_format.pack(weight, mask, value_dtype)
                layer.row_ptr, layer.col_idx = packed.row_ptr, packed.col_idx
                layer.values = nn.Parameter(packed.values)
            else:
                layer.weight.copy_(weight * mask)
            if has_bias:
                layer.bias.copy_(linear.bias.detach())
        layer.choice_note = note
        return layer

    def csr(self) -> CsrTensors:
        """The packed (row_ptr, col_idx, values) of a 'csr' layer."""
        if self.format != "csr":
            raise ValueError(f"this layer's format is {self.format!r}, not 'csr'")
        return CsrTensors(self.row_ptr, self.col_idx, self.values)

    def dense_weight(self) -> torch.Tensor:
        """The [out, in] weight with zeros where nothing is stored."""
        if self.format == "csr":
            return csr_format.unpack(self.csr(), (self.out_features, self.in_features))
        return self.weight.detach().clone()

    def to_dense(self) -> nn.Linear:
        """An nn.Linear with exactly this layer's weights (the inverse of from_dense)."""
        weight = self.dense_weight()
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           dtype=weight.dtype, device=weight.device)
        with torch.no_grad():
            linear.weight.copy_(weight)
            if self.bias is not None:
                linear.bias.copy_(self.bias.to(weight.dtype))
        return linear

    @property
    def nnz(self) -> int:
        if self.format == "csr":
            return self.values.numel()
        return int(torch.count_nonzero(self.weight))

    @property
    def sparsity(self) -> float:
        total = self.in_features * self.out_features
        return 1.0 - self.nnz / total if total else 0.0

    @property
    def weight_bytes(self) -> int:
        """Bytes of the stored weight (CSR: indices and values; dense: the matrix)."""
        tensors = self.csr() if self.format == "csr" else (self.weight,)
        return sum(t.numel() * t.element_size() for t in tensors)

    def _use_eager_kernel(self, x: torch.Tensor) -> bool:
        # Skip the dispatcher only for plain tensors, outside tracing, with no autograd graph.
        if type(x) is not torch.Tensor or torch.compiler.is_compiling() or torch.jit.is_tracing():
            return False
        if not torch.is_grad_enabled():
            return True
        return not (x.requires_grad or self.values.requires_grad or
                    (self.bias is not None and self.bias.requires_grad))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.format == "dense":
            return F.linear(x, self.weight, self.bias)
        args = (x, self.row_ptr, self.col_idx, self.values, self.bias, self.in_features, self.out_features)
        if self._use_eager_kernel(x):
            return ops.csr_linear_eager(*args)
        return torch.ops.sparsekern.csr_linear(*args)

    def extra_repr(self) -> str:
        dtype = (self.values if self.format == "csr" else self.weight).dtype
        return (f"in_features={self.in_features}, out_features={self.out_features}, format={self.format}, "
                f"sparsity={self.sparsity:.1%}, nnz={self.nnz}, dtype={str(dtype).replace('torch.', '')}, "
                f"bias={self.bias is not None}")

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A skeleton's buffers take the incoming nnz and index dtype; everything is validated
        # first, since a state_dict may come from a file.
        if self.format == "csr" and all(prefix + n in state_dict for n in _CSR_BUFFERS):
            incoming = CsrTensors(*(state_dict[prefix + n] for n in _CSR_BUFFERS))
            csr_format.validate(incoming, (self.out_features, self.in_features))
            device = self.row_ptr.device
            self.row_ptr = torch.empty_like(incoming.row_ptr, device=device)
            self.col_idx = torch.empty_like(incoming.col_idx, device=device)
            if self.values.shape != incoming.values.shape:
                self.values = nn.Parameter(torch.empty(incoming.values.shape, dtype=self.values.dtype,
                                                       device=device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


# ---- format choice -------------------------------------------------------------------------

_AUTO_BATCHES = (1, 64)
_choice_cache: Dict[Tuple, Tuple[str, str]] = {}


def _choose_format(weight: torch.Tensor, mask: torch.Tensor, has_bias: bool,
                   value_dtype: Optional[torch.dtype]) -> Tuple[str, str]:
    """('csr' or 'dense', why): CSR only where it measured faster than dense at every batch
    size in _AUTO_BATCHES, on this machine, with this layer's shape and sparsity."""
    out_features, in_features = weight.shape
    nnz = int(mask.sum())
    sparsity = 1 - nnz / max(1, weight.numel())
    if weight.device.type != "cpu":
        return "dense", f"no sparse kernels for {weight.device.type}"
    # Below ~1/3 sparsity CSR moves more bytes than the dense matrix (6 B per nonzero vs 4).
    if sparsity < 0.3:
        return "dense", f"sparsity {sparsity:.0%} < 30%"
    key = (out_features, in_features, round(sparsity, 2), weight.dtype, value_dtype, has_bias,
           _backend.cpu_isa(), torch.get_num_threads())
    if key not in _choice_cache:
        _choice_cache[key] = _measure_choice(weight, mask, has_bias, value_dtype)
    return _choice_cache[key]


def _measure_choice(weight, mask, has_bias, value_dtype) -> Tuple[str, str]:
    out_features, in_features = weight.shape
    dense_weight = (weight * mask).contiguous()
    bias = torch.zeros(out_features, dtype=weight.dtype) if has_bias else None
    packed = csr_format.pack(weight, mask, value_dtype)
    ratios = []
    with torch.no_grad():
        for batch in _AUTO_BATCHES:
            x = torch.randn(batch, in_features, dtype=weight.dtype)
            times = time_interleaved({
                "dense": lambda: F.linear(x, dense_weight, bias),
                "csr": lambda: ops.csr_linear_eager(x, *packed, bias, in_features, out_features),
            }, rounds=5, round_seconds=0.003)
            ratios.append(times["dense"] / times["csr"])
    speedups = ", ".join(f"{r:.2f}x at batch {b}" for r, b in zip(ratios, _AUTO_BATCHES))
    # A margin over 1.0 so timing noise cannot pick a format that is really slower.
    if min(ratios) >= 1.1:
        return "csr", f"csr measured {speedups}"
    return "dense", f"csr measured only {speedups}"


# ---- whole models --------------------------------------------------------------------------

def _linear_children(model: nn.Module) -> Iterable[Tuple[nn.Module, str, str]]:
    """(parent, attribute, full name) of every nn.Linear below model."""
    for parent_name, parent in model.named_modules():
        for attr, child in parent.named_children():
            if isinstance(child, nn.Linear):
                yield parent, attr, f"{parent_name}.{attr}" if parent_name else attr


def sparsify(model: nn.Module, format: str = "auto", value_dtype: Optional[torch.dtype] = None,
             progress: Optional[bool] = None) -> nn.Module:
    """Replaces every nn.Linear in `model` by a SparseLinear, in place, and returns the model.

    format: 'csr', 'dense' or 'auto' (per layer, CSR only where it measured faster than dense
    on this machine at batch 1 and 64; see `summary` for the reason). Masks attached by
    sparsekern.prune or torch.nn.utils.prune decide the pattern, else the weights' zeros.
    A bare nn.Linear as `model` is returned converted (it cannot be replaced in place).
    """
    _check_format(format, CHOICES)
    if isinstance(model, nn.Linear):
        return SparseLinear.from_dense(model, format=format, value_dtype=value_dtype)
    from tqdm.auto import tqdm

    targets = list(_linear_children(model))
    for parent, attr, name in tqdm(targets, desc="sparsify", unit="layer", disable=None if progress is None else not progress):
        setattr(parent, attr, SparseLinear.from_dense(getattr(parent, attr), format=format,
                                                      value_dtype=value_dtype))
    return model
