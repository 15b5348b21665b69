"""Packed weight formats as plain tensors: pack, unpack, validate."""
from . import csr, nm
from .csr import CsrTensors
from .nm import Nm24Tensors
from .packed import PACKED_FORMATS, PackedFormat

__all__ = ["csr", "nm", "CsrTensors", "Nm24Tensors", "PACKED_FORMATS", "PackedFormat"]
