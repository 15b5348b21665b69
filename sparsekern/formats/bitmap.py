"""Bitmap: one bit per weight says whether it is kept, then the kept values in mask order.

    bits     [out, ceil(in / 32)]  uint32   bit j of bits[r, w] is column 32w + j of row r;
                                            bits past in_features in a row's last word are 0
    offsets  [out + 1]             int64    row r's values are values[offsets[r] : offsets[r + 1]],
                                            offsets[r + 1] - offsets[r] = popcount of row r
    values   [nnz]                 float32 | bfloat16 (float16 and float64 are accepted; the
                                            compiled kernels read float32 and bfloat16),
                                            row-major in column order

Bytes per weight at density d: fp32 4d + 1/8, bf16 2d + 1/8 (CSR with uint16 indices: 6d and
4d), so it moves fewer bytes than CSR above d = 1/16 and than dense below d = 0.97. Words of
32 bits, one output row each: an AVX-512 kernel expands two 16-lane chunks per word, an AVX2
one four 8-lane chunks, and a row pads at most 31 bits. The offsets are redundant with the
bits (a prefix sum of popcounts) but let each thread start at any row without computing it.
"""
from typing import NamedTuple, Optional, Tuple

import torch

from .. import _backend
from .common import KERNEL_VALUE_TYPES, PackedFormat, check_mask, check_value_dtype, compute_dtype, through_dense

WORD_BITS = 32


class BitmapTensors(NamedTuple):
    bits: torch.Tensor
    offsets: torch.Tensor
    values: torch.Tensor


def words(in_features: int) -> int:
    """Words of bits per output row."""
    return (in_features + WORD_BITS - 1) // WORD_BITS


def _bit_weights(device) -> torch.Tensor:
    return torch.ones(WORD_BITS, dtype=torch.int64, device=device) << torch.arange(WORD_BITS, device=device)


def pack(weight: torch.Tensor, mask: Optional[torch.Tensor] = None,
         value_dtype: Optional[torch.dtype] = None) -> BitmapTensors:
    """Packs `weight` [out, in] keeping the entries where `mask` is true (default: weight != 0).

    A kept entry whose value is 0 is stored: the mask, not the value, decides the pattern.
    """
    mask = check_mask(weight, mask)
    value_dtype = value_dtype or weight.dtype
    check_value_dtype(value_dtype)
    out_features, in_features = mask.shape
    padded = torch.nn.functional.pad(mask, (0, words(in_features) * WORD_BITS - in_features))
    per_bit = padded.reshape(out_features, words(in_features), WORD_BITS).to(torch.int64)
    bits = (per_bit * _bit_weights(mask.device)).sum(-1)
    offsets = torch.zeros(out_features + 1, dtype=torch.int64, device=mask.device)
    torch.cumsum(mask.sum(1), 0, out=offsets[1:])
    return BitmapTensors(bits.to(torch.uint32), offsets, weight.detach()[mask].to(value_dtype))


def _bits_as_bool(bits: torch.Tensor) -> torch.Tensor:
    """[out, words] uint32 -> [out, words * 32] bool, column order."""
    unpacked = (bits.to(torch.int64).unsqueeze(-1) >> torch.arange(WORD_BITS, device=bits.device)) & 1
    return unpacked.reshape(bits.shape[0], bits.shape[1] * WORD_BITS).bool()


def mask_of(tensors: BitmapTensors, shape: Tuple[int, int]) -> torch.Tensor:
    """The bool [out, in] pattern of stored entries."""
    return _bits_as_bool(tensors.bits)[:, :shape[1]]


