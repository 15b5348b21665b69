"""Every choice sparsekern makes about how to run a layer, in one place.

- Which kernel variant (ISA) runs a call: `kernel_isa(format, batch, act_dtype)`, per format,
  batch bucket and activation dtype, so a variant that pays only for batched inputs (AMX) can
  be chosen for those alone. Every case takes the most capable ISA this CPU runs (capped by
  SPARSEKERN_CPU_ISA), except that amx is named only where it multiplies on tiles (AMX_FROM)
  and avx512bf16 only where it has native bf16 code (NATIVE_BF16_FROM); elsewhere the call is
  the next ISA down's, whose code it runs.
- Which format a layer is stored in, for sparsify(format="auto"): `choose_format` times
  every format that can hold the layer's mask against dense F.linear, in the layer's dtype,
  at the batch sizes asked for, each candidate paired with dense alone.
- Which cache tiles a packed CPU layer's batched calls use: `choose_tiles` (pack-time
  autotuning, off with SPARSEKERN_TUNE=0), paired against this CPU's derived tiles.

Choices are cached, keyed by everything they depend on; format and tile choices also on disk.
"""
import hashlib
import json
import numbers
import os
import platform
import statistics
import time
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from . import _backend
from ._env import env_flag
from .tools import timing
from .formats import PACKED_FORMATS

DEFAULT_BATCH_SIZES = (1, 64)
# A packed format must beat dense by this margin over the batch sizes asked for taken together
# (geometric mean of its ratios), so that timing noise cannot pick a format that is really
# slower, and must not lose at any one of them (NO_LOSS_FLOOR). A margin at every batch size
# instead kept 70% bf16 layers dense that measured 1.10x at batch 1 and 1.75x at batch 64
# (CSR, 768 x 3072, Zen 4): one format per layer, and each format's margin is thin at one end.
WIN_MARGIN = 1.1
NO_LOSS_FLOOR = 1.0
# Part of every cached format choice's key: a change of the rule above measures again.
CHOICE_RULE = "geomean 1.1, floor 1.0"
# Below this sparsity layers stay dense without being timed: CSR moves more bytes than dense
# (6 B per nonzero against 4) and bitmap saves under a third of them, which has not been seen
# to pay batched (at 30%, bitmap measured 1.6x at batch 1 but 0.97x at batch 64 on Zen 5).
MIN_SPARSITY = 0.3


def check_batch_sizes(batch_sizes) -> Tuple[int, ...]:
    """`batch_sizes` as a tuple of positive ints (what sparsify, from_dense and tune time);
    a TypeError or ValueError naming the problem otherwise."""
    if isinstance(batch_sizes, (int, str)) or not isinstance(batch_sizes, Sequence):
        raise TypeError(f"batch_sizes = {batch_sizes!r}: expected a sequence of batch sizes, e.g. (1, 64)")
    if not batch_sizes or not all(isinstance(b, numbers.Integral) and not isinstance(b, bool) and b >= 1
                                  for b in batch_sizes):
        raise ValueError(f"batch_sizes = {batch_sizes!r}: expected one or more positive integers, e.g. (1, 64)")
    return tuple(int(b) for b in batch_sizes)  # NumPy integers too, as plain ints for the cache key


def batch_bucket(batch: int) -> int:
    """The batch sizes a choice is made for: 1, 2-4, 5-16, 17-64, 65-256, then powers of 4."""
    bucket = 1
    while bucket < batch:
        bucket *= 4
    return bucket


# Where avx512bf16's native bf16 kernels run: formats with bf16 activations (and bf16
# values), from this batch size on (the C++ families' kBf16From). 2:4 reads bf16 x with
# vdpbf16ps at every batch (its small-batch and rows-in-lanes paths), and so does bitmap (its
# grouped and tiled paths); CSR from batch 2 (its batched path, measured above avx512's widened
# one from there).
NATIVE_BF16_FROM = {"2:4": 1, "csr": 2, "bitmap": 1}


