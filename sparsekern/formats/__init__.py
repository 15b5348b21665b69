"""Packed weight formats as plain tensors: pack, unpack, validate."""
from . import csr
from .csr import CsrTensors

__all__ = ["csr", "CsrTensors"]
