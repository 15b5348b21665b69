"""Torch custom ops over the compiled kernels, built from the format registry: one set per
packed format (sparsekern.formats.PACKED_FORMATS), each registered once by `_register`.

For a format whose op prefix is P and whose tensors are T... (its layout's fields, in order):

    sparsekern::P_linear(x, T..., bias, in_features, out_features)  y[..., out] = x @ W.T + bias
    sparsekern::P_linear_grad_input(grad_y, T..., in_features)      grad_x = grad_y @ W
    sparsekern::P_sampled_grad(grad_y, x, T..., in_features)        dL/dvalues, shaped like values

(csr_linear, nm24_linear and their backward ops.) On CPU tensors, P_linear runs the compiled
kernels when x is float32 or bfloat16 (float16 is widened to float32 first) and the values are
float32 or bfloat16: products accumulate in float32 and y comes back in x's dtype. Other dtypes
(float64 for gradcheck, float16 values) and devices without kernels take the format's torch
computation (`linear_torch`); sparsekern.ops_cuda registers the CUDA kernels. The backward
ops are torch computations on any device.

`linear_eager` is P_linear without the dispatcher (about 9 us cheaper per call);
SparseLinear uses it when nothing traces or records gradients.
"""
from typing import Optional, Sequence

import torch
from torch import Tensor
from torch.autograd.graph import increment_version
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.utils.weak import WeakIdKeyDictionary

from . import planner
from ._env import env_flag
from .formats import PACKED_FORMATS, PackedFormat
from .formats.common import KERNEL_VALUE_TYPES, compute_dtype

# Activation dtypes the kernels read (their numbers, csrc/kernels/cpu/linear_args.h), and the
# ones widened to float32 on the way in: together the activation dtypes of the kernel path.
KERNEL_ACTIVATIONS = {torch.float32: 0, torch.bfloat16: 1}
_WIDENED_ACTIVATIONS = (torch.float16,)
ACTIVATION_DTYPES = (*KERNEL_ACTIVATIONS, *_WIDENED_ACTIVATIONS)


def check_input(x: Tensor, in_features: int) -> None:
    """The checks of x alone that every layer makes, packed or dense."""
    if x.ndim < 1:
        raise ValueError(f"x is a 0-d tensor (a scalar); expected [..., in_features = {in_features}]")
    if x.shape[-1] != in_features:
        raise ValueError(f"x.shape[-1] = {x.shape[-1]}, expected in_features = {in_features}")
    if not x.is_floating_point():
        raise TypeError(f"x.dtype = {x.dtype}, expected a floating point dtype")


def check_linear_args(fmt: PackedFormat, x: Tensor, tensors: Sequence[Tensor], bias: Optional[Tensor],
                      in_features: int, out_features: int) -> None:
    """The argument checks shared by the real and the fake kernels (shapes, dtypes, devices).

    On the eager path of every call: kept to cheap attribute reads.
    """
    fmt.check_tensors(tensors, in_features, out_features)
    check_input(x, in_features)
    values = tensors.values
    if not values.is_floating_point():
        raise TypeError(f"values.dtype = {values.dtype}, expected a floating point dtype")
    if bias is not None and (bias.ndim != 1 or bias.shape[0] != out_features):
        raise ValueError(f"bias.shape = {tuple(bias.shape)}, expected ({out_features},)")
    if x.is_cpu and all(t.is_cpu for t in tensors) and (bias is None or bias.is_cpu):
        return
    for name, t in (*zip(fmt.layout._fields, tensors), ("bias", bias)):
        if t is not None and t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}")


def kernel_dtypes(x: Tensor, values: Tensor) -> bool:
    """Whether the compiled CPU kernels take these activation and value dtypes."""
    return x.dtype in ACTIVATION_DTYPES and values.dtype in KERNEL_VALUE_TYPES


def kernel_bias(bias: Optional[Tensor]) -> Optional[Tensor]:
    """The bias as the kernels read it: contiguous float32."""
    if bias is not None and (bias.dtype != torch.float32 or not bias.is_contiguous()):
        bias = bias.detach().to(torch.float32).contiguous()
    return bias


