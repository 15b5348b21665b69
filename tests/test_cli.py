"""The `sparsekern` command: help, bench (timing a tiny case, reading a JSON), bad arguments."""
import json

import pytest

from sparsekern.tools import bench_cli, cli


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("demo", "bench", "inspect"):
        assert command in out


def test_unknown_command_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["frobnicate"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'frobnicate'" in capsys.readouterr().err


def test_bench_times_a_case_and_prints_the_table(capsys):
    assert cli.main(["bench", "--shapes", "square-1k", "--sparsities", "0.9", "--batches", "4"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.strip().startswith("square-1k"))
    speedup = float(row.split()[2].rstrip("x"))
    assert speedup > 0


@pytest.mark.parametrize("argv, message", [
    (["--sparsities", "1.5"], "sparsity 1.5 is outside [0, 1)"),
    (["--batches", "0"], "batch 0 must be >= 1"),
])
def test_bench_rejects_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit):
        bench_cli.main(argv)
    assert message in capsys.readouterr().err


def test_bench_reads_pytest_benchmark_json(tmp_path, capsys):
    def entry(sparsity, speedup, cache="hot"):
        return {"extra_info": {"shape": [3072, 768], "batch": 1, "sparsity": sparsity, "format": "csr",
                               "values": "fp32", "cache": cache, "speedup": {"dense": speedup}}}
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"benchmarks": [entry(0.5, 0.6), entry(0.7, 1.4), entry(0.9, 4.0),
                                               entry(0.9, 99.0, cache="cold")]}))
    assert bench_cli.main(["--json", str(path)]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if "bert-up" in line)
    assert row.split()[2:] == ["0.60x", "1.40x", "4.00x", "60%"]  # cold result left out


def test_break_even():
    assert bench_cli.break_even({0.5: 0.5, 0.9: 1.5}) == "70%"
    assert bench_cli.break_even({0.5: 1.2, 0.9: 3.0}) == "<= 50%"
    assert bench_cli.break_even({0.5: 0.2, 0.9: 0.8}) == "not reached"
