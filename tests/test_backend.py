"""CPU ISA choice: picked from the CPU, forced by SPARSEKERN_CPU_ISA, refused when impossible."""
import os

import pytest

import sparsekern

from conftest import run_python


def isa_in_subprocess(value, tmp_path):
    env = dict(os.environ, SPARSEKERN_CPU_ISA=value)
    return run_python(["-c", "import sparsekern; print(sparsekern.cpu_isa())"], tmp_path, env)


def test_default_is_the_best_supported():
    assert sparsekern.cpu_isa() in sparsekern.supported_cpu_isas()
    assert sparsekern.supported_cpu_isas()[-1] == sparsekern._backend._C.best_cpu_isa()
    assert "scalar" in sparsekern.supported_cpu_isas()


@pytest.mark.parametrize("isa", ["scalar", "avx2", "avx512"])
def test_env_forces_an_isa(isa, tmp_path):
    result = isa_in_subprocess(isa, tmp_path)
    if isa in sparsekern.supported_cpu_isas():
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == isa
    else:
        assert "cannot run" in result.stderr


def test_env_rejects_unknown_names(tmp_path):
    result = isa_in_subprocess("sse9", tmp_path)
    assert result.returncode != 0
    assert "SPARSEKERN_CPU_ISA='sse9': expected one of scalar, avx2, avx512" in result.stderr


def test_compiled_module_checks_its_arguments():
    c = sparsekern._backend._C
    with pytest.raises(ValueError, match="unknown CPU ISA 'neon'"):
        c.csr_spmm_workspace_floats("neon", 4, 4)
    with pytest.raises(ValueError, match="negative size"):
        c.csr_spmm_cpu("scalar", -1, 4, 0, 0, 0, "uint16", 0, "float32", 0, 1, 4, 0, 0, 0, 0, 1)
    with pytest.raises(ValueError, match="uint16 column indices need cols <= 65536, got cols = 70000"):
        c.csr_spmm_cpu("scalar", 1, 70000, 0, 0, 0, "uint16", 0, "float32", 0, 0, 70000, 0, 0, 0, 0, 1)
    with pytest.raises(ValueError, match="row_ptr is null"):
        c.csr_spmm_cpu("scalar", 1, 4, 0, 0, 0, "uint16", 0, "float32", 0, 0, 4, 0, 0, 0, 0, 1)
    with pytest.raises(ValueError, match="y is null"):
        c.csr_spmm_cpu("scalar", 1, 4, 0, 0, 0, "uint16", 0, "float32", 0, 1, 4, 0, 0, 0, 0, 1)
