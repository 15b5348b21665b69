"""save / load: a model with packed sparse layers in one safetensors file.

    sparsekern.save(model, "model.safetensors")
    sparsekern.load(model_skeleton, "model.safetensors")   # plain nn.Linear layers are fine

The file is a plain safetensors file: every tensor of ``model.state_dict()`` under its
state_dict name (a SparseLinear stores its packed buffers, e.g. ``fc1.row_ptr``,
``fc1.col_idx``, ``fc1.values``), plus one JSON string under ``__metadata__["sparsekern"]``
that records the format version and, per SparseLinear, its format, shape, dtypes, bias and
nnz. docs/format.md is the specification. Loading trusts nothing in the file: the
safetensors header is parsed and checked (safetensors_header.py) before the library reads a
byte of data, the sparsekern header is type- and range-checked (file_header.py), every tensor
is matched against the header and the model, every packed format is validated (by
``SparseLinear.load_state_dict``) and every value must be finite before a kernel sees it.
Any problem is a ValueError; a missing file is a FileNotFoundError.
"""
import json
import os
import sys
import warnings
from typing import Dict

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils import prune as torch_prune

from ..prune._linear import is_conv1d
from ..sparse_linear import SparseLinear
from .file_header import (FORMAT_VERSION, METADATA_KEY, FileHeader, LayerRecord, TensorEntry, dtype_name,
                          layer_entries, layer_record, read_header)


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


def unwrap_compiled(model: nn.Module) -> nn.Module:
    """The module that a torch.compile wrapper (OptimizedModule) runs, else `model`. The wrapper's
    state_dict names every tensor "_orig_mod.<name>": saved as such, a file did not load into
    the model built from code ("the model has no such module"), and a plain file loaded into
    a compiled model failed on tensors "missing from the file"."""
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")  # not imported: nothing was compiled
    while eval_frame is not None and isinstance(model, eval_frame.OptimizedModule):
        model = model._orig_mod
    return model


def save(model: nn.Module, path: str) -> None:
    """Writes every parameter and buffer of `model` to one safetensors file at `path`.

    SparseLinear layers are stored packed (CSR: row_ptr [out+1] int64, col_idx [nnz]
    uint16/int32, values [nnz]), so the file size follows the nonzeros; tied tensors are
    stored once. A model still carrying pruning masks or parametrizations is refused
    (ValueError): sparsify or finalize it first. The file is written to `path + ".tmp"` and
    renamed, so a crash never leaves a half-written file under `path`. A missing directory
    raises FileNotFoundError naming it, before anything is written. The wrapper torch.compile
    returns is saved under its module's names (no "_orig_mod." prefix), so the file loads into
    the model built from code, compiled or not.
    """
    from safetensors.torch import save_file

    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):  # else safetensors fails naming its own temporary file
        raise FileNotFoundError(f"cannot save {path}: there is no directory {directory}")
    model = unwrap_compiled(model)  # a compiled model is saved under its own names
    _check_no_prune_bookkeeping(model)
    if isinstance(model, SparseLinear):
        raise ValueError("sparsekern.save takes a model that contains SparseLinear layers; wrap a "
                         "single layer first, e.g. nn.Sequential(layer)")
    layers = {name: layer_record(m) for name, m in model.named_modules() if isinstance(m, SparseLinear)}
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
            hint = ""
            if entry.shape == tuple(t.shape) and entry.dtype.is_floating_point and t.dtype.is_floating_point:
                hint = f" (a model saved in {dtype_name(entry.dtype)}: call model.to({entry.dtype}) before loading)"
            raise ValueError(f"{where}: {key} is {dtype_name(entry.dtype)} {list(entry.shape)} in the "
                             f"file, the model expects {dtype_name(t.dtype)} {list(t.shape)}{hint}")


def _model_device(model: nn.Module) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        if t.device.type != "meta":
            return t.device
    return torch.device("cpu")


