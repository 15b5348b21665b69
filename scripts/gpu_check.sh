#!/usr/bin/env bash
# One command for a CUDA machine (no network needed: Python, torch with CUDA, nvcc, pybind11,
# cmake and ninja already installed): builds sparsekern._C with the CUDA kernels in place,
# runs tests/test_cuda.py, then a quick benchmark (scripts/gpu_bench.py). Writes logs and a
# summary to $OUT (gpu_summary.txt) when OUT is set. About 2-4 minutes on one H100.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-build/gpu_check}"
mkdir -p "$OUT_DIR"
SUMMARY="$OUT_DIR/gpu_summary.txt"
: > "$SUMMARY"
note() { echo "$*" | tee -a "$SUMMARY"; }

command -v nvcc > /dev/null || export PATH="$PATH:/usr/local/cuda/bin"
note "== gpu_check $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?') (+ working tree)"
note "$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -4)"
note "$(nvcc --version 2>&1 | tail -1)"
note "$(python -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())' 2>&1)"

# Build in place (the checkout's sparsekern/ gets the CUDA _C; `python -m pytest` below puts the
# checkout first on sys.path). SPARSEKERN_CUDA=on: fail loudly rather than build CPU-only.
start=$(date +%s)
if SPARSEKERN_CUDA=on timeout 180 python setup.py -q build_ext --inplace > "$OUT_DIR/build.log" 2>&1; then
  note "build: ok in $(( $(date +%s) - start )) s"
else
  note "build: FAILED (exit $?), last lines of build.log:"
  tail -40 "$OUT_DIR/build.log" | tee -a "$SUMMARY"
  exit 1
fi
note "$(python -c 'import sparsekern, sys; from sparsekern import _backend as b; print("with_cuda", b._C.with_cuda, "ops_cuda loaded", "sparsekern.ops_cuda" in sys.modules)' 2>&1)"

status=0
timeout 150 python -m pytest tests/test_cuda.py -q -rs -p no:cacheprovider --maxfail=20 \
  > "$OUT_DIR/test_cuda.log" 2>&1 || status=$?
note "tests/test_cuda.py: exit $status: $(tail -1 "$OUT_DIR/test_cuda.log")"
[ "$status" -eq 0 ] || grep -E "^(FAILED|ERROR)|Error|error" "$OUT_DIR/test_cuda.log" | head -30 | tee -a "$SUMMARY"

timeout 150 python scripts/gpu_bench.py --out "$OUT_DIR/bench.txt" > "$OUT_DIR/bench.log" 2>&1 || status=$?
note "benchmark: $(tail -1 "$OUT_DIR/bench.log" | head -c 200)"
cat "$OUT_DIR/bench.txt" >> "$SUMMARY" 2>/dev/null || tail -30 "$OUT_DIR/bench.log" | tee -a "$SUMMARY"
note "== done in $(( $(date +%s) - start )) s, status $status"
exit "$status"
