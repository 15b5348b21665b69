"""SparseLinear: a drop-in nn.Linear over packed sparse weights (sparsekern.formats)."""
import warnings
from operator import attrgetter
from typing import NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from . import ops, planner
from .formats import LAYER_FORMATS, PACKED_FORMATS, check_mask
from .formats.common import KERNEL_VALUE_TYPES
from .packed_weight import PackedWeight

AUTO = "auto"


def check_not_parametrized(module: nn.Module, name: str = "") -> None:
    """A parametrized weight (L0 gates) is computed on each read, a random sample in training
    mode: packing it would keep one sample and drop the gates."""
    if parametrize.is_parametrized(module, "weight"):
        where = f"layer {name!r}" if name else type(module).__name__
        raise ValueError(f"{where} has a parametrized weight (L0 gates?): call sparsekern.prune.l0_masks(model), "
                         "which turns the gates into masks, before packing it")


def check_format(format: str, allowed: Sequence[str]) -> None:
    if format not in allowed:
        raise ValueError(f"format = {format!r}, expected one of {', '.join(map(repr, allowed))}")


class _KernelHandle(NamedTuple):
    """A layer's compiled kernel object and float32 bias, valid while `key` matches its tensors."""
    key: tuple
    kernel: object
    bias: Optional[torch.Tensor]
    # The tensors the kernel reads by address: held, so that a buffer replaced during a call
    # (load_state_dict in another thread) is not freed while the kernel, without the GIL, reads it.
    tensors: tuple


_VERSION = attrgetter("_version")  # a tensor's in-place update counter
# The packed buffers' unsigned index dtypes, and the signed dtypes of their widths.
_SIGNED_TWIN = {torch.uint16: torch.int16, torch.uint32: torch.int32}


def _signed(t: torch.Tensor) -> torch.Tensor:
    """t's bytes as its signed twin dtype (SparseLinear.__getstate__): a view in shared memory, else a copy."""
    view = t.view(_SIGNED_TWIN[t.dtype])
    return view if t.is_shared() else view.clone()


