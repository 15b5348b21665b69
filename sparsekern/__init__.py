"""sparsekern: pruning masks turned into real speed.

    import sparsekern as sk
    sk.prune.magnitude(model, sparsity=0.9)
    model = sk.sparsify(model)          # nn.Linear -> SparseLinear (compiled CSR / 2:4 kernels)
    print(sk.summary(model))
"""
from . import _backend, eval, ops, prune

if _backend._C.with_cuda:
    from . import ops_cuda  # noqa: F401  (registers the CUDA kernels of the ops)
from ._backend import cpu_isa, supported_cpu_isas
from .io import inspect_file, load, save
from .ops import set_derived_layouts
from .sparse_linear import SparseLinear, refresh
from .distributed import prepare_ddp
from .sparsify import sparsify
from .onnx_export import export_onnx  # imports onnx only when called
from .summary import summary

__version__ = "0.1.0"

__all__ = ["SparseLinear", "sparsify", "summary", "prune", "ops", "cpu_isa", "supported_cpu_isas",
           "save", "load", "inspect_file", "export_onnx", "eval", "set_derived_layouts",
           "refresh", "prepare_ddp"]
