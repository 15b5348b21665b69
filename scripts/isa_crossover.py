"""Where one CPU kernel variant starts to beat another: for each format and batch, the two
variants' speed ratio, paired round by round on one layer (the timing of
sparsekern.tools.timing), beside each variant's error against a float64 reference. Made for
the switch points the planner hard-codes: each family's kAmxFrom (where the amx variant's
tiles take over; planner.AMX_FROM), measured with this script on an Intel CPU with AMX:

    python scripts/isa_crossover.py                            # amx against avx512bf16 where the CPU has AMX
    python scripts/isa_crossover.py --isas avx512bf16 avx512   # anywhere: native bf16 against widened
    python scripts/isa_crossover.py --formats bitmap --sparsities 0.5 0.7 --batches 16 32 64

bf16 activations and values throughout (the only calls where amx differs). "first faster"
names the smallest batch from which the first variant won by 5% or more at every larger batch
listed; the planner's own pick per batch is beside it.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's sparsekern, not an installed one

import argparse
import statistics
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F

import sparsekern as sk
from sparsekern import _backend, ops, planner
from sparsekern.sparse_linear import SparseLinear
from sparsekern.tools.bench import pruned_linear, shape_dims
from sparsekern.tools.timing import paired_ratios

MARGIN = 1.05  # "faster" in the summary line: by this factor or more


def default_isas() -> List[str]:
    return ["amx", "avx512bf16"] if "amx" in sk.supported_cpu_isas() else ["avx512bf16", "avx512"]


def layer_for(shape: str, format: str, sparsity: float) -> SparseLinear:
    linear = pruned_linear(shape, sparsity, "2:4" if format == "2:4" else "csr")
    return SparseLinear.from_dense(linear.to(torch.bfloat16), format=format, value_dtype=torch.bfloat16)


def run_with(layer: SparseLinear, isa: str):
    handle = layer._kernel_handle()  # the layer's own kernel object: it keeps its derived layouts
    return lambda x: ops.run_kernel(layer.format, handle.kernel, x, handle.bias, layer.in_features,
                                    layer.out_features, isa)


def max_error(y: torch.Tensor, reference: torch.Tensor) -> float:
    """Largest |y - reference| over the reference's largest magnitude."""
    return float((y.double() - reference).abs().max() / reference.abs().max().clamp_min(1e-30))


def first_faster(ratios: Dict[int, float]) -> Optional[int]:
    batches = sorted(ratios)
    for i, b in enumerate(batches):
        if all(ratios[c] >= MARGIN for c in batches[i:]):
            return b
    return None


def crossover(shape: str, format: str, sparsity: float, batches: List[int], isas: List[str], rounds: int) -> str:
    layer = layer_for(shape, format, sparsity)
    weight = layer.to_dense().weight.detach().double()
    bias = layer.bias.detach().double()
    first, second = (run_with(layer, isa) for isa in isas)
    torch.manual_seed(1)
    inputs = {batch: torch.randn(batch, layer.in_features, dtype=torch.bfloat16) for batch in batches}
    # Every call once before any is timed, so that none pays a first call's costs (a derived
    # layout built, the workspace grown).
    for x in inputs.values():
        first(x), second(x)
    lines, ratios = [], {}
    for batch, x in inputs.items():
        reference = F.linear(x.double(), weight, bias)
        errors = [max_error(run(x), reference) for run in (first, second)]
        ratios[batch] = statistics.median(paired_ratios(lambda: second(x), lambda: first(x), rounds=rounds))
        chosen = _backend.CPU_ISAS[planner.kernel_isa(format, batch, torch.bfloat16)]
        lines.append(f"  {batch:>5}  {ratios[batch]:>6.2f}x  {errors[0]:>9.2e}  {errors[1]:>9.2e}  {chosen}")
    out_features, in_features = shape_dims(shape)
    pattern = "2:4" if format == "2:4" else f"{format} {sparsity:.0%}"
    start = first_faster(ratios)
    header = (f"{out_features} x {in_features}, {pattern}: {isas[0]} over {isas[1]}, first faster (by "
              f"{MARGIN:.2f}x from there on): {'never' if start is None else f'batch {start}'}")
    columns = f"  {'batch':>5}  {'speed':>7}  {isas[0][:9]:>9}  {isas[1][:9]:>9}  planner's pick"
    return "\n".join([header, columns, *lines])


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--isas", nargs=2, metavar=("FIRST", "SECOND"), help="variants to compare (default: amx "
                   "avx512bf16 where the CPU has AMX, else avx512bf16 avx512)")
    p.add_argument("--formats", nargs="+", default=["2:4", "bitmap"], choices=["2:4", "bitmap", "csr"])
    p.add_argument("--sparsities", nargs="+", type=float, default=[0.5, 0.7], help="for bitmap and csr")
    p.add_argument("--shapes", nargs="+", default=["4096x4096", "11008x4096"], metavar="OUTxIN")
    p.add_argument("--batches", nargs="+", type=int, default=[8, 16, 24, 32, 48, 64, 128, 256])
    p.add_argument("--rounds", type=int, default=9, help="paired rounds per batch (default 9)")
    args = p.parse_args(argv)
    for shape in args.shapes:
        try:
            if min(shape_dims(shape)) < 1:
                raise ValueError
        except ValueError:
            p.error(f"shape {shape!r}: expected OUTxIN with positive sizes, such as 4096x4096")
    if min(args.batches) < 1 or args.rounds < 1:
        p.error("batches and rounds must be >= 1")
    if not all(0 <= s < 1 for s in args.sparsities):
        p.error("sparsities must lie in [0, 1)")
    isas = args.isas or default_isas()
    missing = [isa for isa in isas if isa not in sk.supported_cpu_isas()]
    if missing:
        print(f"this CPU cannot run {', '.join(missing)} (it runs {', '.join(sk.supported_cpu_isas())})")
        return 2
    features = ", ".join(name for name, has in _backend.cpu_features().items() if has)
    print(f"{planner.cpu_model()} ({features}), {torch.get_num_threads()} threads; speed: how many times faster "
          f"{isas[0]} ran than {isas[1]} (median of {args.rounds} paired rounds); errors: max |y - float64| / max |y|")
    for shape in args.shapes:
        for format in args.formats:
            for sparsity in ([0.5] if format == "2:4" else args.sparsities):
                print(crossover(shape, format, sparsity, sorted(args.batches), isas, args.rounds), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
