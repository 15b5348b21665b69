"""The `sparsekern` command: help, --version, bench (timing a tiny case, custom shapes, reading a
JSON, plotting), bad arguments."""
import json
import sys

import pytest

import sparsekern
from sparsekern.tools import bench_cli, cli

from conftest import package_env


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


@pytest.mark.parametrize("argv", [["--foo"], ["--foo", "inspect", "model.safetensors"], ["--llm", "bench"]])
def test_an_option_before_the_command_is_named(argv, capsys):
    # A new-user trial: these said "the following arguments are required: COMMAND".
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert f"error: unrecognized option {argv[0]}: the command comes first" in capsys.readouterr().err


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


@pytest.mark.parametrize("content, message", [
    (None, "No such file or directory"),
    (b"\x00\x01\xff binary", "not a JSON file"),
    (b"[1, 2]", "not a pytest-benchmark JSON file"),
    (b'{"benchmarks": [{"extra_info": {"speedup": {"dense": 2}, "format": "csr", "values": "fp32", '
     b'"cache": "hot", "shape": [8, 8], "batch": 1, "sparsity": "high"}}]}', "not a pytest-benchmark JSON file"),
    (b'{"benchmarks": []}', "no layer results"),
])
def test_bench_reports_a_bad_json_file_in_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "bench.json"
    if content is not None:
        path.write_bytes(content)
    assert cli.main(["bench", "--json", str(path)]) == 1  # as `sparsekern inspect` does for a bad file
    err = capsys.readouterr().err
    assert err.startswith("sparsekern bench: ") and message in err and str(path) in err, err
    assert len(err.splitlines()) == 1, err


def test_break_even():
    assert bench_cli.break_even({0.5: 0.5, 0.9: 1.5}) == "70%"
    assert bench_cli.break_even({0.5: 1.2, 0.9: 3.0}) == "<= 50%"
    assert bench_cli.break_even({0.5: 0.2, 0.9: 0.8}) == "not reached"


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"sparsekern {sparsekern.__version__}\n"


def test_bench_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit):
        bench_cli.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines at the terminal width
    assert "fractions of zero weights to time, each in [0, 1) (default: 0.5 0.7 0.9 0.95)" in text
    assert "batch sizes: rows of x per call (default: 1 64)" in text
    assert "--shape OUTxIN" in text


def fake_timing(monkeypatch):
    """Every case measures dense at twice sparsekern's time: no timing in tests."""
    monkeypatch.setattr(bench_cli, "time_interleaved", lambda calls, **_: {"dense": 2.0, "sparsekern": 1.0})


def test_bench_times_custom_shapes_beside_named_ones(monkeypatch, capsys):
    fake_timing(monkeypatch)
    shapes = dict(bench_cli.SHAPES)
    assert bench_cli.main(["--shapes", "square-1k", "--shape", "64x32", "--shape", "16x8", "--sparsities", "0.9",
                           "--batches", "2"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:]]
    assert [row[:3] for row in rows] == [["16x8", "2", "2.00x"], ["64x32", "2", "2.00x"], ["square-1k", "2", "2.00x"]]
    assert bench_cli.SHAPES == shapes  # custom shapes are not left behind


def test_bench_custom_shape_alone_replaces_the_default_shapes():
    args = bench_cli._parse(["--shape", "768x768"])
    assert args.shapes == ["768x768"] and args.custom_shapes == {"768x768": (768, 768)}
    assert bench_cli._parse([]).shapes == bench_cli.DEFAULT_SHAPES


