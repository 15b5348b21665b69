"""Quick GPU benchmark for scripts/gpu_check.sh: sparsekern's CUDA kernels against cuBLAS,
torch.sparse CSR (cuSPARSE) and torch's 2:4 (to_sparse_semi_structured), fp16.

Ratios, not absolute times: candidates run interleaved within each round (CUDA events around
a loop of calls, so per-call Python launch overhead is included, as a user sees it), several
rounds, medians. "hot": one layer repeated (its weights may sit in L2); "cold": cycling over
enough copies of the layer to overflow L2 twice, closer to a real model.

    python scripts/gpu_bench.py [--out FILE]
"""
import argparse
import statistics
import sys

import torch
import torch.nn.functional as F

import sparsekern  # noqa: F401  (loads the ops and, with a CUDA build, their CUDA kernels)
from sparsekern import ops_cuda
from sparsekern.formats import csr, nm

SHAPES = [(4096, 4096), (11008, 4096)]  # (out_features, in_features)
BATCHES = [1, 16, 512]
ROUNDS = 9
ROUND_SECONDS = 0.004


def magnitude_mask(w, sparsity):
    k = int(sparsity * w.numel())
    threshold = w.abs().flatten().float().kthvalue(k).values
    return w.abs() > threshold.to(w.dtype)


def mask_24(w):
    groups = w.abs().reshape(w.shape[0], -1, 4)
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, groups.topk(2, dim=-1).indices, True)
    return keep.reshape(w.shape)


def layer_candidates(out_features, in_features, dtype):
    """name -> (make_state() -> the per-copy arguments, call(x, state) -> y, reference weight)."""
    w = torch.randn(out_features, in_features, device="cuda", dtype=dtype) / in_features ** 0.5
    w90 = w * magnitude_mask(w, 0.9)
    w24 = w * mask_24(w)
    candidates = {
        "dense F.linear": (lambda: w.clone(), lambda x, s: F.linear(x, s), w),
        "sk csr 90%": (lambda: tuple(csr.pack(w90)),
                       lambda x, s: ops_cuda.csr_linear_cuda(x, *s, None, in_features, out_features), w90),
        "torch.sparse csr 90%": (lambda: w90.to_sparse_csr(), lambda x, s: torch.sparse.mm(s, x.t()).t(), w90),
        "sk 2:4": (lambda: tuple(nm.pack(w24)),
                   lambda x, s: ops_cuda.nm24_linear_cuda(x, *s, None, in_features, out_features), w24),
    }
    try:
        from torch.sparse import to_sparse_semi_structured
        to_sparse_semi_structured(w24)  # refuses shapes / devices it cannot take
        candidates["torch 2:4 semi-structured"] = (lambda: to_sparse_semi_structured(w24.clone()),
                                                   lambda x, s: F.linear(x, s), w24)
    except Exception as error:  # reported, not fatal: the rest of the table still matters
        print(f"  to_sparse_semi_structured unavailable: {type(error).__name__}: {error}")
    return candidates


def state_bytes(state):
    tensors = state if isinstance(state, tuple) else (state,)
    total = 0
    for t in tensors:
        if t.layout == torch.sparse_csr:
            total += sum(p.numel() * p.element_size() for p in (t.crow_indices(), t.col_indices(), t.values()))
        elif type(t) is not torch.Tensor:  # a semi-structured tensor: its packed data and metadata
            total += t.packed.numel() * t.packed.element_size() if getattr(t, "packed", None) is not None else 0
            total += t.meta.numel() * t.meta.element_size() if getattr(t, "meta", None) is not None else 0
        else:
            total += t.numel() * t.element_size()
    return total


def time_interleaved(calls):
    """Milliseconds per call, median over rounds, of each zero-argument callable."""
    counts = {}
    for name, fn in calls.items():
        fn()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        counts[name] = max(3, min(300, int(ROUND_SECONDS * 1e3 / max(start.elapsed_time(end), 1e-3))))
    samples = {name: [] for name in calls}
    for _ in range(ROUNDS):
        events = {}
        for name, fn in calls.items():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(counts[name]):
                fn()
            end.record()
            events[name] = (start, end)
        torch.cuda.synchronize()
        for name, (start, end) in events.items():
            samples[name].append(start.elapsed_time(end) / counts[name])
    return {name: statistics.median(s) for name, s in samples.items()}


def cycler(call, states, x):
    position = [0]

    def run():
        position[0] = (position[0] + 1) % len(states)
        return call(x, states[position[0]])
    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="also write the summary to this file")
    args = parser.parse_args()
    dtype = torch.float16
    props = torch.cuda.get_device_properties(0)
    l2 = getattr(props, "L2_cache_size", 50 * 2 ** 20)
    lines = [f"device: {props.name}, L2 {l2 / 2 ** 20:.0f} MiB; torch {torch.__version__}, CUDA {torch.version.cuda}; "
             f"fp16; times in ms per call (median of {ROUNDS} interleaved rounds, CUDA events, launch overhead "
             f"included); x = speedup over dense F.linear in the same run; err = max |y - ref| / max |ref| "
             f"against F.linear on the same masked weight"]
    for out_features, in_features in SHAPES:
        torch.manual_seed(0)
        candidates = layer_candidates(out_features, in_features, dtype)
        for cache in ("hot", "cold"):
            states = {}
            for name, (make, _, _) in candidates.items():
                first = make()
                copies = 1 if cache == "hot" else max(2, -(-2 * l2 // max(state_bytes(first), 1)))
                states[name] = [first] + [make() for _ in range(copies - 1)]
            for batch in BATCHES:
                x = torch.randn(batch, in_features, device="cuda", dtype=dtype)
                errors, calls = {}, {}
                for name, (_, call, weight) in candidates.items():
                    try:
                        y = call(x, states[name][0])
                        ref = F.linear(x.float(), weight.float())
                        errors[name] = ((y.float() - ref).abs().max() / ref.abs().max()).item()
                        calls[name] = cycler(call, states[name], x)
                    except Exception as error:
                        errors[name] = f"failed: {type(error).__name__}: {str(error).splitlines()[0][:120]}"
                times = time_interleaved(calls)
                dense = times["dense F.linear"]
                lines.append(f"\n{out_features}x{in_features} batch {batch} {cache}"
                             + (f" ({len(states['dense F.linear'])} dense copies)" if cache == "cold" else ""))
                for name in candidates:
                    if name in times:
                        lines.append(f"  {name:28s} {times[name]:9.4f} ms  {dense / times[name]:6.2f}x  "
                                     f"err {errors[name]:.1e}")
                    else:
                        lines.append(f"  {name:28s} {errors[name]}")
                print("\n".join(lines[-len(candidates) - 1:]), flush=True)
            del states
            torch.cuda.empty_cache()
    text = "\n".join(lines) + "\n"
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