def load(model: nn.Module, path: str, device=None) -> nn.Module:
    """Loads a file written by `save` into `model`, in place, and returns `model`.

    `model` is the architecture built from code: each layer the file records as a
    SparseLinear must exist there as an nn.Linear (or SparseLinear, or transformers' Conv1D
    with its [in, out] weight) of the same shape and
    bias; it is replaced by a SparseLinear in the recorded format, filled from the packed
    tensors (no dense weight is built). Every other parameter and buffer must match the
    file by name, shape and dtype. device: where the packed layers go (default: the model's);
    the model's other tensors are filled where they are, so move the model first to load it
    onto another device.
    A model built on the meta device (``with torch.device("meta"):``, which allocates nothing)
    is filled too: its tensors are taken from the file, on `device` (default CPU); any the file
    does not hold (non-persistent buffers) stay on meta, with a warning naming them. `model`
    may be the wrapper torch.compile returns: the module it wraps is filled (and recompiled on
    its next call).
    Raises ValueError naming the problem, before changing the model, for any file that is
    damaged, forged, from a newer version, or does not fit the model, and for a device torch
    cannot use here (e.g. "cuda" on a CPU-only build).
    """
    if device is not None:
        try:  # now, not halfway through filling the layers
            torch.empty(0, device=torch.device(device))
        except (RuntimeError, AssertionError, TypeError, ValueError) as e:
            reason = str(e).partition("\n")[0]  # the first line says why; a table of backends may follow
            raise ValueError(f"sparsekern.load: cannot use device {device!r}: {reason}") from e
    header = read_header(path)
    given, model = model, unwrap_compiled(model)  # filled in place: the wrapper runs the new layers
    device = torch.device(device) if device is not None else _model_device(model)
    stored = dict(header.tensors)
    for alias, target in header.aliases.items():
        stored[alias] = stored[target]

    # A module used at two places is one layer, recorded under its first name; every name
    # that holds it gets the same SparseLinear, and its tensors under the others are aliases.
    names_of = {}
    for name, module in model.named_modules(remove_duplicate=False):
        names_of.setdefault(id(module), []).append(name)
    replacements, places = {}, {}
    for name, layer in header.layers.items():
        where = f"{path}: layer {name!r}"
        try:
            current = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"{where}: the model has no such module") from None
        if is_conv1d(current):  # GPT-2's linear layer, weight stored [in, out]
            shape = (*current.weight.shape, current.bias is not None)
        elif isinstance(current, (nn.Linear, SparseLinear)):
            shape = (current.in_features, current.out_features, current.bias is not None)
        else:
            raise ValueError(f"{where}: the model has a {type(current).__name__} there, expected nn.Linear "
                             "(or transformers' Conv1D)")
        if shape != (layer.in_features, layer.out_features, layer.bias):
            raise ValueError(f"{where}: the file holds in_features={layer.in_features}, out_features="
                             f"{layer.out_features}, bias={layer.bias}; the model has in_features="
                             f"{shape[0]}, out_features={shape[1]}, bias={shape[2]}")
        try:
            skeleton = _skeleton(layer, "meta")
        except (ValueError, TypeError) as e:  # a format's own shape rules (2:4: in % 4 == 0)
            raise ValueError(f"{where}: {e}") from e
        places[name] = [name] + [other for other in names_of[id(current)] if other not in header.layers]
        for place in places[name]:
            _expect(f"{path}: layer {place!r}", layer_entries(place, stored, {}), skeleton.state_dict())
        replacements[name] = skeleton

    covered = {place for names in places.values() for place in names}
    # keep_vars: which of them are Parameters, for a model built on the meta device (_materialized)
    rest = {key: t for key, t in model.state_dict(keep_vars=True).items() if key.rpartition(".")[0] not in covered}
    rest_entries = {key: e for key, e in stored.items() if key.rpartition(".")[0] not in covered}
    _expect(f"{path}", rest_entries, rest)

    tensors = _read_tensors(path, header)
    _check_finite(path, tensors, header)
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
        layer.take_mode_of(model.get_submodule(name))
        built[name] = layer
    for name, layer in built.items():
        for place in places[name]:
            parent_name, _, attr = place.rpartition(".")
            setattr(model.get_submodule(parent_name), attr, layer)
    others = {key: t for key, t in tensors.items() if key in rest}
    on_meta = {key: t for key, t in others.items() if rest[key].is_meta}
    try:
        if on_meta:  # first: a module may fill in what a call lacks (BatchNorm: num_batches_tracked)
            model.load_state_dict(_materialized(on_meta, rest, device), strict=False, assign=True)
        model.load_state_dict({key: t for key, t in others.items() if key not in on_meta}, strict=False)
    except (ValueError, TypeError, RuntimeError) as e:
        raise ValueError(f"{path}: {e}") from e
    left = [name for name, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left:
        warnings.warn(f"{path}: loaded into a model built on the meta device, whose tensors "
                      f"{left[:5]}{' ...' if len(left) > 5 else ''} are not in the file (non-persistent "
                      "buffers, such as rotary embedding frequencies) and stay on meta, without values: "
                      "set them before running the model", stacklevel=2)
    return given


def _materialized(stored: Dict[str, torch.Tensor], model_tensors: Dict[str, torch.Tensor], device) -> dict:
    """The file's tensors for a model's meta tensors, on `device`, for load_state_dict(assign=True).

    Copying into a meta tensor is a no-op: a model built under torch.device("meta") (to skip
    allocating and initializing weights that the file replaces) kept every tensor outside its
    SparseLinear layers on meta, and failed on its first call. Parameters are wrapped here, one
    per stored tensor, so that weights tied in the model (stored once, as an alias) stay one
    Parameter; load_state_dict keeps each one's requires_grad."""
    made: Dict[int, torch.Tensor] = {}
    out = {}
    for key, t in stored.items():
        if id(t) not in made:
            new = t.to(device)
            if isinstance(model_tensors[key], nn.Parameter):
                new = nn.Parameter(new, requires_grad=model_tensors[key].requires_grad)
            made[id(t)] = new
        out[key] = made[id(t)]
    return out


def _check_finite(path, tensors: Dict[str, torch.Tensor], header: FileHeader) -> None:
    """Every weight and bias of a SparseLinear is finite: a NaN or Inf there is damage (or a
    diverged training run) that would spread through every output. Other tensors may hold
    infinities on purpose (attention masks), so they are not checked."""
    for key, t in tensors.items():
        if key.rpartition(".")[0] in header.layers and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).nonzero()[0][0]) if t.dim() else 0
            raise ValueError(f"{path}: tensor {key!r} holds values that are not finite (NaN or Inf), the "
                             f"first at index {bad}: refusing to load a damaged or diverged layer")


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
