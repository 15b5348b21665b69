"""Whole models, dense vs sparsified: the 8-layer 768<->3072 MLP (BERT-base's MLP shape) and a
transformer encoder block; plus format='auto' against dense."""
import copy

import pytest
import torch
from torch import nn

import sparsekern as sk
from sparsekern.tools.timing import ratios_against

from report import bench_mode, record
from targets import AUTO_MIN_RATIO, BF16_MLP_TARGETS, MODEL_TARGETS


def mlp8() -> nn.Sequential:
    """8 x Linear alternating 768->3072 and 3072->768, ReLU between."""
    torch.manual_seed(0)
    layers = []
    for i in range(8):
        layers += [nn.Linear(768, 3072) if i % 2 == 0 else nn.Linear(3072, 768), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def encoder_block() -> nn.Module:
    torch.manual_seed(0)
    return nn.TransformerEncoderLayer(768, 12, dim_feedforward=3072, batch_first=True).eval()


def model_cases(config):
    mode = bench_mode(config)
    sparsities = {"quick": (0.9,), "targets": (0.9,), "full": (0.5, 0.7, 0.9, 0.95)}[mode]
    batches = {"quick": (1, 64), "targets": (1, 64), "full": (1, 8, 64, 256)}[mode]
    return [(s, b) for s in sparsities for b in batches]


def pytest_generate_tests(metafunc):
    if "sparsity_batch" in metafunc.fixturenames:
        cases = model_cases(metafunc.config)
        metafunc.parametrize("sparsity_batch", cases, ids=[f"s{s:g}-b{b}" for s, b in cases])


def speedups(dense_model, sparse_model, x, **extra):
    with torch.no_grad():
        calls = {"dense": lambda: dense_model(x), "sparsekern": lambda: sparse_model(x)}
        calls.update(extra)
        return ratios_against(calls, rounds=7, round_seconds=0.05)


def test_mlp8(sparsity_batch, request):
    sparsity, batch = sparsity_batch
    dense = mlp8().eval()
    sparse = copy.deepcopy(dense)
    sk.prune.magnitude(sparse, sparsity=sparsity, scope="layer")
    sk.sparsify(sparse, format="csr", progress=False)
    x = torch.randn(batch, 768)
    ratios, times = speedups(dense, sparse, x)
    key = f"mlp8-s{sparsity:g}-b{batch}"
    record("model", key, ratios, {"dense": MODEL_TARGETS.get(key, 0)}, request.config,
           f"(dense {times['dense'] * 1e3:.2f} ms)")


def test_encoder_block(sparsity_batch, request):
    sparsity, batch = sparsity_batch
    dense = encoder_block()
    sparse = copy.deepcopy(dense)
    sk.prune.magnitude(sparse, sparsity=sparsity, scope="layer")
    sk.sparsify(sparse, format="csr", progress=False)
    x = torch.randn(max(1, batch // 8), 8 if batch >= 8 else batch, 768)
    ratios, times = speedups(dense, sparse, x)
    record("model", f"encoder-s{sparsity:g}-tokens{batch}", ratios, {}, request.config,
           f"(dense {times['dense'] * 1e3:.2f} ms)")


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.7, 0.9])
@pytest.mark.parametrize("batch", [1, 64])
def test_auto_never_slower_than_dense(sparsity, batch, request):
    dense = mlp8().eval()
    auto = copy.deepcopy(dense)
    sk.prune.magnitude(auto, sparsity=sparsity, scope="layer")
    masked_dense = copy.deepcopy(auto)  # the same pruned weights, run by F.linear
    sk.prune.finalize(masked_dense)
    sk.sparsify(auto, format="auto", progress=False)
    formats = sorted({m.format for m in auto.modules() if isinstance(m, sk.SparseLinear)})
    ratios, _ = speedups(masked_dense, auto, torch.randn(batch, 768))
    record("auto", f"mlp8-s{sparsity:g}-b{batch}", ratios, {"dense": AUTO_MIN_RATIO}, request.config,
           f"(chose {'+'.join(formats)})")


@pytest.mark.parametrize("pattern", ["2:4", 0.7, 0.9])
@pytest.mark.parametrize("batch", [1, 64])
def test_auto_bf16_never_slower_than_dense(pattern, batch, request):
    """format="auto" on a bf16 model: timed in bf16 against dense bf16, it must never lose."""
    if bench_mode(request.config) == "quick" and (pattern, batch) != ("2:4", 1):
        pytest.skip("--quick runs the 2:4 batch-1 case only")
    dense = mlp8().eval()
    auto = copy.deepcopy(dense)
    if pattern == "2:4":
        sk.prune.nm(auto, n=2, m=4)
    else:
        sk.prune.magnitude(auto, sparsity=pattern, scope="layer")
    auto = auto.to(torch.bfloat16)
    masked_dense = copy.deepcopy(auto)
    sk.prune.finalize(masked_dense)
    sk.sparsify(auto, format="auto", progress=False)
    formats = sorted({m.format for m in auto.modules() if isinstance(m, sk.SparseLinear)})
    ratios, _ = speedups(masked_dense, auto, torch.randn(batch, 768, dtype=torch.bfloat16))
    name = "2:4" if pattern == "2:4" else f"s{pattern:g}"
    record("auto", f"mlp8-bf16-{name}-b{batch}", ratios, {"dense": AUTO_MIN_RATIO}, request.config,
           f"(chose {'+'.join(formats) or 'dense'})")


class LlamaMLP(nn.Module):
    """A Llama MLP block: down(SiLU(gate(x)) * up(x)), hidden 4096, intermediate 11008."""

    def __init__(self, hidden=4096, intermediate=11008):
        super().__init__()
        self.gate = nn.Linear(hidden, intermediate, bias=False)
        self.up = nn.Linear(hidden, intermediate, bias=False)
        self.down = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x):
        return self.down(nn.functional.silu(self.gate(x)) * self.up(x))