def unpack(tensors: BitmapTensors, shape: Tuple[int, int], dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """The dense [out, in] weight, zeros where nothing is stored (exact inverse of pack)."""
    dense = torch.zeros(shape, dtype=dtype or tensors.values.dtype, device=tensors.values.device)
    # masked_scatter, not dense[mask] = values: the same row-major fill, with no shape that
    # depends on the data, so torch.compile traces it whole.
    return dense.masked_scatter_(mask_of(tensors, shape), tensors.values.detach().to(dense.dtype))


def skeleton(shape: Tuple[int, int], nnz: int, dtype: torch.dtype, device=None) -> BitmapTensors:
    """A valid all-zero bitmap keeping the first `nnz` entries in row-major order, to load a
    state_dict into. Arithmetic only (no boolean indexing): it is also made on the meta device."""
    out_features, in_features = shape
    offsets = (torch.arange(out_features + 1, device=device) * in_features).clamp(max=nnz)
    kept = offsets.diff().unsqueeze(1)  # per row
    in_word = (kept - WORD_BITS * torch.arange(words(in_features), device=device)).clamp(0, WORD_BITS)
    bits = (torch.ones_like(in_word) << in_word) - 1
    return BitmapTensors(bits.to(torch.uint32), offsets, torch.zeros(nnz, dtype=dtype, device=device))


def nnz(tensors: BitmapTensors) -> int:
    return tensors.values.numel()


def incompatible(mask: torch.Tensor) -> Optional[str]:
    """None: a bitmap holds any pattern."""
    return None


def validate(tensors: BitmapTensors, shape: Tuple[int, int]) -> None:
    """Raises ValueError/TypeError naming the problem unless `tensors` is a well-formed [out, in]
    bitmap.

    Checked before any kernel reads buffers that came from outside (a file, a state_dict): the
    kernels trust that each row's popcount is its share of the values, and read the values of
    a row by those counts.
    """
    out_features, in_features = shape
    bits, offsets, values = tensors
    for name, t in (("bits", bits), ("offsets", offsets), ("values", values)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
    if bits.dtype != torch.uint32:
        raise TypeError(f"bits.dtype = {bits.dtype}, expected torch.uint32")
    if offsets.dtype != torch.int64:
        raise TypeError(f"offsets.dtype = {offsets.dtype}, expected torch.int64")
    if not values.is_floating_point():
        raise TypeError(f"values.dtype = {values.dtype}, expected a floating point dtype")
    check_value_dtype(values.dtype)
    if tuple(bits.shape) != (out_features, words(in_features)):
        raise ValueError(f"bits.shape = {tuple(bits.shape)}, expected (out_features, ceil(in_features / 32)) = "
                         f"{(out_features, words(in_features))}")
    if tuple(offsets.shape) != (out_features + 1,):
        raise ValueError(f"offsets.shape = {tuple(offsets.shape)}, expected (out_features + 1,) = "
                         f"{(out_features + 1,)}")
    if values.dim() != 1:
        raise ValueError(f"values must be 1-D, got shape {tuple(values.shape)}")
    if in_features % WORD_BITS and bits.numel():
        padding = bits[:, -1].to(torch.int64) >> (in_features % WORD_BITS)
        if bool((padding != 0).any()):
            row = int((padding != 0).nonzero()[0])
            raise ValueError(f"bits row {row}: padding bits past in_features = {in_features} are set")
    counts = _bits_as_bool(bits).sum(1)
    first, last = int(offsets[0]), int(offsets[-1])
    if first != 0 or last != values.numel():
        raise ValueError(f"offsets must run from 0 to the number of values {values.numel()}, got {first} .. {last}")
    steps = offsets.diff()
    if not torch.equal(steps, counts):
        row = int((steps != counts).nonzero()[0])
        raise ValueError(f"offsets row {row}: {int(steps[row])} values, but its bits keep {int(counts[row])}")


# ---- the linear op's pieces ------------------------------------------------------------------

def check_tensors(tensors: BitmapTensors, in_features: int, out_features: int) -> None:
    """The op's argument check of the packed tensors (shapes and dtypes; every eager call).
    That the offsets match the bits is validate's job, done when they were packed or loaded."""
    bits, offsets, values = tensors
    bits_shape = (out_features, words(in_features))
    if bits.dtype != torch.uint32 or tuple(bits.shape) != bits_shape:
        raise ValueError(f"bits must be uint32 {bits_shape}, got {bits.dtype} {tuple(bits.shape)}")
    if offsets.dtype != torch.int64 or tuple(offsets.shape) != (out_features + 1,):
        raise ValueError(f"offsets must be int64 [out_features + 1 = {out_features + 1}], "
                         f"got {offsets.dtype} {tuple(offsets.shape)}")
    if values.ndim != 1:
        raise ValueError(f"values must be 1-D, got shape {tuple(values.shape)}")


def kernel(tensors: BitmapTensors, in_features: int, out_features: int):
    """The compiled kernel object over contiguous CPU buffers (it checks the offsets' ends)."""
    bits, offsets, values = tensors
    return _backend._C.bitmap_linear(out_features, in_features, values.numel(), bits.data_ptr(), bits.numel(),
                                     offsets.data_ptr(), values.data_ptr(), KERNEL_VALUE_TYPES[values.dtype])


linear_torch, grad_input = through_dense(unpack)


def sampled_grad(grad_y: torch.Tensor, x: torch.Tensor, tensors: BitmapTensors, in_features: int) -> torch.Tensor:
    """dL/dvalues [nnz]: (grad_y.T @ x) at the kept positions, in values' (row-major) order."""
    dtype = compute_dtype(grad_y, x)
    g2 = grad_y.reshape(-1, grad_y.shape[-1]).to(dtype)
    x2 = x.reshape(-1, in_features).to(dtype)
    return (g2.t() @ x2)[mask_of(tensors, (tensors.bits.shape[0], in_features))]


FORMAT = PackedFormat(
    name="bitmap", op="bitmap", layout=BitmapTensors, pack=pack, unpack=unpack, validate=validate,
    skeleton=skeleton, nnz=nnz, incompatible=incompatible, check_tensors=check_tensors, kernel=kernel,
    linear_torch=linear_torch, grad_input=grad_input, sampled_grad=sampled_grad)
