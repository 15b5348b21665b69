#!/usr/bin/env bash
# One command for a CUDA machine (no network needed: Python with torch for CUDA, nvcc, pybind11,
# cmake and ninja already installed): builds sparsekern._C with the CUDA kernels in place,
# runs tests/test_kernels_cuda.py, then the GPU benchmark (benchmarks/test_gpu.py). Writes
# gpu_summary.txt and one log per step to $OUT (default build/gpu_check).
#
# Build and tests are capped at STEP_SECONDS each (default 120), the benchmark at
# BENCH_SECONDS (240; 40 cases took about 30 s on an H200). Steps are stopped with SIGINT and
# Python runs unbuffered with faulthandler, so a stopped or crashed step still leaves its log,
# and the benchmark rows measured so far are already in the summary.
#   PYTHON     the interpreter with torch (default python3)
#   CUDA_ARCH  e.g. 90 (default: the first GPU's compute capability, else 90)
#   VARIANTS=1 also run scripts/gpu_variants.py (VARIANTS_SECONDS, default 90)
#   SANITIZE=0 skip compute-sanitizer's memcheck (SANITIZE_SECONDS, default 90)
# On an H200 (2026-12-04) the whole check took about 100 s plus a minute of start-up.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
STEP_SECONDS=${STEP_SECONDS:-120}
OUT_DIR="${OUT:-build/gpu_check}"
mkdir -p "$OUT_DIR"
SUMMARY="$OUT_DIR/gpu_summary.txt"
: > "$SUMMARY"
note() { echo "$*" | tee -a "$SUMMARY"; }
step() { timeout -s INT "$STEP_SECONDS" "$@"; }
export PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1  # a crash still prints the Python stack

command -v nvcc > /dev/null || export PATH="$PATH:/usr/local/cuda/bin"
start=$(date +%s)
note "== gpu_check $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?') (+ working tree)"
note "$(nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader 2>&1 | head -4)"
note "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2), $(nproc) threads, amx: $(grep -m1 -o 'amx_bf16' /proc/cpuinfo || echo no)"
note "$(nvcc --version 2>&1 | tail -1)"
note "$("$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(), torch.cuda.get_device_properties(0) if torch.cuda.is_available() else "")' 2>&1)"
arch=${CUDA_ARCH:-$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .')}
arch=${arch:-90}

# CMake directly (not pip/setup.py: pyproject's license field needs setuptools >= 77). The
# module lands in the checkout's sparsekern/, which `python -m pytest` imports first.
# SPARSEKERN_CUDA=on: fail loudly rather than build CPU-only.
if step cmake -S . -B build/gpu -G Ninja -DPython_EXECUTABLE="$(command -v "$PY")" \
     -Dpybind11_DIR="$("$PY" -m pybind11 --cmakedir)" -DCMAKE_LIBRARY_OUTPUT_DIRECTORY="$PWD/sparsekern" \
     -DSPARSEKERN_CUDA=on -DSPARSEKERN_BUILD_TESTS=OFF -DCMAKE_CUDA_ARCHITECTURES="$arch" > "$OUT_DIR/build.log" 2>&1 &&
   step cmake --build build/gpu >> "$OUT_DIR/build.log" 2>&1; then
  note "build: ok (sm_$arch) in $(( $(date +%s) - start )) s"
else
  note "build: FAILED (exit $?), last lines of build.log:"
  tail -40 "$OUT_DIR/build.log" | tee -a "$SUMMARY"
  exit 1
fi
note "$("$PY" -c 'import sparsekern, sys; from sparsekern import _backend as b; print("with_cuda", b._C.with_cuda, "ops_cuda loaded", "sparsekern.ops_cuda" in sys.modules)' 2>&1)"

status=0
step "$PY" -m pytest tests/test_kernels_cuda.py -q -rs -p no:cacheprovider --maxfail=20 > "$OUT_DIR/test_cuda.log" 2>&1 || status=$?
note "tests/test_kernels_cuda.py: exit $status: $(tail -1 "$OUT_DIR/test_cuda.log")"
[ "$status" -eq 0 ] || grep -E "^(FAILED|ERROR)|Error|error" "$OUT_DIR/test_cuda.log" | head -30 | tee -a "$SUMMARY"

note "benchmark (speedup of sparsekern over each baseline; CUDA graphs, medians):"
bench=0
BENCH_SECONDS=${BENCH_SECONDS:-240}
timeout -s INT "$BENCH_SECONDS" "$PY" -m pytest benchmarks/test_gpu.py -s -v -p no:cacheprovider ${BENCH_ARGS:-} 2>&1 | tee "$OUT_DIR/bench.log" |
  { grep --line-buffered -E '^[0-9]+x[0-9]+-|unavailable|^(FAILED|ERROR)|^gpu ' >> "$SUMMARY" || true; } || bench=$?
[ "$bench" -eq 0 ] || status=$bench
note "benchmark: exit $bench: $(tail -1 "$OUT_DIR/bench.log")"
# VARIANTS=1: scripts/gpu_variants.py, the alternatives behind the CUDA paths' choices.
if [ "${VARIANTS:-0}" = 1 ]; then
  timeout -s INT "${VARIANTS_SECONDS:-90}" "$PY" scripts/gpu_variants.py > "$OUT_DIR/variants.log" 2>&1
  note "variants: exit $?"; grep -E "^(csr|2:4)|Error" "$OUT_DIR/variants.log" | tee -a "$SUMMARY" > /dev/null
fi

# Last, as it is slow: compute-sanitizer's memcheck over one dtype pair of the reference tests
# (out-of-bounds or misaligned device accesses, errors from the launches). SANITIZE=0 skips it.
if [ "${SANITIZE:-1}" = 1 ] && command -v compute-sanitizer > /dev/null; then
  timeout -s INT "${SANITIZE_SECONDS:-90}" compute-sanitizer --tool memcheck --error-exitcode 9 \
    "$PY" -m pytest tests/test_kernels_cuda.py -q -p no:cacheprovider -k "matches_reference and x_float16 and w_bfloat16" \
    > "$OUT_DIR/memcheck.log" 2>&1
  note "memcheck: exit $?: $(grep -E "ERROR SUMMARY|passed|failed" "$OUT_DIR/memcheck.log" | tail -2 | tr '\n' ' ')"
fi
note "== done in $(( $(date +%s) - start )) s, status $status"
exit "$status"
