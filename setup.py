"""Builds sparsekern._C by running CMake (CMakeLists.txt) from setuptools' build_ext."""
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    """An extension whose sources CMake knows; setuptools only names it."""

    def __init__(self, name):
        super().__init__(name, sources=[])


def _cmake_version() -> str:
    """"4.4.5" from the first line of `cmake --version` ("cmake version 4.4.5")."""
    out = subprocess.run(["cmake", "--version"], check=True, capture_output=True, text=True).stdout
    return out.split()[2]


def _stale_cache_reason(build_dir: Path, ninja: str) -> Optional[str]:
    """Why the CMakeCache.txt in build_dir must not be reused, or None when it may be.

    pip builds in a temporary environment that provides cmake and ninja and deletes it
    afterwards, but build_temp stays in the checkout: the next `pip install .` would find a
    cache naming the deleted programs (CMake then fails running '.../pip-build-env-*/bin/ninja')."""
    cache = build_dir / "CMakeCache.txt"
    if not cache.is_file():
        return None
    entries = {}
    for line in cache.read_text().splitlines():
        if line and not line.startswith(("#", "//")) and "=" in line:
            key, value = line.split("=", 1)
            entries[key.split(":", 1)[0]] = value
    cached_cmake = entries.get("CMAKE_COMMAND", "")
    if not Path(cached_cmake).is_file():
        return f"the cmake that wrote it ({cached_cmake}) no longer exists"
    cached_version = ".".join(entries.get(f"CMAKE_CACHE_{part}_VERSION", "?") for part in ("MAJOR", "MINOR", "PATCH"))
    version = _cmake_version()
    if cached_version != version:
        return f"it was written by cmake {cached_version}, not by this cmake {version}"
    if entries.get("CMAKE_MAKE_PROGRAM") != ninja:
        return f"it names the build program {entries.get('CMAKE_MAKE_PROGRAM')}, not {ninja}"
    if Path(entries.get("CMAKE_HOME_DIRECTORY", "")).resolve() != ROOT:
        return f"it was configured for the sources in {entries.get('CMAKE_HOME_DIRECTORY')}"
    return None


def _drop_cmake_state(build_dir: Path) -> None:
    """Removes what CMake derived from the old environment (the cache, the compiler and package
    checks, the generated build files) but keeps the targets' object files (CMakeFiles/*.dir):
    ninja rebuilds each one whose compile command or inputs changed, and reuses the rest."""
    (build_dir / "CMakeCache.txt").unlink()
    for entry in (build_dir / "CMakeFiles").glob("*"):
        if not entry.is_dir():
            entry.unlink()
        elif not entry.name.endswith(".dir"):
            shutil.rmtree(entry)


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        import pybind11

        ninja = shutil.which("ninja")
        if ninja is None:
            raise RuntimeError("building sparsekern needs ninja on PATH (pip install ninja)")
        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_dir = Path(self.build_temp).resolve() / ext.name
        build_dir.mkdir(parents=True, exist_ok=True)
        reason = _stale_cache_reason(build_dir, ninja)
        if reason:
            print(f"sparsekern: reconfiguring {build_dir}: {reason}", flush=True)
            _drop_cmake_state(build_dir)
        configure = [
            "cmake", "-S", str(ROOT), "-B", str(build_dir), "-G", "Ninja",
            # Named explicitly: CMake would otherwise keep the ninja it found the first time.
            f"-DCMAKE_MAKE_PROGRAM:FILEPATH={ninja}",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            "-DCMAKE_BUILD_TYPE=Release",
            "-DSPARSEKERN_BUILD_TESTS=OFF",
            f"-DSPARSEKERN_CUDA={os.environ.get('SPARSEKERN_CUDA', 'auto')}",
        ]
        subprocess.run(configure, check=True)
        subprocess.run(["cmake", "--build", str(build_dir), "--target", "_C"], check=True)


setup(ext_modules=[CMakeExtension("sparsekern._C")], cmdclass={"build_ext": CMakeBuild})
