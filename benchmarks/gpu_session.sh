#!/usr/bin/env bash
# One GPU session: build pyppo with its CUDA kernels, run the whole test suite (CUDA tests
# included) and the kernel benchmarks on the GPU. Results go to $OUT (default ./bench-out).
#   bash benchmarks/gpu_session.sh            # on a machine with a GPU, torch, nvcc, cmake
set -uo pipefail
OUT=${OUT:-bench-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYPPO_CUDA=ON
PY=${PYTHON:-python3}
ARCH=${CUDA_ARCH:-90}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/gpu.txt"

start=$SECONDS
$PY -m pip install --no-build-isolation --no-deps -q -C build-dir=build/gpu \
  -C cmake.define.CMAKE_CUDA_ARCHITECTURES="$ARCH" -e . > "$OUT/build.log" 2>&1 \
  || { tail -40 "$OUT/build.log"; exit 1; }
echo "build: $((SECONDS - start)) s"
$PY -c "import pyppo; assert pyppo.cuda_kernels_available()" || exit 1

$PY -m pytest -q -x -p no:cacheprovider tests 2>&1 | tail -25 | tee "$OUT/tests.log"

for bench in "$@"; do
  echo "== $bench"
  $PY $bench 2>&1 | tee -a "$OUT/bench.log"
done