@pytest.mark.parametrize("argv, message", [
    (["--shape", "768x"], "argument --shape: '768x' is not OUTxIN, two integers such as 768x3072"),
    (["--shape", "axb"], "argument --shape: 'axb' is not OUTxIN"),
    (["--shape", "0x5"], "argument --shape: '0x5': out and in features must be >= 1"),
    (["--shape", "8x6", "--format", "2:4"], "--format 2:4 needs in_features divisible by 4, not 8x6"),
])
def test_bench_rejects_bad_shapes(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_cli.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_bench_refuses_cases_larger_than_memory_before_timing(monkeypatch, capsys):
    # A new-user trial: --shape 1000000x1000000 (or --batches 100000000) ended in a torch
    # allocation traceback ("DefaultCPUAllocator: can't allocate memory") once timing began.
    monkeypatch.setattr(bench_cli, "_physical_memory", lambda: 2**30)  # a 1 GiB machine
    with pytest.raises(SystemExit) as exit_info:
        bench_cli.main(["--shape", "100000x100000", "--batches", "1"])
    assert exit_info.value.code == 2
    assert ("100000x100000 at batch 1: its float32 weights, input and output alone take 37.3 GiB, more than "
            "this machine's 1.0 GiB") in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench_cli._parse(["--shape", "768x768", "--batches", "1000000"])  # x and y: 5.7 GiB
    assert bench_cli._parse(["--shape", "768x768", "--batches", "64"]).shapes == ["768x768"]
    assert bench_cli._parse(["--shape", "100000x100000", "--json", "results.json"]).json  # reads, allocates nothing


@pytest.mark.parametrize("case", ["missing directory", "unknown file type", "no matplotlib"])
def test_bench_plot_is_checked_before_timing(monkeypatch, capsys, tmp_path, case):
    if case == "no matplotlib":
        monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    elif case == "unknown file type":
        pytest.importorskip("matplotlib")
    path, message = {
        "missing directory": (tmp_path / "missing" / "speedup.png", f"there is no directory {tmp_path / 'missing'}"),
        "unknown file type": (tmp_path / "speedup.xyz", "the file name must end in one of"),
        "no matplotlib": (tmp_path / "speedup.png", '--plot needs matplotlib: pip install "sparsekern[plot]"'),
    }[case]

    def measure(args):
        raise AssertionError("timed before checking --plot")
    monkeypatch.setattr(bench_cli, "measure", measure)
    with pytest.raises(SystemExit) as exit_info:
        bench_cli.main(["--plot", str(path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_speedup_axis_labels_ticks_as_speedups():
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    ax = Figure().add_subplot()
    ax.plot([50, 95], [0.6, 0.9])  # under one decade: matplotlib's own labels would read 6x10^-1
    bench_cli.speedup_axis(ax)
    major, label = ax.yaxis.get_major_locator(), ax.yaxis.get_major_formatter()
    assert [label(v) for v in major.tick_values(0.3, 60) if 0.3 <= v <= 60] == [
        "0.5x", "1x", "2x", "5x", "10x", "20x", "50x"]
    assert ax.yaxis.get_minor_formatter()(0.6) == ""
    assert ax.get_yscale() == "log"
    bottom, top = ax.get_ylim()
    assert bottom <= 0.5 and top >= 2  # 0.5x, 1x and 2x are always shown


def test_bench_plots_json_results(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    entries = [{"extra_info": {"shape": [96, 64], "batch": 1, "sparsity": s, "format": "csr", "values": "fp32",
                               "cache": "hot", "speedup": {"dense": r}}} for s, r in [(0.5, 0.8), (0.9, 3.0)]]
    (tmp_path / "bench.json").write_text(json.dumps({"benchmarks": entries}))
    png = tmp_path / "speedup.png"
    assert bench_cli.main(["--json", str(tmp_path / "bench.json"), "--plot", str(png)]) == 0
    assert png.stat().st_size > 0 and f"plot written to {png}" in capsys.readouterr().out


def test_a_reader_that_leaves_early_gets_no_traceback(tmp_path):
    # `sparsekern inspect FILE | head`: output past what the reader took must not end in a
    # BrokenPipeError traceback (a new-user trial). The command here prints 1 MB into a pipe
    # whose reader takes one line and closes it.
    import subprocess
    script = ("import sys; from sparsekern.tools import cli\n"
              "cli.COMMANDS['inspect'] = (lambda argv: [print('x' * 1000) for _ in range(1000)] and 0, '')\n"
              "sys.exit(cli.main(['inspect']))\n")
    writer = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              cwd=tmp_path, env=package_env())
    writer.stdout.readline()
    writer.stdout.close()
    writer.wait(timeout=60)
    err = writer.stderr.read().decode()
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert writer.returncode == 1
