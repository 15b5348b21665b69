"""CPU ISA choice: picked from the CPU, capped by SPARSEKERN_CPU_ISA (above the CPU: its best, with a
warning)."""
import os
import re
import shutil
import subprocess

import pytest
import torch

import sparsekern
from sparsekern import ops
from sparsekern.formats import PACKED_FORMATS

from conftest import assert_matches_reference, mask_24, random_sparse_weight, run_python


def isa_in_subprocess(value, tmp_path):
    env = dict(os.environ, SPARSEKERN_CPU_ISA=value)
    return run_python(["-c", "import sparsekern; print(sparsekern.cpu_isa())"], tmp_path, env)


def test_default_is_the_best_supported():
    assert sparsekern.cpu_isa() in sparsekern.supported_cpu_isas()
    assert sparsekern.supported_cpu_isas()[-1] == sparsekern._backend._C.best_cpu_isa()
    assert "scalar" in sparsekern.supported_cpu_isas()


@pytest.mark.parametrize("isa", sparsekern._backend.CPU_ISAS)
def test_env_forces_an_isa(isa, tmp_path):
    result = isa_in_subprocess(isa, tmp_path)
    if isa in sparsekern.supported_cpu_isas():
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == isa
    else:  # a cap above this CPU: its best, with a warning (import must not fail)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == sparsekern.supported_cpu_isas()[-1]
        assert f"this CPU cannot run the {isa} kernels; using {result.stdout.strip()}" in result.stderr


