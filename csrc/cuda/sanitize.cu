// CUDA sanitize: one grid-stride pass with 16-byte vector loads; counts are reduced per
// block and added to the int64 counts with one atomic per block (integers: deterministic).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "sanitize.h"
#include "vec_access.cuh"

namespace pyppo {
namespace {

constexpr int kThreads = 256;

template <typename T>
__device__ inline T sanitize_one(T v, float limit, unsigned& nonfinite, unsigned& clamped) {
  const float x = static_cast<float>(v);
  if (!isfinite(x)) {
    ++nonfinite;
    return T(0);
  }
  if (fabsf(x) > limit) {
    ++clamped;
    return static_cast<T>(copysignf(limit, x));
  }
  return v;
}

__device__ inline double sanitize_one(double x, double limit, unsigned& nonfinite,
                                      unsigned& clamped) {
  if (!isfinite(x)) {
    ++nonfinite;
    return 0.0;
  }
  if (fabs(x) > limit) {
    ++clamped;
    return copysign(limit, x);
  }
  return x;
}

template <typename T>
using limit_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

template <typename T, int VEC>
__global__ void sanitize_kernel(const T* __restrict__ src, T* dst, int64_t n, limit_t<T> limit,
                                unsigned long long* counts) {
  __shared__ unsigned scratch[kThreads / 32];
  unsigned nonfinite = 0, clamped = 0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t n_packs = n / VEC;
  for (int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; p < n_packs;
       p += stride) {
    auto pack = reinterpret_cast<const cuda::Pack<T, VEC>*>(src)[p];
#pragma unroll
    for (int k = 0; k < VEC; ++k) pack.v[k] = sanitize_one(pack.v[k], limit, nonfinite, clamped);
    reinterpret_cast<cuda::Pack<T, VEC>*>(dst)[p] = pack;
  }
  // The tail that does not fill a pack.
  for (int64_t i = n_packs * VEC + blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
       i < n; i += stride) {
    dst[i] = sanitize_one(src[i], limit, nonfinite, clamped);
  }
  nonfinite = cuda::block_sum(nonfinite, scratch);
  clamped = cuda::block_sum(clamped, scratch);
  if (threadIdx.x == 0) {
    if (nonfinite) atomicAdd(counts, static_cast<unsigned long long>(nonfinite));
    if (clamped) atomicAdd(counts + 1, static_cast<unsigned long long>(clamped));
  }
}

int max_resident_blocks(int threads) {
  int device = 0, sms = 0, per_sm = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&per_sm, cudaDevAttrMaxThreadsPerMultiProcessor, device));
  return sms * (per_sm / threads);
}

}  // namespace

void sanitize_cuda_kernel(const at::Tensor& src, const at::Tensor& dst, double limit,
                          const at::Tensor& counts) {
  const c10::cuda::CUDAGuard guard(src.device());
  const int64_t n = src.numel();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, src.scalar_type(), "sanitize", [&] {
    using T = scalar_t;
    constexpr int VEC = cuda::pack_size<T>();
    // Round the limit to the tensor's dtype first, as torch.clamp with a Python scalar does.
    const auto lim = static_cast<limit_t<T>>(static_cast<T>(limit));
    const T* in = src.const_data_ptr<T>();
    T* out = dst.mutable_data_ptr<T>();
    auto* c = reinterpret_cast<unsigned long long*>(counts.mutable_data_ptr<int64_t>());
    const bool vec_ok = cuda::is_aligned(in, 16) && cuda::is_aligned(out, 16);
    const int64_t work = vec_ok ? (n + VEC - 1) / VEC : n;
    const int blocks = static_cast<int>(std::min<int64_t>(
        std::max<int64_t>(1, (work + kThreads - 1) / kThreads), max_resident_blocks(kThreads)));
    if (vec_ok) {
      sanitize_kernel<T, VEC><<<blocks, kThreads, 0, stream>>>(in, out, n, lim, c);
    } else {
      sanitize_kernel<T, 1><<<blocks, kThreads, 0, stream>>>(in, out, n, lim, c);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace pyppo
