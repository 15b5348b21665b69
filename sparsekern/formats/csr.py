"""CSR over output rows: the packed form of an unstructured-sparse Linear weight.

    row_ptr  [out + 1] int64    nonzeros of row r are row_ptr[r] : row_ptr[r + 1]
    col_idx  [nnz]     uint16   column of each nonzero, increasing within a row
                       (int32 when in_features > 65536)
    values   [nnz]     float32 | bfloat16 (any float dtype is accepted; the fast kernels
                       read float32 and bfloat16)

uint16 indices matter: at batch 1 the product is bound by bytes moved, and fp32 + uint16 is
6 bytes per nonzero against 4 per dense weight. row_ptr stays int64 whatever nnz is: it holds
out + 1 entries, a negligible share of the bytes, and one type keeps one kernel per case.
"""
import warnings
from typing import NamedTuple, Optional, Tuple

import torch

from .. import _backend
from .common import KERNEL_VALUE_TYPES, PackedFormat, check_mask, check_value_dtype, compute_dtype

MAX_UINT16_COLS = 65536
_KERNEL_INDEX_TYPES = {torch.uint16: 0, torch.int32: 1}  # csrc/kernels/cpu/linear_args.h


class CsrTensors(NamedTuple):
    row_ptr: torch.Tensor
    col_idx: torch.Tensor
    values: torch.Tensor


def index_dtype(in_features: int) -> torch.dtype:
    """The column index dtype for a weight with `in_features` columns."""
    return torch.uint16 if in_features <= MAX_UINT16_COLS else torch.int32


def pack(weight: torch.Tensor, mask: Optional[torch.Tensor] = None,
         value_dtype: Optional[torch.dtype] = None) -> CsrTensors:
    """Packs `weight` [out, in] keeping the entries where `mask` is true (default: weight != 0).

    A kept entry whose value is 0 is stored: the mask, not the value, decides the pattern.
    """
    mask = check_mask(weight, mask)
    value_dtype = value_dtype or weight.dtype
    check_value_dtype(value_dtype)
    weight = weight.detach()
    rows, cols = mask.nonzero(as_tuple=True)  # row-major: sorted by row, then column
    counts = torch.bincount(rows, minlength=weight.shape[0])
    row_ptr = torch.zeros(weight.shape[0] + 1, dtype=torch.int64, device=weight.device)
    torch.cumsum(counts, 0, out=row_ptr[1:])
    return CsrTensors(row_ptr, cols.to(index_dtype(weight.shape[1])), weight[rows, cols].to(value_dtype))


def row_indices(row_ptr: torch.Tensor, nnz: int) -> torch.Tensor:
    """The output row of each nonzero, [nnz] int64."""
    rows = torch.arange(row_ptr.numel() - 1, device=row_ptr.device)
    # output_size from the buffers' last offset would read the data; the caller's nnz (the
    # length of col_idx and values) is known from shapes, so torch.compile traces this whole.
    return torch.repeat_interleave(rows, row_ptr.diff(), output_size=nnz)