def test_env_avx512_forbids_the_bf16_kernels(tmp_path):
    """SPARSEKERN_CPU_ISA=avx512 caps every call, bf16 ones included, below avx512bf16."""
    if "avx512" not in sparsekern.supported_cpu_isas():
        pytest.skip("this CPU cannot run avx512")
    env = dict(os.environ, SPARSEKERN_CPU_ISA="avx512")
    code = ("import torch, sparsekern; from sparsekern import planner, _backend; "
            "print(*{_backend.CPU_ISAS[planner.kernel_isa(f, b, d)] for f in ('csr', '2:4', 'bitmap') "
            "for b in (1, 16, 256) for d in (torch.float32, torch.bfloat16)})")
    result = run_python(["-c", code], tmp_path, env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["avx512"]


def test_env_rejects_unknown_names(tmp_path):
    result = isa_in_subprocess("sse9", tmp_path)
    assert result.returncode != 0
    assert f"SPARSEKERN_CPU_ISA='sse9': expected one of {', '.join(sparsekern._backend.CPU_ISAS)}" in result.stderr


def test_compiled_module_checks_its_arguments():
    c = sparsekern._backend._C
    with pytest.raises(ValueError, match="unknown CPU ISA 'neon'"):
        c.cpu_supports("neon")
    with pytest.raises(ValueError, match="negative size"):
        c.csr_linear(-1, 4, 0, 0, 0, 0, 0, 0)
    with pytest.raises(ValueError, match="uint16 column indices need cols <= 65536, got cols = 70000"):
        c.csr_linear(1, 70000, 0, 1, 0, 0, 0, 0)
    with pytest.raises(ValueError, match="row_ptr is null"):
        c.csr_linear(1, 4, 0, 0, 0, 0, 0, 0)
    with pytest.raises(ValueError, match="index type = 2, expected 0 .. 1"):
        c.csr_linear(1, 4, 0, 1, 0, 2, 0, 0)
    row_ptr = torch.zeros(2, dtype=torch.int64)
    kernel = c.csr_linear(1, 4, 0, row_ptr.data_ptr(), 0, 0, 0, 0)
    with pytest.raises(ValueError, match="y is null"):
        kernel.run(0, 1, 0, 1, 4, 0, 0, 1)
    with pytest.raises(ValueError, match="ISA index 99 is out of range"):
        kernel.run(99, 1, 0, 1, 4, 0, 0, 1)
    with pytest.raises(ValueError, match="activation type = 5"):
        kernel.run(0, 1, 5, 1, 4, 0, 1, 1)
    with pytest.raises(ValueError, match="x row stride = 3 is less than cols = 4"):
        kernel.run(0, 1, 0, 2, 3, 0, 1, 1)
    with pytest.raises(ValueError, match="2:4 needs cols % 4 == 0"):
        c.nm24_linear(1, 6, 0, 0, 0)


def test_compiled_module_uses_no_iostreams():
    """_C must not call libstdc++'s stream classes: with torch 2.11 imported first, an ifstream
    in _C segfaulted on an Intel Xeon host (a g++ 13 build binding to the stream internals
    that torch's libraries export). Read from the module's undefined dynamic symbols."""
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("needs binutils' nm to list the module's symbols")
    symbols = subprocess.run([nm, "-D", "--undefined-only", "-C", sparsekern._backend._C.__file__],
                             check=True, capture_output=True, text=True).stdout
    streams = [line.split(maxsplit=1)[-1] for line in symbols.splitlines()
               if re.search(r"std::(basic_)?(i|o|if|of|io|istring|ostring|string)?stream\b|basic_filebuf", line)]
    assert not streams, f"sparsekern._C calls iostreams: {streams[:5]}"


def test_isa_table_reaches_python():
    assert sparsekern._backend.CPU_ISAS == tuple(sparsekern._backend._C.cpu_isas())
    assert sparsekern._backend.CPU_ISAS[0] == "scalar"
    assert set(sparsekern._backend.cpu_features()) >= {"avx2", "avx512f", "avx512_bf16", "amx_bf16"}


def test_planner_names_avx512bf16_only_where_it_reads_bf16(planner_on):
    """Per call, by format, batch and activation dtype: 2:4 with bf16 activations runs the
    native bf16 kernels at every batch, and so does bitmap, CSR from batch 2; every other call
    names avx512, whose code it runs."""
    planner = planner_on("avx512bf16")
    names = sparsekern._backend.CPU_ISAS
    for batch in (1, 2, 16, 31, 32, 256, 1000):
        assert names[planner.kernel_isa("2:4", batch, torch.bfloat16)] == "avx512bf16"
        assert names[planner.kernel_isa("csr", batch, torch.bfloat16)] == ("avx512" if batch == 1 else "avx512bf16")
        assert names[planner.kernel_isa("bitmap", batch, torch.bfloat16)] == "avx512bf16"
        for fmt in ("2:4", "csr", "bitmap"):
            assert names[planner.kernel_isa(fmt, batch, torch.float32)] == "avx512"


def test_planner_names_amx_only_where_it_multiplies_on_tiles(planner_on):
    """On an AMX CPU, bf16 activations name amx from the bucket that holds AMX_FROM: batch 128
    (65-256) for 2:4, batch 32 (17-64) for bitmap; below that, and for CSR, the avx512bf16
    naming holds; fp32 names avx512."""
    planner = planner_on("amx")
    names = sparsekern._backend.CPU_ISAS
    for batch in (1, 2, 16, 17, 32, 64, 65, 128, 256, 1000):
        nm24_tiles, bitmap_tiles = batch > 64, batch > 16
        assert names[planner.kernel_isa("2:4", batch, torch.bfloat16)] == ("amx" if nm24_tiles else "avx512bf16")
        assert names[planner.kernel_isa("bitmap", batch, torch.bfloat16)] == ("amx" if bitmap_tiles else "avx512bf16")
        assert names[planner.kernel_isa("csr", batch, torch.bfloat16)] == ("avx512" if batch == 1 else "avx512bf16")
        for fmt in ("2:4", "csr", "bitmap"):
            assert names[planner.kernel_isa(fmt, batch, torch.float32)] == "avx512"


@pytest.mark.parametrize("fmt", ["csr", "bitmap", "2:4"])
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("value_dtype", [torch.float32, torch.bfloat16])
def test_a_strided_x_is_read_only_within_its_columns(isa, fmt, x_dtype, value_dtype):
    """x is a view of the first columns of a wider tensor whose other columns are NaN (what a
    slice of a larger activation can hold): a kernel that read past in_features, even to
    multiply by a zero weight, would return NaN. Batches around each path's switch points."""
    out_features, in_features = 37, 100  # whole 2:4 groups; the last 32-column word partial
    g = torch.Generator().manual_seed(1)
    weight, mask = random_sparse_weight(out_features, in_features, 0.5, generator=g)
    if fmt == "2:4":
        mask = mask_24(out_features, in_features, g)
        weight = weight.abs().add(1) * mask
    weight = weight.to(value_dtype)
    packed = PACKED_FORMATS[fmt].pack(weight, mask)
    for batch in (1, 2, 4, 5, 8, 16, 17, 33):
        wide = torch.full((batch, in_features + 28), float("nan"), dtype=x_dtype)
        wide[:, :in_features] = torch.randn(batch, in_features, generator=g)
        x = wide[:, :in_features]
        y = ops.linear_eager(fmt, x, packed, None, in_features, out_features, isa=isa)
        assert_matches_reference(y, x, weight)
