"""What a packed SparseLinear answers for `.weight` (SparseLinear.__getattr__).

Models written for nn.Linear read `.weight` outside forward: T5's feed-forward checks
`wo.weight.dtype` on every call, Qwen2-VL takes its vision tower's dtype and device from
`fc2.weight`. A packed layer has no dense weight. Unpacking one on every such read cost 20-40
times the layer's own call (a 768 x 3072 CSR layer at batch 1: 2.8 ms against 0.1 ms), so the
answer is a tensor that only looks like the dense weight: shape, dtype and device are plain
metadata, and any operation that reads its values computes them first from the packed
buffers (layer.dense_weight()), so they are right wherever they are read.
"""
import torch
from torch.utils._pytree import tree_map


_VIEWS = (torch.ops.aten.detach.default, torch.ops.aten.alias.default)


class PackedWeight(torch.Tensor):
    """The dense [out, in] weight of a packed SparseLinear, computed only when its values are
    read. Read-only: an in-place write could not reach the packed values, so it raises."""

    # Results of operations are plain tensors, not PackedWeights.
    __torch_function__ = torch._C._disabled_torch_function_impl

    @staticmethod
    def __new__(cls, layer):
        return torch.Tensor._make_wrapper_subclass(cls, (layer.out_features, layer.in_features),
                                                   dtype=layer.values.dtype, device=layer.values.device)

    def __init__(self, layer):
        self._layer = layer

    def __repr__(self):
        return f"PackedWeight(format={self._layer.format!r}, {self._layer.dense_weight()!r})"

    # A copy or a pickle of it holds the values: the dense weight.
    def __deepcopy__(self, memo):
        return self._layer.dense_weight()

    def __reduce_ex__(self, protocol):
        return self._layer.dense_weight().__reduce_ex__(protocol)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        if func._schema.is_mutable:
            raise RuntimeError(f"{func.__name__}: the weight of a packed SparseLinear is read-only (a write could "
                               "not reach its packed values); change the nn.Linear before sparsekern.sparsify, or "
                               "use layer.to_dense()")

        if func in _VIEWS:  # `.data`, `.detach()`: still this layer's weight, still read-only
            return PackedWeight(args[0]._layer)

        def dense(t):
            return t._layer.dense_weight() if isinstance(t, PackedWeight) else t

        return func(*tree_map(dense, args), **tree_map(dense, kwargs or {}))
