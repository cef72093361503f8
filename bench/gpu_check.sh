#!/usr/bin/env bash
# The one prepared GPU check (an H200 lent through the device tool): build the
# CUDA module for sm_90, run the gpu-marked tests and the GPU benchmarks, and
# write logs and tables to $OUT. Budget: under 8 minutes. The device image has
# no network but already holds torch, pybind11, scikit-build-core, cmake,
# ninja and pytest, so the build uses them in place and fetches nothing.
set -uo pipefail
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
start=$(date +%s)
CMAKE_ARGS="-DBINLLM_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90" \
  python3 -m pip install -q --no-build-isolation --no-deps . >"$OUT/build.log" 2>&1 \
  || { tail -60 "$OUT/build.log"; exit 1; }
echo "build: $(( $(date +%s) - start ))s" | tee "$OUT/gpu.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$OUT/gpu.txt"
python3 -m binllm doctor | tee -a "$OUT/gpu.txt"
# run from /tmp so the installed package, not the source folder, is imported
(cd /tmp && timeout 240 python3 -m pytest -p no:cacheprovider -m gpu -q "$OLDPWD/tests/test_cuda.py" \
  -o addopts="" --rootdir "$OLDPWD") 2>&1 | tee "$OUT/gpu_tests.log"
OUT="$OUT" timeout 200 python3 bench/bench_gpu.py 2>&1 | tee "$OUT/gpu_bench.log"
echo "total: $(( $(date +%s) - start ))s" | tee -a "$OUT/gpu.txt"
