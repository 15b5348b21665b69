"""save / load / inspect: a model with packed sparse layers in one safetensors file.

    sparsekern.save(model, "model.safetensors")
    sparsekern.load(model_skeleton, "model.safetensors")   # plain nn.Linear layers are fine
    sparsekern.inspect_file("model.safetensors")           # header only: per-layer table

The file is a plain safetensors file: every tensor of ``model.state_dict()`` under its
state_dict name (a SparseLinear stores its packed buffers, e.g. ``fc1.row_ptr``,
``fc1.col_idx``, ``fc1.values``), plus one JSON string under ``__metadata__["sparsekern"]``
that records the format version and, per SparseLinear, its format, shape, dtypes, bias and
nnz. docs/format.md is the specification. Loading trusts nothing in the file: the
safetensors header is parsed and checked here (sizes, offsets, dtypes) before the library
reads a byte of data, the sparsekern header is type- and range-checked, every tensor is
matched against the header and the model, and every packed format is validated (by
``SparseLinear.load_state_dict``) before a kernel sees it. Any problem is a ValueError.
"""
import json
import math
import os
import struct
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils import prune as torch_prune

from .nn import FORMATS, SparseLinear

FORMAT_VERSION = 1
METADATA_KEY = "sparsekern"

# Bounds that stop a forged header from costing time or memory before it is rejected.
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors library's own limit
MAX_FEATURES = 2**31 - 1
MAX_DIMS = 8

_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "U16": torch.uint16, "U32": torch.uint32, "U64": torch.uint64,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
_FLOAT_NAMES = {"float64": torch.float64, "float32": torch.float32, "float16": torch.float16,
                "bfloat16": torch.bfloat16}


class TensorEntry(NamedTuple):
    """One tensor as the safetensors header describes it (no data read)."""
    dtype: torch.dtype
    shape: Tuple[int, ...]
    nbytes: int


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


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


# ---- save ----------------------------------------------------------------------------------

def _check_no_prune_bookkeeping(model: nn.Module) -> None:
    """Refuses masks and parametrizations: saving them would store each pruned weight twice
    (weight_orig + weight_mask), and loading them would need the same hooks in the skeleton."""
    for name, module in model.named_modules():
        masked = any(isinstance(hook, torch_prune.BasePruningMethod)
                     for hook in module._forward_pre_hooks.values())
        if masked or parametrize.is_parametrized(module):
            what = "a pruning mask (weight_orig/weight_mask)" if masked else "a parametrization"
            raise ValueError(
                f"module {name or '(model)'!r} ({type(module).__name__}) still carries {what}: call "
                "sparsekern.sparsify(model) to pack its weights, or sparsekern.prune.finalize(model) "
                "to bake the mask in, before sparsekern.save")


def _layer_record(layer: SparseLinear) -> dict:
    # The stored weight of any format: its one floating parameter besides the bias.
    weight = next(p for name, p in layer.named_parameters(recurse=False) if name != "bias")
    return {
        "format": layer.format, "in_features": layer.in_features, "out_features": layer.out_features,
        "bias": layer.bias is not None, "dtype": _dtype_name(weight.dtype),
        "bias_dtype": _dtype_name(layer.bias.dtype) if layer.bias is not None else None,
        "nnz": layer.nnz,
    }


