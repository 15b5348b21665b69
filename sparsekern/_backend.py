"""Loads the compiled kernels and picks the CPU instruction set they run with.

`import torch` comes first on purpose: torch's wheel ships libgomp.so.1 under the same soname
that sparsekern._C links, so importing torch first makes one OpenMP runtime serve both.
"""
import os

import torch  # noqa: F401  (must precede _C, see above)

from . import _C

CPU_ISAS = ("scalar", "avx2", "avx512")
_ISA_ENV = "SPARSEKERN_CPU_ISA"


def _choose_cpu_isa() -> str:
    forced = os.environ.get(_ISA_ENV, "").strip().lower()
    if not forced:
        return _C.best_cpu_isa()
    if forced not in CPU_ISAS:
        raise ValueError(f"{_ISA_ENV}={forced!r}: expected one of {', '.join(CPU_ISAS)}")
    if not _C.cpu_supports(forced):
        raise RuntimeError(f"{_ISA_ENV}={forced!r}: this CPU cannot run the {forced} kernels")
    return forced


_cpu_isa = _choose_cpu_isa()


def cpu_isa() -> str:
    """The CPU kernel variant in use: 'scalar', 'avx2' or 'avx512' (SPARSEKERN_CPU_ISA forces one)."""
    return _cpu_isa


def supported_cpu_isas() -> tuple:
    """Every CPU kernel variant this machine can run (tests call each one directly)."""
    return tuple(isa for isa in CPU_ISAS if _C.cpu_supports(isa))
