"""prepare_ddp: lets torch.nn.parallel.DistributedDataParallel wrap a model with SparseLinear layers."""
import torch
from torch import nn

from .sparse_linear import _SIGNED_TWIN, SparseLinear


def prepare_ddp(model: nn.Module) -> nn.Module:
    """Call before `DistributedDataParallel(model)` when `model` holds CSR or bitmap SparseLinear
    layers. Their index buffers (CSR col_idx, bitmap bits) are uint16 / uint32, which torch's
    collectives do not take: DDP's construction, which broadcasts every buffer, failed with
    "RuntimeError: Invalid scalar type" (gloo, torch 2.13). This broadcasts them from rank 0
    itself, as their bytes (uint8 views; so every rank runs rank 0's sparsity
    pattern, as DDP would make it), and tells DDP to leave them out of its own syncs (they
    never change in training). The values and the bias stay DDP's: gradients are averaged as
    usual. Returns `model`. A no-op for layers without such buffers (2:4, dense). Every rank
    must hold the same model (the same nonzero counts), as DDP requires; run with one
    process only so far."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"prepare_ddp takes a module, got {type(model).__name__}")
    import torch.distributed as dist
    names = []
    for prefix, layer in model.named_modules():
        if not isinstance(layer, SparseLinear):
            continue
        for name, buffer in layer._buffers.items():
            if buffer is not None and buffer.dtype in _SIGNED_TWIN:
                names.append(f"{prefix}.{name}" if prefix else name)
                if dist.is_available() and dist.is_initialized():
                    # In place through a view: the buffer's version counter moves, so the
                    # layer's cached kernel is rebuilt over the broadcast indices.
                    dist.broadcast(buffer.view(torch.uint8), src=0)  # gloo takes no int16 either
    if names:
        ignored = set(getattr(model, "_ddp_params_and_buffers_to_ignore", ()))
        nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
            model, sorted(ignored.union(names)))
    return model