def save(model: nn.Module, path: str) -> None:
    """Writes every parameter and buffer of `model` to one safetensors file at `path`.

    SparseLinear layers are stored packed (CSR: row_ptr [out+1] int64, col_idx [nnz]
    uint16/int32, values [nnz]), so the file size follows the nonzeros; tied tensors are
    stored once. A model still carrying pruning masks or parametrizations is refused
    (ValueError): sparsify or finalize it first. The file is written to `path + ".tmp"` and
    renamed, so a crash never leaves a half-written file under `path`.
    """
    from safetensors.torch import save_file

    _check_no_prune_bookkeeping(model)
    if isinstance(model, SparseLinear):
        raise ValueError("sparsekern.save takes a model that contains SparseLinear layers; wrap a "
                         "single layer first, e.g. nn.Sequential(layer)")
    layers = {name: _layer_record(m) for name, m in model.named_modules() if isinstance(m, SparseLinear)}
    tensors: Dict[str, torch.Tensor] = {}
    aliases: Dict[str, str] = {}
    stored_by_view: Dict[tuple, str] = {}
    storages = set()
    for name, t in model.state_dict().items():
        t = t.detach()
        view = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape),
                t.stride(), t.dtype)
        if t.numel() and view in stored_by_view:  # tied: the very same tensor under two names
            aliases[name] = stored_by_view[view]
            continue
        stored_by_view[view] = name
        t = t.to("cpu").contiguous()
        # safetensors refuses tensors that share memory; a partial overlap is stored as a copy.
        key = t.untyped_storage().data_ptr()
        if t.numel() and key in storages:
            t = t.clone()
        storages.add(t.untyped_storage().data_ptr())
        tensors[name] = t
    header = {"format_version": FORMAT_VERSION, "layers": layers, "aliases": aliases}
    tmp = f"{path}.tmp"
    try:
        save_file(tensors, tmp, metadata={METADATA_KEY: json.dumps(header)})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# ---- reading and checking the header -------------------------------------------------------

