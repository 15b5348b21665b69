"""The sparsekern header of a saved file: its schema (docs/format.md), written by `layer_record`
and read back, type- and range-checked, by `read_header`."""
import json
from typing import Dict, NamedTuple, Optional

import torch

from ..formats import LAYER_FORMATS
from ..sparse_linear import SparseLinear
from .safetensors_header import TensorEntry, is_int, read_safetensors_header

FORMAT_VERSION = 1
METADATA_KEY = "sparsekern"
MAX_FEATURES = 2**31 - 1
_FLOAT_NAMES = {"float64": torch.float64, "float32": torch.float32, "float16": torch.float16,
                "bfloat16": torch.bfloat16}


class LayerRecord(NamedTuple):
    """What the sparsekern header records for one SparseLinear."""
    format: str
    in_features: int
    out_features: int
    bias: bool
    dtype: torch.dtype                 # the stored weight's dtype (CSR: values)
    bias_dtype: Optional[torch.dtype]  # None when bias is False
    nnz: int


class FileHeader(NamedTuple):
    """A validated file header: tensors by name, SparseLinear layers by module name, and the
    aliases (a tied tensor stored once: alias name -> stored name)."""
    version: int
    tensors: Dict[str, TensorEntry]
    layers: Dict[str, LayerRecord]
    aliases: Dict[str, str]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def layer_record(layer: SparseLinear) -> dict:
    # The stored weight of any format: its one floating parameter besides the bias.
    weight = next(p for name, p in layer.named_parameters(recurse=False) if name != "bias")
    return {
        "format": layer.format, "in_features": layer.in_features, "out_features": layer.out_features,
        "bias": layer.bias is not None, "dtype": dtype_name(weight.dtype),
        "bias_dtype": dtype_name(layer.bias.dtype) if layer.bias is not None else None,
        "nnz": layer.nnz,
    }


def _parse_layer(name: str, record, path: str) -> LayerRecord:
    where = f"{path}: layer {name!r}"
    fields = {"format", "in_features", "out_features", "bias", "dtype", "bias_dtype", "nnz"}
    if not isinstance(record, dict) or set(record) != fields:
        raise ValueError(f"{where}: record must have exactly the fields {sorted(fields)}")
    if record["format"] not in LAYER_FORMATS:
        raise ValueError(f"{where}: format {record['format']!r} is not one this sparsekern knows "
                         f"({', '.join(LAYER_FORMATS)}); a newer sparsekern may read it")
    for key in ("in_features", "out_features"):
        if not is_int(record[key], 0, MAX_FEATURES):
            raise ValueError(f"{where}: {key} = {record[key]!r}, expected an integer in [0, {MAX_FEATURES}]")
    if not isinstance(record["bias"], bool):
        raise ValueError(f"{where}: bias = {record['bias']!r}, expected true or false")
    dtype = _FLOAT_NAMES.get(record["dtype"]) if isinstance(record["dtype"], str) else None
    if dtype is None:
        raise ValueError(f"{where}: dtype {record['dtype']!r} is not one of {sorted(_FLOAT_NAMES)}")
    bias_dtype = None
    if record["bias"]:
        bias_dtype = _FLOAT_NAMES.get(record["bias_dtype"]) if isinstance(record["bias_dtype"], str) else None
        if bias_dtype is None:
            raise ValueError(f"{where}: bias_dtype {record['bias_dtype']!r} is not one of {sorted(_FLOAT_NAMES)}")
    elif record["bias_dtype"] is not None:
        raise ValueError(f"{where}: bias_dtype must be null when bias is false")
    total = record["in_features"] * record["out_features"]
    if not is_int(record["nnz"], 0, total):
        raise ValueError(f"{where}: nnz = {record['nnz']!r}, expected an integer in [0, {total}]")
    return LayerRecord(record["format"], record["in_features"], record["out_features"], record["bias"],
                       dtype, bias_dtype, record["nnz"])


def _is_module_name(name) -> bool:
    return isinstance(name, str) and all(part and part == part.strip() for part in name.split("."))