def run_kernel(format: str, kernel, x: Tensor, bias: Optional[Tensor], in_features: int, out_features: int,
               isa: Optional[str] = None) -> Tensor:
    """y = x @ W.T + bias through a compiled kernel object (the `format`'s `kernel`), for CPU x
    of a kernel dtype and bias already as `kernel_bias` makes it. isa: force a variant by name
    (tests); default the planner's choice for this format, batch and dtype.

    The per-call path of every eager layer: a microsecond here is a tenth of a small layer."""
    x2 = x if x.ndim == 2 else x.reshape(-1, in_features)
    dtype = x2.dtype
    if dtype in _WIDENED_ACTIVATIONS:
        x2 = x2.to(torch.float32)
        dtype = torch.float32
    batch = x2.shape[0]
    # Rows at a unit column stride, each at least a row apart (a broadcast or transposed x is
    # copied); the common contiguous case costs one check.
    row_stride = in_features
    if not x2.is_contiguous():
        if x2.stride(-1) != 1 or (batch > 1 and x2.stride(0) < in_features):
            x2 = x2.contiguous()
        elif batch > 1:
            row_stride = x2.stride(0)
    # Positional sizes: torch.empty with a dtype keyword costs 0.5 us more.
    y = torch.empty(batch, out_features) if dtype is torch.float32 else torch.empty(batch, out_features, dtype=dtype)
    kernel.run(planner.kernel_isa(format, batch, dtype) if isa is None else planner.forced_isa(isa), x2.data_ptr(),
               KERNEL_ACTIVATIONS[dtype], batch, row_stride, 0 if bias is None else bias.data_ptr(), y.data_ptr(),
               torch.get_num_threads())
    if dtype is not x.dtype:
        y = y.to(x.dtype)
    return y if x.ndim == 2 else y.reshape(*x.shape[:-1], out_features)


def version_of(t: Tensor) -> int:
    """t's in-place update counter; -1 for an inference tensor, which keeps none (made under
    torch.inference_mode, it can be changed in place only there)."""
    return -1 if t.is_inference() else t._version


# Whether kernel objects that live across calls (a layer's, the op path's) may build layouts
# derived from their buffers for the calls that gain from them: 2:4's rows in lanes and CSR's
# column chunks, about 1 byte per kept weight beside the canonical buffers (SparseLinear.
# derived_bytes; a layer under bf16 autocast also keeps a bf16 copy of float32 values). On unless SPARSEKERN_DERIVED_LAYOUTS=0 (or off / false / no); part of every
# cached kernel's key, so that set_derived_layouts reaches kernels built before it.
LAYOUTS_ENV = "SPARSEKERN_DERIVED_LAYOUTS"
derived_layouts_on = env_flag(LAYOUTS_ENV)


def set_derived_layouts(enabled: bool) -> bool:
    """Lets the kernels build their in-memory layouts of the weights (True, the default) or
    not (False: batched calls run slower, on the canonical buffers only, and use no memory
    besides them). Layouts already built are dropped on each layer's next call, and those of
    the op path's kernels (calls through torch's dispatcher) at once. Returns the previous
    setting."""
    global derived_layouts_on
    if not isinstance(enabled, bool):
        raise TypeError(f"set_derived_layouts takes True or False, got {enabled!r}")
    previous, derived_layouts_on = derived_layouts_on, enabled
    if not enabled:
        # The op path's kernels go now: a layer called there once (with gradients, before
        # serving under no_grad) is not called there again, and its kernel kept its layouts.
        _op_kernels.clear()
    return previous


def keep_layouts(kernel) -> None:
    """Lets a kernel object that lives across calls build derived layouts, where they are on."""
    if derived_layouts_on:
        kernel.keep_layouts()


# Every cached kernel (SparseLinear._handle_key, _op_kernel) is keyed by its tensors' version
# counters, which in-place updates bump. torch's fused optimizers (fused=True) update their
# parameters in place without bumping them (torch 2.13), and the kernels would go on computing
# with the weights from before the step; a step post hook bumps them, as the other
# implementations do. Registered with the first cached kernel.
_step_hook = None


