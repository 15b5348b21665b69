"""2:4 semi-structured sparsity: in every group of 4 consecutive inputs of an output row, at
most 2 weights are kept (NVIDIA's sparse tensor core pattern; here for the CPU kernels).

    values  [out, in / 2]         float32 | bfloat16 (float16 and float64 are accepted; the
                                  compiled kernels read float32 and bfloat16). Group g of row r keeps
                                  values[r, 2g] and values[r, 2g + 1].
    meta    [out, ceil(in / 8)]   uint8, two groups per byte: group g is the nibble
                                  (meta[r, g // 2] >> 4 * (g % 2)) & 15 = p0 | p1 << 2, the
                                  columns 4g + p0 and 4g + p1 (p0 < p1) its two values sit at.
                                  With an odd number of groups the last high nibble is 0.

Bytes per weight: fp32 2 + 1/8 (against 4 dense), bf16 1 + 1/8. Positions are stored rather
than a 4-bit keep mask because the kernels turn them into lane indices with one shift and one
mask per lane (sparsekern's csrc/kernels/cpu/nm24_linear_simd.h), and because it is the
layout of NVIDIA's 2:4 metadata, so a CUDA kernel can share it.

A group that keeps fewer than 2 weights (1:4, 0:4 are 2:4-compatible) stores an explicit zero
at its lowest unused position. A stored zero is padding, not a weight (nnz counts the nonzero
values): its gradient is 0, so fine-tuning cannot grow it back, as no torch.optim step moves a
zero with a zero gradient. A kept weight that is exactly zero is therefore frozen at zero.
in_features must be a multiple of 4: padding would make forward copy x to pad it, which costs
as much as a batch-1 product saves; such layers stay dense or CSR (ValueError here).
"""
from typing import NamedTuple, Optional, Tuple

import torch

from .. import _backend
from .common import KERNEL_VALUE_TYPES, PackedFormat, check_mask, check_value_dtype, compute_dtype, through_dense

GROUP = 4  # M of N:M
KEPT = 2   # N of N:M


class Nm24Tensors(NamedTuple):
    values: torch.Tensor
    meta: torch.Tensor


