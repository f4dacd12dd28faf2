// CUDA gae. The recurrence is backward in t and independent across envs, so the natural
// kernel is one thread per env walking t = T-1 .. 0; consecutive threads take consecutive
// envs, so every step is one coalesced row access per warp.
//
// That alone cannot fill a GPU when N is small (N = 64 is two warps), so the time axis is
// also cut into C chunks. Within a chunk the advantage is an affine function of the
// advantage just after it:
//     adv[t] = delta[t] + c[t] * adv[t+1],   c[t] = gamma * lambda * next_nonterminal[t]
// so chunk k maps adv[end_k] to adv[start_k] = B_k + A_k * adv[end_k]. Three launches:
//   1. summary: one thread per (chunk, env) folds its chunk into (A_k, B_k)
//   2. carry:   one thread per env composes the chunks from the last to the first,
//               recording the advantage that enters each chunk (adv[T] = 0)
//   3. final:   one thread per (chunk, env) rescans its chunk from that carry and writes
//               advantages and returns
// With C = 1 only the final pass runs (the plain per-env scan). The chunked path reads the
// inputs twice; pass 1 walks chunks in ascending time and pass 3 in descending time, so the
// chunks read last by pass 1 are read first by pass 3 while they are still in L2.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <type_traits>

#include "gae.h"

namespace pyppo {
namespace {

constexpr int kThreads = 256;
// Chunks shorter than this spend more on the summaries than they gain in parallelism.
constexpr int64_t kMinChunk = 16;
// Bounds the serial loop of the carry pass (and the workspace).
constexpr int64_t kMaxChunks = 4096;

template <typename T, typename S>
__device__ inline T nonterminal(S start) {
  if constexpr (std::is_same_v<S, T>) {
    return T(1) - start;
  } else {
    return start != 0 ? T(0) : T(1);  // bool / uint8: nonzero means an episode starts here
  }
}

// Where a thread works: env n, time steps [t0, t1) of chunk k.
struct Chunk {
  int64_t n, k, t0, t1;
};

__device__ inline Chunk chunk_of(int64_t g, int64_t steps, int64_t num_envs, int64_t len,
                                 int64_t num_chunks, bool reversed) {
  Chunk c;
  c.n = g % num_envs;
  c.k = g / num_envs;
  if (reversed) c.k = num_chunks - 1 - c.k;
  c.t0 = c.k * len;
  c.t1 = min(steps, c.t0 + len);
  return c;
}

// The successor of the chunk's last step: the next row, or the bootstrap at t = T-1.
template <typename T, typename S>
__device__ inline void successor(const Chunk& c, const T* values, const S* starts,
                                 const T* last_values, const T* last_nonterminal, int64_t steps,
                                 int64_t num_envs, T& next_value, T& next_nonterminal) {
  if (c.t1 == steps) {
    next_value = last_values[c.n];
    next_nonterminal = last_nonterminal[c.n];
  } else {
    const int64_t i = c.t1 * num_envs + c.n;
    next_value = values[i];
    next_nonterminal = nonterminal<T>(starts[i]);
  }
}

template <typename T, typename S>
__global__ void gae_summary_kernel(const T* __restrict__ rewards, const T* __restrict__ values,
                                   const S* __restrict__ starts, const T* __restrict__ last_values,
                                   const T* __restrict__ last_nonterminal, T gamma,
                                   T gamma_lambda, int64_t steps, int64_t num_envs, int64_t len,
                                   int64_t num_chunks, T* __restrict__ coef,
                                   T* __restrict__ offset) {
  const int64_t g = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (g >= num_envs * num_chunks) return;
  const Chunk c = chunk_of(g, steps, num_envs, len, num_chunks, /*reversed=*/false);
  T next_value, next_nonterminal;
  successor(c, values, starts, last_values, last_nonterminal, steps, num_envs, next_value,
            next_nonterminal);
  T a = T(1), b = T(0);
#pragma unroll 4
  for (int64_t t = c.t1 - 1; t >= c.t0; --t) {
    const int64_t i = t * num_envs + c.n;
    const T v = values[i];
    const T delta = rewards[i] + gamma * next_value * next_nonterminal - v;
    const T decay = gamma_lambda * next_nonterminal;
    b = delta + decay * b;
    a = decay * a;
    next_value = v;
    next_nonterminal = nonterminal<T>(starts[i]);
  }
  // Stored chunk-major ([k][n]), the order of g: coalesced.
  coef[g] = a;
  offset[g] = b;
}

// Turns coef[k][n] into the advantage entering chunk k from its end (in place).
template <typename T>
__global__ void gae_carry_kernel(T* __restrict__ coef, const T* __restrict__ offset,
                                 int64_t num_envs, int64_t num_chunks) {
  const int64_t n = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (n >= num_envs) return;
  T carry = T(0);  // adv[T]: nothing follows the rollout (the bootstrap is in delta[T-1])
  for (int64_t k = num_chunks - 1; k >= 0; --k) {
    const int64_t i = k * num_envs + n;
    const T a = coef[i];
    coef[i] = carry;
    carry = offset[i] + a * carry;
  }
}

template <typename T, typename S>
__global__ void gae_final_kernel(const T* __restrict__ rewards, const T* __restrict__ values,
                                 const S* __restrict__ starts, const T* __restrict__ last_values,
                                 const T* __restrict__ last_nonterminal, T gamma, T gamma_lambda,
                                 int64_t steps, int64_t num_envs, int64_t len, int64_t num_chunks,
                                 const T* __restrict__ carry, T* __restrict__ advantages,
                                 T* __restrict__ returns) {
  const int64_t g = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (g >= num_envs * num_chunks) return;
  const Chunk c = chunk_of(g, steps, num_envs, len, num_chunks, /*reversed=*/true);
  T next_value, next_nonterminal;
  successor(c, values, starts, last_values, last_nonterminal, steps, num_envs, next_value,
            next_nonterminal);
  T adv = carry == nullptr ? T(0) : carry[c.k * num_envs + c.n];
#pragma unroll 4
  for (int64_t t = c.t1 - 1; t >= c.t0; --t) {
    const int64_t i = t * num_envs + c.n;
    const T v = values[i];
    // Same operation order as the reference loop.
    const T delta = rewards[i] + gamma * next_value * next_nonterminal - v;
    adv = delta + gamma_lambda * next_nonterminal * adv;
    advantages[i] = adv;
    returns[i] = adv + v;
    next_value = v;
    next_nonterminal = nonterminal<T>(starts[i]);
  }
}

// Enough (chunk, env) threads to fill the device once, with chunks of at least kMinChunk.
int64_t choose_num_chunks(int64_t steps, int64_t num_envs) {
  int device = 0, sms = 0, per_sm = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&per_sm, cudaDevAttrMaxThreadsPerMultiProcessor, device));
  const int64_t resident = static_cast<int64_t>(sms) * per_sm;
  const int64_t wanted = (resident + num_envs - 1) / num_envs;
  return std::clamp<int64_t>(std::min(wanted, steps / kMinChunk), 1, kMaxChunks);
}

