"""export_onnx: a sparsified model as an ONNX file whose size follows the nonzeros.

The custom op sparsekern::csr_linear has no ONNX counterpart, so the graph is exported with
each SparseLinear swapped for its exact dense equivalent (an nn.Linear), and then every
weight initializer that is smaller in sparse form becomes a ``Constant`` node whose
``sparse_value`` is an ONNX SparseTensorProto (the nonzero values plus their int64 linear
indices: 12 bytes per fp32 nonzero). The Constant's output is an ordinary dense tensor, so
the graph stays well typed (a graph-level ``sparse_initializer`` would be typed
sparse_tensor, which Gemm/MatMul do not accept under ONNX shape inference); runtimes
densify it once at load, so the file is small and the results are exactly the dense ones.
Needs the `onnx` and `onnxscript` packages (torch.onnx's exporter): pip install "sparsekern[onnx]".
"""
import contextlib
import logging
import warnings
from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch
from torch import nn

from .io.save_load import unwrap_compiled
from .sparse_linear import SparseLinear

_INDEX_BYTES = 8  # ONNX sparse tensors index with int64

# ONNX element types of the weights that may be stored sparse (TensorProto.FLOAT, FLOAT16,
# DOUBLE, BFLOAT16), as numbers so that importing this module does not need onnx.
_FLOAT_TYPES = (1, 10, 11, 16)

_log = logging.getLogger(__name__)

# Loggers of the exporter's libraries; torch.onnx's has its own stderr handler, the others
# reach stderr through logging's last-resort handler when the application configured none.
_EXPORTER_LOGGERS = ("torch.onnx", "onnxscript", "onnx_ir")


@contextlib.contextmanager
def _exporter_notes_at_debug():
    """Keeps the exporter's log records off stderr while it runs; after a successful export those
    below ERROR go to this module's logger at DEBUG, all others are handled as they would have been.

    A successful export otherwise prints notes that need no action, such as the onnxscript
    optimizer's "Evaluation failed: cannot reshape array of size ..." (its constant folder could
    not pre-compute a node, which then stays in the graph, as it would without folding) and
    "torchvision is not installed. Skipping torchvision::nms". A failed export replays
    everything as it came, to help find the cause."""
    records = []
    collector = logging.Handler()
    collector.emit = records.append  # keeps them to hand on, below
    loggers = [logging.getLogger(name) for name in _EXPORTER_LOGGERS]
    saved = [(logger.handlers, logger.propagate) for logger in loggers]
    for logger in loggers:
        logger.handlers, logger.propagate = [collector], False
    succeeded = False
    try:
        with warnings.catch_warnings():
            # torch's own deprecation, raised inside torch.export when it copies a tree spec.
            warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                                    category=FutureWarning)
            yield
        succeeded = True
    finally:
        for logger, (handlers, propagate) in zip(loggers, saved):
            logger.handlers, logger.propagate = handlers, propagate
        for record in records:
            if succeeded and record.levelno < logging.ERROR:
                _log.debug("%s: %s", record.name, record.getMessage())
            else:
                logging.getLogger(record.name).handle(record)


def _name_values(values, names: Optional[Sequence[str]], kind: str) -> None:
    """Names the graph's inputs or outputs (kind "input" / "output"): `names`, or by default
    kind itself for a single value and kind_0, kind_1, ... for several."""
    if names is None:
        names = [kind] if len(values) == 1 else [f"{kind}_{i}" for i in range(len(values))]
    names = list(names)
    if len(names) != len(values) or len(set(names)) != len(names):
        raise ValueError(f"{kind}_names={names!r}: the exported graph has {len(values)} {kind}(s); "
                         f"give one distinct name for each")
    for value, name in zip(values, names):
        value.name = name


def _sparsify_initializers(graph) -> int:
    """Replaces each floating weight initializer whose sparse form is smaller by a Constant node
    holding it as `sparse_value`; returns how many were replaced."""
    import onnx
    from onnx import numpy_helper

    keep, constants = [], []
    for init in graph.initializer:
        array = numpy_helper.to_array(init)
        # Weight matrices only (ndim >= 2): a zero-initialized bias would qualify too, to no gain.
        # Floating by the ONNX type, not numpy's kind: bfloat16 arrives as ml_dtypes.bfloat16,
        # whose numpy kind is "V", and bf16 weights were written dense.
        floating = init.data_type in _FLOAT_TYPES
        nonzero = np.flatnonzero(array) if floating and array.ndim >= 2 else None
        if nonzero is None or nonzero.size * (array.itemsize + _INDEX_BYTES) >= array.nbytes:
            keep.append(init)
            continue
        values = numpy_helper.from_array(array.reshape(-1)[nonzero], name=init.name)
        indices = numpy_helper.from_array(nonzero.astype(np.int64), name=f"{init.name}_indices")
        sparse = onnx.helper.make_sparse_tensor(values, indices, list(array.shape))
        constants.append(onnx.helper.make_node("Constant", [], [init.name], name=f"{init.name}_sparse",
                                               sparse_value=sparse))
    del graph.initializer[:]
    graph.initializer.extend(keep)
    nodes = constants + list(graph.node)  # producers first: nodes are in topological order
    del graph.node[:]
    graph.node.extend(nodes)
    return len(constants)