# Where the amx variant multiplies on tiles: 2:4 and bitmap with bf16 activations (and bf16
# values) from this batch size (each family's kAmxFrom, nm24_linear.h / bitmap_linear.h), as
# measured by scripts/isa_crossover.py on an Intel Xeon with AMX (family 6, model 207, 2
# threads, 4096 x 4096): amx over avx512bf16 for 2:4 0.54x at batch 32, 0.87x at 64, 1.35x at
# 128; for bitmap 50% 1.00x at 16, 2.08x at 32.
AMX_FROM = {"2:4": 128, "bitmap": 32}


def _tiles(format: str, bucket: int, act_dtype: torch.dtype) -> bool:
    return act_dtype == torch.bfloat16 and format in AMX_FROM and bucket >= AMX_FROM[format]


def _native_bf16(format: str, bucket: int, act_dtype: torch.dtype) -> bool:
    # A bucket is the largest batch it holds (batch_bucket), so bucket >= from means some
    # batch of it, and every larger bucket, reaches the native code.
    return act_dtype == torch.bfloat16 and format in NATIVE_BF16_FROM and bucket >= NATIVE_BF16_FROM[format]


@lru_cache(maxsize=None)
def _isa_for(format: str, bucket: int, act_dtype: torch.dtype) -> int:
    isa = _backend.cpu_isa()
    if isa == "amx" and not _tiles(format, bucket, act_dtype):
        isa = "avx512bf16"  # the code amx runs there anyway: say so
    if isa == "avx512bf16" and not _native_bf16(format, bucket, act_dtype):
        isa = "avx512"  # the code avx512bf16 runs there anyway: say so
    return _backend.isa_index(isa)


@lru_cache(maxsize=4096)
def kernel_isa(format: str, batch: int, act_dtype: torch.dtype) -> int:
    """The number of the ISA variant that runs a call of this format, batch size and
    activation dtype (cached per batch size: it is on every call's path)."""
    return _isa_for(format, batch_bucket(batch), act_dtype)


def forced_isa(name: str) -> int:
    """The number of a named ISA variant that this CPU runs (tests force each one)."""
    number = _backend.isa_index(name)
    if name not in _backend.supported_cpu_isas():
        raise RuntimeError(f"this CPU cannot run the {name} kernels")
    return number


# ---- format choice -----------------------------------------------------------------------------

# A measured ratio whose rounds spread wider than this (interquartile range over median), or
# that lies outside plausible_range, is measured again, up to MAX_REMEASURES more times.
MAX_SPREAD = 0.25
MAX_REMEASURES = 2
# Slack around what bytes and arithmetic explain (cache effects alone give up to about 2x):
# beyond it, another process must have hit one side of the pair.
CEILING_SLACK = 3.0
CACHE_ENV = "SPARSEKERN_CACHE_DIR"

_format_cache: Dict[str, Tuple[str, str]] = {}
_disk_loaded = False


def cache_path() -> Path:
    """Where format choices persist between processes: $SPARSEKERN_CACHE_DIR, else
    $XDG_CACHE_HOME/sparsekern, else ~/.cache/sparsekern (one JSON file)."""
    root = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "sparsekern")
    return Path(root) / "format_choices.json"


def _read_json_cache(path: Path) -> dict:
    """A choice file's entries ({} when there is none yet, or a damaged one: measure again)."""
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return stored if isinstance(stored, dict) else {}


