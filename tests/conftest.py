"""Shared test helpers: the float64 masked-dense reference and the one tolerance table."""
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# Deterministic kernels: no pack-time tile tuning (planner.choose_tiles) unless a test asks.
os.environ.setdefault("SPARSEKERN_TUNE", "0")

import sparsekern  # noqa: E402

# Relative error allowed, by the dtype the result is rounded to. float32 results: per unit of
# sqrt(K), as float32 accumulation error grows like sqrt(K) * eps. Half-precision results: the
# kernels accumulate in float32 and round once at the end, so the error is that one rounding
# (at most 2^-9 of |y|, and |y| <= the scale below) whatever the length of the sum; scaled by
# sqrt(K) as well, the bound let wrong products through (a column swap within each pair passed
# at K = 2049).
ROUNDED_ONCE = (torch.bfloat16, torch.float16)

TOLERANCE = {
    torch.float64: 1e-13,
    torch.float32: 1e-5,
    torch.bfloat16: 1e-2,
    torch.float16: 2e-3,
}

# Every ISA variant in the ISA table (csrc/kernels/cpu/isa_table.h).
ALL_ISAS = sparsekern._backend.CPU_ISAS

# The directory holding the sparsekern these tests imported: the checkout (built in place) or
# site-packages (installed).
PACKAGE_PARENT = Path(sparsekern.__file__).resolve().parent.parent


def package_env(env=None):
    """env (default os.environ) with PYTHONPATH leading to the sparsekern these tests imported.
    A child process must also run outside the checkout: `python -c` puts cwd first on sys.path,
    and a checkout's sparsekern/ has no compiled _C when the tests run against an installed
    package."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_PARENT), env.get("PYTHONPATH")]))
    return env


def run_python(args, cwd, env=None, timeout=300):
    """Runs `python *args` in a fresh process that imports this same sparsekern. cwd must not
    be a checkout (see package_env)."""
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=package_env(env), cwd=cwd,
                          timeout=timeout)


def reference_linear(x, weight, bias=None):
    """x.double() @ weight.double().T + bias: weight already masked, as stored."""
    y = x.double() @ weight.double().T
    if bias is not None:
        y = y + bias.double()
    return y


def assert_matches_reference(y, x, weight, bias=None):
    """y agrees with the float64 reference within TOLERANCE[y.dtype] (times sqrt(K) unless the
    dtype is ROUNDED_ONCE), relative to the size of the terms summed (|x| @ |W|.T + |b|), so
    cancellation cannot hide or fake errors."""
    assert y.shape == (*x.shape[:-1], weight.shape[0]), (y.shape, x.shape, weight.shape)
    ref = reference_linear(x, weight, bias)
    scale = x.double().abs() @ weight.double().abs().T
    if bias is not None:
        scale = scale + bias.double().abs()
    k = max(x.shape[-1], 1)
    tol = TOLERANCE[y.dtype] * (1 if y.dtype in ROUNDED_ONCE else math.sqrt(k)) * (scale + 1e-30)
    err = (y.double() - ref).abs()
    worst = (err / tol).max().item() if err.numel() else 0.0
    assert worst <= 1.0, f"error {worst:.2f}x over tolerance (max abs err {err.max().item():.3g})"


def random_sparse_weight(out_features, in_features, density, dtype=torch.float32, generator=None):
    """Kept values are never zero (1 + rand, random sign) so the mask is unambiguous."""
    g = generator or torch.Generator().manual_seed(0)
    mask = torch.rand(out_features, in_features, generator=g) < density
    sign = torch.where(torch.rand(out_features, in_features, generator=g) < 0.5, -1.0, 1.0)
    weight = (1 + torch.rand(out_features, in_features, generator=g)) * sign * mask
    return weight.to(dtype), mask


def mask_24(out_features, in_features, generator, kept_per_group=None):
    """A random bool mask keeping 0, 1 or 2 of every 4 inputs (exactly `kept_per_group` if given)."""
    scores = torch.rand(out_features, in_features // 4, 4, generator=generator)
    if kept_per_group is None:
        counts = torch.randint(0, 3, (out_features, in_features // 4, 1), generator=generator)
    else:
        counts = torch.full((out_features, in_features // 4, 1), kept_per_group)
    ranks = scores.argsort(-1).argsort(-1)
    return (ranks < counts).reshape(out_features, in_features)


@pytest.fixture(autouse=True)
def isolated_format_choices(tmp_path, monkeypatch):
    """Each test starts with no cached format choice, and writes its own in a scratch folder."""
    from sparsekern import planner

    monkeypatch.setenv(planner.CACHE_ENV, str(tmp_path / "sparsekern-cache"))
    monkeypatch.setattr(planner, "_format_cache", {})
    monkeypatch.setattr(planner, "_disk_loaded", False)


@pytest.fixture
def planner_on(monkeypatch):
    """The planner as it would run with another best ISA (its naming is pure Python, so every
    machine can check it); its caches are emptied before and after."""
    from sparsekern import planner

    def use(isa):
        monkeypatch.setattr(planner._backend, "cpu_isa", lambda: isa)
        planner._isa_for.cache_clear()
        planner.kernel_isa.cache_clear()
        return planner
    yield use
    planner._isa_for.cache_clear()
    planner.kernel_isa.cache_clear()


@pytest.fixture(params=ALL_ISAS)
def isa(request):
    """Every CPU kernel variant, skipped where this CPU lacks it."""
    if request.param not in sparsekern.supported_cpu_isas():
        pytest.skip(f"this CPU cannot run {request.param}")
    return request.param
