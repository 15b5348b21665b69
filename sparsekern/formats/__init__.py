"""The packed weight formats: the registry everything else derives from.

Each format is one module ending in `FORMAT = PackedFormat(...)` (formats/common.py says what
the descriptor carries). Adding a format means adding its module to FORMAT_MODULES; the torch
ops, SparseLinear, sparsify's choices, save/load, the CLI and the format-contract tests pick
it up from PACKED_FORMATS.
"""
from typing import Dict, Tuple

from . import bitmap, csr, nm
from .bitmap import BitmapTensors
from .common import PackedFormat, check_mask
from .csr import CsrTensors
from .nm import Nm24Tensors

FORMAT_MODULES = (csr, nm, bitmap)
PACKED_FORMATS: Dict[str, PackedFormat] = {module.FORMAT.name: module.FORMAT for module in FORMAT_MODULES}
# What SparseLinear can hold: every packed format, or the weight as a dense matrix.
LAYER_FORMATS: Tuple[str, ...] = (*PACKED_FORMATS, "dense")

__all__ = ["csr", "nm", "bitmap", "CsrTensors", "Nm24Tensors", "BitmapTensors", "PACKED_FORMATS", "LAYER_FORMATS", "PackedFormat",
           "check_mask"]
