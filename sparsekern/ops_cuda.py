"""CUDA kernels for the sparsekern ops, registered on torch's dispatcher for CUDA tensors.

Imported by sparsekern/__init__.py when the compiled module was built with CUDA
(`_C.with_cuda`). The ops keep their schema, fake kernels and autograd from sparsekern.ops;
this module only adds what runs for the "cuda" dispatch key:

    sparsekern::csr_linear   csr_spmm_cuda (csrc/kernels/cuda/csr_spmm.cu)
    sparsekern::nm24_linear  nm24_linear_cuda (csrc/kernels/cuda/nm24_linear.cu)

The kernels take float32, float16 or bfloat16 activations; values in x's dtype, or any of
the three with float32 x; they accumulate in float32 and return y in x's dtype. Other
value dtypes are cast to x's dtype per call; float64 takes torch's own sparse/dense path.
Work is enqueued on torch's current stream of x's device; nothing synchronizes.
"""
from typing import Optional

import torch
from torch import Tensor

from . import _backend, ops
from .formats import PACKED_FORMATS, csr, nm

_C = _backend._C
_DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
_SUPPORTED = {(a, v) for a in _DTYPE_NAMES for v in _DTYPE_NAMES
              if _C.cuda_supports_types(_DTYPE_NAMES[a], _DTYPE_NAMES[v])}


def _kernel_inputs(x: Tensor, values: Tensor, bias: Optional[Tensor], in_features: int):
    """x as [batch, in] rows with unit column stride, values and bias in dtypes the kernels take."""
    x2 = x if x.ndim == 2 else x.reshape(-1, in_features)
    if x2.stride(-1) != 1 or (x2.shape[0] > 1 and x2.stride(0) < in_features):
        x2 = x2.contiguous()
    if (x.dtype, values.dtype) not in _SUPPORTED:
        values = values.to(x.dtype)
    values = values.contiguous()
    if bias is not None and (bias.dtype != x.dtype or not bias.is_contiguous()):
        bias = bias.to(x.dtype).contiguous()
    return x2, values, bias


def _launch(x: Tensor, kernel, *args) -> None:
    """Calls a _C CUDA entry point on x's device and torch's current stream there."""
    if x.device.index == torch.cuda.current_device():
        kernel(*args, torch.cuda.current_stream().cuda_stream)
    else:
        with torch.cuda.device(x.device):
            kernel(*args, torch.cuda.current_stream().cuda_stream)


def _output(y: Tensor, x: Tensor) -> Tensor:
    return y if x.ndim == 2 else y.reshape(*x.shape[:-1], y.shape[-1])


def csr_linear_cuda(x: Tensor, row_ptr: Tensor, col_idx: Tensor, values: Tensor, bias: Optional[Tensor],
                    in_features: int, out_features: int) -> Tensor:
    """y [..., out] = x [..., in] @ W.T + bias for CSR W, all on one CUDA device."""
    tensors = csr.CsrTensors(row_ptr, col_idx, values)
    ops.check_linear_args(PACKED_FORMATS["csr"], x, tensors, bias, in_features, out_features)
    if x.dtype not in _DTYPE_NAMES:
        return csr.linear_torch(x, tensors, bias, in_features, out_features)
    x2, values, bias = _kernel_inputs(x, values, bias, in_features)
    row_ptr, col_idx = row_ptr.contiguous(), col_idx.contiguous()
    batch = x2.shape[0]
    y = torch.empty((batch, out_features), dtype=x.dtype, device=x.device)
    _launch(x, _C.csr_spmm_cuda, out_features, in_features, col_idx.shape[0], row_ptr.data_ptr(),
            col_idx.data_ptr(), str(col_idx.dtype).replace('torch.', ''), values.data_ptr(), _DTYPE_NAMES[values.dtype],
            x2.data_ptr(), _DTYPE_NAMES[x.dtype], batch, x2.stride(0) if batch > 1 else in_features,
            bias.data_ptr() if bias is not None else 0, y.data_ptr())
    return _output(y, x)


def nm24_linear_cuda(x: Tensor, values: Tensor, meta: Tensor, bias: Optional[Tensor],
                     in_features: int, out_features: int) -> Tensor:
    """y [..., out] = x [..., in] @ W.T + bias for 2:4 W (values [out, in / 2], meta), on one CUDA device."""
    tensors = nm.Nm24Tensors(values, meta)
    ops.check_linear_args(PACKED_FORMATS["2:4"], x, tensors, bias, in_features, out_features)
    if x.dtype not in _DTYPE_NAMES:
        return nm.linear_torch(x, tensors, bias, in_features, out_features)
    x2, values, bias = _kernel_inputs(x, values, bias, in_features)
    meta = meta.contiguous()
    batch = x2.shape[0]
    y = torch.empty((batch, out_features), dtype=x.dtype, device=x.device)
    _launch(x, _C.nm24_linear_cuda, out_features, in_features, values.data_ptr(), _DTYPE_NAMES[values.dtype],
            meta.data_ptr(), x2.data_ptr(), _DTYPE_NAMES[x.dtype], batch,
            x2.stride(0) if batch > 1 else in_features, bias.data_ptr() if bias is not None else 0, y.data_ptr())
    return _output(y, x)


torch.library.register_kernel("sparsekern::csr_linear", "cuda", csr_linear_cuda)
torch.library.register_kernel("sparsekern::nm24_linear", "cuda", nm24_linear_cuda)