def read_header(path: str) -> FileHeader:
    """The validated header of a sparsekern file, without reading tensor data.

    Raises ValueError naming the problem for anything that is not a well-formed sparsekern
    file of a version this sparsekern reads (a newer version says so).
    """
    tensors, metadata = read_safetensors_header(path)
    if METADATA_KEY not in metadata:
        raise ValueError(f"{path}: a safetensors file, but not written by sparsekern.save "
                         f"(no __metadata__[{METADATA_KEY!r}])")
    try:
        header = json.loads(metadata[METADATA_KEY])
    except (ValueError, RecursionError) as e:
        raise ValueError(f"{path}: the sparsekern header is not valid JSON: {e}") from e
    if not isinstance(header, dict) or not is_int(header.get("format_version"), 1, 2**31):
        raise ValueError(f"{path}: the sparsekern header has no valid format_version")
    version = header["format_version"]
    if version > FORMAT_VERSION:
        raise ValueError(f"{path}: written in sparsekern file format version {version}, but this "
                         f"sparsekern reads only up to version {FORMAT_VERSION}: upgrade sparsekern")
    if set(header) != {"format_version", "layers", "aliases"}:
        raise ValueError(f"{path}: the sparsekern header must have exactly format_version, layers "
                         f"and aliases, got {sorted(header)}")
    layers_raw, aliases = header["layers"], header["aliases"]
    if not isinstance(layers_raw, dict) or not isinstance(aliases, dict):
        raise ValueError(f"{path}: layers and aliases must be JSON objects")
    layers = {}
    for name, record in layers_raw.items():
        if not _is_module_name(name):
            raise ValueError(f"{path}: {name!r} is not a module name")
        layers[name] = _parse_layer(name, record, path)
    for alias, target in aliases.items():
        if not isinstance(target, str) or target not in tensors or alias in tensors:
            raise ValueError(f"{path}: alias {alias!r} -> {target!r} must name a stored tensor "
                             "from a name that is not stored")
    for name, layer in layers.items():
        _check_layer_tensors(name, layer, tensors, aliases, path)
    return FileHeader(version, tensors, layers, aliases)


def layer_entries(name: str, tensors: Dict[str, TensorEntry], aliases: Dict[str, str]) -> Dict[str, TensorEntry]:
    """The entries directly under module `name` (its own parameters and buffers), by local name."""
    prefix = f"{name}." if name else ""
    found = {}
    for key in list(tensors) + list(aliases):
        if key.startswith(prefix) and "." not in key[len(prefix):]:
            found[key[len(prefix):]] = tensors[aliases.get(key, key)]
    return found


def _check_layer_tensors(name: str, layer: LayerRecord, tensors, aliases, path: str) -> None:
    """The layer's tensors agree with its record: bias present as recorded, with bias_dtype and
    shape [out]; every other floating tensor in the recorded dtype; CSR values hold nnz."""
    entries = layer_entries(name, tensors, aliases)
    where = f"{path}: layer {name!r}"
    if ("bias" in entries) != layer.bias:
        raise ValueError(f"{where}: header says bias = {layer.bias} but the file "
                         f"{'has' if 'bias' in entries else 'lacks'} a bias tensor")
    for local, entry in entries.items():
        if local == "bias":
            if entry.dtype != layer.bias_dtype or entry.shape != (layer.out_features,):
                raise ValueError(f"{where}: bias is {dtype_name(entry.dtype)} {list(entry.shape)}, header "
                                 f"says {dtype_name(layer.bias_dtype)} [{layer.out_features}]")
        elif entry.dtype.is_floating_point and entry.dtype != layer.dtype:
            raise ValueError(f"{where}: {local} is {dtype_name(entry.dtype)}, header says "
                             f"{dtype_name(layer.dtype)}")
    if layer.format == "csr" and "values" in entries and entries["values"].shape != (layer.nnz,):
        raise ValueError(f"{where}: values has shape {list(entries['values'].shape)}, header says "
                         f"nnz = {layer.nnz}")