def _is_int(value, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _read_safetensors_header(path: str) -> Tuple[Dict[str, TensorEntry], Dict[str, str]]:
    """Parses and checks the safetensors header of `path`: (tensors, __metadata__).

    Checks everything a forged or damaged header could lie about: the header length against
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
                or not all(_is_int(d, 0, data_size) for d in shape)):
            raise ValueError(f"{where}: shape {shape!r} must be a list of at most {MAX_DIMS} "
                             f"sizes in [0, {data_size}]")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o, 0, 2**64) for o in offsets):
            raise ValueError(f"{where}: data_offsets {offsets!r} must be two non-negative integers")
        begin, end = offsets
        nbytes = math.prod(shape) * dtype.itemsize
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


def _parse_layer(name: str, record, path: str) -> LayerRecord:
    where = f"{path}: layer {name!r}"
    fields = {"format", "in_features", "out_features", "bias", "dtype", "bias_dtype", "nnz"}
    if not isinstance(record, dict) or set(record) != fields:
        raise ValueError(f"{where}: record must have exactly the fields {sorted(fields)}")
    if record["format"] not in FORMATS:
        raise ValueError(f"{where}: format {record['format']!r} is not one this sparsekern knows "
                         f"({', '.join(FORMATS)}); a newer sparsekern may read it")
    for key in ("in_features", "out_features"):
        if not _is_int(record[key], 0, MAX_FEATURES):
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
    if not _is_int(record["nnz"], 0, total):
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
    tensors, metadata = _read_safetensors_header(path)
    if METADATA_KEY not in metadata:
        raise ValueError(f"{path}: a safetensors file, but not written by sparsekern.save "
                         f"(no __metadata__[{METADATA_KEY!r}])")
    try:
        header = json.loads(metadata[METADATA_KEY])
    except (ValueError, RecursionError) as e:
        raise ValueError(f"{path}: the sparsekern header is not valid JSON: {e}") from e
    if not isinstance(header, dict) or not _is_int(header.get("format_version"), 1, 2**31):
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


def _layer_entries(name: str, tensors: Dict[str, TensorEntry], aliases: Dict[str, str]) -> Dict[str, TensorEntry]:
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
    entries = _layer_entries(name, tensors, aliases)
    where = f"{path}: layer {name!r}"
    if ("bias" in entries) != layer.bias:
        raise ValueError(f"{where}: header says bias = {layer.bias} but the file "
                         f"{'has' if 'bias' in entries else 'lacks'} a bias tensor")
    for local, entry in entries.items():
        if local == "bias":
            if entry.dtype != layer.bias_dtype or entry.shape != (layer.out_features,):
                raise ValueError(f"{where}: bias is {_dtype_name(entry.dtype)} {list(entry.shape)}, header "
                                 f"says {_dtype_name(layer.bias_dtype)} [{layer.out_features}]")
        elif entry.dtype.is_floating_point and entry.dtype != layer.dtype:
            raise ValueError(f"{where}: {local} is {_dtype_name(entry.dtype)}, header says "
                             f"{_dtype_name(layer.dtype)}")
    if layer.format == "csr" and "values" in entries and entries["values"].shape != (layer.nnz,):
        raise ValueError(f"{where}: values has shape {list(entries['values'].shape)}, header says "
                         f"nnz = {layer.nnz}")


# ---- load ----------------------------------------------------------------------------------

def _skeleton(layer: LayerRecord, device) -> SparseLinear:
    """An empty SparseLinear shaped as recorded, on `device` ('meta' allocates nothing)."""
    module = SparseLinear(layer.in_features, layer.out_features, bias=layer.bias, format=layer.format,
                          nnz=layer.nnz, dtype=layer.dtype, device=device)
    if layer.bias:  # the bias may be kept in another dtype than the packed weights
        module.bias = nn.Parameter(torch.empty(layer.out_features, dtype=layer.bias_dtype, device=device))
    return module


def _expect(where: str, found: Dict[str, TensorEntry], wanted: Dict[str, torch.Tensor]) -> None:
    """The file's tensors `found` match the model's `wanted` by name, dtype and shape."""
    missing, unexpected = sorted(set(wanted) - set(found)), sorted(set(found) - set(wanted))
    if missing or unexpected:
        raise ValueError(f"{where}: tensors do not match the model: missing from the file "
                         f"{missing[:5]}{' ...' if len(missing) > 5 else ''}, not in the model "
                         f"{unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    for key, t in wanted.items():
        entry = found[key]
        if entry.dtype != t.dtype or entry.shape != tuple(t.shape):
            raise ValueError(f"{where}: {key} is {_dtype_name(entry.dtype)} {list(entry.shape)} in the "
                             f"file, the model expects {_dtype_name(t.dtype)} {list(t.shape)}")


def _model_device(model: nn.Module) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        if t.device.type != "meta":
            return t.device
    return torch.device("cpu")


def load(model: nn.Module, path: str, device=None) -> nn.Module:
    """Loads a file written by `save` into `model`, in place, and returns `model`.

    `model` is the architecture built from code: each layer the file records as a
    SparseLinear must exist there as an nn.Linear (or SparseLinear) of the same shape and
    bias; it is replaced by a SparseLinear in the recorded format, filled from the packed
    tensors (no dense weight is built). Every other parameter and buffer must match the
    file by name, shape and dtype. device: where the tensors go (default: the model's).
    Raises ValueError naming the problem, before changing the model, for any file that is
    damaged, forged, from a newer version, or does not fit the model.
    """
    header = read_header(path)
    device = torch.device(device) if device is not None else _model_device(model)
    stored = dict(header.tensors)
    for alias, target in header.aliases.items():
        stored[alias] = stored[target]

    replacements = {}
    for name, layer in header.layers.items():
        where = f"{path}: layer {name!r}"
        try:
            current = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"{where}: the model has no such module") from None
        if not isinstance(current, (nn.Linear, SparseLinear)):
            raise ValueError(f"{where}: the model has a {type(current).__name__} there, expected nn.Linear")
        shape = (current.in_features, current.out_features, current.bias is not None)
        if shape != (layer.in_features, layer.out_features, layer.bias):
            raise ValueError(f"{where}: the file holds in_features={layer.in_features}, out_features="
                             f"{layer.out_features}, bias={layer.bias}; the model has in_features="
                             f"{shape[0]}, out_features={shape[1]}, bias={shape[2]}")
        try:
            skeleton = _skeleton(layer, "meta")
        except (ValueError, TypeError) as e:  # a format's own shape rules (2:4: in % 4 == 0)
            raise ValueError(f"{where}: {e}") from e
        _expect(where, _layer_entries(name, stored, {}), skeleton.state_dict())
        replacements[name] = skeleton

    rest = {key: t for key, t in model.state_dict().items() if key.rpartition(".")[0] not in header.layers}
    rest_entries = {key: e for key, e in stored.items() if key.rpartition(".")[0] not in header.layers}
    _expect(f"{path}", rest_entries, rest)

    tensors = _read_tensors(path, header)
    # Fill the new layers (their load_state_dict validates each packed format) before the
    # model changes, so a bad file leaves the model as it was.
    built = {}
    for name, skeleton in replacements.items():
        layer = skeleton.to_empty(device=device)
        own = {key.rpartition(".")[2]: t for key, t in tensors.items() if key.rpartition(".")[0] == name}
        try:
            layer.load_state_dict(own, strict=True)
        except (ValueError, TypeError, RuntimeError) as e:
            raise ValueError(f"{path}: layer {name!r}: {e}") from e
        built[name] = layer
    for name, layer in built.items():
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name), attr, layer)
    others = {key: t for key, t in tensors.items() if key in rest}
    try:
        model.load_state_dict(others, strict=False)
    except (ValueError, TypeError, RuntimeError) as e:
        raise ValueError(f"{path}: {e}") from e
    return model


def _read_tensors(path: str, header: FileHeader) -> Dict[str, torch.Tensor]:
    """Every tensor of the file (aliases resolved), read by the safetensors library after
    read_header checked the layout; its own errors become ValueError."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            tensors = {name: f.get_tensor(name) for name in header.tensors}
    except Exception as e:  # the library's own exception types (SafetensorError, OSError, ...)
        raise ValueError(f"{path}: safetensors could not read the data: {e}") from e
    for name, entry in header.tensors.items():  # the library agrees with our reading
        t = tensors[name]
        if t.dtype != entry.dtype or tuple(t.shape) != entry.shape:
            raise ValueError(f"{path}: tensor {name!r} read as {t.dtype} {tuple(t.shape)}, "
                             f"header says {entry.dtype} {entry.shape}")
    for alias, target in header.aliases.items():
        tensors[alias] = tensors[target]
    return tensors


# ---- inspect -------------------------------------------------------------------------------

class FileInfo(NamedTuple):
    """What `inspect_file` reports; str() gives the table that `sparsekern inspect` prints."""
    path: str
    header: FileHeader
    file_bytes: int

    def layer_bytes(self, name: str) -> int:
        return sum(e.nbytes for e in _layer_entries(name, self.header.tensors, {}).values())

    def __str__(self) -> str:
        layers = self.header.layers
        head = ("layer", "format", "shape (out x in)", "dtype", "sparsity", "bytes", "vs dense")
        rows = [head]
        for name, layer in layers.items():
            dense = layer.in_features * layer.out_features * layer.dtype.itemsize
            total = layer.in_features * layer.out_features
            sparsity = 1 - layer.nnz / total if total else 0.0
            size = self.layer_bytes(name)
            rows.append((name or "(model)", layer.format, f"{layer.out_features} x {layer.in_features}",
                         _dtype_name(layer.dtype), f"{sparsity:.1%}", f"{size:,}", f"{size / max(dense, 1):.2f}x"))
        layer_total = sum(self.layer_bytes(n) for n in layers)
        other = sum(e.nbytes for e in self.header.tensors.values()) - layer_total
        rows.append(("other tensors", "", "", "", "", f"{other:,}", ""))
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        title = (f"{self.path}: sparsekern file format version {self.header.version}, {len(layers)} sparse "
                 f"layers, {len(self.header.tensors)} tensors, {self.file_bytes:,} bytes")
        return "\n".join([title, ""] + lines)

    __repr__ = __str__


def inspect_file(path: str) -> FileInfo:
    """Per-layer format, shape, dtype, sparsity and bytes of a saved file, from its validated
    header alone (no tensor data is read). Raises ValueError for a bad file."""
    header = read_header(path)
    return FileInfo(path, header, os.path.getsize(path))


def inspect_main(argv: List[str]) -> int:
    """`sparsekern inspect FILE`: prints the table; exit status 1 with the reason for a bad file."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="sparsekern inspect",
                                     description="Per-layer table of a file written by sparsekern.save "
                                                 "(reads only its validated header).")
    parser.add_argument("file")
    args = parser.parse_args(argv)
    try:
        print(inspect_file(args.file))
    except ValueError as e:
        print(f"sparsekern inspect: {e}", file=sys.stderr)
        return 1
    return 0
