"""Layer benchmark cases, shared by `pytest benchmarks/` and `sparsekern bench`: shapes from
real models, magnitude-pruned weights, and the candidates to time side by side: dense F.linear
(the baseline), torch.sparse.mm(W_csr, x.T) (the incumbent sparse path), scipy.sparse (when
installed) and sparsekern. Hot cache repeats one layer; cold cycles through copies whose
bytes exceed the last-level cache.
"""
import math
import warnings
from typing import Callable, Dict, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .. import planner, prune
from ..sparse_linear import SparseLinear

# (out_features, in_features) from real models.
SHAPES = {
    "bert-up": (3072, 768),
    "bert-down": (768, 3072),
    "llama-qkvo": (4096, 4096),
    "llama-up": (11008, 4096),
    "llama-down": (4096, 11008),
    "square-1k": (1024, 1024),
}
SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98)


def shape_dims(shape: str) -> tuple:
    """(out_features, in_features) of a named shape (SHAPES) or of one written "OUTxIN"."""
    if shape in SHAPES:
        return SHAPES[shape]
    out_features, _, in_features = shape.partition("x")
    return int(out_features), int(in_features)


BATCHES = (1, 8, 64, 256)
VALUE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# "Cold" cycles through three times this machine's L3 (at least 96 MiB when it does not say):
# a 480 MiB L3 keeps a 64 MB weight hot, a 32 MiB one does not.
COLD_BYTES = max(96 << 20, 3 * planner.cache_sizes()["L3"])


class Case(NamedTuple):
    """One layer case (shape: a SHAPES name or "OUTxIN"). format "2:4" prunes to the 2:4
    pattern (sparsity is then 0.5)."""
    shape: str
    sparsity: float
    batch: int
    values: str = "fp32"
    cache: str = "hot"
    format: str = "csr"

    @property
    def pattern(self) -> str:
        """As in case ids: '2:4', the sparsity for CSR ('s0.9'), else format and sparsity ('bitmap-s0.5')."""
        if self.format == "2:4":
            return "2:4"
        return f"s{self.sparsity:g}" if self.format == "csr" else f"{self.format}-s{self.sparsity:g}"

    @property
    def id(self) -> str:
        out_features, in_features = shape_dims(self.shape)
        return f"{out_features}x{in_features}-{self.pattern}-b{self.batch}-{self.values}-{self.cache}"


_weights: Dict = {}


def pruned_linear(shape: str, sparsity: float, format: str = "csr") -> nn.Linear:
    """A Linear of the named shape, seeded, magnitude-pruned: unstructured to `sparsity`, or
    to the 2:4 pattern for format "2:4"."""
    key = (shape, sparsity, format)
    if key not in _weights:
        out_features, in_features = shape_dims(shape)
        torch.manual_seed(0)
        linear = nn.Linear(in_features, out_features)
        if format == "2:4":
            prune.finalize(prune.nm(linear, n=2, m=4))
        elif sparsity > 0:
            prune.finalize(prune.magnitude(linear, sparsity=sparsity))
        _weights.clear()  # keep one shape in memory: the big ones are hundreds of MB
        _weights[key] = linear
    return _weights[key]


def _cycled(make: Callable[[], Callable], bytes_each: int, cache: str) -> Callable:
    """One callable for hot cache; for cold, a callable cycling over enough copies of the
    weights that each call finds its weights out of the last-level cache."""
    if cache == "hot":
        return make()
    copies = [make() for _ in range(max(2, min(64, math.ceil(COLD_BYTES / max(bytes_each, 1)))))]
    state = {"i": 0}

    def call():
        state["i"] = (state["i"] + 1) % len(copies)
        return copies[state["i"]]()
    return call


class Candidates(NamedTuple):
    calls: Dict[str, Callable[[], object]]
    layer: SparseLinear
    weight_bytes: Dict[str, int]


def candidates(case: Case, with_scipy: bool = True) -> Candidates:
    """name -> zero-argument callable computing the layer's output for one batch."""
    linear = pruned_linear(case.shape, case.sparsity, case.format)
    out_features, in_features = shape_dims(case.shape)
    x = torch.randn(case.batch, in_features)
    weight, bias = linear.weight.detach(), linear.bias.detach()
    layer = SparseLinear.from_dense(linear, format=case.format, value_dtype=VALUE_DTYPES[case.values])
    with warnings.catch_warnings():  # torch's "sparse CSR support is in beta" notice
        warnings.simplefilter("ignore", UserWarning)
        w_csr = weight.to_sparse_csr()
    sizes = {"dense": weight.numel() * 4, "sparsekern": layer.weight_bytes,
             "torch.sparse": layer.nnz * 12 + (out_features + 1) * 8}

    def dense_call():
        w = weight.clone()
        return lambda: F.linear(x, w, bias)

    def sparsekern_call():
        copy = SparseLinear.from_dense(linear, format=case.format, value_dtype=VALUE_DTYPES[case.values])
        return lambda: copy(x)

    def torch_sparse_call():
        w = w_csr.clone()
        return lambda: torch.sparse.mm(w, x.t())

    calls = {
        "dense": _cycled(dense_call, sizes["dense"], case.cache),
        "sparsekern": _cycled(sparsekern_call, sizes["sparsekern"], case.cache),
        "torch.sparse": _cycled(torch_sparse_call, sizes["torch.sparse"], case.cache),
    }
    if case.format != "csr" and case.format != "2:4":
        # A new format also answers to the format it means to beat on this pattern.
        csr_layer = SparseLinear.from_dense(linear, format="csr", value_dtype=VALUE_DTYPES[case.values])
        sizes["csr"] = csr_layer.weight_bytes

        def csr_call():
            copy = SparseLinear.from_dense(linear, format="csr", value_dtype=VALUE_DTYPES[case.values])
            return lambda: copy(x)
        calls["csr"] = _cycled(csr_call, sizes["csr"], case.cache)
    if with_scipy:
        scipy_call = _scipy_call(weight, x)
        if scipy_call is not None:
            calls["scipy"] = _cycled(scipy_call, sizes["torch.sparse"], case.cache)
    return Candidates(calls, layer, sizes)


def _scipy_call(weight: torch.Tensor, x: torch.Tensor) -> Optional[Callable[[], Callable]]:
    try:
        import scipy.sparse
    except ImportError:
        return None
    w = scipy.sparse.csr_matrix(weight.numpy())
    xt = x.numpy().T.copy()

    def make():
        copy = w.copy()
        return lambda: copy @ xt
    return make
