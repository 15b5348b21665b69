"""`sparsekern bench --llm` (sparsekern/tools/llm_bench.py) on a tiny model: argument checks,
what is pruned, that decode timing excludes the prefill and counts every token. No speed is
asserted here (speed lives in benchmarks/test_llm.py)."""
import pytest
import torch

import sparsekern as sk
from sparsekern.tools import bench_cli, llm_bench

pytest.importorskip("transformers", reason="the LLM benchmark builds a transformers model")

TINY = llm_bench.Settings(llm_bench.LlamaShape(hidden=64, intermediate=128, layers=1, heads=4, kv_heads=2,
                                               vocab=100), prompt=4, new_tokens=3, prefill=8, rounds=1)


@pytest.mark.parametrize("argv, message", [
    (["--layers", "0"], "--layers must be >= 1"),
    (["--new-tokens", "1"], "--new-tokens must be >= 2"),
    (["--hidden", "100", "--heads", "32"], "not a multiple of --heads"),
    (["--heads", "32", "--kv-heads", "5"], "not a multiple of --kv-heads"),
    (["--hidden", "66", "--heads", "2", "--kv-heads", "1"], "multiples of 4"),
    (["--dtypes", "fp16"], "invalid choice"),
    # Head size 3: was a RuntimeError traceback from transformers' rotary embedding, models built.
    (["--hidden", "12", "--heads", "4", "--kv-heads", "2", "--intermediate", "8"], "must be even"),
])
def test_bad_arguments_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit) as exit:
        bench_cli.main(["--llm", *argv])
    assert exit.value.code == 2
    assert message in capsys.readouterr().err


def test_sparse_copy_prunes_every_projection_but_lm_head():
    dense = llm_bench.llama(TINY.shape, torch.float32)
    sparse = llm_bench.sparse_copy(dense, llm_bench.Variant("2:4", "2:4", "2:4"))
    layers = {name: m for name, m in sparse.named_modules() if isinstance(m, sk.SparseLinear)}
    assert len(layers) == 7  # q, k, v, o, gate, up, down of the one block
    assert all(m.format == "2:4" for m in layers.values())
    assert isinstance(sparse.lm_head, torch.nn.Linear)
    assert torch.equal(sparse.lm_head.weight, dense.lm_head.weight)
    assert not any(isinstance(m, sk.SparseLinear) for m in dense.modules())  # the dense model is untouched


def test_decode_time_excludes_the_prefill(monkeypatch):
    """The stamps of a fake clock: the prefill takes 100 s, each decode step 1 s."""
    model = llm_bench.llama(TINY.shape, torch.float32)
    clock = iter([100.0, 101.0, 102.0, 103.0, 104.0])
    monkeypatch.setattr(llm_bench, "clock", lambda: next(clock))
    ids = torch.zeros(1, 4, dtype=torch.long)
    assert llm_bench.decode_seconds_per_token(model, ids, new_tokens=5) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least 2"):
        llm_bench.decode_seconds_per_token(model, ids, new_tokens=1)


def test_paired_divides_round_by_round():
    baseline, subject = iter([9.0, 4.0, 6.0]), iter([9.0, 2.0, 3.0])  # the first pair is the untimed warm-up
    assert llm_bench.paired(lambda: next(baseline), lambda: next(subject), rounds=2) == [2.0, 2.0]


def test_run_reports_every_case(capsys):
    assert bench_cli.main(["--llm", "--hidden", "64", "--intermediate", "128", "--layers", "1", "--heads", "4",
                           "--kv-heads", "2", "--vocab", "100", "--prompt", "4", "--new-tokens", "3",
                           "--prefill", "8", "--rounds", "1", "--dtypes", "fp32"]) == 0
    out = capsys.readouterr().out
    assert "hidden 64, MLP 128, 1 layers" in out
    for kind, variant in [("decode", "2:4"), ("decode", "50%"), ("prefill", "2:4 auto"), ("prefill", "50% auto")]:
        assert any(line.startswith(kind) and f" {variant} " in line for line in out.splitlines()), (kind, variant)
    assert "bf16" not in out


def test_cases_order_groups_dtypes():
    cases = llm_bench.cases(["bf16", "fp32"])
    assert [d for _, d, _ in cases] == ["bf16"] * 4 + ["fp32"] * 4
    assert {v.name for k, _, v in cases if k == "prefill"} == {"2:4 auto", "50% auto"}
