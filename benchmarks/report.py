"""Benchmark results: the mode chosen on the command line, recorded ratios, target checks."""
import platform

import pytest
import torch

import sparsekern as sk

RESULTS = []  # dicts: case, group, ratios, target misses; printed at the end


def bench_mode(config) -> str:
    if config.getoption("--quick"):
        return "quick"
    if config.getoption("--targets"):
        return "targets"
    return "full"


def machine_line() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
            f"sparsekern ISA {sk.cpu_isa()}")


def record(group: str, case_id: str, ratios: dict, targets: dict, config, details: str = ""):
    """Stores one case's ratios; checks them against their targets (a target of 0: none)."""
    targets = {base: need for base, need in targets.items() if need}
    misses = [f"{base} {ratios[base]:.2f}x < {need:g}x" for base, need in targets.items()
              if base in ratios and ratios[base] < need]
    RESULTS.append({"group": group, "case": case_id, "ratios": ratios, "targets": targets,
                    "misses": misses, "details": details})
    if misses and config.getoption("--enforce-targets"):
        pytest.fail(f"{case_id}: target missed: {'; '.join(misses)}")