def _write_json_cache(path: Path, key: str, value) -> None:
    """Adds one choice to a choice file (re-read first: another process may have added others)."""
    stored = _read_json_cache(path)
    stored[key] = value
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(stored, indent=0, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: the in-process cache still holds the choice


def _load_disk_cache() -> None:
    global _disk_loaded
    if _disk_loaded:
        return
    _disk_loaded = True
    _format_cache.update({k: tuple(v) for k, v in _read_json_cache(cache_path()).items()
                          if isinstance(v, list) and len(v) == 2 and all(isinstance(p, str) for p in v)})


def _save_disk_cache(key: str) -> None:
    _write_json_cache(cache_path(), key, list(_format_cache[key]))


@lru_cache(maxsize=1)
def cpu_model() -> str:
    """This CPU as describe_cpu() names it from /proc/cpuinfo: part of every cached choice's
    key, and the name benchmark reports print."""
    try:
        with open("/proc/cpuinfo") as f:
            cpuinfo = f.read()
    except OSError:
        cpuinfo = ""
    return describe_cpu(cpuinfo) or platform.processor() or platform.machine()


def describe_cpu(cpuinfo: str) -> str:
    """The first CPU's name in /proc/cpuinfo's text with its CPUID family and model ("AMD EPYC
    (family 25, model 17)"); "" without a name. A bare name can hide the generation: Zen 4 and
    Zen 5 virtual machines both call themselves "AMD EPYC", and the kernels' choices differ."""
    fields = {}
    for line in cpuinfo.splitlines():
        if not line.strip():  # the first CPU's block ends here
            break
        name, _, value = line.partition(":")
        fields[name.strip()] = value.strip()
    name = fields.get("model name", "")
    if name and "cpu family" in fields and "model" in fields:
        return f"{name} (family {fields['cpu family']}, model {fields['model']})"
    return name


@lru_cache(maxsize=1)
def kernels_build() -> str:
    """An identity of the compiled kernels (a digest of the extension module's file), part of
    every cached choice's key: a rebuilt or upgraded sparsekern measures again instead of
    trusting choices its previous kernels earned."""
    try:
        return hashlib.sha256(Path(_backend._C.__file__).read_bytes()).hexdigest()[:16]
    except (OSError, AttributeError, TypeError):
        return "unknown"


@lru_cache(maxsize=1)
def cache_sizes() -> Dict[str, int]:
    """Bytes of this CPU's data caches per level ('L1d', 'L2' per core, 'L3' as cpu0's share;
    0 where neither /sys/devices/system/cpu/cpu0/cache nor CPUID says), as the kernels read
    them (csrc/kernels/cpu/tile_params.h): kernel and benchmark parameters follow the machine,
    not the CPU they were tuned on."""
    return dict(_backend._C.cpu_caches())


def choose_format(weight: torch.Tensor, mask: torch.Tensor, has_bias: bool, value_dtype: Optional[torch.dtype],
                  batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES) -> Tuple[str, str]:
    """(format, why): the packed format that measured fastest against dense over the batch
    sizes in `batch_sizes` (pick_format), on this machine, with this layer's shape, sparsity
    and dtypes; else 'dense'. Only formats that can hold the mask are candidates. Choices
    persist on disk (cache_path()), keyed by the machine (CPU name, family and model, ISA,
    threads, or GPU), the kernels' build (kernels_build()), shape, sparsity, dtypes, batch
    sizes, candidates and CHOICE_RULE, so the same layer gets the same choice on the same
    machine with the same kernels."""
    batch_sizes = check_batch_sizes(batch_sizes)
    out_features, in_features = weight.shape
    if weight.numel() == 0:
        return "dense", "no weights"
    nnz = int(mask.sum())
    sparsity = 1 - nnz / weight.numel()
    device = weight.device
    if device.type == "cpu":
        formats, machine = tuple(PACKED_FORMATS), (cpu_model(), _backend.cpu_isa(), torch.get_num_threads(),
                                                   kernels_build())
    elif device.type == "cuda" and _backend._C.with_cuda:
        from . import ops_cuda
        formats, machine = ops_cuda.CUDA_FORMATS, (torch.cuda.get_device_name(device), kernels_build())
    else:
        return "dense", f"no sparse kernels for {device.type}"
    candidates = tuple(name for name in formats if PACKED_FORMATS[name].incompatible(mask) is None)
    if sparsity < MIN_SPARSITY:
        return "dense", f"sparsity {sparsity:.0%} < {MIN_SPARSITY:.0%}"
    key = json.dumps([out_features, in_features, round(sparsity, 2), str(weight.dtype), str(value_dtype), has_bias,
                      candidates, batch_sizes, device.type, machine, CHOICE_RULE])
    _load_disk_cache()
    if key in _format_cache and _format_cache[key][0] not in (*candidates, "dense"):
        del _format_cache[key]  # a cache file edited or damaged by hand: measure again
    if key not in _format_cache:
        format, why, clean = _measure_choice(weight, mask, has_bias, value_dtype, candidates, batch_sizes)
        _format_cache[key] = (format, why)
        if clean:
            _save_disk_cache(key)
    return _format_cache[key]


def robust_ratio(measure, plausible: Tuple[float, float]) -> Tuple[float, bool]:
    """(ratio, clean): the median of `measure()`'s per-round ratios from the first measurement
    whose rounds agree (spread at most MAX_SPREAD) and whose median lies in the `plausible`
    (low, high) range; up to MAX_REMEASURES more measurements are taken. Failing that
    (clean = False): the median of the plausible measurements' medians, or the lowest median
    if none was plausible, which leans towards keeping a layer dense."""
    low, high = plausible
    medians = []
    for _ in range(1 + MAX_REMEASURES):
        samples = measure()
        median = statistics.median(samples)
        q1, _, q3 = statistics.quantiles(samples, n=4) if len(samples) > 1 else (median,) * 3
        if low <= median <= high and (q3 - q1) <= MAX_SPREAD * median:
            return median, True
        medians.append(median)
    inside = [m for m in medians if low <= m <= high]
    return (statistics.median(inside) if inside else min(medians)), False


def plausible_range(weight: torch.Tensor, tensors, nnz: int) -> Tuple[float, float]:
    """The ratios a format can honestly measure against dense: at most CEILING_SLACK x its
    best case (its bytes against dense, or its arithmetic), at least 1 / CEILING_SLACK x its
    bytes' worst case (a kernel that moves no more bytes than dense is not many times slower;
    small layers, bound by per-call overhead, sit inside this range)."""
    dense_bytes = weight.numel() * weight.element_size()
    packed_bytes = max(1, sum(t.numel() * t.element_size() for t in tensors))
    high = CEILING_SLACK * max(dense_bytes / packed_bytes, weight.numel() / max(nnz, 1))
    low = 1 / (CEILING_SLACK * max(packed_bytes / dense_bytes, 1.0))
    return low, high


def _measure_choice(weight, mask, has_bias, value_dtype, candidates, batch_sizes) -> Tuple[str, str, bool]:
    """(format, why, clean): clean when every ratio came from a steady, plausible measurement;
    only clean choices are saved to disk, so one disturbed run cannot fix a choice for good."""
    from . import ops

    out_features, in_features = weight.shape
    device = weight.device
    dense_weight = (weight * mask).contiguous()
    bias = torch.zeros(out_features, dtype=weight.dtype, device=device) if has_bias else None
    packed = {name: PACKED_FORMATS[name].pack(weight, mask, value_dtype) for name in candidates}
    nnz = int(mask.sum())
    ratios: Dict[str, List[float]] = {name: [] for name in candidates}
    clean = True
    if device.type == "cuda":
        from .ops_cuda import paired_ratios as ratios_of
        run = lambda name, x, tensors: ops.linear_op(name)(x, *tensors, bias, in_features, out_features)  # noqa: E731
    else:
        ratios_of = timing.paired_ratios
        run = lambda name, x, tensors: ops.linear_eager(name, x, tensors, bias, in_features, out_features)  # noqa: E731
    with torch.no_grad():
        for batch in batch_sizes:
            x = torch.randn(batch, in_features, dtype=weight.dtype, device=device)
            for name in candidates:
                tensors = packed[name]
                ratio, steady = robust_ratio(
                    lambda: ratios_of(lambda: F.linear(x, dense_weight, bias), lambda: run(name, x, tensors)),
                    plausible_range(weight, tensors, nnz))
                ratios[name].append(ratio)
                clean = clean and steady
    ranked = sorted(candidates, key=lambda name: _geomean(ratios[name]), reverse=True)
    notes = "; ".join(f"{name} measured " + ", ".join(f"{r:.2f}x at batch {b}"
                                                      for r, b in zip(ratios[name], batch_sizes))
                      for name in ranked)
    if not clean:
        # Not only load from other processes: a layer small enough that a call's fixed cost
        # decides lands below plausible_range's floor on a quiet machine too (0.31x seen at
        # 256 x 64 in fp32), so the note names what was seen, not a cause.
        notes += " (timings unsteady or out of the plausible range: not saved)"
    winner = pick_format(ratios)
    if winner:
        return winner, notes, clean
    return "dense", f"kept dense: {notes}" if notes else "kept dense: no packed format holds this mask", clean


def _geomean(ratios: Sequence[float]) -> float:
    return statistics.geometric_mean(ratios)


def pick_format(ratios: Dict[str, List[float]]) -> Optional[str]:
    """The format to store a layer in, given each candidate's measured speed against dense at
    each batch size asked for; None to keep it dense. A candidate qualifies when its geometric
    mean is at least WIN_MARGIN and no ratio is below NO_LOSS_FLOOR; the qualifying one with
    the highest geometric mean wins."""
    qualified = [name for name, r in ratios.items()
                 if r and _geomean(r) >= WIN_MARGIN and min(r) >= NO_LOSS_FLOOR]
    return max(qualified, key=lambda name: _geomean(ratios[name]), default=None)


# ---- tile choice (pack-time autotuning) -------------------------------------------------------
#
# The kernels' cache tiles come from this CPU's cache sizes (csrc/kernels/cpu/tile_params.h),
# with fractions measured on one CPU. Where a layer's batched calls read tiles, `choose_tiles`
# times a few alternatives against those defaults, each paired with the default kernel alone
# (timing.paired_ratios), and keeps one only if it won every round by TUNE_MARGIN at every
# tuned batch size and a second measurement agrees: a tie keeps the defaults. Choices persist
# on disk beside the format choices, keyed by CPU name, family and model, ISA, threads, the
# kernels' build, format, shape, sparsity, value dtype and batch buckets. SPARSEKERN_TUNE=0
# turns tuning off (the derived defaults, deterministic); the test suites set it.

TUNE_ENV = "SPARSEKERN_TUNE"
TUNE_MARGIN = 1.05
TUNE_ROUNDS = 5
MIN_TUNE_ROUNDS = 3
TUNE_ROUND_SECONDS = 0.002
# Seconds of timing a layer may take; choices are cached per shape, sparsity and batch bucket,
# so a model pays it once per distinct layer (a transformer has a handful). A layer whose calls
# are too slow for MIN_TUNE_ROUNDS rounds of every candidate within it keeps the default tiles,
# and its note says so.
TUNE_BUDGET_S = 1.0
# The batch from which each format's kernels read tiles (their batched paths): smaller batches
# are not tuned.
TILED_FROM = {"csr": 2, "2:4": 4, "bitmap": 8}

_tile_cache: Dict[str, Tuple[Optional[Dict[str, int]], str]] = {}
_tile_disk_loaded = False


def tuning_enabled() -> bool:
    """Whether sparsify / from_dense time tile alternatives (SPARSEKERN_TUNE, default on)."""
    return env_flag(TUNE_ENV)


def tile_cache_path() -> Path:
    """Where tile choices persist: tile_choices.json beside cache_path()'s format choices."""
    return cache_path().with_name("tile_choices.json")


def tile_candidates(format: str, default: Dict[str, int]) -> Dict[str, Dict[str, int]]:
    """Named alternatives to the default tiles that could win for this format: the 2:4 block
    halved or doubled in rows and columns (L2 share) and 2:4's register path for batches 4-8
    (a variant: it won up to 1.4x on large layers and lost up to 3x on a 3072 x 768 one on Zen
    5, so it is a per-layer choice); the bitmap decode list halved or doubled (L1 share; bitmap's
    native bf16 paths read no tiles).
    CSR's only tile (the pack column block) has not been seen to matter."""
    def with_(**changes):
        return {**default, **changes}
    if format == "2:4":
        rows, cols = default["nm24_block_rows"], default["nm24_block_cols"]
        return {"2:4 rows x2": with_(nm24_block_rows=2 * rows),
                "2:4 rows /2": with_(nm24_block_rows=max(6, rows // 2 // 6 * 6)),
                "2:4 cols /2": with_(nm24_block_cols=cols // 2, nm24_block_rows=2 * rows),
                "2:4 registers to batch 8": with_(nm24_register_batch_max=8)}
    if format == "bitmap":
        decode = default["bitmap_decode_cols"]
        return {"decode x2": with_(bitmap_decode_cols=2 * decode),
                "decode /2": with_(bitmap_decode_cols=max(32, decode // 2))}
    return {}


def _reads_tiles(format: str, batch: int, act_dtype: torch.dtype, value_dtype: torch.dtype) -> bool:
    """Whether a call reads the cache tiles at all: the native bf16 kernels (bf16 activations
    and values, where kernel_isa names avx512bf16 or amx) read none, so a bf16 model's layers
    have nothing to tune there."""
    native = _backend.CPU_ISAS[kernel_isa(format, batch, act_dtype)] in ("avx512bf16", "amx")
    return not (native and value_dtype == torch.bfloat16)


def _tiles_matter(format: str, default: Dict[str, int], tiles: Dict[str, int], batch: int) -> bool:
    """Whether a call at `batch` runs differently with `tiles` than with `default`: the 2:4
    register path serves batches up to nm24_register_batch_max, the blocks the rest."""
    if format == "2:4":
        registers = (batch <= tiles["nm24_register_batch_max"], batch <= default["nm24_register_batch_max"])
        if registers[0] != registers[1]:
            return True
        if registers[0]:
            return False
    changed = {name for name in tiles if tiles[name] != default.get(name)} - {"nm24_register_batch_max"}
    return bool(changed) and batch >= TILED_FROM.get(format, 1 << 62)


def _tiles_object(tiles: Dict[str, int]):
    t = _backend._C.TileParams()
    for name, value in tiles.items():
        setattr(t, name, int(value))
    return t


def apply_tiles(kernel, tiles: Optional[Dict[str, int]]) -> None:
    """Gives a compiled kernel object a tuned tile choice (None: keep this CPU's defaults)."""
    if tiles:
        kernel.tiles = _tiles_object(tiles)


def _load_tile_disk_cache() -> None:
    global _tile_disk_loaded
    if _tile_disk_loaded:
        return
    _tile_disk_loaded = True
    for key, value in _read_json_cache(tile_cache_path()).items():
        if isinstance(value, list) and len(value) == 2 and isinstance(value[1], str) and \
                (value[0] is None or isinstance(value[0], dict)):
            _tile_cache[key] = (value[0], value[1])


def _save_tile_choice(key: str) -> None:
    _write_json_cache(tile_cache_path(), key, list(_tile_cache[key]))


def choose_tiles(format: str, tensors, in_features: int, out_features: int, sparsity: float,
                 batch_sizes: Sequence[int], act_dtype: torch.dtype = torch.float32
                 ) -> Tuple[Optional[Dict[str, int]], str]:
    """(tiles or None for this CPU's defaults, note) for a packed CPU layer, as described above,
    timed with activations of `act_dtype` (the model's). `tensors`: the format's packed,
    contiguous CPU tensors with kernel dtypes."""
    from .formats import PACKED_FORMATS as formats

    default = _backend._C.tile_params().as_dict()
    candidates = tile_candidates(format, default)
    # One batch size per bucket (the first asked for): the choice is cached per bucket.
    tiled = sorted({batch_bucket(b): b for b in sorted(batch_sizes, reverse=True)
                    if b >= TILED_FROM.get(format, 1 << 62)
                    and _reads_tiles(format, b, act_dtype, tensors.values.dtype)}.values())
    candidates = {name: tiles for name, tiles in candidates.items()
                  if any(_tiles_matter(format, default, tiles, b) for b in tiled)}
    if not candidates or not tiled:
        return None, ""
    key = json.dumps([cpu_model(), _backend.cpu_isa(), torch.get_num_threads(), kernels_build(), format,
                      out_features, in_features, round(sparsity, 2), str(tensors.values.dtype), str(act_dtype),
                      [batch_bucket(b) for b in tiled], default])
    _load_tile_disk_cache()
    if key in _tile_cache and _tile_cache[key][0] not in (None, *candidates.values()):
        del _tile_cache[key]  # a cache file edited or damaged by hand: measure again
    if key not in _tile_cache:
        fmt = formats[format]
        kernels = {name: fmt.kernel(tensors, in_features, out_features) for name in ("default", *candidates)}
        for name, tiles in candidates.items():
            apply_tiles(kernels[name], tiles)
        winner, note = _measure_tiles(format, kernels, candidates, in_features, out_features, tiled, act_dtype)
        _tile_cache[key] = (candidates[winner] if winner else None, note)
        _save_tile_choice(key)
    return _tile_cache[key]


def _tile_ratios(format, kernels, name, in_features, out_features, batch, rounds, act_dtype) -> List[float]:
    """Per-round ratios (default time / candidate time) at one batch size, paired."""
    from .ops import run_kernel
    x = torch.randn(batch, in_features, dtype=act_dtype)
    return timing.paired_ratios(
        lambda: run_kernel(format, kernels["default"], x, None, in_features, out_features),
        lambda: run_kernel(format, kernels[name], x, None, in_features, out_features),
        rounds=rounds, round_seconds=TUNE_ROUND_SECONDS)


def _affordable_rounds(format, kernel, in_features, out_features, batches, candidates: int,
                       act_dtype) -> Tuple[int, float]:
    """(rounds, seconds of the slowest call): the rounds (at most TUNE_ROUNDS) that every
    candidate and the recheck fit in TUNE_BUDGET_S, each round timing at least one call of
    each side of a pair, plus two warm-up calls each."""
    from .ops import run_kernel
    seconds = 0.0
    for batch in batches:
        x = torch.randn(batch, in_features, dtype=act_dtype)
        run_kernel(format, kernel, x, None, in_features, out_features)
        call = float("inf")
        for _ in range(2):  # the faster of two: one call may be preempted
            start = time.perf_counter()
            run_kernel(format, kernel, x, None, in_features, out_features)
            call = min(call, time.perf_counter() - start)
        seconds += 2 * max(call, TUNE_ROUND_SECONDS)  # a round: one pair, at least round_seconds each
    per_round_all = (candidates + 1) * seconds
    rounds = int(TUNE_BUDGET_S / per_round_all) - 2
    return min(TUNE_ROUNDS, rounds), seconds / 2


def _measure_tiles(format, kernels, candidates, in_features, out_features, batches,
                   act_dtype) -> Tuple[Optional[str], str]:
    """(winning candidate or None, note): a candidate wins when its worst round beats the
    defaults by TUNE_MARGIN at every batch it changes, twice in a row; the best such worst
    round wins."""
    with torch.no_grad():
        rounds, call = _affordable_rounds(format, kernels["default"], in_features, out_features, batches,
                                          len(candidates), act_dtype)
        if rounds < MIN_TUNE_ROUNDS:
            return None, f"default tiles (not tuned: calls take {call * 1e3:.1f} ms, over the {TUNE_BUDGET_S} s budget)"
        default = _backend._C.tile_params().as_dict()
        affected = {name: [b for b in batches if _tiles_matter(format, default, candidates[name], b)]
                    for name in candidates}
        worst = {}
        for name in candidates:
            worst[name] = min(min(_tile_ratios(format, kernels, name, in_features, out_features, b, rounds,
                                               act_dtype)) for b in affected[name])
        ranked = sorted(candidates, key=worst.get, reverse=True)
        best = ranked[0]
        if worst[best] >= TUNE_MARGIN:
            recheck = min(min(_tile_ratios(format, kernels, best, in_features, out_features, b, rounds, act_dtype))
                          for b in affected[best])
            if recheck >= TUNE_MARGIN:
                return best, f"{best}: >= {min(worst[best], recheck):.2f}x over default tiles at batch " + \
                    "/".join(map(str, affected[best]))
            return None, f"default tiles ({best} won {worst[best]:.2f}x, not on recheck)"
    return None, f"default tiles (best alternative {best}: worst round {worst[best]:.2f}x)"
