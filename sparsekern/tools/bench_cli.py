"""`sparsekern bench`: time chosen layer cases, or read a pytest-benchmark JSON; print speedups
over dense, the break-even sparsity per shape and batch, and optionally plot them (PNG).
--format 2:4 times the 2:4 pattern instead of a sparsity sweep. `sparsekern bench --llm` times
decode and prefill of a Llama-shaped model instead (its own options: `--llm --help`)."""
import argparse
import json
import os
import re
import sys
from collections import defaultdict
from typing import Dict, List, Tuple

import torch

from ..formats import PACKED_FORMATS
from .bench import SHAPES, Case, candidates, shape_dims
from .timing import time_interleaved

# (shape, batch) -> {sparsity: speedup over dense}
Curves = Dict[Tuple[str, int], Dict[float, float]]

DEFAULT_SHAPES = ["bert-up", "llama-qkvo"]
DEFAULT_SPARSITIES = [0.5, 0.7, 0.9, 0.95]
DEFAULT_BATCHES = [1, 64]
PLOT_EXTRA = 'pip install "sparsekern[plot]"'


def _shape(text: str) -> Tuple[int, int]:
    """--shape OUTxIN -> (out_features, in_features)."""
    match = re.fullmatch(r"(\d+)x(\d+)", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"'{text}' is not OUTxIN, two integers such as 768x3072")
    out_features, in_features = int(match[1]), int(match[2])
    if min(out_features, in_features) < 1:
        raise argparse.ArgumentTypeError(f"'{text}': out and in features must be >= 1")
    return out_features, in_features


