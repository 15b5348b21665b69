"""Per-call cost at batch 1: SparseLinear against nn.Linear of the same shape holding the same
(masked) weights, for layers small enough that Python and dispatch, not the product, decide."""
import pytest
import torch
from torch import nn

import sparsekern as sk
from sparsekern.tools.timing import time_interleaved

from report import record
from targets import OVERHEAD_TARGETS

CASES = [(64, 0.95), (512, 0.95), (768, 0.9)]


@pytest.mark.parametrize("size,sparsity", CASES, ids=[f"{n}x{n}-s{s:g}" for n, s in CASES])
def test_small_layer_per_call(size, sparsity, request):
    torch.manual_seed(0)
    linear = nn.Linear(size, size)
    sk.prune.magnitude(linear, sparsity=sparsity)
    sk.prune.finalize(linear)
    layer = sk.SparseLinear.from_dense(linear, format="csr")
    x = torch.randn(1, size)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), linear(x), rtol=1e-4, atol=1e-5)
        times = time_interleaved({"nn.Linear": lambda: linear(x), "sparsekern": lambda: layer(x)},
                                 rounds=9, round_seconds=0.02)
    key = f"{size}x{size}-s{sparsity:g}-b1-fp32-hot"
    record("call", key, {"nn.Linear": times["nn.Linear"] / times["sparsekern"]},
           {"nn.Linear": OVERHEAD_TARGETS[key]}, request.config,
           f"nn.Linear {times['nn.Linear'] * 1e6:.1f} us, SparseLinear {times['sparsekern'] * 1e6:.1f} us")
