"""Times alternatives for the CUDA paths' choices on one GPU (run by scripts/gpu_check.sh when
VARIANTS=1): where a CSR layer should leave sparsekern's kernel (for cuBLAS on a dense
expansion, or cuSPARSE), and whether 2:4 rows should be cut into pieces. Every candidate is
captured in a CUDA graph of CALLS calls (eager timing with CUDA events where capture fails)
and timed against dense F.linear in alternating rounds; prints one line per case.

    python3 scripts/gpu_variants.py

Not yet run on a GPU: its one try (an H200, 2026-12-04) stopped at the import, fixed since.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's sparsekern, not an installed one

import statistics

import torch
import torch.nn.functional as F

import sparsekern  # noqa: F401  (registers the ops)
from sparsekern import ops_cuda
from sparsekern.formats import csr, nm

CALLS, ROUNDS = 20, 9


def per_call_seconds(fn) -> float:
    """Median seconds per call of fn() over ROUNDS, replaying a captured graph when it captures."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            for _ in range(CALLS):
                fn()
        run = graph.replay
    except RuntimeError:
        torch.cuda.synchronize()

        def run():
            for _ in range(CALLS):
                fn()
    run()
    torch.cuda.synchronize()
    times = []
    for _ in range(ROUNDS):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e-3 / CALLS)
    return statistics.median(times)


def report(case: str, candidates: dict) -> None:
    """Each candidate timed in rounds paired with dense alone; prints speedups over dense."""
    dense = candidates.pop("dense")
    parts = []
    for name, fn in candidates.items():
        ratios, mine = [], []
        for _ in range(3):
            d, c = per_call_seconds(dense), per_call_seconds(fn)
            ratios.append(d / c)
            mine.append(c)
        parts.append(f"{name} {statistics.median(mine) * 1e6:.1f} us = {statistics.median(ratios):.2f}x")
    print(f"{case}: dense {per_call_seconds(dense) * 1e6:.1f} us; " + ", ".join(parts), flush=True)


def masked(out_features, in_features, sparsity, dtype, two_four=False):
    w = torch.randn(out_features, in_features, device="cuda") / in_features ** 0.5
    if two_four:
        groups = w.abs().reshape(out_features, -1, 4)
        mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, groups.topk(2, dim=-1).indices, True)
        mask = mask.reshape(w.shape)
    else:
        keep = round((1 - sparsity) * in_features)
        mask = torch.zeros_like(w, dtype=torch.bool).scatter_(1, w.abs().topk(keep, dim=1).indices, True)
    w = (w * mask).to(dtype)
    return w, mask


def csr_cases():
    out_features = in_features = 4096
    w, mask = masked(out_features, in_features, 0.9, torch.float16)
    packed = csr.pack(w, mask)
    sparse = torch.sparse_csr_tensor(packed.row_ptr.to(torch.int32), packed.col_idx.to(torch.int32),
                                     packed.values, (out_features, in_features))
    for batch in (2, 4, 8, 16, 64, 256):
        x = torch.randn(batch, in_features, device="cuda", dtype=torch.float16)

        def kernel(x=x):  # sparsekern's CSR kernel at any batch (the op sends > 16 elsewhere)
            limit, ops_cuda.SPARSE_MAX_BATCH["csr"] = ops_cuda.SPARSE_MAX_BATCH["csr"], 1 << 30
            try:
                return torch.ops.sparsekern.csr_linear(x, *packed, None, in_features, out_features)
            finally:
                ops_cuda.SPARSE_MAX_BATCH["csr"] = limit

        def expand(x=x):  # today's path above 16 rows: a dense copy of W per call, then cuBLAS
            return F.linear(x, ops_cuda.csr_dense_weight(*packed, in_features, x.dtype))

        def cusparse(x=x):
            return (sparse @ x.t()).t()

        ref = F.linear(x.float(), w.float())
        for name, fn in (("kernel", kernel), ("expand", expand), ("cusparse", cusparse)):
            err = ((fn().float() - ref).abs().max() / ref.abs().max()).item()
            assert err < 2e-2, f"csr b{batch} {name}: relative error {err:.1e}"
        report(f"csr90 4096x4096 fp16 b{batch}",
               {"dense": lambda x=x: F.linear(x, w), "kernel": kernel, "expand": expand, "cusparse": cusparse})


def nm24_cases():
    for out_features, in_features in ((4096, 4096), (11008, 4096), (1024, 4096)):
        w, mask = masked(out_features, in_features, 0.5, torch.float16, two_four=True)
        packed = nm.pack(w, mask)
        for batch in (1, 4):  # the op's 2:4 kernel batches (ops_cuda.SPARSE_MAX_BATCH)
            x = torch.randn(batch, in_features, device="cuda", dtype=torch.float16)

            def run(pieces, x=x):
                rule = ops_cuda.nm24_pieces_per_row
                ops_cuda.nm24_pieces_per_row = lambda rows, cols, warps: pieces
                try:
                    return torch.ops.sparsekern.nm24_linear(x, *packed, None, in_features, out_features)
                finally:
                    ops_cuda.nm24_pieces_per_row = rule

            chosen = ops_cuda.nm24_pieces_per_row(out_features, in_features,
                                                  ops_cuda._resident_warps(torch.cuda.current_device()))
            report(f"2:4 {out_features}x{in_features} fp16 b{batch} (rule: {chosen} pieces)",
                   {"dense": lambda x=x: F.linear(x, w), "1 piece": lambda: run(1), "2 pieces": lambda: run(2),
                    "4 pieces": lambda: run(4)})


if __name__ == "__main__":
    with torch.no_grad():
        nm24_cases()
        csr_cases()
