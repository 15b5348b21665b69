"""CUDA kernels for the sparsekern ops, registered on torch's dispatcher for CUDA tensors.

Imported by sparsekern/__init__.py when the compiled module was built with CUDA
(`_C.with_cuda`). The ops keep their schema, fake kernels and autograd from sparsekern.ops;
this module only adds what runs for the "cuda" dispatch key:

    sparsekern::csr_linear   csr_spmm_cuda (csrc/kernels/cuda/csr_spmm.cu)
    sparsekern::nm24_linear  nm24_linear_cuda (csrc/kernels/cuda/nm24_linear.cu)

Up to SPARSE_MAX_BATCH[format] rows of x, a layer is bound by the bytes of W and sparsekern's
kernels run: float32, float16 or bfloat16 activations with values in any of the three (each
pair has its own kernel; nothing is cast per call), float32 accumulation and bias add, y in
x's dtype. Larger batches are bound by arithmetic, where tensor cores win: CSR is expanded to
a dense weight in x's dtype for cuBLAS (F.linear), per call; 2:4 goes to torch's
semi-structured sparse tensor cores (cuSPARSELt or CUTLASS), through a compressed copy of
the weight cached per values tensor (dense, per call, where torch cannot compress it).
float64 takes torch's own paths. Work is enqueued on torch's current stream of x's device;
nothing synchronizes, except the first call for a CSR weight (see csr_pieces), so make one
call before capturing a CUDA graph.

CUDA_FORMATS and paired_ratios serve the planner's format="auto" choice on a CUDA device.
"""
import functools
import warnings
from typing import Callable, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.weak import WeakTensorKeyDictionary

from . import _backend, ops
from .formats import PACKED_FORMATS, csr
from .formats import nm as nm_format

_C = _backend._C
_DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
_INDEX_NAMES = {torch.uint16: "uint16", torch.int32: "int32"}

# Above this many rows of x, the dense/semi-structured tensor-core paths take over. Measured
# on an H200 (fp16, 4096 x 4096 and 11008 x 4096, CUDA graphs; docs/benchmarks-gpu.md): the
# CSR kernel at 90% took 12-40 us at batch 4-16 against 96 us for the per-call dense
# expansion; the 2:4 kernel took 29-57 us at batch 4 against torch's semi-structured 34-40,
# and 82-213 us at batch 16 against 31-36.
SPARSE_MAX_BATCH = {"csr": 16, "2:4": 4}
# Nonzeros per piece of a CSR row: one step of a warp (32 lanes x 2 chunks of
# _C.cuda_csr_chunk nonzeros, csr_spmm.cu), so a long row is shared by several warps.
CSR_PIECE = 32 * 2 * _C.cuda_csr_chunk
# 2:4 rows are cut into pieces of at least this many columns (one step of a warp is 1024 or
# 2048), and only where the layer has too few rows to keep half the resident warps busy.
NM24_MIN_PIECE_COLUMNS = 1024


def csr_pieces(row_ptr: Tensor, piece: int = CSR_PIECE, chunk: int = _C.cuda_csr_chunk) -> Tensor:
    """The CSR kernel's work list: [n, 4] int64 rows (begin, end, row, pieces of that row).

    Each row's nonzeros row_ptr[r] .. row_ptr[r + 1] are cut at multiples of `piece` counted
    from the row's first `chunk`-aligned position (the kernel loads aligned chunks, so no
    piece spans more chunks than a warp's step); an empty row gets one empty piece, which
    writes its bias. Runs on row_ptr's device; it synchronizes once, to size the list."""
    starts, ends = row_ptr[:-1], row_ptr[1:]
    first_chunk = starts - starts % chunk
    counts = torch.div(ends - first_chunk + piece - 1, piece, rounding_mode="floor").clamp_min(1)
    total = int(counts.sum())
    rows = torch.repeat_interleave(torch.arange(counts.shape[0], device=row_ptr.device), counts,
                                   output_size=total)
    k = torch.arange(total, device=row_ptr.device) - (torch.cumsum(counts, 0) - counts)[rows]
    begin = torch.maximum(starts[rows], first_chunk[rows] + k * piece)
    end = torch.minimum(ends[rows], first_chunk[rows] + (k + 1) * piece)
    return torch.stack((begin, end, rows, counts[rows]), dim=1).contiguous()


