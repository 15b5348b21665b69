"""A Llama-shaped causal LM (random init, offline), dense against 2:4 and 50% copies: decode
tokens/s at batch 1 and prefill time, bf16 and fp32 (sparsekern/tools/llm_bench.py does the
work; `sparsekern bench --llm` prints the same table).

--quick uses a small model so CI keeps this path alive; its ratios are reported, not targeted.
"""
import pytest

from sparsekern.tools import llm_bench

from report import bench_mode, record
from targets import AUTO_MIN_RATIO, LLM_TARGETS

pytest.importorskip("transformers", reason=f"the LLM benchmark needs transformers: {llm_bench.HF_EXTRA}")

QUICK = llm_bench.Settings(llm_bench.LlamaShape(hidden=256, intermediate=704, layers=2, heads=8, kv_heads=2,
                                                vocab=1000), prompt=16, new_tokens=8, prefill=64, rounds=3)
FULL = llm_bench.Settings()  # the model: hidden 2048, MLP 5632, 4 layers, vocab 32000


def pytest_generate_tests(metafunc):
    if "llm_case" in metafunc.fixturenames:
        cases = llm_bench.cases(["bf16", "fp32"])
        metafunc.parametrize("llm_case", cases, ids=[f"{k}-{d}-{v.name.replace(' ', '-')}" for k, d, v in cases])


@pytest.fixture(scope="module")
def dense_models():
    return {}  # the dense model of the current dtype, shared by the cases of this module


def test_llm(llm_case, dense_models, request):
    kind, dtype, variant = llm_case
    quick = bench_mode(request.config) == "quick"
    settings = QUICK if quick else FULL
    result = llm_bench.measure(kind, dtype, variant, settings, dense_models)
    key = f"{kind}-{dtype}-{variant.name}"
    target = 0 if quick else (AUTO_MIN_RATIO if kind == "prefill" else LLM_TARGETS.get(key, 0))
    unit = "ms/token" if kind == "decode" else "ms"
    record("llm", key, {"dense": result.speedup}, {"dense": target}, request.config,
           f"(dense {result.dense_seconds * 1e3:.1f} {unit}, rounds {min(result.ratios):.2f}-"
           f"{max(result.ratios):.2f}, {result.formats})")