def _physical_memory() -> int:
    """Bytes of RAM, or 0 where the system does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return 0


def _parse(argv: List[str]) -> argparse.Namespace:
    def listed(values):
        return " ".join(map(str, values))

    p = argparse.ArgumentParser(prog="sparsekern bench", description=__doc__)
    p.add_argument("--llm", action="store_true",
                   help="time decode and prefill of a Llama-shaped model instead (see --llm --help)")
    p.add_argument("--shapes", nargs="+", choices=sorted(SHAPES),
                   help="named layer shapes (out x in): " + ", ".join(f"{k}={o}x{i}" for k, (o, i) in SHAPES.items())
                   + f" (default: {listed(DEFAULT_SHAPES)}, unless --shape is given)")
    p.add_argument("--shape", action="append", type=_shape, default=[], metavar="OUTxIN", dest="custom_shapes",
                   help="a layer shape of your own, out_features x in_features (e.g. 768x768); repeatable")
    p.add_argument("--sparsities", nargs="+", type=float, default=DEFAULT_SPARSITIES, metavar="S",
                   help=f"fractions of zero weights to time, each in [0, 1) (default: {listed(DEFAULT_SPARSITIES)})")
    p.add_argument("--batches", nargs="+", type=int, default=DEFAULT_BATCHES, metavar="B",
                   help=f"batch sizes: rows of x per call (default: {listed(DEFAULT_BATCHES)})")
    p.add_argument("--format", choices=list(PACKED_FORMATS), default="csr",
                   help="packed format; 2:4 times its one pattern, not the sparsities (default: csr)")
    p.add_argument("--values", choices=["fp32", "bf16"], default="fp32", help="dtype of the stored values (default: fp32)")
    p.add_argument("--cache", choices=["hot", "cold"], default="hot",
                   help="hot repeats one layer; cold cycles through copies larger than the L3 cache (default: hot)")
    p.add_argument("--json", metavar="FILE", help="read results of 'pytest benchmarks/ --benchmark-json FILE' instead of timing")
    p.add_argument("--plot", metavar="PNG", help=f"write speedup vs sparsity per batch size (needs matplotlib: {PLOT_EXTRA})")
    args = p.parse_args(argv)
    for s in args.sparsities:
        if not 0 <= s < 1:
            p.error(f"sparsity {s} is outside [0, 1)")
    for b in args.batches:
        if b < 1:
            p.error(f"batch {b} must be >= 1")
    if args.format == "2:4":
        for out_features, in_features in args.custom_shapes:
            if in_features % 4:
                p.error(f"--format 2:4 needs in_features divisible by 4, not {out_features}x{in_features}")
    if args.shapes is None:
        args.shapes = [] if args.custom_shapes else DEFAULT_SHAPES
    # Custom shapes are named as the table and pytest-benchmark JSON files name them: "768x768".
    args.custom_shapes = {f"{o}x{i}": (o, i) for o, i in args.custom_shapes}
    args.shapes = args.shapes + [name for name in args.custom_shapes if name not in args.shapes]
    if not args.json:  # now, not as a torch allocation traceback in the middle of the timing
        memory = _physical_memory()
        for name in args.shapes:
            out_features, in_features = shape_dims(name)
            needed = 4 * (out_features * in_features + max(args.batches) * (in_features + out_features))
            if memory and needed > memory:
                p.error(f"{name} at batch {max(args.batches)}: its float32 weights, input and output alone take "
                        f"{needed / 2**30:,.1f} GiB, more than this machine's {memory / 2**30:,.1f} GiB")
    if args.plot:  # now, not after minutes of timing
        directory = os.path.dirname(args.plot) or "."
        if not os.path.isdir(directory):
            p.error(f"--plot {args.plot}: there is no directory {directory}")
        try:
            import matplotlib  # noqa: F401
            from matplotlib.backends.backend_agg import FigureCanvasAgg  # plot() draws with Agg
            from matplotlib.figure import Figure
        except ImportError:
            p.error(f"--plot needs matplotlib: {PLOT_EXTRA}")
        kinds = FigureCanvasAgg(Figure()).get_supported_filetypes()
        suffix = os.path.splitext(args.plot)[1].lstrip(".").lower()
        if suffix not in kinds:
            p.error(f"--plot {args.plot}: the file name must end in one of " + ", ".join(f".{k}" for k in sorted(kinds)))
    return args


def measure(args) -> Curves:
    from tqdm.auto import tqdm

    sparsities = [0.5] if args.format == "2:4" else args.sparsities
    cases = [Case(shape, s, b, args.values, args.cache, args.format)
             for shape in args.shapes for b in args.batches for s in sparsities]
    curves: Curves = defaultdict(dict)
    for case in tqdm(cases, desc="bench", unit="case"):
        calls = candidates(case, with_scipy=False).calls
        with torch.no_grad():
            times = time_interleaved({k: calls[k] for k in ("dense", "sparsekern")}, rounds=5, round_seconds=0.02)
        curves[(case.shape, case.batch)][case.sparsity] = times["dense"] / times["sparsekern"]
    return curves


def read_json(args) -> Curves:
    """The layer results of a `pytest benchmarks/ --benchmark-json` file that match the
    chosen format, values dtype and cache mode. A file it cannot open raises OSError; one
    that is not such a JSON file, ValueError."""
    with open(args.json, "rb") as f:
        try:
            data = json.load(f)
        except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
            raise ValueError(f"{args.json}: not a JSON file: {e}") from e
    curves: Curves = defaultdict(dict)
    names = {v: k for k, v in SHAPES.items()}
    wanted = {"format": args.format, "values": args.values, "cache": args.cache}
    try:
        for bench in data.get("benchmarks", []):
            info = bench.get("extra_info", {})
            if "speedup" not in info or "dense" not in info["speedup"]:
                continue
            if any(info.get(key) != value for key, value in wanted.items()):
                continue
            shape = names.get(tuple(info["shape"]), "x".join(map(str, info["shape"])))
            curves[(shape, int(info["batch"]))][float(info["sparsity"])] = float(info["speedup"]["dense"])
    except (AttributeError, KeyError, TypeError, ValueError) as e:  # JSON, but not pytest-benchmark's layout
        raise ValueError(f"{args.json}: not a pytest-benchmark JSON file ({type(e).__name__}: {e})") from e
    if not curves:
        raise ValueError(f"{args.json}: no layer results for {wanted} (was it written by pytest benchmarks/?)")
    return curves


def break_even(points: Dict[float, float]) -> str:
    """The lowest sparsity from which sparsekern beats dense, linearly interpolated between
    the measured sparsities ("<= s" when it already wins at the lowest one measured)."""
    items = sorted(points.items())
    if not items or items[-1][1] < 1:
        return "not reached"
    if items[0][1] >= 1:
        return f"<= {items[0][0]:.0%}"
    for (s0, r0), (s1, r1) in zip(items, items[1:]):
        if r0 < 1 <= r1:
            return f"{s0 + (1 - r0) * (s1 - s0) / (r1 - r0):.0%}"
    return "not reached"


def report(curves: Curves, format: str) -> str:
    sparsities = sorted({s for pts in curves.values() for s in pts})
    sweep = format != "2:4"  # 2:4 is one pattern, not a sweep: no break-even to find
    labels = [f"{s:.0%}" for s in sparsities] if sweep else ["2:4"]
    header = ["shape", "batch"] + labels + (["break-even"] if sweep else [])
    rows = [header]
    for (shape, batch), pts in sorted(curves.items()):
        rows.append([shape, str(batch)] + [f"{pts[s]:.2f}x" if s in pts else "" for s in sparsities]
                    + ([break_even(pts)] if sweep else []))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows)


def speedup_axis(ax) -> None:
    """Makes the y axis (once the curves are drawn) a log-scale speedup axis labelled as speedups:
    0.5x, 1x, 2x, 5x, 10x, ... The default log labels read 10^0, and over less than a decade
    matplotlib labels minor ticks as 6x10^-1."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_yscale("log")
    bottom, top = ax.get_ylim()  # at least 0.4x to 2.5x: the 0.5x, 1x and 2x ticks frame break-even
    ax.set_ylim(min(bottom, 0.4), max(top, 2.5))
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}x"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def plot(curves: Curves, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = sorted({shape for shape, _ in curves})
    fig, axes = plt.subplots(1, len(shapes), figsize=(5 * len(shapes), 4), squeeze=False)
    for ax, shape in zip(axes[0], shapes):
        for (s, batch), pts in sorted(curves.items()):
            if s == shape:
                xs = sorted(pts)
                ax.plot([x * 100 for x in xs], [pts[x] for x in xs], marker="o", label=f"batch {batch}")
        ax.axhline(1.0, color="gray", linestyle="--", linewidth=1)
        # Named shapes get their sizes in the title; others are named by them ("768x768").
        title = f"{shape} ({SHAPES[shape][0]}x{SHAPES[shape][1]})" if shape in SHAPES else shape
        ax.set(title=title, xlabel="sparsity (%)", ylabel="speedup over dense F.linear")
        speedup_axis(ax)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: List[str]) -> int:
    if "--llm" in argv:
        from . import llm_bench
        return llm_bench.main(argv)
    args = _parse(argv)
    if args.json:
        try:  # one line and exit status 1, as `sparsekern inspect` reports a bad file
            curves = read_json(args)
        except (OSError, ValueError) as e:
            print(f"sparsekern bench: {e}", file=sys.stderr)
            return 1
    else:
        curves = measure(args)
    source = f"from {args.json}, " if args.json else ""
    print(f"speedup of sparsekern over dense F.linear ({source}{args.format}, {args.cache} cache, {args.values} values)")
    print(report(curves, args.format))
    if args.plot:
        plot(curves, args.plot)
        print(f"plot written to {args.plot}")
    return 0
