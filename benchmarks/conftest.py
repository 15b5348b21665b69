"""Benchmark session plumbing: modes and the results table (see report.py).

    pytest benchmarks/                  full grid (long: tens of minutes)
    pytest benchmarks/ --quick          a few representative cases (CI, < 5 min)
    pytest benchmarks/ --targets        the cases the issues set targets for
    pytest benchmarks/ --enforce-targets    a missed target fails its case
"""
import os
import tempfile

# The derived default tiles, not a tuning run's choice: figures that mean the same each run.
os.environ.setdefault("SPARSEKERN_TUNE", "0")

from report import RESULTS, machine_line  # noqa: E402


def pytest_configure(config):
    # format="auto" decides afresh in every benchmark run, not from choices an earlier run (or
    # a user) saved.
    os.environ["SPARSEKERN_CACHE_DIR"] = tempfile.mkdtemp(prefix="sparsekern-bench-cache-")


def pytest_addoption(parser):
    group = parser.getgroup("sparsekern")
    group.addoption("--quick", action="store_true", help="a few representative cases")
    group.addoption("--targets", action="store_true", help="the cases with speed targets")
    group.addoption("--enforce-targets", action="store_true", help="fail a case that misses its target")


def pytest_terminal_summary(terminalreporter):
    if not RESULTS:
        return
    tr = terminalreporter
    tr.section("sparsekern speedups (time of baseline / time of sparsekern, medians, interleaved)")
    tr.write_line(machine_line())
    for r in RESULTS:
        ratios = "  ".join(f"vs {k} {v:.2f}x" for k, v in r["ratios"].items())
        status = ""
        if r["targets"]:
            status = "  MISS: " + "; ".join(r["misses"]) if r["misses"] else "  target met"
        tr.write_line(f"{r['group']:6s} {r['case']:34s} {ratios}{status}  {r['details']}")
