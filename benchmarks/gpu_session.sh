#!/usr/bin/env bash
# One GPU session: build pyppo with its CUDA kernels, run the CUDA tests, the training
# sweep over the number of envs (eager, and compiled when triton is there), the GPU preset
# against the CPU default, then the kernel benchmarks and CUDA training (the train script,
# one NCCL rank under torchrun, the training and process benchmarks) and a backtest.
# Results go to $OUT (default ./bench-out): gpu.txt, bench.log, tests.log, train.log and one
# JSON per benchmark (build.log only when the build fails). The newest measurements come
# first, so that a session cut short still brings their numbers back; KERNELS=0 skips the
# kernel and older training benchmarks.
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
  -C cmake.define.CMAKE_CUDA_ARCHITECTURES="$ARCH" -e . > /tmp/pyppo-build.log 2>&1 \
  || { cp /tmp/pyppo-build.log "$OUT/build.log"; tail -40 "$OUT/build.log"; exit 1; }
$PY -c "import pyppo; assert pyppo.cuda_kernels_available(); print('CUDA kernels built')" || exit 1

step "cuda tests"
timeout 150 $PY -m pytest -q -m cuda -p no:cacheprovider tests 2>&1 | tail -25 | tee "$OUT/tests.log"
timeout 120 $PY -m pytest -q -p no:cacheprovider tests/test_compile.py 2>&1 | tail -5 \
  | tee -a "$OUT/tests.log"

step "training sweep over num_envs on cuda (eager)"
timeout 240 $PY benchmarks/bench_scale.py --device cuda --json "$OUT/scale_cuda.json" 2>&1 \
  | tee "$OUT/bench.log"
if $PY -c "import triton; print('triton', triton.__version__)" 2>&1 | tee -a "$OUT/gpu.txt"; then
  step "training sweep on cuda, compiled (reduce-overhead: CUDA graphs)"
  timeout 240 $PY benchmarks/bench_scale.py --device cuda --compile --num-envs 4096 16384 \
    --json "$OUT/scale_cuda_compile.json" 2>&1 | tee -a "$OUT/bench.log"
fi
step "GPU preset against the CPU default, seeds 0-2"
timeout 420 $PY benchmarks/bench_preset.py --json "$OUT/preset.json" 2>&1 | tee -a "$OUT/bench.log"
[ "${KERNELS:-1}" = 1 ] || { step done; exit 0; }

step "gae benchmark"
timeout 90 $PY benchmarks/bench_gae.py --device cuda --json "$OUT/gae_cuda.json" 2>&1 \
  | tee -a "$OUT/bench.log"
step "guard benchmark (1 GB of fp32 gradients)"
timeout 90 $PY benchmarks/bench_guard.py --device cuda --numel 268435456 --repeats 20 \
  --json "$OUT/guard_cuda.json" 2>&1 | tee -a "$OUT/bench.log"
# The chunk size is chosen per call; these show what the other choices would give.
for chunk in 65536 1048576; do
  step "guard benchmark, chunk $chunk"
  PYPPO_GUARD_CUDA_CHUNK=$chunk timeout 60 $PY benchmarks/bench_guard.py --device cuda \
    --numel 268435456 --repeats 10 2>&1 | grep -E "fused is" | sed "s/^/chunk $chunk: /" \
    | tee -a "$OUT/bench.log"
done

step "training benchmark on cuda"
timeout 120 $PY benchmarks/bench_training.py --device cuda --updates 4 \
  --json "$OUT/training_cuda.json" 2>&1 | tee -a "$OUT/bench.log"
step "train script on cuda"
timeout 90 $PY scripts/train_rl_agent.py --epochs 1 --device cuda --quiet \
  --run-dir /tmp/pyppo-gpu-run 2>&1 | tail -20 | tee "$OUT/train.log"
step "torchrun, one NCCL rank (one GPU holds only one)"
timeout 120 $PY -m torch.distributed.run --standalone --nproc_per_node=1 \
  scripts/train_rl_agent.py --epochs 1 --device cuda --quiet --run-dir /tmp/pyppo-gpu-nccl \
  2>&1 | tail -8 | tee -a "$OUT/train.log"
timeout 120 $PY benchmarks/bench_distributed.py --device cuda --rounds 1 --updates 3 2>&1 \
  | tee -a "$OUT/bench.log"
step "backtest and predictions on cuda"
timeout 90 $PY benchmarks/bench_backtest.py --device cuda 2>&1 | tee -a "$OUT/bench.log"
step "a universe on cuda: pooled and portfolio env steps (100 symbols x 4,400 bars)"
timeout 120 $PY benchmarks/bench_env.py --universe --device cuda --bars 4400 --steps 400 \
  --repeats 3 --num-envs 1024 --json "$OUT/env_universe_cuda.json" 2>&1 | tee -a "$OUT/bench.log"

if [ "${WITH_SANITIZE:-0}" = 1 ]; then
  step "sanitize and env benchmarks"
  timeout 60 $PY benchmarks/bench_kernels.py --device cuda --ops sanitize --sizes 1M 16M 64M \
    --repeats 20 --json "$OUT/sanitize_cuda.json" 2>&1 | tee -a "$OUT/bench.log"
  timeout 40 $PY benchmarks/bench_env.py --device cuda --json "$OUT/env_cuda.json" 2>&1 \
    | tee -a "$OUT/bench.log"
fi
step done