def _activation_dtype(model: nn.Module, example_inputs: Sequence[Any]):
    """(dtype, what it was read from): the dtype of the activations SparseLinear layers will see.

    SparseLinear computes in x's dtype whatever its values' dtype, so its dense stand-in must
    take that dtype (bf16 values with fp32 inputs export as an fp32 graph). That is the first
    floating example input's; a model fed only integers (an LLM's token ids) computes in its
    own weights' dtype, read from the first floating parameter or buffer outside the
    SparseLinear layers (the embedding). Without that second rule a bias-less layer with bf16
    values kept bf16 in an fp32 LLM, and the graph failed ONNX's type checks."""
    for t in example_inputs:
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            return t.dtype, f"{t.dtype} example inputs"
    packed = {id(t) for layer in model.modules() if isinstance(layer, SparseLinear)
              for t in (*layer.parameters(), *layer.buffers())}
    for t in (*model.parameters(), *model.buffers()):
        if t.is_floating_point() and id(t) not in packed:
            return t.dtype, f"{t.dtype} weights with inputs of no floating dtype"
    return None, ""


def export_onnx(model: nn.Module, example_inputs: Sequence[Any], path: str, dynamic_shapes: Optional[Any] = None,
                opset_version: Optional[int] = None, input_names: Optional[Sequence[str]] = None,
                output_names: Optional[Sequence[str]] = None) -> Dict[str, int]:
    """Writes `model` (on CPU, with SparseLinear layers) to the ONNX file `path`.

    example_inputs: the positional inputs of model.forward, as for torch.export (a tuple; one
    tensor is taken as the only input, as torch.onnx.export takes it).
    dynamic_shapes: as for torch.onnx.export. None (the default) makes dimension 0 of every
    tensor input the dynamic "batch", so the file runs at any batch size; pass e.g.
    ({0: "batch", 1: "sequence"},) for more dynamic dimensions, or ({},) for static shapes.
    input_names, output_names: the graph's input and output names; by default "input" and
    "output" (input_0, input_1, ... when there are several).
    The graph computes the dense-equivalent model (same outputs), its layers in the dtype of the
    floating example inputs, or, for integer inputs (token ids), of the model's weights outside
    the SparseLinear layers; pruned weights are stored as sparse Constants (see the module
    docstring). A bfloat16 graph warns: onnxruntime's CPU provider cannot run it. The model is
    checked with onnx.checker before it is written. Returns {"sparse_constants": n, "initializers": n} for the written file.
    `model` may be the wrapper torch.compile returns (the module it wraps is exported).
    `model` is returned to its original state afterwards (its layers are swapped only
    during the export). The exporter's notes (not its errors) go to the logger
    sparsekern.onnx_export at DEBUG instead of stderr.
    """
    try:
        import onnx
        import onnxscript  # noqa: F401  (torch.onnx's exporter; checked here, before any work)
    except ImportError as e:
        raise ImportError(f'sparsekern.export_onnx needs the {e.name} package: pip install "sparsekern[onnx]"') from e

    # The wrapper torch.compile returns takes (*args, **kwargs): torch.export failed on it with
    # "mismatch between the structure of `inputs` and `dynamic_shapes`".
    model = unwrap_compiled(model)
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)  # tuple() of a tensor would pass its rows as inputs
    if dynamic_shapes is None:
        dynamic_shapes = tuple({0: "batch"} if isinstance(t, torch.Tensor) and t.dim() > 0 else None
                               for t in example_inputs)
    dtype, source = _activation_dtype(model, example_inputs)
    if dtype == torch.bfloat16:
        warnings.warn(f"{source} export a bfloat16 graph, which onnxruntime's CPU provider cannot run (it has no "
                      "bfloat16 Gemm); for onnxruntime, export a float32 copy of the model "
                      "(copy.deepcopy(model).float()), with float32 example inputs where it takes floating ones",
                      stacklevel=2)
    swapped, stand_ins = [], {}
    for parent in list(model.modules()):
        # _modules, not named_children(), which names a module set at two attributes once: a
        # layer used at several places (sparsify puts one SparseLinear at each) was swapped at
        # the first only, and the export failed on the op left at the others. One stand-in
        # per layer, so the graph shares its weights as the model does.
        for attr, child in list(parent._modules.items()):
            if isinstance(child, SparseLinear):
                swapped.append((parent, attr, child))
                if id(child) not in stand_ins:
                    dense = child.to_dense()
                    stand_ins[id(child)] = dense.to(dtype) if dtype is not None else dense
                setattr(parent, attr, stand_ins[id(child)])
    try:
        with _exporter_notes_at_debug():
            program = torch.onnx.export(model, tuple(example_inputs), dynamo=True, dynamic_shapes=dynamic_shapes,
                                        opset_version=opset_version, verbose=False)
    finally:
        for parent, attr, child in swapped:
            setattr(parent, attr, child)
    _name_values(program.model.graph.inputs, input_names, "input")
    _name_values(program.model.graph.outputs, output_names, "output")
    proto = program.model_proto
    moved = _sparsify_initializers(proto.graph)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, path)
    return {"sparse_constants": moved, "initializers": len(proto.graph.initializer)}
