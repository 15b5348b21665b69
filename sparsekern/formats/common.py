"""What every packed format shares: the descriptor that registers one, the mask check and the
value dtypes.

A format is one module (csr.py, nm.py) that ends in a `FORMAT = PackedFormat(...)`; the
registry (formats/__init__.py) lists those modules, and everything else (SparseLinear, the
torch ops, sparsify, save/load, the CLI, the tests) derives from the registry.

    name          the user-facing name: SparseLinear(format=...), sparsify(format=...), files
    op            the torch ops' prefix: sparsekern::<op>_linear, <op>_linear_grad_input,
                  <op>_sampled_grad
    layout        the NamedTuple of its tensors, fields in the order the ops take them;
                  'values' becomes an nn.Parameter (a packed model can be fine-tuned), the
                  rest buffers
    pack          (weight, mask, value_dtype) -> tensors
    unpack        (tensors, (out, in), dtype=None) -> dense weight
    validate      (tensors, (out, in)) -> None, or ValueError/TypeError naming the problem
    skeleton      ((out, in), nnz, dtype, device) -> valid all-zero tensors to load into
    nnz           tensors -> the number of stored weights
    incompatible  bool mask [out, in] -> None if the format can hold the pattern, else why not
    check_tensors (tensors, in, out) -> None or ValueError/TypeError: the op's argument check
                  of the packed tensors (cheap: shapes and dtypes, run on every eager call)
    kernel        (tensors, in, out) -> the compiled kernel object (_C.<Name>Linear) over
                  contiguous CPU tensors with kernel value dtypes
    linear_torch  (x, tensors, bias, in, out) -> y, for dtypes/devices the kernels lack
    grad_input    (grad_y, tensors, in) -> dL/dx
    sampled_grad  (grad_y, x, tensors, in) -> dL/dvalues, shaped like values
"""
from typing import Callable, NamedTuple, Optional

import torch

# Dtypes a format stores values in; the compiled CPU kernels read the first two (the key is
# the kernels' value type number, csrc/kernels/cpu/linear_args.h).
VALUE_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
KERNEL_VALUE_TYPES = {torch.float32: 0, torch.bfloat16: 1}


class PackedFormat(NamedTuple):
    name: str
    op: str
    layout: type
    pack: Callable
    unpack: Callable
    validate: Callable
    skeleton: Callable
    nnz: Callable
    incompatible: Callable[[torch.Tensor], Optional[str]]
    check_tensors: Callable
    kernel: Callable
    linear_torch: Callable
    grad_input: Callable
    sampled_grad: Callable


def check_mask(weight: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """The bool [out, in] mask of `weight` (default: its nonzeros), after checking both."""
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D [out, in], got shape {tuple(weight.shape)}")
    if not weight.is_floating_point():
        raise TypeError(f"weight.dtype = {weight.dtype}, expected a floating point dtype")
    if mask is None:
        return weight != 0
    if tuple(mask.shape) != tuple(weight.shape):
        raise ValueError(f"mask.shape = {tuple(mask.shape)}, expected weight.shape = {tuple(weight.shape)}")
    if mask.device != weight.device:
        raise ValueError(f"mask is on {mask.device}, weight on {weight.device}")
    if mask.dtype != torch.bool:
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("mask must hold only 0 and 1 (or be a bool tensor)")
        mask = mask != 0
    return mask


def check_value_dtype(value_dtype: torch.dtype) -> None:
    if value_dtype not in VALUE_DTYPES:
        raise TypeError(f"value dtype {value_dtype} is not one of {VALUE_DTYPES}")


def compute_dtype(*tensors: Optional[torch.Tensor]) -> torch.dtype:
    """float64 if any tensor is float64 (gradcheck), else float32: the torch paths' precision."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def through_dense(unpack: Callable):
    """(linear_torch, grad_input) for a format whose torch computation goes through its dense
    weight (formats that torch.sparse cannot read): y = x @ W.T + bias and grad_y @ W, in
    float64 if anything is float64, else float32, returned in the input's dtype."""
    def linear_torch(x, tensors, bias, in_features, out_features):
        dtype = compute_dtype(x, tensors.values, bias)
        weight = unpack(tensors, (out_features, in_features), dtype)
        return torch.nn.functional.linear(x.to(dtype), weight, None if bias is None else bias.to(dtype)).to(x.dtype)

    def grad_input(grad_y, tensors, in_features):
        dtype = compute_dtype(grad_y, tensors.values)
        weight = unpack(tensors, (grad_y.shape[-1], in_features), dtype)
        return (grad_y.to(dtype) @ weight).to(grad_y.dtype)

    return linear_torch, grad_input
