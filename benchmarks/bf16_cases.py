"""bf16 end to end (bf16 activations and values): sparsekern against dense bf16 F.linear and
against torch.compile dense with inductor freezing, each paired with sparsekern alone."""
import copy

import torch
import torch.nn.functional as F
from torch import nn

from sparsekern.sparse_linear import SparseLinear
from sparsekern.tools.bench import pruned_linear, shape_dims

# (shape, format, sparsity, batch); format "best" times CSR and bitmap and keeps the faster.
BF16_LAYER_QUICK = [("llama-qkvo", "2:4", 0.5, 1), ("llama-qkvo", "2:4", 0.5, 64)]
BF16_LAYER_TARGETED = (
    [(shape, "2:4", 0.5, b) for shape in ("llama-qkvo", "llama-up") for b in (1, 16, 64, 256)]
    + [("llama-qkvo", "bitmap", 0.5, b) for b in (1, 16, 64)]
    + [("llama-qkvo", "best", s, b) for s in (0.7, 0.9) for b in (1, 16, 64, 256)])


def case_id(shape: str, format: str, sparsity: float, batch: int) -> str:
    out_features, in_features = shape_dims(shape)
    pattern = "2:4" if format == "2:4" else f"{format}-s{sparsity:g}"
    return f"{out_features}x{in_features}-{pattern}-b{batch}-bf16"


def bf16_linear(shape: str, format: str, sparsity: float) -> nn.Linear:
    """The pruned Linear of the case, in bf16 (weights and bias; a copy: the fp32 one is cached)."""
    return copy.deepcopy(pruned_linear(shape, sparsity, "2:4" if format == "2:4" else "csr")).to(torch.bfloat16)


def compiled_dense(linear: nn.Linear) -> nn.Module:
    """torch.compile of the dense layer with inductor freezing (weights folded as constants),
    the fastest dense bf16 torch offers on CPU."""
    import torch._inductor.config as inductor_config
    inductor_config.freezing = True
    return torch.compile(linear.eval())


def calls(linear: nn.Linear, format: str, batch: int, with_compiled: bool):
    """(name -> call, sparsekern layers by format): "sparsekern" is the layer to report."""
    x = torch.randn(batch, linear.in_features, dtype=torch.bfloat16)
    weight, bias = linear.weight.detach().clone(), linear.bias.detach().clone()
    out = {"dense bf16": lambda: F.linear(x, weight, bias)}
    if with_compiled:
        compiled = compiled_dense(linear)
        with torch.no_grad():
            compiled(x)  # compiles now, not inside a timed round
        out["compiled dense bf16"] = lambda: compiled(x)
    formats = ("csr", "bitmap") if format == "best" else (format,)
    layers = {f: SparseLinear.from_dense(linear, format=f, value_dtype=torch.bfloat16) for f in formats}
    for f, layer in layers.items():
        out[f"sparsekern {f}"] = (lambda layer=layer: layer(x))
    return out, layers
