#!/usr/bin/env bash
# One GPU session: build pyppo with its CUDA kernels, run the CUDA tests, the kernel
# benchmarks and a short CUDA training run. Results go to $OUT (default ./bench-out).
#   bash benchmarks/gpu_session.sh     # on a machine with a GPU, torch, nvcc, cmake, ninja
set -uo pipefail
OUT=${OUT:-bench-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYPPO_CUDA=ON CMAKE_BUILD_PARALLEL_LEVEL=$(nproc)
PY=${PYTHON:-python3}
ARCH=${CUDA_ARCH:-90}
step() { echo "== $1 ($(date +%T))"; }

step gpu
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/gpu.txt"

step build
$PY -m pip install --no-build-isolation --no-deps -q -C build-dir=build/gpu \
  -C cmake.define.CMAKE_CUDA_ARCHITECTURES="$ARCH" -e . > "$OUT/build.log" 2>&1 \
  || { tail -40 "$OUT/build.log"; exit 1; }
$PY -c "import pyppo; assert pyppo.cuda_kernels_available(); print('CUDA kernels built')" || exit 1

step "cuda tests"
timeout 120 $PY -m pytest -q -m cuda -p no:cacheprovider tests 2>&1 | tail -15 | tee "$OUT/tests.log"

step "sanitize benchmark"
timeout 60 $PY benchmarks/bench_kernels.py --device cuda --sizes 1M 16M 64M --repeats 20 \
  --json "$OUT/sanitize_cuda.json" 2>&1 | tee "$OUT/bench.log"
step "guard benchmark (1 GB of fp32 gradients)"
timeout 90 $PY benchmarks/bench_guard.py --device cuda --numel 268435456 --repeats 20 \
  --json "$OUT/guard_cuda.json" 2>&1 | tee -a "$OUT/bench.log"
step "gae benchmark"
timeout 60 $PY benchmarks/bench_gae.py --device cuda --json "$OUT/gae_cuda.json" 2>&1 \
  | tee -a "$OUT/bench.log"
step "env benchmark"
timeout 40 $PY benchmarks/bench_env.py --device cuda --json "$OUT/env_cuda.json" 2>&1 \
  | tee -a "$OUT/bench.log"
step "training on cuda"
timeout 90 $PY scripts/train_rl_agent.py --epochs 2 --device cuda --quiet \
  --run-dir /tmp/pyppo-gpu-run 2>&1 | tail -20 | tee "$OUT/train.log"
step done