def _after_fused_step(optimizer, args, kwargs) -> None:
    for group in optimizer.param_groups:
        if group.get("fused"):
            increment_version(group["params"])


def watch_optimizer_steps() -> None:
    """Makes sure fused optimizer steps reach the cached kernels (called as one is built)."""
    global _step_hook
    if _step_hook is None:
        _step_hook = register_optimizer_step_post_hook(_after_fused_step)


# The op path's kernel objects, by packed values tensor. The dispatcher's calls (torch.compile,
# training) pass the same tensors call after call, and a kernel that lives across calls may
# keep layouts derived from them (2:4's rows-in-lanes copy for bf16 batches) instead of
# rebuilding them per call. An entry goes with its tensor.
_op_kernels = WeakIdKeyDictionary()


def op_kernel_derived_bytes(values: Optional[Tensor]) -> int:
    """Bytes of the derived layouts the op path's kernel for this values tensor holds (0 if none)."""
    entry = None if values is None else _op_kernels.get(values)
    return 0 if entry is None else int(entry[1].derived_bytes())


def forget_kernel(values: Tensor) -> None:
    """Drops the op path's kernel for this values tensor (sparse_linear.refresh)."""
    _op_kernels.pop(values, None)


def _op_kernel(fmt: PackedFormat, tensors, in_features: int, out_features: int):
    key = (tuple((t.data_ptr(), t.numel(), version_of(t)) for t in tensors), in_features, out_features,
           derived_layouts_on)
    entry = _op_kernels.get(tensors.values)
    if entry is not None and entry[0] == key:
        return entry[1]
    kernel = fmt.kernel(tensors, in_features, out_features)
    keep_layouts(kernel)
    watch_optimizer_steps()
    _op_kernels[tensors.values] = (key, kernel)
    return kernel


def linear_eager(format: str, x: Tensor, tensors: Sequence[Tensor], bias: Optional[Tensor], in_features: int,
                 out_features: int, isa: Optional[str] = None) -> Tensor:
    """y = x @ W.T + bias for W packed in `format`, computed now (no dispatcher, no autograd).

    tensors: the format's packed tensors in layout order. isa: the CPU kernel variant by name
    (sparsekern.supported_cpu_isas()); default the planner's choice.
    """
    fmt = PACKED_FORMATS[format]
    tensors = fmt.layout(*tensors)
    check_linear_args(fmt, x, tensors, bias, in_features, out_features)
    if not x.is_cpu or not kernel_dtypes(x, tensors.values):
        return fmt.linear_torch(x, tensors, bias, in_features, out_features)
    contiguous = fmt.layout(*(t.contiguous() for t in tensors))
    if all(c is t for c, t in zip(contiguous, tensors)):
        kernel = _op_kernel(fmt, contiguous, in_features, out_features)
    else:  # copies made for this call only
        kernel = fmt.kernel(contiguous, in_features, out_features)
    return run_kernel(format, kernel, x, kernel_bias(bias), in_features, out_features, isa)


# ---- op registration ---------------------------------------------------------------------------

_lib = torch.library.Library("sparsekern", "DEF")


def op_names(fmt: PackedFormat):
    """(linear, grad_input, sampled_grad) op names of a format, without the namespace."""
    return f"{fmt.op}_linear", f"{fmt.op}_linear_grad_input", f"{fmt.op}_sampled_grad"


def linear_op(format: str):
    """The torch op sparsekern::<op>_linear of a format (an OpOverloadPacket)."""
    return getattr(torch.ops.sparsekern, op_names(PACKED_FORMATS[format])[0])