def nm24_pieces_per_row(rows: int, cols: int, resident_warps: int) -> int:
    """Pieces per 2:4 row: enough for half the resident warps, each piece at least
    NM24_MIN_PIECE_COLUMNS wide. A row of several pieces costs a zeroed workspace (one more
    kernel) and atomic adds, so a layer with rows for half the warps keeps whole rows."""
    wanted = resident_warps // (2 * max(rows, 1))
    return max(1, min(wanted, cols // NM24_MIN_PIECE_COLUMNS))


@functools.lru_cache(maxsize=None)
def _resident_warps(device_index: int) -> int:
    props = torch.cuda.get_device_properties(device_index)
    return props.multi_processor_count * props.max_threads_per_multi_processor // 32


# row_ptr -> (its version, piece table, most pieces in a row); freed with row_ptr.
_csr_piece_cache = WeakTensorKeyDictionary()


def _cached_csr_pieces(row_ptr: Tensor) -> Tuple[Tensor, int]:
    entry = _csr_piece_cache.get(row_ptr)
    if entry is None or entry[0] != row_ptr._version:
        table = csr_pieces(row_ptr)
        entry = (row_ptr._version, table, int(table[:, 3].max()) if table.shape[0] else 1)
        _csr_piece_cache[row_ptr] = entry
    return entry[1], entry[2]


def _rows_of_x(x: Tensor, in_features: int) -> Tensor:
    """x as [batch, in] rows with unit column stride, each row at least a row apart."""
    x2 = x if x.ndim == 2 else x.reshape(-1, in_features)
    if x2.stride(-1) != 1 or (x2.shape[0] > 1 and x2.stride(0) < in_features):
        x2 = x2.contiguous()
    return x2


def _kernel_bias(bias: Optional[Tensor], x: Tensor) -> Optional[Tensor]:
    """The bias as the kernels take it: x's dtype or float32 (widened exactly), contiguous."""
    if bias is None:
        return None
    if bias.dtype not in (x.dtype, torch.float32):
        bias = bias.to(torch.float32)
    return bias.contiguous()


def _aligned(t: Tensor, bytes_: int) -> Tensor:
    """t, copied when its data does not start on a bytes_ boundary (a view into a buffer)."""
    return t if t.data_ptr() % bytes_ == 0 else t.clone()


def _workspace(needed: bool, batch: int, rows: int, device) -> Tuple[Optional[Tensor], int]:
    if not needed:
        return None, 0
    words = torch.zeros(_C.cuda_workspace_words(batch, rows), dtype=torch.int32, device=device)
    return words, words.data_ptr()


def _launch(x: Tensor, kernel, *args) -> None:
    """Calls a _C CUDA entry point on x's device and torch's current stream there."""
    if x.device.index == torch.cuda.current_device():
        kernel(*args, torch.cuda.current_stream().cuda_stream)
    else:
        with torch.cuda.device(x.device):
            kernel(*args, torch.cuda.current_stream().cuda_stream)


def _output(y: Tensor, x: Tensor) -> Tensor:
    return y if x.ndim == 2 else y.reshape(*x.shape[:-1], y.shape[-1])


def _dense_bias(bias: Optional[Tensor], x: Tensor) -> Optional[Tensor]:
    return None if bias is None else bias.to(x.dtype)


def csr_dense_weight(row_ptr: Tensor, col_idx: Tensor, values: Tensor, in_features: int,
                     dtype: torch.dtype) -> Tensor:
    """The dense [out, in] weight of CSR buffers in `dtype`, on their device, without a sync."""
    out_features = row_ptr.shape[0] - 1
    rows = torch.repeat_interleave(torch.arange(out_features, device=row_ptr.device), row_ptr.diff(),
                                   output_size=col_idx.shape[0])
    dense = torch.zeros(out_features * in_features, dtype=dtype, device=values.device)
    dense[rows * in_features + col_idx.to(torch.int64)] = values.detach().to(dtype)
    return dense.view(out_features, in_features)


def csr_linear_cuda(x: Tensor, row_ptr: Tensor, col_idx: Tensor, values: Tensor, bias: Optional[Tensor],
                    in_features: int, out_features: int) -> Tensor:
    """y [..., out] = x [..., in] @ W.T + bias for CSR W, all on one CUDA device."""
    tensors = csr.CsrTensors(row_ptr, col_idx, values)
    ops.check_linear_args(PACKED_FORMATS["csr"], x, tensors, bias, in_features, out_features)
    if x.dtype not in _DTYPE_NAMES or values.dtype not in _DTYPE_NAMES:
        return csr.linear_torch(x, tensors, bias, in_features, out_features)
    x2 = _rows_of_x(x, in_features)
    batch = x2.shape[0]
    if batch > SPARSE_MAX_BATCH["csr"]:
        weight = csr_dense_weight(row_ptr, col_idx, values, in_features, x.dtype)
        return _output(F.linear(x2, weight, _dense_bias(bias, x)), x)
    pieces, max_row_pieces = _cached_csr_pieces(row_ptr)
    chunk = _C.cuda_csr_chunk
    values = _aligned(values.contiguous(), chunk * values.element_size())
    col_idx = _aligned(col_idx.contiguous(), chunk * col_idx.element_size())
    bias = _kernel_bias(bias, x)
    y = torch.empty((batch, out_features), dtype=x.dtype, device=x.device)
    workspace, workspace_ptr = _workspace(max_row_pieces > 1, batch, out_features, x.device)
    _launch(x, _C.csr_spmm_cuda, out_features, in_features, col_idx.shape[0], pieces.data_ptr(), pieces.shape[0],
            max_row_pieces, col_idx.data_ptr(), _INDEX_NAMES[col_idx.dtype], values.data_ptr(),
            _DTYPE_NAMES[values.dtype], x2.data_ptr(), _DTYPE_NAMES[x.dtype], batch,
            x2.stride(0) if batch > 1 else in_features, bias.data_ptr() if bias is not None else 0,
            _DTYPE_NAMES[bias.dtype] if bias is not None else "float32", y.data_ptr(), workspace_ptr)
    return _output(y, x)


# values -> (versions of values and meta, meta, dtype, torch semi-structured weight).
_semi_structured_cache = WeakTensorKeyDictionary()


def _semi_structured_weight(values: Tensor, meta: Tensor, in_features: int, out_features: int,
                            dtype: torch.dtype):
    """W as torch's semi-structured sparse tensor in `dtype` (compressed once per values and
    meta version), or None where torch cannot take it (dtype, shape or device)."""
    entry = _semi_structured_cache.get(values)
    versions = (values._version, meta._version)
    if entry is not None and entry[0] == versions and entry[1] is meta and entry[2] == dtype:
        return entry[3]
    dense = nm_format.unpack(nm_format.Nm24Tensors(values, meta), (out_features, in_features), dtype)
    try:
        with warnings.catch_warnings():  # torch's "prototype" notice
            warnings.simplefilter("ignore", UserWarning)
            weight = torch.sparse.to_sparse_semi_structured(dense)
    except (RuntimeError, ValueError, TypeError, NotImplementedError):
        weight = None
    _semi_structured_cache[values] = (versions, meta, dtype, weight)
    return weight


def nm24_linear_cuda(x: Tensor, values: Tensor, meta: Tensor, bias: Optional[Tensor],
                     in_features: int, out_features: int) -> Tensor:
    """y [..., out] = x [..., in] @ W.T + bias for 2:4 W (values [out, in / 2], meta), on one CUDA device."""
    tensors = nm_format.Nm24Tensors(values, meta)
    ops.check_linear_args(PACKED_FORMATS["2:4"], x, tensors, bias, in_features, out_features)
    if x.dtype not in _DTYPE_NAMES or values.dtype not in _DTYPE_NAMES:
        return nm_format.linear_torch(x, tensors, bias, in_features, out_features)
    x2 = _rows_of_x(x, in_features)
    batch = x2.shape[0]
    if batch > SPARSE_MAX_BATCH["2:4"]:
        weight = _semi_structured_weight(values, meta, in_features, out_features, x.dtype)
        if weight is None:
            weight = nm_format.unpack(nm_format.Nm24Tensors(values, meta), (out_features, in_features), x.dtype)
        return _output(F.linear(x2, weight, _dense_bias(bias, x)), x)
    values, meta = values.contiguous(), meta.contiguous()
    bias = _kernel_bias(bias, x)
    pieces = nm24_pieces_per_row(out_features, in_features, _resident_warps(x.device.index))
    y = torch.empty((batch, out_features), dtype=x.dtype, device=x.device)
    workspace, workspace_ptr = _workspace(pieces > 1, batch, out_features, x.device)
    _launch(x, _C.nm24_linear_cuda, out_features, in_features, values.data_ptr(), _DTYPE_NAMES[values.dtype],
            meta.data_ptr(), pieces, x2.data_ptr(), _DTYPE_NAMES[x.dtype], batch,
            x2.stride(0) if batch > 1 else in_features, bias.data_ptr() if bias is not None else 0,
            _DTYPE_NAMES[bias.dtype] if bias is not None else "float32", y.data_ptr(), workspace_ptr)
    return _output(y, x)


torch.library.register_kernel("sparsekern::csr_linear", "cuda", csr_linear_cuda)
torch.library.register_kernel("sparsekern::nm24_linear", "cuda", nm24_linear_cuda)


# ---- format="auto" on CUDA (sparsekern.planner decides; these are its CUDA measures) --------

# The packed formats with CUDA kernels: the candidates the planner times on a CUDA device.
CUDA_FORMATS = ("csr", "2:4")


def paired_ratios(dense: Callable[[], object], candidate: Callable[[], object], rounds: int = 7,
                  calls_per_round: int = 20) -> List[float]:
    """How many times faster `candidate` ran than `dense` on the current stream in each round:
    CUDA events around a loop of calls, the two interleaved over rounds."""
    for fn in (dense, candidate):  # warm up (and build any cached piece table or compressed weight)
        fn()
    torch.cuda.synchronize()
    ratios = []
    for _ in range(rounds):
        seconds = []
        for fn in (dense, candidate):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(calls_per_round):
                fn()
            end.record()
            end.synchronize()
            seconds.append(start.elapsed_time(end))
        ratios.append(seconds[0] / seconds[1])
    return ratios
