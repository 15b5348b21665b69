"""export_onnx: a sparsified model as an ONNX file whose size follows the nonzeros.

The custom op sparsekern::csr_linear has no ONNX counterpart, so the graph is exported with
each SparseLinear swapped for its exact dense equivalent (an nn.Linear), and then every
weight initializer that is smaller in sparse form becomes a ``Constant`` node whose
``sparse_value`` is an ONNX SparseTensorProto (the nonzero values plus their int64 linear
indices: 12 bytes per fp32 nonzero). The Constant's output is an ordinary dense tensor, so
the graph stays well typed (a graph-level ``sparse_initializer`` would be typed
sparse_tensor, which Gemm/MatMul do not accept under ONNX shape inference); runtimes
densify it once at load, so the file is small and the results are exactly the dense ones.
Needs the `onnx` and `onnxscript` packages (torch.onnx's exporter).
"""
from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch
from torch import nn

from .sparse_linear import SparseLinear

_INDEX_BYTES = 8  # ONNX sparse tensors index with int64


def _sparsify_initializers(graph) -> int:
    """Replaces each floating weight initializer whose sparse form is smaller by a Constant node
    holding it as `sparse_value`; returns how many were replaced."""
    import onnx
    from onnx import numpy_helper

    keep, constants = [], []
    for init in graph.initializer:
        array = numpy_helper.to_array(init)
        # Weight matrices only (ndim >= 2): a zero-initialized bias would qualify too, to no gain.
        nonzero = np.flatnonzero(array) if array.dtype.kind == "f" and array.ndim >= 2 else None
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


def export_onnx(model: nn.Module, example_inputs: Sequence[torch.Tensor], path: str,
                dynamic_shapes: Optional[Any] = None, opset_version: Optional[int] = None) -> Dict[str, int]:
    """Writes `model` (on CPU, with SparseLinear layers) to the ONNX file `path`.

    example_inputs: the positional inputs of model.forward, as for torch.export.
    dynamic_shapes: passed to torch.onnx.export (e.g. ({0: "batch"},) for a dynamic batch).
    The graph computes the dense-equivalent model (same outputs); pruned weights are stored
    as sparse Constants (see the module docstring). The model is checked with onnx.checker before it is
    written. Returns {"sparse_constants": n, "initializers": n} for the written file.
    `model` is returned to its original state afterwards (its layers are swapped only
    during the export).
    """
    try:
        import onnx
    except ImportError as e:
        raise ImportError("sparsekern.export_onnx needs the onnx and onnxscript packages "
                          "(pip install onnx onnxscript)") from e

    # SparseLinear computes in float32 and returns x.dtype, so its dense stand-in takes the
    # activations' dtype (bf16 values with fp32 inputs export as an fp32 graph).
    dtype = next((t.dtype for t in example_inputs if t.is_floating_point()), None)
    swapped = []
    for parent in list(model.modules()):
        for attr, child in list(parent.named_children()):
            if isinstance(child, SparseLinear):
                swapped.append((parent, attr, child))
                dense = child.to_dense()
                setattr(parent, attr, dense.to(dtype) if dtype is not None else dense)
    try:
        program = torch.onnx.export(model, tuple(example_inputs), dynamo=True, dynamic_shapes=dynamic_shapes,
                                    opset_version=opset_version, verbose=False)
    finally:
        for parent, attr, child in swapped:
            setattr(parent, attr, child)
    proto = program.model_proto
    moved = _sparsify_initializers(proto.graph)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, path)
    return {"sparse_constants": moved, "initializers": len(proto.graph.initializer)}
