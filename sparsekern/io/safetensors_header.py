"""The safetensors container, read and checked by hand before the library reads a byte of data:
a forged or damaged header must fail with a ValueError, not cost time or memory."""
import json
import math
import os
import struct
from typing import Dict, NamedTuple, Tuple

import torch

# Bounds that stop a forged header from costing time or memory before it is rejected.
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors library's own limit
MAX_DIMS = 8
# Sizes are bounded by what torch can hold, not by the data section: a tensor with no elements
# ([0, 100000]) has no bytes. torch keeps sizes and contiguous strides (products of the later
# sizes, a 0 counted as 1) in int64. A forged size still costs nothing: the tensor's byte size
# must match its data_offsets, inside the data section.
MAX_SIZE = 2**63 - 1

_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "U16": torch.uint16, "U32": torch.uint32, "U64": torch.uint64,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}


class TensorEntry(NamedTuple):
    """One tensor as the safetensors header describes it (no data read)."""
    dtype: torch.dtype
    shape: Tuple[int, ...]
    nbytes: int


def is_int(value, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def read_safetensors_header(path: str) -> Tuple[Dict[str, TensorEntry], Dict[str, str]]:
    """Parses and checks the safetensors header of `path`: (tensors, __metadata__).

    A missing file raises FileNotFoundError; any other problem ValueError. Checks everything
    a forged or damaged header could lie about: the header length against
    the file size, JSON syntax, each entry's dtype, shape and byte range (inside the file,
    of exactly numel * itemsize bytes, not overlapping another), and that the data section
    holds exactly the bytes the tensors claim (a truncated file fails here).
    """
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise ValueError(f"{path}: {size} bytes, too short for a safetensors file "
                                 "(it starts with an 8-byte header length)")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len == 0 or header_len > size - 8 or header_len > MAX_HEADER_BYTES:
                raise ValueError(f"{path}: header length {header_len} is impossible for a file of "
                                 f"{size} bytes (truncated or not a safetensors file)")
            raw = f.read(header_len)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise ValueError(f"{path}: cannot read: {e}") from e
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ValueError(f"{path}: the safetensors header is not valid JSON: {e}") from e
    if not isinstance(header, dict):
        raise ValueError(f"{path}: the safetensors header is a {type(header).__name__}, expected an object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in metadata.items()):
        raise ValueError(f"{path}: __metadata__ must map strings to strings")
    data_size = size - 8 - header_len
    tensors: Dict[str, TensorEntry] = {}
    ranges = []
    for name, entry in header.items():
        where = f"{path}: tensor {name!r}"
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise ValueError(f"{where}: entry must have exactly dtype, shape and data_offsets")
        dtype = _DTYPES.get(entry["dtype"]) if isinstance(entry["dtype"], str) else None
        if dtype is None:
            raise ValueError(f"{where}: unknown dtype {entry['dtype']!r}")
        shape, offsets = entry["shape"], entry["data_offsets"]
        if (not isinstance(shape, list) or len(shape) > MAX_DIMS
                or not all(is_int(d, 0, MAX_SIZE) for d in shape)
                or math.prod(max(d, 1) for d in shape) > MAX_SIZE):
            raise ValueError(f"{where}: shape {shape!r} must be a list of at most {MAX_DIMS} "
                             f"sizes >= 0 whose product (a 0 counted as 1) is at most 2**63 - 1")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(is_int(o, 0, 2**64) for o in offsets):
            raise ValueError(f"{where}: data_offsets {offsets!r} must be two non-negative integers")
        begin, end = offsets
        nbytes = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
        if end - begin != nbytes:
            raise ValueError(f"{where}: data_offsets {offsets} hold {end - begin} bytes, but "
                             f"{entry['dtype']} {shape} needs {nbytes}")
        if end > data_size:
            raise ValueError(f"{where}: data ends at byte {end} but the file holds only {data_size} "
                             "bytes of data (truncated?)")
        tensors[name] = TensorEntry(dtype, tuple(shape), nbytes)
        ranges.append((begin, end, name))
    ranges.sort()
    position = 0
    for begin, end, name in ranges:
        if begin != position:
            problem = "overlaps the previous tensor" if begin < position else f"leaves a gap at byte {position}"
            raise ValueError(f"{path}: tensor {name!r} at bytes {begin}..{end} {problem}")
        position = end
    if position != data_size:
        raise ValueError(f"{path}: tensors hold {position} bytes of data but the file has {data_size} "
                         "(truncated or trailing bytes)")
    return tensors, metadata