class SparseLinear(nn.Module):
    """y = x @ W.T + b with W stored packed (a format of sparsekern.formats: 'csr', '2:4',
    'bitmap') or dense ('dense').

    Takes x [..., in_features] of any strides, returns [..., out_features] like nn.Linear.
    A packed format's 'values' tensor is a Parameter (a pruned model can be fine-tuned in
    packed form), its other tensors buffers (docs/format.md lists them): CSR row_ptr, col_idx;
    2:4 meta (in_features must be a multiple of 4); bitmap bits, offsets. A dense-format layer
    keeps its pruning pattern (non-persistent keep_mask), so fine-tuning cannot regrow it.
    Build one with `SparseLinear.from_dense(linear)`; `SparseLinear(in, out, nnz=0)` is an
    empty skeleton that `load_state_dict` fills with any nnz (2:4 ignores nnz); the state_dict
    records the layer's format and shape, and loading another layer's state is refused.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, format: str = "csr",
                 nnz: int = 0, dtype: Optional[torch.dtype] = None, device=None):
        super().__init__()
        check_format(format, LAYER_FORMATS)
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
            # The pruning pattern of a dense-format layer: not saved (the stored zeros are the
            # pattern), kept so that fine-tuning cannot regrow pruned weights.
            self.register_buffer("keep_mask", torch.ones(out_features, in_features, dtype=torch.bool,
                                                           device=device), persistent=False)
        # Registered even when absent (as nn.Linear does), so forward() can read _parameters.
        self.register_parameter("bias", nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device))
                                if bias else None)
        self.choice_note = ""  # why sparsify(format="auto") chose this format
        # The cache tiles pack-time tuning chose (planner.choose_tiles; None: this CPU's
        # defaults) and what it measured. Layers pickled before tuning existed lack both.
        self.tile_choice: Optional[dict] = None
        self.tuning_note = ""
        self._handle: Optional[_KernelHandle] = None
        # The kernel over a bf16 copy of float32 values, for calls under bf16 autocast.
        self._autocast_handle: Optional[_KernelHandle] = None

    @classmethod
    def from_dense(cls, linear: nn.Linear, mask: Optional[torch.Tensor] = None, format: str = "csr",
                   value_dtype: Optional[torch.dtype] = None,
                   batch_sizes: Sequence[int] = planner.DEFAULT_BATCH_SIZES) -> "SparseLinear":
        """Packs an nn.Linear. mask=None takes the mask that sparsekern.prune or
        torch.nn.utils.prune attached (`weight_mask`), else the weight's own zeros.
        value_dtype (e.g. torch.bfloat16) stores packed weights in another dtype than the bias;
        None keeps the weight's, except float16 on CPU, stored as float32 (exactly: the CPU
        kernels read float32 and bf16 values; see packed_value_dtype). A dense layer keeps the
        weight's dtype (format="dense" with another value_dtype warns). format="auto" times the formats that can hold the mask
        against dense at `batch_sizes` and keeps the fastest (dense unless one wins)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"from_dense takes an nn.Linear, got {type(linear).__name__}")
        check_format(format, (*LAYER_FORMATS, AUTO))
        batch_sizes = planner.check_batch_sizes(batch_sizes)
        if format == "dense" and value_dtype not in (None, linear.weight.dtype):
            warnings.warn(f"value_dtype={value_dtype} applies to packed formats: a dense layer keeps its weight's "
                          f"dtype, {linear.weight.dtype}", stacklevel=2)
        check_not_parametrized(linear)
        if linear.weight.is_meta:
            raise ValueError("from_dense got a Linear on the meta device: meta tensors have a shape but no "
                             "values to pack. Load the weights first, or build the model on a real device "
                             "and fill it with sparsekern.load(model, path)")
        # Under a pruning reparametrization `weight` is only refreshed by forward(): read the
        # parameter the optimizer updates and the mask itself.
        weight = getattr(linear, "weight_orig", linear.weight).detach()
        if mask is None:
            mask = getattr(linear, "weight_mask", None)
        mask = check_mask(weight, mask)
        value_dtype = packed_value_dtype(weight, value_dtype)
        has_bias = linear.bias is not None
        if format == AUTO:
            format, note = planner.choose_format(weight, mask, has_bias, value_dtype, batch_sizes)
        else:
            note = ""
        layer = cls(linear.in_features, linear.out_features, bias=has_bias, format=format,
                    dtype=weight.dtype, device=weight.device)
        with torch.no_grad():
            if format in PACKED_FORMATS:
                layer._set_packed(PACKED_FORMATS[format].pack(weight, mask, value_dtype))
            else:
                layer.weight.copy_(weight * mask)
                layer.keep_mask.copy_(mask)
            if has_bias:
                layer.bias.copy_(linear.bias.detach())
        layer.choice_note = note
        layer.take_mode_of(linear)
        if format in PACKED_FORMATS and planner.tuning_enabled():
            layer.tune(batch_sizes, act_dtype=weight.dtype)
        return layer

    def take_mode_of(self, source: nn.Module) -> None:
        """Takes the train/eval mode and the frozen (requires_grad=False) weight and bias of
        `source`, the module this layer replaces (an nn.Linear, Conv1D or SparseLinear), so a
        model frozen or in eval mode stays so once packed or loaded."""
        self.train(source.training)
        params = source._parameters
        weight = params["values"] if "values" in params else getattr(source, "weight_orig", source.weight)
        self._weight_parameter().requires_grad_(weight.requires_grad)
        if self.bias is not None and source.bias is not None:
            self.bias.requires_grad_(source.bias.requires_grad)

    def _weight_parameter(self) -> nn.Parameter:
        """The Parameter holding the weights: packed 'values', or the dense 'weight'."""
        return self._parameters["values" if self.format in PACKED_FORMATS else "weight"]

    def tune(self, batch_sizes: Sequence[int] = planner.DEFAULT_BATCH_SIZES,
             act_dtype: Optional[torch.dtype] = None) -> None:
        """Times cache-tile alternatives for this layer's batched CPU calls at `batch_sizes`,
        with activations of `act_dtype` (None: the bias's dtype, else the values'), and keeps
        one only where it clearly beats this CPU's defaults (planner.choose_tiles); from_dense
        and sparsify do this, in the source Linear's dtype, unless SPARSEKERN_TUNE=0. A no-op
        for layers the CPU kernels do not run (dense, other devices, float16 values), and for
        calls that read no tiles (the native bf16 kernels)."""
        batch_sizes = planner.check_batch_sizes(batch_sizes)
        if self.format not in PACKED_FORMATS:
            return
        packed = self.packed()
        if not (packed.values.is_cpu and packed.values.dtype in KERNEL_VALUE_TYPES):
            return
        packed = PACKED_FORMATS[self.format].layout(*(t.detach().contiguous() for t in packed))
        if act_dtype is None:
            act_dtype = (self.bias if self.bias is not None else packed.values).dtype
        if act_dtype not in (torch.float32, torch.bfloat16):
            act_dtype = torch.float32  # float16 activations are widened to float32 before the kernels
        self.tile_choice, self.tuning_note = planner.choose_tiles(
            self.format, packed, self.in_features, self.out_features, self.sparsity, batch_sizes, act_dtype)
        self._handle = self._autocast_handle = None  # the next call builds its kernel with the choice

    def _set_packed(self, tensors: tuple) -> None:
        """Installs a packed format's tensors: 'values' as a Parameter, the rest as buffers."""
        fields = PACKED_FORMATS[self.format].layout._fields
        self._buffer_fields = tuple(name for name in fields if name != "values")
        for name, t in zip(fields, tensors):
            if name == "values":
                self.values = nn.Parameter(t)
            else:
                self.register_buffer(name, t)

    def packed(self) -> tuple:
        """The packed tensors of a packed layer, as its format's layout (CsrTensors, Nm24Tensors, BitmapTensors)."""
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

    @property
    def derived_bytes(self) -> int:
        """Bytes of the in-memory layouts of the weights this layer's kernel has built for the
        calls that gain from them (2:4's rows side by side, CSR's column chunks), beside
        weight_bytes: 0 until such a call, and again after the kernel is rebuilt; always 0 while
        sparsekern.set_derived_layouts(False) holds. Never saved. Includes the bf16 copy of
        float32 values that calls under bf16 autocast read, with that kernel's own layouts, and
        the layouts of the kernel that calls through torch's dispatcher (with gradients, or
        compiled) keep for this layer's values."""
        total = ops.op_kernel_derived_bytes(self._parameters.get("values"))
        for handle in (self._handle, self._autocast_handle):
            if handle is not None:
                total += int(handle.kernel.derived_bytes())
        if self._autocast_handle is not None:
            values = self._autocast_handle.tensors[PACKED_FORMATS[self.format].layout._fields.index("values")]
            total += values.numel() * values.element_size()
        return total

    def _use_eager_kernel(self, x: torch.Tensor) -> bool:
        # Skip the dispatcher only for plain CPU tensors, outside tracing, with no autograd
        # graph to record (other devices reach their kernels through the dispatcher).
        if type(x) is not torch.Tensor or not x.is_cpu or torch.compiler.is_compiling() or \
                torch.jit.is_tracing():
            return False
        if not torch.is_grad_enabled() or not (x.requires_grad or self._parameters["values"].requires_grad):
            bias = self._parameters["bias"]
            return not torch.is_grad_enabled() or bias is None or not bias.requires_grad
        return False

    def _handle_key(self) -> tuple:
        """What the cached kernel depends on: each packed tensor's address, size and version,
        the bias's address and version, and whether derived layouts are on (ops.
        set_derived_layouts). Any replaced buffer (assignment, load_state_dict, .to(), _apply)
        changes an address; the size check stops a new tensor at a recycled address from
        passing for the old one; the versions catch in-place updates (an optimizer step on the
        values: the kernel may keep a copy in another layout, and reads a float32 copy of a
        bf16 bias)."""
        try:
            return self._key_by(_VERSION)  # the per-call path: attrgetter is the cheapest read
        except RuntimeError:  # an inference tensor keeps no version counter
            return self._key_by(ops.version_of)

    def _key_by(self, version) -> tuple:
        values, bias, buffers = self._parameters["values"], self._parameters["bias"], self._buffers
        key = [values.data_ptr(), values.numel(), version(values), ops.derived_layouts_on]
        for name in self._buffer_fields:
            t = buffers[name]
            key.append(t.data_ptr())
            key.append(t.numel())
            key.append(version(t))
        if bias is not None:
            key.append(bias.data_ptr())
            key.append(version(bias))
        return tuple(key)

    def _kernel_handle(self, bf16_values: bool = False) -> Optional[_KernelHandle]:
        """The compiled kernel over this layer's tensors (checked when built, not per call),
        rebuilt whenever _handle_key changes; None when the kernels do not take the stored
        dtypes or device. bf16_values: the kernel over a bf16 copy of the values instead
        (calls under bf16 autocast, which rounds nn.Linear's weights to bf16 the same way)."""
        key = self._handle_key()
        handle = self._autocast_handle if bf16_values else self._handle
        if handle is not None and handle.key == key:
            return handle
        # Both handles go once their key no longer matches (a cast with .to(), a reload, a step,
        # set_derived_layouts): left alone, the one this call does not use held on, e.g. a
        # float32 layer's bf16 copy for autocast calls after a cast to bf16 made it useless,
        # with its layouts (21 MB for two 2048 x 2048 CSR layers).
        if self._handle is not None and self._handle.key != key:
            self._handle = None
        if self._autocast_handle is not None and self._autocast_handle.key != key:
            self._autocast_handle = None
        fmt = PACKED_FORMATS[self.format]
        packed = fmt.layout(*self._packed_tensors())
        handle = None
        if packed.values.is_cpu and packed.values.dtype not in KERNEL_VALUE_TYPES:
            warnings.warn(f"a SparseLinear with {packed.values.dtype} values runs torch's fallback on CPU, many "
                          "times slower than its kernels, which read float32 and bfloat16 values: convert the "
                          "model with .float() (float16 widens exactly) or .to(torch.bfloat16)", stacklevel=4)
        elif packed.values.is_cpu and all(t.is_contiguous() for t in packed):
            fmt.check_tensors(packed, self.in_features, self.out_features)
            if bf16_values:
                packed = packed._replace(values=packed.values.detach().to(torch.bfloat16))
            kernel = fmt.kernel(packed, self.in_features, self.out_features)
            ops.keep_layouts(kernel)  # lives until the key changes, so it may keep derived layouts
            ops.watch_optimizer_steps()
            planner.apply_tiles(kernel, getattr(self, "tile_choice", None))
            handle = _KernelHandle(key, kernel, ops.kernel_bias(self._parameters["bias"]), tuple(packed))
        if bf16_values:
            self._autocast_handle = handle
        else:
            self._handle = handle
        return handle

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.format == "dense":
            weight, bias = self.weight, self.bias
            if weight.requires_grad and torch.is_grad_enabled():
                # Zero gradients where pruned: with zero weights there, no torch.optim step
                # (momentum, Adam, weight decay) moves them, as packed formats guarantee.
                weight = torch.where(self.keep_mask, weight, 0)
            if x.dtype != weight.dtype or x.ndim < 1 or x.shape[-1] != self.in_features:
                # As packed layers do: the same messages for bad input, and any floating point
                # x computed in its own dtype (format="auto" mixes dense and packed layers).
                ops.check_input(x, self.in_features)
                weight = weight.to(x.dtype)
                bias = None if bias is None else bias.to(x.dtype)
            return F.linear(x, weight, bias)
        try:
            bf16_values = False
            if torch._C._is_any_autocast_enabled():  # one flag read: the per-call path stays cheap
                x = autocast_input(x)
                # Float32 values beside bf16 x would run the float32 kernels on widened x (0.62x
                # of dense under autocast at batch 64, Llama MLP, Zen 4); a bf16 copy of the
                # values runs the native bf16 ones, as nn.Linear's weights are cast under
                # autocast. A derived layout: in memory only, off with set_derived_layouts(False).
                bf16_values = x.dtype is torch.bfloat16 and ops.derived_layouts_on and \
                    self._parameters["values"].dtype is torch.float32
            if self._use_eager_kernel(x):
                # The fast path: one compiled call on the cached kernel, after the checks that depend
                # on x alone (the layer's own tensors were checked when the kernel was built).
                handle = self._kernel_handle(bf16_values)
                if handle is not None and x.ndim >= 1 and x.shape[-1] == self.in_features and \
                        x.dtype in ops.ACTIVATION_DTYPES:
                    return ops.run_kernel(self.format, handle.kernel, x, handle.bias, self.in_features,
                                          self.out_features)
                return ops.linear_eager(self.format, x, self._packed_tensors(), self._parameters["bias"],
                                        self.in_features, self.out_features)
            return ops.linear_op(self.format)(x, *self._packed_tensors(), self._parameters["bias"],
                                              self.in_features, self.out_features)
        except KeyError:
            if "values" in self._parameters:
                raise
            raise TypeError("this SparseLinear's 'values' Parameter is gone, most likely taken by "
                            "torch.nn.utils.prune, which cannot mask packed weights: prune the nn.Linear "
                            "before sparsekern.sparsify (layer.to_dense() gives one back)") from None

    def __getattr__(self, name: str):
        # Reached only when nn.Module's own lookup fails: never on the per-call path.
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name != "weight" or self.__dict__.get("format") not in PACKED_FORMATS:
                raise
        # Models written for nn.Linear read `.weight` outside forward (T5's feed-forward checks
        # `wo.weight.dtype` on every call, and crashed with "'SparseLinear' object has no
        # attribute 'weight'"): a PackedWeight, whose shape, dtype and device cost nothing and
        # whose values are unpacked when read (packed_weight.py). Compiled graphs trace no such
        # tensor: there, the dense weight itself, which the graph drops when only its dtype is read.
        if torch.compiler.is_compiling():
            return self.dense_weight().detach()
        return PackedWeight(self)

    @property
    def value_dtype(self) -> torch.dtype:
        """The dtype the weights are stored in."""
        return (self.weight if self.format == "dense" else self.values).dtype

    def extra_repr(self) -> str:
        dtype = self.value_dtype
        return (f"in_features={self.in_features}, out_features={self.out_features}, format={self.format}, "
                f"sparsity={self.sparsity:.1%}, nnz={self.nnz}, dtype={str(dtype).replace('torch.', '')}, "
                f"bias={self.bias is not None}")

    def __prepare_scriptable__(self):
        # torch.jit.script calls this on every submodule before compiling: without it, scripting
        # failed deep inside forward with "try blocks aren't supported", which names no remedy.
        # (Returning a scriptable stand-in is no option: torch puts it into the user's model.)
        raise RuntimeError("SparseLinear cannot be compiled by torch.jit.script (its forward is Python that "
                           "TorchScript does not take); torch.jit.trace(model, example_inputs) records the "
                           "sparsekern ops, and torch.export.export and torch.compile run them too")

    def __getstate__(self):
        # The kernel handle holds raw addresses: a copy or a pickle rebuilds its own.
        state = self.__dict__.copy()
        state["_handle"] = state["_autocast_handle"] = None
        # Plain pickle (cloudpickle, joblib) writes a tensor's storage in torch's legacy
        # format, which has no uint16 or uint32 storages: CSR's col_idx and bitmap's bits
        # pickled, then failed to unpickle (torch 2.13). The same bytes as a signed dtype pickle
        # everywhere; __setstate__ views them back. A copy, since torch.save refuses one storage
        # seen as two dtypes (a model saved beside its own state_dict), except in shared memory
        # (share_memory()), which a view keeps sharing with the processes it is sent to.
        unsigned = {name: t.dtype for name, t in self._buffers.items() if t is not None and t.dtype in _SIGNED_TWIN}
        if unsigned:
            state["_buffers"] = {name: _signed(t) if name in unsigned else t for name, t in self._buffers.items()}
            state["_unsigned_buffers"] = unsigned
        return state

    def __setstate__(self, state):
        unsigned = state.pop("_unsigned_buffers", {})
        state.setdefault("_autocast_handle", None)  # pickled before it existed
        super().__setstate__(state)
        for name, dtype in unsigned.items():
            self._buffers[name] = self._buffers[name].view(dtype)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        # The declared shape and format travel in the state_dict's metadata (torch keeps it
        # through torch.save), so loading can refuse another layer's state: a CSR of a
        # narrower layer is otherwise a valid CSR of this one.
        metadata = getattr(destination, "_metadata", None)
        if metadata is not None and prefix[:-1] in metadata:
            metadata[prefix[:-1]].update(format=self.format, in_features=self.in_features,
                                         out_features=self.out_features)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args, **kwargs):
        declared = {key: local_metadata[key] for key in ("format", "in_features", "out_features")
                    if key in local_metadata}
        mine = {"format": self.format, "in_features": self.in_features, "out_features": self.out_features}
        if any(declared[key] != mine[key] for key in declared):
            raise ValueError(f"{prefix or 'state_dict'}: the state is of a SparseLinear with {declared}, "
                             f"this layer has {mine}")
        # A skeleton's buffers take the incoming nnz and index dtype; everything is validated
        # first, since a state_dict may come from a file.
        packed = PACKED_FORMATS.get(self.format)
        if packed and all(prefix + n in state_dict for n in packed.layout._fields):
            incoming = packed.layout(*(state_dict[prefix + n] for n in packed.layout._fields))
            packed.validate(incoming, (self.out_features, self.in_features))
            # New tensors go in filled (the copy below then changes nothing): another thread
            # calling this layer meanwhile must never see uninitialized indices.
            device = self.values.device
            for name, t in zip(packed.layout._fields, incoming):
                if name != "values":
                    setattr(self, name, t.detach().to(device=device, copy=True))
            if self.values.shape != incoming.values.shape:
                self.values = nn.Parameter(incoming.values.detach().to(device=device, dtype=self.values.dtype,
                                                                       copy=True),
                                           requires_grad=self.values.requires_grad)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args, **kwargs)
        if self.format == "dense" and prefix + "weight" in state_dict:
            self.keep_mask = state_dict[prefix + "weight"].to(self.keep_mask.device) != 0


