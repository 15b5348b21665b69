"""Every choice sparsekern makes about how to run a layer, in one place.

- Which kernel variant (ISA) runs a call: `kernel_isa(format, batch, act_dtype)`, per format,
  batch bucket and activation dtype, so a variant that pays only for batched inputs (AMX) can
  be chosen for those alone. Every case takes the most capable ISA this CPU runs (capped by
  SPARSEKERN_CPU_ISA), except that avx512bf16 is named only where it has native bf16 code
  (NATIVE_BF16_BUCKETS); elsewhere the call is avx512's.
- Which format a layer is stored in, for sparsify(format="auto"): `choose_format` times
  every format that can hold the layer's mask against dense F.linear, in the layer's dtype,
  at the batch sizes asked for, each candidate paired with dense alone.

Choices are cached, keyed by everything they depend on; format choices also on disk.
"""
import json
import os
import platform
import statistics
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from . import _backend
from .tools import timing
from .formats import PACKED_FORMATS

DEFAULT_BATCH_SIZES = (1, 64)
# A packed format must beat dense by this margin at every batch size, so that timing noise
# cannot pick a format that is really slower.
WIN_MARGIN = 1.1
# Below this sparsity layers stay dense without being timed: CSR moves more bytes than dense
# (6 B per nonzero against 4) and bitmap saves under a third of them, which has not been seen
# to pay batched (at 30%, bitmap measured 1.6x at batch 1 but 0.97x at batch 64 on Zen 5).
MIN_SPARSITY = 0.3


def batch_bucket(batch: int) -> int:
    """The batch sizes a choice is made for: 1, 2-4, 5-16, 17-64, 65-256, then powers of 4."""
    bucket = 1
    while bucket < batch:
        bucket *= 4
    return bucket


# Where avx512bf16's native bf16 kernels run: formats with bf16 activations, by batch bucket.
# 2:4 reads bf16 x with vdpbf16ps at every batch (its own small-batch and batched paths, both
# measured above avx512's widened fp32 path, README "bf16"); CSR and bitmap have no native
# bf16 kernel yet, so avx512bf16 would only run their avx512 code.
NATIVE_BF16_BUCKETS = {"2:4": None}  # None: every bucket


def _native_bf16(format: str, bucket: int, act_dtype: torch.dtype) -> bool:
    if act_dtype != torch.bfloat16 or format not in NATIVE_BF16_BUCKETS:
        return False
    buckets = NATIVE_BF16_BUCKETS[format]
    return buckets is None or bucket in buckets


@lru_cache(maxsize=None)
def _isa_for(format: str, bucket: int, act_dtype: torch.dtype) -> int:
    isa = _backend.cpu_isa()
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


def _load_disk_cache() -> None:
    global _disk_loaded
    if _disk_loaded:
        return
    _disk_loaded = True
    try:
        stored = json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return  # no cache yet, or a damaged one: measure again
    if isinstance(stored, dict):
        _format_cache.update({k: tuple(v) for k, v in stored.items()
                              if isinstance(v, list) and len(v) == 2 and all(isinstance(p, str) for p in v)})


def _save_disk_cache(key: str) -> None:
    """Adds one choice to the file (re-read first: another process may have added others)."""
    path = cache_path()
    try:
        stored = json.loads(path.read_text())
        if not isinstance(stored, dict):
            stored = {}
    except (OSError, ValueError):
        stored = {}
    stored[key] = list(_format_cache[key])
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(stored, indent=0, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: the in-process cache still holds the choice


@lru_cache(maxsize=1)
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


@lru_cache(maxsize=1)
def cache_sizes() -> Dict[str, int]:
    """Bytes of this CPU's data caches per level ('L1d', 'L2', 'L3'; 0 where the system does
    not say), from /sys/devices/system/cpu/cpu0/cache: kernel and benchmark parameters follow
    the machine, not the CPU they were tuned on."""
    sizes = {"L1d": 0, "L2": 0, "L3": 0}
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level = (index / "level").read_text().strip()
            kind = (index / "type").read_text().strip()
            text = (index / "size").read_text().strip().upper()
        except OSError:
            continue
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        name = "L1d" if level == "1" and kind == "Data" else f"L{level}" if kind == "Unified" else None
        if name in sizes and text.rstrip("KMG").isdigit():
            sizes[name] = int(text.rstrip("KMG")) * scale
    return sizes


def choose_format(weight: torch.Tensor, mask: torch.Tensor, has_bias: bool, value_dtype: Optional[torch.dtype],
                  batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES) -> Tuple[str, str]:
    """(format, why): the packed format that measured fastest against dense at every batch
    size in `batch_sizes`, on this machine, with this layer's shape, sparsity and dtypes, if it
    beat dense by WIN_MARGIN everywhere; else 'dense'. Only formats that can hold the mask
    are candidates. Choices persist on disk (cache_path()), keyed by the machine (CPU model,
    ISA, threads, or GPU), shape, sparsity, dtypes, batch sizes and candidates, so the same
    layer gets the same choice on the same machine."""
    out_features, in_features = weight.shape
    nnz = int(mask.sum())
    sparsity = 1 - nnz / max(1, weight.numel())
    device = weight.device
    if device.type == "cpu":
        formats, machine = tuple(PACKED_FORMATS), (cpu_model(), _backend.cpu_isa(), torch.get_num_threads())
    elif device.type == "cuda" and _backend._C.with_cuda:
        from . import ops_cuda
        formats, machine = ops_cuda.CUDA_FORMATS, (torch.cuda.get_device_name(device),)
    else:
        return "dense", f"no sparse kernels for {device.type}"
    candidates = tuple(name for name in formats if PACKED_FORMATS[name].incompatible(mask) is None)
    if sparsity < MIN_SPARSITY:
        return "dense", f"sparsity {sparsity:.0%} < {MIN_SPARSITY:.0%}"
    batch_sizes = tuple(batch_sizes)
    key = json.dumps([out_features, in_features, round(sparsity, 2), str(weight.dtype), str(value_dtype), has_bias,
                      candidates, batch_sizes, device.type, machine])
    _load_disk_cache()
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
    ranked = sorted(candidates, key=lambda name: min(ratios[name]), reverse=True)
    notes = "; ".join(f"{name} measured " + ", ".join(f"{r:.2f}x at batch {b}"
                                                      for r, b in zip(ratios[name], batch_sizes))
                      for name in ranked)
    if not clean:
        notes += " (on a busy machine: not saved)"
    if ranked and min(ratios[ranked[0]]) >= WIN_MARGIN:
        return ranked[0], notes, clean
    return "dense", f"kept dense: {notes}" if notes else "kept dense: no packed format holds this mask", clean
