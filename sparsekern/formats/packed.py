"""The packed formats a SparseLinear can hold, behind one interface, so the layer has one code
path for all of them (buffers, packing, validation on load) instead of an if per format.

    layout       the NamedTuple of its tensors, fields in the order the format's linear op takes
                 them; 'values' becomes an nn.Parameter (a packed model can be fine-tuned), the
                 rest buffers
    pack         (weight, mask, value_dtype) -> tensors
    unpack       (tensors, (out, in)) -> dense weight
    validate     (tensors, (out, in)) -> None or ValueError/TypeError
    skeleton     ((out, in), nnz, dtype, device) -> valid all-zero tensors to load a state_dict into
    nnz          tensors -> the number of stored weights
    incompatible (bool mask [out, in]) -> None if the format can hold this pattern, else why not
"""
from typing import Callable, Dict, NamedTuple, Optional

import torch

from . import csr, nm


class PackedFormat(NamedTuple):
    layout: type
    pack: Callable
    unpack: Callable
    validate: Callable
    skeleton: Callable
    nnz: Callable
    incompatible: Callable[[torch.Tensor], Optional[str]]


def _csr_skeleton(shape, nnz, dtype, device=None) -> csr.CsrTensors:
    out_features, in_features = shape
    row_ptr = torch.zeros(out_features + 1, dtype=torch.int64, device=device)
    row_ptr[-1] = nnz  # a valid (if lopsided) CSR until a state_dict fills it
    return csr.CsrTensors(row_ptr, torch.zeros(nnz, dtype=csr.index_dtype(in_features), device=device),
                          torch.zeros(nnz, dtype=dtype, device=device))


PACKED_FORMATS: Dict[str, PackedFormat] = {
    "csr": PackedFormat(
        layout=csr.CsrTensors, pack=csr.pack, unpack=csr.unpack, validate=csr.validate,
        skeleton=_csr_skeleton, nnz=lambda t: t.values.numel(), incompatible=lambda mask: None),
    # 2:4 stores in / 2 slots per row whatever the mask; padding slots hold zeros, not weights.
    "2:4": PackedFormat(
        layout=nm.Nm24Tensors, pack=nm.pack, unpack=nm.unpack, validate=nm.validate,
        skeleton=lambda shape, nnz, dtype, device=None: nm.skeleton(shape, dtype, device),
        nnz=lambda t: int(torch.count_nonzero(t.values)), incompatible=nm.mask_violation),
}
