"""Benchmark results: the mode chosen on the command line, recorded ratios, target checks."""
import pytest
import torch

import sparsekern as sk
from sparsekern import _backend, planner

RESULTS = []  # dicts: case, group, ratios, target misses; printed at the end


def bench_mode(config) -> str:
    if config.getoption("--quick"):
        return "quick"
    if config.getoption("--targets"):
        return "targets"
    return "full"


def machine_line() -> str:
    """The CPU model, its caches, the features that decide which kernels pay, threads, torch."""
    from sparsekern.tools.bench import COLD_BYTES  # reads the caches: only when a CPU case ran
    caches = ", ".join(f"{level} {size >> 10} KiB" for level, size in planner.cache_sizes().items() if size)
    features = _backend.cpu_features()
    return (f"{planner.cpu_model()} ({caches}; AVX512-BF16 {'yes' if features['avx512_bf16'] else 'no'}, "
            f"AMX-BF16 {'yes' if features['amx_bf16'] else 'no'}), {torch.get_num_threads()} threads, "
            f"torch {torch.__version__}, sparsekern ISA {sk.cpu_isa()}, cold = {COLD_BYTES >> 20} MiB cycled")


def record(group: str, case_id: str, ratios: dict, targets: dict, config, details: str = ""):
    """Stores one case's ratios; checks them against their targets (a target of 0: none)."""
    targets = {base: need for base, need in targets.items() if need}
    misses = [f"{base} {ratios[base]:.2f}x < {need:g}x" for base, need in targets.items()
              if base in ratios and ratios[base] < need]
    RESULTS.append({"group": group, "case": case_id, "ratios": ratios, "targets": targets,
                    "misses": misses, "details": details})
    if misses and config.getoption("--enforce-targets"):
        pytest.fail(f"{case_id}: target missed: {'; '.join(misses)}")
