#!/usr/bin/env bash
# The GPU checks of the gae / RolloutBuffer work, as one script for a machine with a CUDA GPU,
# nvcc and a CUDA build of torch: build pyppo with its CUDA kernels, run the tests (CUDA ones
# included) and the CUDA benchmark. Results go to ${OUT:-bench-out}.
set -uo pipefail
OUT=${OUT:-bench-out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
$PY -c "import torch; print('torch', torch.__version__, torch.version.cuda)"
export PYPPO_CUDA=ON CMAKE_BUILD_PARALLEL_LEVEL=$(nproc)
time $PY -m pip install -q --no-build-isolation --no-deps -C build-dir=/tmp/pyppo-build \
  -C cmake.define.CMAKE_CUDA_ARCHITECTURES=90 -e . 2>&1 | tail -20 || exit 1
$PY -c "import pyppo; print('cuda kernels:', pyppo.cuda_kernels_available())"
PYTHONUNBUFFERED=1 $PY -m pytest -q -rs tests/test_gae.py tests/test_buffer.py 2>&1 \
  | tee "$OUT/pytest.txt" | tail -25
PYTHONUNBUFFERED=1 $PY benchmarks/bench_gae.py --device cuda --json "$OUT/bench_cuda.json" \
  2>&1 | tee "$OUT/bench_cuda.txt"
