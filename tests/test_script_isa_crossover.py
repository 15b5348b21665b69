"""scripts/isa_crossover.py, the tool for setting the planner's switch points between ISA
variants (kAmxFrom): it runs on a small layer with two variants this CPU has, reports a row per
batch with errors within bf16's, and refuses bad arguments and variants the CPU lacks."""
import importlib.util
from pathlib import Path

import pytest

import sparsekern

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "isa_crossover.py"


@pytest.fixture(scope="module")
def crossover():
    spec = importlib.util.spec_from_file_location("isa_crossover", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def two_isas():
    isas = sparsekern.supported_cpu_isas()
    if len(isas) < 2:
        pytest.skip(f"this CPU runs one ISA variant only ({isas[0]})")
    return list(isas[-2:])


def test_it_reports_every_format_and_batch(crossover, capsys):
    isas = two_isas()
    assert crossover.main(["--isas", *isas, "--shapes", "96x128", "--formats", "2:4", "bitmap", "csr",
                           "--sparsities", "0.6", "--batches", "1", "5", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    headers = [line for line in out.splitlines() if line.startswith("96 x 128")]
    assert [h.split(": ")[0] for h in headers] == ["96 x 128, 2:4", "96 x 128, bitmap 60%", "96 x 128, csr 60%"]
    rows = [line.split() for line in out.splitlines() if line.startswith("      ")]
    assert [row[0] for row in rows] == ["1", "5"] * 3
    for row in rows:
        assert float(row[1].rstrip("x")) > 0
        assert float(row[2]) < 2e-2 and float(row[3]) < 2e-2  # bf16 output rounding, not a wrong product
        assert row[4] in sparsekern.supported_cpu_isas()


def test_first_faster_needs_every_larger_batch(crossover):
    assert crossover.first_faster({8: 1.2, 16: 0.9, 32: 1.1, 64: 1.3}) == 32
    assert crossover.first_faster({8: 1.2, 16: 1.3}) == 8
    assert crossover.first_faster({8: 1.2, 16: 1.0}) is None


@pytest.mark.parametrize("argv, message", [
    (["--shapes", "4096by4096"], "expected OUTxIN"),
    (["--batches", "0"], "must be >= 1"),
    (["--sparsities", "1.0"], "must lie in [0, 1)"),
])
def test_bad_arguments_are_refused(crossover, argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        crossover.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_variant_the_cpu_lacks_is_named(crossover, capsys):
    lacking = [isa for isa in sparsekern._backend.CPU_ISAS if isa not in sparsekern.supported_cpu_isas()]
    if not lacking:
        pytest.skip("this CPU runs every ISA variant")
    assert crossover.main(["--isas", lacking[0], "scalar"]) == 2
    assert f"this CPU cannot run {lacking[0]}" in capsys.readouterr().out