unsigned grid_for(int64_t threads) {
  return static_cast<unsigned>((threads + kThreads - 1) / kThreads);
}

template <typename T, typename S>
void gae_cuda_typed(const at::Tensor& rewards, const at::Tensor& values,
                    const at::Tensor& episode_starts, const at::Tensor& last_values,
                    const at::Tensor& last_nonterminal, double gamma, double gae_lambda,
                    const at::Tensor& advantages, const at::Tensor& returns) {
  const int64_t steps = rewards.size(0), num_envs = rewards.size(1);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const T* r = rewards.const_data_ptr<T>();
  const T* v = values.const_data_ptr<T>();
  const S* s = episode_starts.const_data_ptr<S>();
  const T* lv = last_values.const_data_ptr<T>();
  const T* lnt = last_nonterminal.const_data_ptr<T>();
  // gamma * lambda is formed in double and rounded once, as a Python scalar product would be.
  const T g = static_cast<T>(gamma), gl = static_cast<T>(gamma * gae_lambda);

  const int64_t num_chunks = choose_num_chunks(steps, num_envs);
  const int64_t len = (steps + num_chunks - 1) / num_chunks;
  const int64_t chunks = (steps + len - 1) / len;  // after rounding len up, none is empty
  const int64_t threads = chunks * num_envs;
  const T* carry = nullptr;
  at::Tensor workspace;
  if (chunks > 1) {
    workspace = at::empty({2, chunks, num_envs}, rewards.options());
    T* coef = workspace.select(0, 0).mutable_data_ptr<T>();
    T* offset = workspace.select(0, 1).mutable_data_ptr<T>();
    gae_summary_kernel<T, S><<<grid_for(threads), kThreads, 0, stream>>>(
        r, v, s, lv, lnt, g, gl, steps, num_envs, len, chunks, coef, offset);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    gae_carry_kernel<T><<<grid_for(num_envs), kThreads, 0, stream>>>(coef, offset, num_envs,
                                                                     chunks);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    carry = coef;
  }
  gae_final_kernel<T, S><<<grid_for(threads), kThreads, 0, stream>>>(
      r, v, s, lv, lnt, g, gl, steps, num_envs, len, chunks, carry,
      advantages.mutable_data_ptr<T>(), returns.mutable_data_ptr<T>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void gae_cuda_kernel(const at::Tensor& rewards, const at::Tensor& values,
                     const at::Tensor& episode_starts, const at::Tensor& last_values,
                     const at::Tensor& last_nonterminal, double gamma, double gae_lambda,
                     const at::Tensor& advantages, const at::Tensor& returns) {
  const c10::cuda::CUDAGuard guard(rewards.device());
  AT_DISPATCH_FLOATING_TYPES(rewards.scalar_type(), "gae", [&] {
    switch (episode_starts.scalar_type()) {
      case at::kBool:
        gae_cuda_typed<scalar_t, bool>(rewards, values, episode_starts, last_values,
                                       last_nonterminal, gamma, gae_lambda, advantages, returns);
        break;
      case at::kByte:
        gae_cuda_typed<scalar_t, uint8_t>(rewards, values, episode_starts, last_values,
                                          last_nonterminal, gamma, gae_lambda, advantages,
                                          returns);
        break;
      default:  // the value dtype (checked by check_gae_args)
        gae_cuda_typed<scalar_t, scalar_t>(rewards, values, episode_starts, last_values,
                                           last_nonterminal, gamma, gae_lambda, advantages,
                                           returns);
    }
  });
}

}  // namespace pyppo
