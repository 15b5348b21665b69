"""sparsekern: pruning masks turned into real speed.

    import sparsekern as sk
    sk.prune.magnitude(model, sparsity=0.9)
    model = sk.sparsify(model)          # nn.Linear -> SparseLinear (compiled CSR kernels)
    print(sk.summary(model))
"""
from . import _backend, ops, prune
from ._backend import cpu_isa, supported_cpu_isas
from .nn import SparseLinear, sparsify
from .summary import summary

__version__ = "0.1.0"

__all__ = ["SparseLinear", "sparsify", "summary", "prune", "ops", "cpu_isa", "supported_cpu_isas"]
