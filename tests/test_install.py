"""Packaging: the extras, and `pip install .` and `pip install -e .`, each run twice in one
checkout, as users run them (with build isolation: pip builds in a temporary environment with
its own cmake and ninja and deletes it afterwards, while the CMake build directory stays in the
checkout); the installed package is then imported from outside the checkout and runs a
SparseLinear. That test is slow (it builds the extension, with CUDA off) and needs PyPI: the
isolated build environment downloads setuptools, pybind11, cmake and ninja.
"""
import os
import shutil
import site
import subprocess
import venv
from pathlib import Path

import pytest

CHECKOUT = Path(__file__).resolve().parent.parent

SMOKE = """
import sys, torch, sparsekern as sk
print(sk.__file__)
dense = torch.nn.Linear(16, 8)
with torch.no_grad():
    dense.weight[:, ::2] = 0
layer = sk.SparseLinear.from_dense(dense)
x = torch.randn(3, 16)
with torch.no_grad():
    torch.testing.assert_close(layer(x), dense(x))
"""


def test_extras():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    extras = tomllib.loads((CHECKOUT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert {"onnx", "onnxscript", "onnxruntime"} <= set(extras["onnx"])  # named by export_onnx's ImportError
    assert "matplotlib" in extras["plot"]  # named by `sparsekern bench --plot`
    assert "transformers" in extras["hf"]
    assert set(extras["onnx"] + extras["plot"] + extras["hf"]) <= set(extras["test"])  # CI installs .[test]


def copy_sources(dest: Path) -> None:
    """The checkout's tracked files only: no build/ directory, no compiled _C."""
    if shutil.which("git") is None or not (CHECKOUT / ".git").exists():
        pytest.skip("needs a git checkout to list the sources")
    files = subprocess.run(["git", "ls-files", "-z"], cwd=CHECKOUT, check=True, capture_output=True,
                           text=True).stdout.split("\0")
    for name in filter(None, files):
        if not (CHECKOUT / name).exists():  # deleted in the work tree, not yet in git
            continue
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(CHECKOUT / name, target)


def scratch_venv(root: Path) -> Path:
    """A venv that sees this interpreter's packages (torch) but not any sparsekern installed here.

    `venv --system-site-packages` would show the base interpreter's site-packages, not those of the
    venv running these tests (where torch is, here and in CI). A .pth file therefore adds a view of
    this interpreter's site-packages: a directory of links to their entries, less sparsekern's
    (an installed sparsekern there would shadow an editable install, whose finder comes last)."""
    venv.create(root / "venv", with_pip=True)
    python = root / "venv" / "bin" / "python"
    view = root / "deps"
    view.mkdir()
    for directory in map(Path, site.getsitepackages()):
        for entry in directory.iterdir():
            link = view / entry.name
            if not entry.name.startswith(("sparsekern", "__editable__")) and not link.exists():
                link.symlink_to(entry)
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    Path(purelib, "test_install_deps.pth").write_text(f"{view}\n")
    return python


def pip_install(python: Path, args, cwd: Path) -> None:
    # CUDA off: the CUDA kernels take minutes to compile and play no part in what is tested here.
    env = dict(os.environ, SPARSEKERN_CUDA="off", PIP_DISABLE_PIP_VERSION_CHECK="1")
    run = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", *args], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=900)
    output = run.stdout + run.stderr
    cmake_error = output[output.find("CMake Error"):][:1500] if "CMake Error" in output else ""
    assert run.returncode == 0, f"pip install {' '.join(args)} failed:\n{cmake_error}\n...\n{output[-2500:]}"


def smoke(python: Path, cwd: Path) -> Path:
    """Runs SMOKE with the venv's python; returns where sparsekern was imported from."""
    run = subprocess.run([str(python), "-c", SMOKE], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return Path(run.stdout.strip().splitlines()[-1]).resolve()


@pytest.mark.slow
def test_install_and_editable_install_twice_in_one_checkout(tmp_path):
    src, outside = tmp_path / "src", tmp_path / "outside"
    outside.mkdir()
    copy_sources(src)
    python = scratch_venv(tmp_path)

    for _ in range(2):  # the second run finds the first one's build directory
        pip_install(python, ["."], cwd=src)
    venv_dir = (tmp_path / "venv").resolve()
    assert venv_dir in smoke(python, outside).parents

    for _ in range(2):
        pip_install(python, ["-e", "."], cwd=src)
    assert src.resolve() / "sparsekern" in smoke(python, outside).parents