def meta_columns(in_features: int) -> int:
    return (in_features // GROUP + 1) // 2


def _check_in_features(in_features: int) -> None:
    if in_features % GROUP != 0:
        raise ValueError(f"2:4 needs in_features % 4 == 0, got in_features = {in_features}; "
                         f"keep this layer dense or use format='csr'")


def mask_violation(mask: torch.Tensor) -> Optional[str]:
    """None if the bool [out, in] mask keeps at most 2 of every 4 inputs, else where it does not."""
    out_features, in_features = mask.shape
    if in_features % GROUP != 0:
        return f"in_features = {in_features} is not a multiple of 4"
    counts = mask.reshape(out_features, in_features // GROUP, GROUP).sum(-1)  # not -1: 0 rows would fail
    bad = (counts > KEPT).nonzero()
    if bad.numel() == 0:
        return None
    row, group = (int(v) for v in bad[0])
    return (f"row {row}, group {group} (columns {GROUP * group}..{GROUP * group + 3}) keeps "
            f"{int(counts[row, group])} of 4 weights ({int((counts > KEPT).sum())} groups keep more than 2)")


def pack(weight: torch.Tensor, mask: Optional[torch.Tensor] = None,
         value_dtype: Optional[torch.dtype] = None) -> Nm24Tensors:
    """Packs `weight` [out, in] keeping the entries where `mask` is true (default: weight != 0).

    Raises ValueError naming the first row and group that keeps more than 2 of 4.
    """
    mask = check_mask(weight, mask)
    value_dtype = value_dtype or weight.dtype
    check_value_dtype(value_dtype)
    out_features, in_features = weight.shape
    _check_in_features(in_features)
    problem = mask_violation(mask)
    if problem:
        raise ValueError(f"mask is not 2:4: {problem}")
    groups = in_features // GROUP
    kept = mask.reshape(out_features, groups, GROUP)
    # Kept positions first, then the lowest unused ones as padding; then in column order.
    order = torch.arange(GROUP, device=weight.device) + GROUP * (~kept).to(torch.int64)
    positions = order.topk(KEPT, dim=-1, largest=False).indices.sort(dim=-1).values
    grouped = weight.detach().reshape(out_features, groups, GROUP)
    # torch.where, not a product: padding must be +0.0 even where the weight is negative.
    values = torch.where(kept.gather(-1, positions), grouped.gather(-1, positions), 0)
    nibbles = (positions[..., 0] | positions[..., 1] << 2).to(torch.uint8)
    return Nm24Tensors(values.reshape(out_features, groups * KEPT).to(value_dtype).contiguous(),
                       _pack_nibbles(nibbles))


def _pack_nibbles(nibbles: torch.Tensor) -> torch.Tensor:
    """[out, groups] uint8 nibbles -> [out, ceil(groups / 2)] bytes, even groups low."""
    if nibbles.shape[1] % 2:
        nibbles = torch.nn.functional.pad(nibbles, (0, 1))
    return (nibbles[:, 0::2] | nibbles[:, 1::2] << 4).contiguous()


def positions_of(meta: torch.Tensor, in_features: int) -> torch.Tensor:
    """The column of every stored value, [out, in / 2] int64."""
    groups = in_features // GROUP
    nibbles = torch.stack((meta & 15, meta >> 4), dim=-1).reshape(meta.shape[0], -1)[:, :groups]
    nibbles = nibbles.to(torch.int64)
    within = torch.stack((nibbles & 3, nibbles >> 2), dim=-1)
    base = GROUP * torch.arange(groups, device=meta.device).reshape(1, groups, 1)
    return (within + base).reshape(meta.shape[0], -1)


def unpack(nm: Nm24Tensors, shape: Tuple[int, int], dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """The dense [out, in] weight, zeros where nothing is stored (exact inverse of pack)."""
    dense = torch.zeros(shape, dtype=dtype or nm.values.dtype, device=nm.values.device)
    dense.scatter_(1, positions_of(nm.meta, shape[1]), nm.values.detach().to(dense.dtype))
    return dense


def mask_of(nm: Nm24Tensors, shape: Tuple[int, int]) -> torch.Tensor:
    """The bool [out, in] pattern of stored entries (padding slots included)."""
    mask = torch.zeros(shape, dtype=torch.bool, device=nm.meta.device)
    return mask.scatter_(1, positions_of(nm.meta, shape[1]), True)


def skeleton(shape: Tuple[int, int], nnz: int, dtype: torch.dtype, device=None) -> Nm24Tensors:
    """A valid all-zero 2:4 weight (positions 0 and 1 in every group), to load a state_dict into;
    2:4 stores in / 2 slots per row whatever nnz is."""
    out_features, in_features = shape
    _check_in_features(in_features)
    nibbles = torch.full((out_features, in_features // GROUP), 0 | 1 << 2, dtype=torch.uint8, device=device)
    return Nm24Tensors(torch.zeros(out_features, in_features // 2, dtype=dtype, device=device),
                       _pack_nibbles(nibbles))


def validate(nm: Nm24Tensors, shape: Tuple[int, int]) -> None:
    """Raises ValueError/TypeError naming the problem unless `nm` is a well-formed [out, in] 2:4.

    Checked before any kernel reads buffers that came from outside (a file, a state_dict).
    Two bits cannot hold a position out of 0..3; what can be wrong is p0 >= p1 in a group,
    or a nonzero padding nibble.
    """
    out_features, in_features = shape
    _check_in_features(in_features)
    values, meta = nm
    for name, t in (("values", values), ("meta", meta)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
    if not values.is_floating_point():
        raise TypeError(f"values.dtype = {values.dtype}, expected a floating point dtype")
    check_value_dtype(values.dtype)
    if meta.dtype != torch.uint8:
        raise TypeError(f"meta.dtype = {meta.dtype}, expected torch.uint8")
    if tuple(values.shape) != (out_features, in_features // 2):
        raise ValueError(f"values.shape = {tuple(values.shape)}, expected (out_features, in_features / 2) = "
                         f"{(out_features, in_features // 2)}")
    if tuple(meta.shape) != (out_features, meta_columns(in_features)):
        raise ValueError(f"meta.shape = {tuple(meta.shape)}, expected (out_features, ceil(in_features / 8)) = "
                         f"{(out_features, meta_columns(in_features))}")
    if meta.numel() == 0:
        return
    groups = in_features // GROUP
    nibbles = torch.stack((meta & 15, meta >> 4), dim=-1).reshape(out_features, -1)
    if groups % 2 and bool((nibbles[:, groups] != 0).any()):
        row = int((nibbles[:, groups] != 0).nonzero()[0])
        raise ValueError(f"meta row {row}: the padding nibble after the last group must be 0, "
                         f"got {int(nibbles[row, groups])}")
    nibbles = nibbles[:, :groups]
    bad = ((nibbles & 3) >= (nibbles >> 2)).nonzero()
    if bad.numel():
        row, group = (int(v) for v in bad[0])
        n = int(nibbles[row, group])
        raise ValueError(f"meta row {row}, group {group}: positions {n & 3} and {n >> 2} must be distinct "
                         f"and increasing")


# ---- the linear op's pieces ------------------------------------------------------------------

def check_tensors(nm: Nm24Tensors, in_features: int, out_features: int) -> None:
    """The op's argument check of the packed tensors (shapes and dtypes; every eager call)."""
    _check_in_features(in_features)
    values, meta = nm
    if values.ndim != 2 or tuple(values.shape) != (out_features, in_features // 2):
        raise ValueError(f"values.shape = {tuple(values.shape)}, expected {(out_features, in_features // 2)}")
    meta_shape = (out_features, meta_columns(in_features))
    if meta.dtype != torch.uint8 or tuple(meta.shape) != meta_shape:
        raise ValueError(f"meta must be uint8 {meta_shape}, got {meta.dtype} {tuple(meta.shape)}")


def kernel(nm: Nm24Tensors, in_features: int, out_features: int):
    """The compiled kernel object over contiguous CPU buffers."""
    return _backend._C.nm24_linear(out_features, in_features, nm.values.data_ptr(),
                                   KERNEL_VALUE_TYPES[nm.values.dtype], nm.meta.data_ptr())


linear_torch, grad_input = through_dense(unpack)


def sampled_grad(grad_y: torch.Tensor, x: torch.Tensor, nm: Nm24Tensors, in_features: int) -> torch.Tensor:
    """dL/dvalues [out, in / 2]: (grad_y.T @ x) at the stored positions, 0 at the padding (the
    stored zeros), which must not train into weights the mask pruned."""
    dtype = compute_dtype(grad_y, x)
    g2 = grad_y.reshape(-1, grad_y.shape[-1]).to(dtype)
    x2 = x.reshape(-1, in_features).to(dtype)
    return (g2.t() @ x2).gather(1, positions_of(nm.meta, in_features)).masked_fill(nm.values == 0, 0)


# 2:4 stores in / 2 slots per row whatever the mask; padding slots hold zeros, not weights.
FORMAT = PackedFormat(
    name="2:4", op="nm24", layout=Nm24Tensors, pack=pack, unpack=unpack, validate=validate, skeleton=skeleton,
    nnz=lambda t: int(torch.count_nonzero(t.values)), incompatible=mask_violation, check_tensors=check_tensors,
    kernel=kernel, linear_torch=linear_torch, grad_input=grad_input, sampled_grad=sampled_grad)
