#!/usr/bin/env bash
# The one prepared GPU check (an H200 lent through the device tool): build the
# CUDA module for sm_90, run the gpu-marked tests and the GPU benchmarks, and
# write logs and tables to $OUT. Budget: under 8 minutes.
set -uo pipefail
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q torch==2.13.0 >"$OUT/pip.log" 2>&1 || true
CMAKE_ARGS="-DBINLLM_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90" python3 -m pip install -q ".[test]" >>"$OUT/pip.log" 2>&1 \
  || { tail -50 "$OUT/pip.log"; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
binllm doctor | tee -a "$OUT/gpu.txt"
timeout 240 pytest -m gpu -q tests/test_cuda.py 2>&1 | tee "$OUT/gpu_tests.log"
timeout 200 python3 bench/bench_gpu.py 2>&1 | tee "$OUT/gpu_bench.log"
