// gae: generalized advantage estimation over a (T, N) rollout; the contract is in
// docs/design.md, "Kernel contracts" (gae).
//
//   next_nonterminal = 1 - episode_starts[t+1]   (1 - last_episode_starts at t = T-1)
//   next_value       = values[t+1]               (last_values at t = T-1)
//   delta[t] = rewards[t] + gamma * next_value * next_nonterminal - values[t]
//   adv[t]   = delta[t] + gamma * lambda * next_nonterminal * adv[t+1]
//   returns  = adv + values
//
// Dtypes: rewards, values and last_values are all float32 or all float64 (the math runs in
// that dtype). episode_starts may be that same float dtype (used as a number, exactly as in
// the formula, like Stable-Baselines3's float arrays) or bool / uint8 (nonzero = an episode
// starts here). last_episode_starts may be any of those; it has only N elements, so it is
// converted to the value dtype up front and the kernels see it as "next_nonterminal" input.
//
// The device kernels share one contract so that the op logic (checks, contiguity, output
// allocation) is written once, below, for every device:
//   rewards, values, episode_starts: contiguous (T, N), T >= 1, N >= 1
//   last_values, last_nonterminal:   contiguous (N,) in the value dtype
//                                    (last_nonterminal = 1 - last_episode_starts)
//   advantages, returns:             contiguous (T, N) outputs in the value dtype
// The "into" form lets the rollout buffer write straight into its preallocated storage.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

#include "checks.h"