def packed_value_dtype(weight: torch.Tensor, value_dtype: Optional[torch.dtype]) -> Optional[torch.dtype]:
    """The dtype to pack `weight`'s values in: `value_dtype` when given; None (the weight's own)
    except for a float16 weight on CPU, packed as float32. The CPU kernels read float32 and
    bf16 values, and float16 values ran torch's fallback instead (0.12x of dense float16 in
    CSR, 0.005x in bitmap, at 4096 x 4096 and 70%); float32 holds float16 exactly, and x and
    the output stay float16."""
    if value_dtype is None and weight.dtype is torch.float16 and weight.device.type == "cpu":
        return torch.float32
    return value_dtype


def autocast_input(x: torch.Tensor) -> torch.Tensor:
    """x as torch.autocast casts nn.Linear's input: to the autocast dtype of x's device type
    where autocast is on there (float64 stays). The packed weights and the bias stay as stored
    (the kernels read bf16 activations beside float32 or bf16 values, and accumulate in
    float32), and the result comes back in x's new dtype, as nn.Linear's would."""
    device_type = x.device.type
    if not (x.is_floating_point() and x.dtype != torch.float64 and torch.is_autocast_enabled(device_type)):
        return x
    return x.to(torch.get_autocast_dtype(device_type))


def refresh(module: nn.Module) -> None:
    """Drops the compiled kernels that the SparseLinear layers in `module` (itself included)
    cached, with their derived layouts and float32 bias: each layer's next call builds them
    from its tensors as they are then. Needed only after changing a layer's tensors in place
    in a way torch's version counters do not see, which the caches go by: through `.data`,
    under torch.inference_mode() on tensors made there, through a NumPy view, or from another
    process sharing the memory (share_memory()). Other in-place changes (optimizer steps,
    fused ones included, `copy_` and friends, load_state_dict) and replaced tensors are seen."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"refresh takes a module (a model or a SparseLinear), got {type(module).__name__}")
    for layer in module.modules():
        if isinstance(layer, SparseLinear):
            layer._handle = layer._autocast_handle = None
            values = layer._parameters.get("values")
            if values is not None:  # a dense-format layer caches nothing
                ops.forget_kernel(values)
