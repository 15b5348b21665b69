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
from typing import NamedTuple, Optional, Tuple

import torch

MAX_UINT16_COLS = 65536
VALUE_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


class CsrTensors(NamedTuple):
    row_ptr: torch.Tensor
    col_idx: torch.Tensor
    values: torch.Tensor


def index_dtype(in_features: int) -> torch.dtype:
    """The column index dtype for a weight with `in_features` columns."""
    return torch.uint16 if in_features <= MAX_UINT16_COLS else torch.int32


def check_mask(weight: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """The bool [out, in] mask of `weight` (default: its nonzeros), after checking both; shared
    by every packed format."""
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


def pack(weight: torch.Tensor, mask: Optional[torch.Tensor] = None,
         value_dtype: Optional[torch.dtype] = None) -> CsrTensors:
    """Packs `weight` [out, in] keeping the entries where `mask` is true (default: weight != 0).

    A kept entry whose value is 0 is stored: the mask, not the value, decides the pattern.
    """
    mask = check_mask(weight, mask)
    value_dtype = value_dtype or weight.dtype
    if value_dtype not in VALUE_DTYPES:
        raise TypeError(f"value dtype {value_dtype} is not one of {VALUE_DTYPES}")
    weight = weight.detach()
    rows, cols = mask.nonzero(as_tuple=True)  # row-major: sorted by row, then column
    counts = torch.bincount(rows, minlength=weight.shape[0])
    row_ptr = torch.zeros(weight.shape[0] + 1, dtype=torch.int64, device=weight.device)
    torch.cumsum(counts, 0, out=row_ptr[1:])
    return CsrTensors(row_ptr, cols.to(index_dtype(weight.shape[1])), weight[rows, cols].to(value_dtype))


def row_indices(row_ptr: torch.Tensor) -> torch.Tensor:
    """The output row of each nonzero, [nnz] int64."""
    rows = torch.arange(row_ptr.numel() - 1, device=row_ptr.device)
    return torch.repeat_interleave(rows, row_ptr.diff())


def unpack(csr: CsrTensors, shape: Tuple[int, int], dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """The dense [out, in] weight, zeros where nothing is stored (exact inverse of pack)."""
    dense = torch.zeros(shape, dtype=dtype or csr.values.dtype, device=csr.values.device)
    dense[row_indices(csr.row_ptr), csr.col_idx.to(torch.int64)] = csr.values.detach().to(dense.dtype)
    return dense


def mask_of(csr: CsrTensors, shape: Tuple[int, int]) -> torch.Tensor:
    """The bool [out, in] pattern of stored entries."""
    mask = torch.zeros(shape, dtype=torch.bool, device=csr.row_ptr.device)
    mask[row_indices(csr.row_ptr), csr.col_idx.to(torch.int64)] = True
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
    if values.dtype not in VALUE_DTYPES:
        raise TypeError(f"values.dtype = {values.dtype}, expected one of {VALUE_DTYPES}")
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