def _register(fmt: PackedFormat) -> None:
    fields = fmt.layout._fields
    n = len(fields)
    values_at = fields.index("values")
    linear, grad_input, sampled_grad = op_names(fmt)
    tensor_args = ", ".join(f"Tensor {name}" for name in fields)
    _lib.define(f"{linear}(Tensor x, {tensor_args}, Tensor? bias, int in_features, int out_features) -> Tensor")
    _lib.define(f"{grad_input}(Tensor grad_y, {tensor_args}, int in_features) -> Tensor")
    _lib.define(f"{sampled_grad}(Tensor grad_y, Tensor x, {tensor_args}, int in_features) -> Tensor")

    def split(rest):  # (T..., bias, in_features, out_features) -> (tensors, bias, in, out)
        return (fmt.layout(*rest[:n]), *rest[n:])

    def linear_cpu(x, *rest):
        tensors, bias, in_features, out_features = split(rest)
        return linear_eager(fmt.name, x, tensors, bias, in_features, out_features)

    def linear_any(x, *rest):
        tensors, bias, in_features, out_features = split(rest)
        check_linear_args(fmt, x, tensors, bias, in_features, out_features)
        return fmt.linear_torch(x, tensors, bias, in_features, out_features)

    def linear_fake(x, *rest):
        tensors, bias, in_features, out_features = split(rest)
        check_linear_args(fmt, x, tensors, bias, in_features, out_features)
        return x.new_empty((*x.shape[:-1], out_features))

    _lib.impl(linear, linear_cpu, "CPU")
    _lib.impl(linear, linear_any, "CompositeExplicitAutograd")
    torch.library.register_fake(f"sparsekern::{linear}", linear_fake, lib=_lib)

    _lib.impl(grad_input, lambda grad_y, *rest: fmt.grad_input(grad_y, fmt.layout(*rest[:n]), rest[n]),
              "CompositeExplicitAutograd")
    torch.library.register_fake(f"sparsekern::{grad_input}",
                                lambda grad_y, *rest: grad_y.new_empty((*grad_y.shape[:-1], rest[n])), lib=_lib)
    _lib.impl(sampled_grad, lambda grad_y, x, *rest: fmt.sampled_grad(grad_y, x, fmt.layout(*rest[:n]), rest[n]),
              "CompositeExplicitAutograd")
    torch.library.register_fake(
        f"sparsekern::{sampled_grad}",
        lambda grad_y, x, *rest: rest[values_at].new_empty(rest[values_at].shape, dtype=compute_dtype(grad_y, x)),
        lib=_lib)

    grad_input_op = getattr(torch.ops.sparsekern, grad_input)
    sampled_grad_op = getattr(torch.ops.sparsekern, sampled_grad)

    def setup_context(ctx, inputs, output):
        x, tensors, bias, in_features = inputs[0], inputs[1:1 + n], inputs[1 + n], inputs[2 + n]
        ctx.save_for_backward(x, *tensors)
        ctx.in_features = in_features
        ctx.bias_dtype = bias.dtype if bias is not None else None

    def backward(ctx, grad_y):
        x, *tensors = ctx.saved_tensors
        grads = [None] * (n + 4)
        if ctx.needs_input_grad[0]:
            grads[0] = grad_input_op(grad_y, *tensors, ctx.in_features).to(x.dtype)
        if ctx.needs_input_grad[1 + values_at]:
            grads[1 + values_at] = sampled_grad_op(grad_y, x, *tensors, ctx.in_features).to(tensors[values_at].dtype)
        if ctx.needs_input_grad[1 + n]:
            grads[1 + n] = grad_y.reshape(-1, grad_y.shape[-1]).sum(0).to(ctx.bias_dtype)
        return tuple(grads)

    torch.library.register_autograd(f"sparsekern::{linear}", backward, setup_context=setup_context, lib=_lib)
    for name in (grad_input, sampled_grad):  # first derivatives only, said at the autograd key
        torch.library.register_autograd(f"sparsekern::{name}", _no_double_backward(name), lib=_lib)


def _no_double_backward(name: str):
    def backward(ctx, *grads):
        raise NotImplementedError(f"sparsekern::{name} has no derivative: sparsekern ops support first "
                                  "derivatives only (no double backward)")
    return backward


for _fmt in PACKED_FORMATS.values():
    _register(_fmt)