def unpack(csr: CsrTensors, shape: Tuple[int, int], dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """The dense [out, in] weight, zeros where nothing is stored (exact inverse of pack)."""
    dense = torch.zeros(shape, dtype=dtype or csr.values.dtype, device=csr.values.device)
    dense[row_indices(csr.row_ptr, csr.col_idx.shape[0]), csr.col_idx.to(torch.int64)] = csr.values.detach().to(dense.dtype)
    return dense


def mask_of(csr: CsrTensors, shape: Tuple[int, int]) -> torch.Tensor:
    """The bool [out, in] pattern of stored entries."""
    mask = torch.zeros(shape, dtype=torch.bool, device=csr.row_ptr.device)
    mask[row_indices(csr.row_ptr, csr.col_idx.shape[0]), csr.col_idx.to(torch.int64)] = True
    return mask


def validate(csr: CsrTensors, shape: Tuple[int, int]) -> None:
    """Raises ValueError/TypeError naming the problem unless `csr` is a well-formed [out, in] CSR.

    Checked before any kernel reads buffers that came from outside (a file, a state_dict).
    """
    out_features, in_features = shape
    row_ptr, col_idx, values = csr
    for name, t in (("row_ptr", row_ptr), ("col_idx", col_idx), ("values", values)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
        if t.dim() != 1:
            raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    if row_ptr.dtype != torch.int64:
        raise TypeError(f"row_ptr.dtype = {row_ptr.dtype}, expected torch.int64")
    if col_idx.dtype not in (torch.uint16, torch.int32):
        raise TypeError(f"col_idx.dtype = {col_idx.dtype}, expected torch.uint16 or torch.int32")
    if col_idx.dtype == torch.uint16 and in_features > MAX_UINT16_COLS:
        raise ValueError(f"uint16 col_idx cannot address in_features = {in_features} > {MAX_UINT16_COLS}")
    if not values.is_floating_point():
        raise TypeError(f"values.dtype = {values.dtype}, expected a floating point dtype")
    check_value_dtype(values.dtype)
    if row_ptr.numel() != out_features + 1:
        raise ValueError(f"row_ptr has {row_ptr.numel()} entries, expected out_features + 1 = {out_features + 1}")
    nnz = col_idx.numel()
    if values.numel() != nnz:
        raise ValueError(f"values has {values.numel()} entries but col_idx has {nnz}")
    if nnz > out_features * in_features:
        raise ValueError(f"nnz = {nnz} exceeds out_features * in_features = {out_features * in_features}")
    first, last = int(row_ptr[0]), int(row_ptr[-1])
    if first != 0 or last != nnz:
        raise ValueError(f"row_ptr must run from 0 to nnz = {nnz}, got {first} .. {last}")
    steps = row_ptr.diff()
    if bool((steps < 0).any()):
        row = int((steps < 0).nonzero()[0])
        raise ValueError(f"row_ptr decreases at row {row}: {int(row_ptr[row])} -> {int(row_ptr[row + 1])}")
    if nnz == 0:
        return
    cols = col_idx.to(torch.int64)
    if int(cols.min()) < 0 or int(cols.max()) >= in_features:
        bad = int(((cols < 0) | (cols >= in_features)).nonzero()[0])
        raise ValueError(f"col_idx[{bad}] = {int(cols[bad])} is out of range [0, {in_features})")
    # Within a row, columns must strictly increase; a step across a row boundary may go down.
    starts_row = torch.zeros(nnz, dtype=torch.bool, device=cols.device)
    starts_row[row_ptr[:-1][steps > 0]] = True
    bad_steps = (cols[1:] <= cols[:-1]) & ~starts_row[1:]
    if bool(bad_steps.any()):
        j = int(bad_steps.nonzero()[0]) + 1
        raise ValueError(f"col_idx not strictly increasing within a row at nonzero {j}: "
                         f"{int(cols[j - 1])} then {int(cols[j])}")


def skeleton(shape: Tuple[int, int], nnz: int, dtype: torch.dtype, device=None) -> CsrTensors:
    """A valid all-zero CSR with `nnz` slots (the first nnz positions in row-major order), for
    a state_dict to fill."""
    out_features, in_features = shape
    # Arithmetic only (no bincount): the skeleton is also made on the meta device.
    row_ptr = (torch.arange(out_features + 1, device=device) * in_features).clamp(max=nnz)
    cols = torch.arange(nnz, device=device) % max(in_features, 1)
    return CsrTensors(row_ptr, cols.to(index_dtype(in_features)), torch.zeros(nnz, dtype=dtype, device=device))


# ---- the linear op's pieces ------------------------------------------------------------------

def check_tensors(csr: CsrTensors, in_features: int, out_features: int) -> None:
    """The op's argument check of the packed tensors (shapes and dtypes; every eager call)."""
    row_ptr, col_idx, values = csr
    if row_ptr.dtype != torch.int64 or row_ptr.ndim != 1 or row_ptr.shape[0] != out_features + 1:
        raise ValueError(f"row_ptr must be int64 [out_features + 1 = {out_features + 1}], "
                         f"got {row_ptr.dtype} {tuple(row_ptr.shape)}")
    if col_idx.dtype not in _KERNEL_INDEX_TYPES or col_idx.ndim != 1:
        raise TypeError(f"col_idx must be 1-D uint16 or int32, got {col_idx.dtype} {tuple(col_idx.shape)}")
    if values.ndim != 1 or values.shape[0] != col_idx.shape[0]:
        raise ValueError(f"values.shape = {tuple(values.shape)}, expected ({col_idx.shape[0]},) like col_idx")


def kernel(csr: CsrTensors, in_features: int, out_features: int):
    """The compiled kernel object over contiguous CPU buffers (it checks row_ptr's ends)."""
    row_ptr, col_idx, values = csr
    return _backend._C.csr_linear(out_features, in_features, col_idx.shape[0], row_ptr.data_ptr(),
                                  col_idx.data_ptr(), _KERNEL_INDEX_TYPES[col_idx.dtype], values.data_ptr(),
                                  KERNEL_VALUE_TYPES[values.dtype])


def _as_torch_csr(csr: CsrTensors, in_features: int, dtype: torch.dtype) -> torch.Tensor:
    """A torch sparse CSR view of the buffers, for the paths the compiled kernels lack."""
    row_ptr, col_idx, values = csr
    with warnings.catch_warnings():  # torch's "CSR support is in beta" notice, once per call
        warnings.simplefilter("ignore", UserWarning)
        # Buffers reaching an op were validated when they were made or loaded.
        return torch.sparse_csr_tensor(row_ptr, col_idx.to(torch.int64), values.to(dtype),
                                       size=(row_ptr.shape[0] - 1, in_features), check_invariants=False)


def linear_torch(x: torch.Tensor, csr: CsrTensors, bias: Optional[torch.Tensor], in_features: int,
                 out_features: int) -> torch.Tensor:
    """y = x @ W.T + bias through torch.sparse, for dtypes the compiled kernels lack (float64 for
    gradcheck, float16 values) and devices without a kernel. Computes in float64 if anything is
    float64, else float32, and returns x.dtype."""
    dtype = compute_dtype(x, csr.values, bias)
    x2 = x.reshape(-1, in_features).to(dtype)
    # Row-major, as the kernels' output and the ops' fake (torch.compile checks the strides).
    y = torch.sparse.mm(_as_torch_csr(csr, in_features, dtype), x2.t()).t().contiguous()
    if bias is not None:
        y = y + bias.to(dtype)
    return y.to(x.dtype).reshape(*x.shape[:-1], out_features)


def grad_input(grad_y: torch.Tensor, csr: CsrTensors, in_features: int) -> torch.Tensor:
    """dL/dx = grad_y @ W."""
    dtype = compute_dtype(grad_y, csr.values)
    g2 = grad_y.reshape(-1, grad_y.shape[-1]).to(dtype)
    grad_x = g2 @ _as_torch_csr(csr, in_features, dtype)
    return grad_x.to(grad_y.dtype).reshape(*grad_y.shape[:-1], in_features)


def sampled_grad(grad_y: torch.Tensor, x: torch.Tensor, csr: CsrTensors, in_features: int) -> torch.Tensor:
    """dL/dvalues: (grad_y.T @ x) at the stored positions, in CSR order."""
    dtype = compute_dtype(grad_y, x)
    g2 = grad_y.reshape(-1, grad_y.shape[-1]).to(dtype)
    x2 = x.reshape(-1, in_features).to(dtype)
    pattern = _as_torch_csr(csr._replace(values=torch.zeros(csr.values.shape, dtype=dtype, device=x.device)),
                            in_features, dtype)
    sampled = torch.sparse.sampled_addmm(pattern, g2.t().contiguous(), x2.contiguous(), beta=0.0)
    return sampled.values().clone()


FORMAT = PackedFormat(
    name="csr", op="csr", layout=CsrTensors, pack=pack, unpack=unpack, validate=validate, skeleton=skeleton,
    nnz=lambda t: t.values.numel(), incompatible=lambda mask: None, check_tensors=check_tensors,
    kernel=kernel, linear_torch=linear_torch, grad_input=grad_input, sampled_grad=sampled_grad)