@pytest.mark.parametrize("batch", [1, 64])
def test_llama_mlp_bf16_24(batch, request):
    """The bf16 issue's block: pruned to 2:4 and stored in bf16, against the same pruned
    weights dense in bf16 (F.linear), bf16 activations."""
    if bench_mode(request.config) == "quick" and batch != 1:
        pytest.skip("--quick runs batch 1 only (the block is 270 MB of bf16 weights)")
    torch.manual_seed(0)
    dense = LlamaMLP().eval()
    sk.prune.finalize(sk.prune.nm(dense, n=2, m=4))
    dense = dense.to(torch.bfloat16)
    sparse = copy.deepcopy(dense)
    sk.sparsify(sparse, format="2:4", value_dtype=torch.bfloat16, progress=False)
    ratios, times = speedups(dense, sparse, torch.randn(batch, 4096, dtype=torch.bfloat16))
    key = f"llama-mlp-2:4-b{batch}"
    record("model", key, ratios, {"dense": BF16_MLP_TARGETS.get(key, 0)}, request.config,
           f"(dense bf16 {times['dense'] * 1e3:.2f} ms, ISA {sk.cpu_isa()})")


@pytest.mark.parametrize("batch", [1, 64])
def test_llama_mlp_fp32_under_bf16_autocast(batch, request):
    """The same block kept in float32 and run under torch.autocast(bfloat16), as many fp32
    models are: autocast casts nn.Linear's weights to bf16 on every call; packed layers read a
    bf16 copy of their values, made once. Reported, no target."""
    if bench_mode(request.config) == "quick":
        pytest.skip("--quick leaves out the autocast block")
    torch.manual_seed(0)
    dense = LlamaMLP().eval()
    sk.prune.finalize(sk.prune.nm(dense, n=2, m=4))
    sparse = copy.deepcopy(dense)
    sk.sparsify(sparse, format="2:4", progress=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ratios, times = speedups(dense, sparse, torch.randn(batch, 4096))
    record("model", f"llama-mlp-2:4-fp32-autocast-b{batch}", ratios, {}, request.config,
           f"(dense under autocast {times['dense'] * 1e3:.2f} ms)")
