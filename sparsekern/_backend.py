"""Loads the compiled kernels and names the CPU instruction sets they come in.

`import torch` comes first on purpose: torch's wheel ships libgomp.so.1 under the same soname
that sparsekern._C links, so importing torch first makes one OpenMP runtime serve both.
"""
import os
import warnings

import torch  # noqa: F401  (must precede _C, see above)

from . import _C

# The ISA variants in the order of csrc/kernels/cpu/isa_table.h (an ISA's number is its index).
CPU_ISAS = tuple(_C.cpu_isas())
ISA_ENV = "SPARSEKERN_CPU_ISA"


def isa_index(name: str) -> int:
    """The kernels' number for an ISA name; ValueError naming the choices for an unknown one."""
    try:
        return CPU_ISAS.index(name)
    except ValueError:
        raise ValueError(f"unknown CPU ISA {name!r}, expected one of {', '.join(CPU_ISAS)}") from None


def _choose_cpu_isa() -> str:
    forced = os.environ.get(ISA_ENV, "").strip().lower()
    if not forced:
        return _C.best_cpu_isa()
    if forced not in CPU_ISAS:
        raise ValueError(f"{ISA_ENV}={forced!r}: expected one of {', '.join(CPU_ISAS)}")
    if not _C.cpu_supports(forced):
        # A cap above this CPU (one setting for a fleet of machines) leaves the best it has,
        # said once, rather than making the package fail to import.
        best = _C.best_cpu_isa()
        warnings.warn(f"{ISA_ENV}={forced!r}: this CPU cannot run the {forced} kernels; using {best}", stacklevel=2)
        return best
    return forced


_cpu_isa = _choose_cpu_isa()


def cpu_isa() -> str:
    """The most capable CPU kernel variant in use (SPARSEKERN_CPU_ISA caps it): one of CPU_ISAS."""
    return _cpu_isa


def supported_cpu_isas() -> tuple:
    """Every CPU kernel variant this machine can run (tests call each one directly)."""
    return tuple(isa for isa in CPU_ISAS if _C.cpu_supports(isa))


def cpu_features() -> dict:
    """The CPU features that decide which kernels pay (for reports and the planner's cache key)."""
    return {name: _C.cpu_has(name) for name in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")}