namespace pyppo {

using GaeKernel = void (*)(const at::Tensor& rewards, const at::Tensor& values,
                           const at::Tensor& episode_starts, const at::Tensor& last_values,
                           const at::Tensor& last_nonterminal, double gamma, double gae_lambda,
                           const at::Tensor& advantages, const at::Tensor& returns);

void gae_cpu_kernel(const at::Tensor& rewards, const at::Tensor& values,
                    const at::Tensor& episode_starts, const at::Tensor& last_values,
                    const at::Tensor& last_nonterminal, double gamma, double gae_lambda,
                    const at::Tensor& advantages, const at::Tensor& returns);
#ifdef PYPPO_WITH_CUDA
void gae_cuda_kernel(const at::Tensor& rewards, const at::Tensor& values,
                     const at::Tensor& episode_starts, const at::Tensor& last_values,
                     const at::Tensor& last_nonterminal, double gamma, double gae_lambda,
                     const at::Tensor& advantages, const at::Tensor& returns);
#endif

inline bool is_gae_value_dtype(at::ScalarType t) { return t == at::kFloat || t == at::kDouble; }

inline bool is_gae_start_dtype(at::ScalarType t, at::ScalarType value_dtype) {
  return t == value_dtype || t == at::kBool || t == at::kByte;
}

// Every argument check of the op, in one place; each failure names the argument.
inline void check_gae_args(const at::Tensor& rewards, const at::Tensor& values,
                           const at::Tensor& episode_starts, const at::Tensor& last_values,
                           const at::Tensor& last_episode_starts, double gamma,
                           double gae_lambda) {
  const at::ScalarType dt = rewards.scalar_type();
  TORCH_CHECK_TYPE(is_gae_value_dtype(dt), "pyppo.gae: rewards must be float32 or float64, got ",
                   dt);
  TORCH_CHECK_TYPE(values.scalar_type() == dt, "pyppo.gae: values must have the dtype of rewards (",
                   dt, "), got ", values.scalar_type());
  TORCH_CHECK_TYPE(last_values.scalar_type() == dt,
                   "pyppo.gae: last_values must have the dtype of rewards (", dt, "), got ",
                   last_values.scalar_type());
  TORCH_CHECK_TYPE(is_gae_start_dtype(episode_starts.scalar_type(), dt),
                   "pyppo.gae: episode_starts must be ", dt, ", bool or uint8, got ",
                   episode_starts.scalar_type());
  TORCH_CHECK_TYPE(is_gae_start_dtype(last_episode_starts.scalar_type(), dt),
                   "pyppo.gae: last_episode_starts must be ", dt, ", bool or uint8, got ",
                   last_episode_starts.scalar_type());

  TORCH_CHECK_VALUE(rewards.dim() == 2, "pyppo.gae: rewards must be a (T, N) tensor, got shape ",
                    rewards.sizes());
  TORCH_CHECK_VALUE(values.sizes() == rewards.sizes(), "pyppo.gae: values must have shape ",
                    rewards.sizes(), " like rewards, got ", values.sizes());
  TORCH_CHECK_VALUE(episode_starts.sizes() == rewards.sizes(),
                    "pyppo.gae: episode_starts must have shape ", rewards.sizes(),
                    " like rewards, got ", episode_starts.sizes());
  const int64_t n = rewards.size(1);
  TORCH_CHECK_VALUE(last_values.dim() == 1 && last_values.size(0) == n,
                    "pyppo.gae: last_values must have shape [", n, "], got ", last_values.sizes());
  TORCH_CHECK_VALUE(last_episode_starts.dim() == 1 && last_episode_starts.size(0) == n,
                    "pyppo.gae: last_episode_starts must have shape [", n, "], got ",
                    last_episode_starts.sizes());

  check_same_device(values, "values", rewards, "rewards");
  check_same_device(episode_starts, "episode_starts", rewards, "rewards");
  check_same_device(last_values, "last_values", rewards, "rewards");
  check_same_device(last_episode_starts, "last_episode_starts", rewards, "rewards");

  // [0, 1] is where the estimator means something; NaN fails both comparisons.
  TORCH_CHECK_VALUE(gamma >= 0.0 && gamma <= 1.0, "pyppo.gae: gamma must be in [0, 1], got ",
                    gamma);
  TORCH_CHECK_VALUE(gae_lambda >= 0.0 && gae_lambda <= 1.0,
                    "pyppo.gae: gae_lambda must be in [0, 1], got ", gae_lambda);
}

// The kernels' type switch, shared by every device: AT_DISPATCH_FLOATING_TYPES picks the
// value type T, and this calls fn(S{}) with the C++ type S of episode_starts: bool, uint8_t
// or T itself (the only other dtype check_gae_args lets through).
template <typename T, typename Fn>
void dispatch_start_type(at::ScalarType start_dtype, Fn&& fn) {
  switch (start_dtype) {
    case at::kBool:
      return fn(bool{});
    case at::kByte:
      return fn(uint8_t{});
    default:
      return fn(T{});
  }
}

// 1 - last_episode_starts in the value dtype (bool / uint8: nonzero means a start).
inline at::Tensor last_nonterminal_of(const at::Tensor& last_episode_starts,
                                      at::ScalarType value_dtype) {
  at::Tensor starts = last_episode_starts;
  if (starts.scalar_type() == at::kBool || starts.scalar_type() == at::kByte) {
    starts = starts.ne(0);
  }
  return (1 - starts.to(value_dtype)).contiguous();
}

// Checks the arguments and runs `kernel` into `advantages` / `returns` (contiguous (T, N)
// tensors of the value dtype on the inputs' device, checked by the caller).
inline void gae_into(GaeKernel kernel, const at::Tensor& rewards, const at::Tensor& values,
                     const at::Tensor& episode_starts, const at::Tensor& last_values,
                     const at::Tensor& last_episode_starts, double gamma, double gae_lambda,
                     const at::Tensor& advantages, const at::Tensor& returns) {
  check_gae_args(rewards, values, episode_starts, last_values, last_episode_starts, gamma,
                 gae_lambda);
  if (rewards.numel() == 0) return;
  kernel(rewards.contiguous(), values.contiguous(), episode_starts.contiguous(),
         last_values.contiguous(), last_nonterminal_of(last_episode_starts, rewards.scalar_type()),
         gamma, gae_lambda, advantages, returns);
}

template <GaeKernel kernel>
std::tuple<at::Tensor, at::Tensor> gae_op(const at::Tensor& rewards, const at::Tensor& values,
                                          const at::Tensor& episode_starts,
                                          const at::Tensor& last_values,
                                          const at::Tensor& last_episode_starts, double gamma,
                                          double gae_lambda) {
  // Checked before allocating so that a bad shape fails with the op's message.
  check_gae_args(rewards, values, episode_starts, last_values, last_episode_starts, gamma,
                 gae_lambda);
  at::Tensor advantages = at::empty(rewards.sizes(), rewards.options());
  at::Tensor returns = at::empty(rewards.sizes(), rewards.options());
  gae_into(kernel, rewards, values, episode_starts, last_values, last_episode_starts, gamma,
           gae_lambda, advantages, returns);
  return {advantages, returns};
}

}  // namespace pyppo
