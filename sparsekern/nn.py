"""SparseLinear (a drop-in nn.Linear over packed sparse weights), sparsify, summary."""
from typing import Dict, Iterable, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from . import _backend, ops, prune
from .formats import PACKED_FORMATS
from .formats import csr as csr_format
from .formats.csr import CsrTensors
from .timing import time_interleaved

FORMATS = ("csr", "2:4", "dense")
CHOICES = FORMATS + ("auto",)
# Per packed format: (the eager kernel call, the custom op), both taking
# (x, *packed tensors, bias, in_features, out_features).
_LINEAR_OPS = {
    "csr": (ops.csr_linear_eager, torch.ops.sparsekern.csr_linear),
    "2:4": (ops.nm24_linear_eager, torch.ops.sparsekern.nm24_linear),
}


def _check_format(format: str, allowed: Sequence[str]) -> None:
    if format not in allowed:
        raise ValueError(f"format = {format!r}, expected one of {', '.join(map(repr, allowed))}")


class SparseLinear(nn.Module):
    """y = x @ W.T + b with W stored packed ('csr', '2:4') or dense ('dense').

    Takes x [..., in_features] of any strides, returns [..., out_features] like nn.Linear.
    CSR buffers: row_ptr [out + 1] int64, col_idx [nnz] uint16/int32 (buffers) and
    values [nnz] (a Parameter: a pruned model can be fine-tuned in packed form).
    2:4 (sparsekern.formats.nm): values [out, in / 2] (a Parameter) and meta
    [out, ceil(in / 8)] uint8 positions; in_features must be a multiple of 4.
    Build one with `SparseLinear.from_dense(linear)`; `SparseLinear(in, out, nnz=0)` is an
    empty skeleton that `load_state_dict` fills with any nnz (2:4 ignores nnz).
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
        if format in PACKED_FORMATS:
            self._set_packed(PACKED_FORMATS[format].skeleton((out_features, in_features), nnz, dtype, device))
        else:
            self.weight = nn.Parameter(torch.zeros(out_features, in_features, dtype=dtype, device=device))
        # Registered even when absent (as nn.Linear does), so forward() can read _parameters.
        self.register_parameter("bias", nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device))
                                if bias else None)
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
        mask = csr_format.check_mask(weight, mask)
        has_bias = linear.bias is not None
        if format == "auto":
            format, note = _choose_format(weight, mask, has_bias, value_dtype)
        else:
            note = ""
        layer = cls(linear.in_features, linear.out_features, bias=has_bias, format=format,
                    dtype=weight.dtype, device=weight.device)
        with torch.no_grad():
            if format in PACKED_FORMATS:
                layer._set_packed(PACKED_FORMATS[format].pack(weight, mask, value_dtype))
            else:
                layer.weight.copy_(weight * mask)
            if has_bias:
                layer.bias.copy_(linear.bias.detach())
        layer.choice_note = note
        return layer

    def _set_packed(self, tensors: tuple) -> None:
        """Installs a packed format's tensors: 'values' as a Parameter, the rest as buffers."""
        for name, t in zip(PACKED_FORMATS[self.format].layout._fields, tensors):
            if name == "values":
                self.values = nn.Parameter(t)
            else:
                self.register_buffer(name, t)

    def packed(self) -> tuple:
        """The packed tensors of a 'csr' or '2:4' layer (CsrTensors / Nm24Tensors)."""
        if self.format not in PACKED_FORMATS:
            raise ValueError(f"this layer's format is {self.format!r}, which is not packed")
        layout = PACKED_FORMATS[self.format].layout
        return layout._make(self._packed_tensors())

    def _packed_tensors(self) -> list:
        # Straight from the module's dicts: nn.Module.__getattr__ costs about 0.5 us a name,
        # and forward() runs this on every call.
        tensors = self._buffers
        return [self._parameters["values"] if name == "values" else tensors[name]
                for name in PACKED_FORMATS[self.format].layout._fields]

    def csr(self) -> CsrTensors:
        """The packed (row_ptr, col_idx, values) of a 'csr' layer."""
        if self.format != "csr":
            raise ValueError(f"this layer's format is {self.format!r}, not 'csr'")
        return self.packed()

    def dense_weight(self) -> torch.Tensor:
        """The [out, in] weight with zeros where nothing is stored."""
        if self.format in PACKED_FORMATS:
            return PACKED_FORMATS[self.format].unpack(self.packed(), (self.out_features, self.in_features))
        return self.weight.detach().clone()

    def to_dense(self) -> nn.Linear:
        """An nn.Linear with exactly this layer's weights (the inverse of from_dense), in the
        bias's dtype when there is one: bf16 values widen exactly, an fp32 bias is not rounded."""
        weight = self.dense_weight()
        dtype = self.bias.dtype if self.bias is not None else weight.dtype
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           dtype=dtype, device=weight.device)
        with torch.no_grad():
            linear.weight.copy_(weight)
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    @property
    def nnz(self) -> int:
        if self.format in PACKED_FORMATS:
            return PACKED_FORMATS[self.format].nnz(self.packed())
        return int(torch.count_nonzero(self.weight))

    @property
    def sparsity(self) -> float:
        total = self.in_features * self.out_features
        return 1.0 - self.nnz / total if total else 0.0

    @property
    def weight_bytes(self) -> int:
        """Bytes of the stored weight (packed: indices and values; dense: the matrix)."""
        tensors = self.packed() if self.format in PACKED_FORMATS else (self.weight,)
        return sum(t.numel() * t.element_size() for t in tensors)

    def _use_eager_kernel(self, x: torch.Tensor) -> bool:
        # Skip the dispatcher only for plain CPU tensors, outside tracing, with no autograd
        # graph (other devices reach their kernels through the dispatcher).
        if type(x) is not torch.Tensor or not x.is_cpu or torch.compiler.is_compiling() or \
                torch.jit.is_tracing():
            return False
        if not torch.is_grad_enabled():
            return True
        bias = self._parameters["bias"]
        return not (x.requires_grad or self._parameters["values"].requires_grad or
                    (bias is not None and bias.requires_grad))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.format == "dense":
            return F.linear(x, self.weight, self.bias)
        args = (x, *self._packed_tensors(), self._parameters["bias"], self.in_features, self.out_features)
        eager, op = _LINEAR_OPS[self.format]
        if self._use_eager_kernel(x):
            return eager(*args)
        return op(*args)

    @property
    def value_dtype(self) -> torch.dtype:
        """The dtype the weights are stored in."""
        return (self.weight if self.format == "dense" else self.values).dtype

    def extra_repr(self) -> str:
        dtype = self.value_dtype
        return (f"in_features={self.in_features}, out_features={self.out_features}, format={self.format}, "
                f"sparsity={self.sparsity:.1%}, nnz={self.nnz}, dtype={str(dtype).replace('torch.', '')}, "
                f"bias={self.bias is not None}")

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A skeleton's buffers take the incoming nnz and index dtype; everything is validated
        # first, since a state_dict may come from a file.
        packed = PACKED_FORMATS.get(self.format)
        if packed and all(prefix + n in state_dict for n in packed.layout._fields):
            incoming = packed.layout(*(state_dict[prefix + n] for n in packed.layout._fields))
            packed.validate(incoming, (self.out_features, self.in_features))
            device = self.values.device
            for name, t in zip(packed.layout._fields, incoming):
                if name != "values":
                    setattr(self, name, torch.empty_like(t, device=device))
            if self.values.shape != incoming.values.shape:
                self.values = nn.Parameter(torch.empty(incoming.values.shape, dtype=self.values.dtype,
                                                       device=device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


# ---- format choice -------------------------------------------------------------------------

_AUTO_BATCHES = (1, 64)
_choice_cache: Dict[Tuple, Tuple[str, str]] = {}


def _choose_format(weight: torch.Tensor, mask: torch.Tensor, has_bias: bool,
                   value_dtype: Optional[torch.dtype]) -> Tuple[str, str]:
    """(format, why): the packed format that measured fastest against dense at every batch
    size in _AUTO_BATCHES, on this machine, with this layer's shape and sparsity, if it beat
    dense everywhere; else 'dense'. 2:4 is a candidate only where the mask is 2:4."""
    out_features, in_features = weight.shape
    nnz = int(mask.sum())
    sparsity = 1 - nnz / max(1, weight.numel())
    if weight.device.type != "cpu":
        return "dense", f"no sparse kernels for {weight.device.type}"
    candidates = [name for name, packed in PACKED_FORMATS.items() if packed.incompatible(mask) is None]
    # Below ~1/3 sparsity CSR moves more bytes than the dense matrix (6 B per nonzero vs 4);
    # a 2:4 mask has at least 50%.
    if sparsity < 0.3:
        return "dense", f"sparsity {sparsity:.0%} < 30%"
    key = (out_features, in_features, round(sparsity, 2), weight.dtype, value_dtype, has_bias,
           tuple(candidates), _backend.cpu_isa(), torch.get_num_threads())
    if key not in _choice_cache:
        _choice_cache[key] = _measure_choice(weight, mask, has_bias, value_dtype, candidates)
    return _choice_cache[key]


def _measure_choice(weight, mask, has_bias, value_dtype, candidates) -> Tuple[str, str]:
    out_features, in_features = weight.shape
    dense_weight = (weight * mask).contiguous()
    bias = torch.zeros(out_features, dtype=weight.dtype) if has_bias else None
    packed = {name: PACKED_FORMATS[name].pack(weight, mask, value_dtype) for name in candidates}
    ratios = {name: [] for name in candidates}
    with torch.no_grad():
        for batch in _AUTO_BATCHES:
            x = torch.randn(batch, in_features, dtype=weight.dtype)
            calls = {"dense": lambda: F.linear(x, dense_weight, bias)}
            for name in candidates:
                eager, tensors = _LINEAR_OPS[name][0], packed[name]
                calls[name] = lambda eager=eager, tensors=tensors: eager(
                    x, *tensors, bias, in_features, out_features)
            # The least disturbed round: a decision must not follow another process's load.
            times = time_interleaved(calls, rounds=7, round_seconds=0.003, statistic="min")
            for name in candidates:
                ratios[name].append(times["dense"] / times[name])
    ranked = sorted(candidates, key=lambda name: min(ratios[name]), reverse=True)
    notes = "; ".join(f"{name} measured " + ", ".join(f"{r:.2f}x at batch {b}"
                                                      for r, b in zip(ratios[name], _AUTO_BATCHES))
                      for name in ranked)
    # A margin over 1.0 so timing noise cannot pick a format that is really slower.
    if min(ratios[ranked[0]]) >= 1.1:
        return ranked[0], notes
    return "dense", f"kept dense: {notes}"


# ---- whole models --------------------------------------------------------------------------

def _linear_children(model: nn.Module) -> Iterable[Tuple[nn.Module, str, str]]:
    """(parent, attribute, full name) of every nn.Linear below model that can be replaced.

    nn.MultiheadAttention's out_proj is skipped: its parent reads out_proj.weight directly
    (F.multi_head_attention_forward) instead of calling the module."""
    for parent_name, parent in model.named_modules():
        if isinstance(parent, nn.MultiheadAttention):
            continue
        for attr, child in parent.named_children():
            if isinstance(child, nn.Linear):
                yield parent, attr, f"{parent_name}.{attr}" if parent_name else attr


def sparsify(model: nn.Module, format: str = "auto", value_dtype: Optional[torch.dtype] = None,
             progress: Optional[bool] = None) -> nn.Module:
    """Replaces every nn.Linear in `model` by a SparseLinear, in place, and returns the model.

    format: 'csr', '2:4', 'dense' or 'auto' (per layer, the packed format that measured fastest
    and faster than dense on this machine at batch 1 and 64, 2:4 only for 2:4 masks; see
    `summary` for the reason). Masks attached by
    sparsekern.prune or torch.nn.utils.prune decide the pattern, else the weights' zeros.
    nn.MultiheadAttention's out_proj stays an nn.Linear (its parent reads the weight itself),
    and torch's fused encoder fast path is turned off where it would read a packed weight.
    A bare nn.Linear as `model` is returned converted (it cannot be replaced in place).
    """
    _check_format(format, CHOICES)
    if isinstance(model, nn.Linear):
        return SparseLinear.from_dense(model, format=format, value_dtype=value_dtype)
    from tqdm.auto import tqdm

    targets = list(_linear_children(model))
    bar = tqdm(targets, desc="sparsify", unit="layer", disable=None if progress is None else not progress)
    for parent, attr, name in bar:
        bar.set_postfix_str(name, refresh=False)
        setattr(parent, attr, SparseLinear.from_dense(getattr(parent, attr), format=format,
                                                      value_dtype=value_dtype))
    for module in model.modules():
        if isinstance(module, nn.MultiheadAttention):
            # Layers that stay nn.Linear keep their pruned zeros, without the mask
            # bookkeeping that would otherwise stop sparsekern.save.
            prune.finalize(module.out_proj)
        elif isinstance(module, (nn.TransformerEncoderLayer, nn.TransformerEncoder)):
            _keep_off_fused_encoder(module)
    return model


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
