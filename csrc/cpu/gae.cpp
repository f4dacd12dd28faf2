// CPU registration of gae; the kernel itself is in kernels/gae_kernel.cpp.
#include <torch/library.h>

#include "cpu/cpu_dispatch.h"
#include "gae.h"

PYPPO_DECLARE_CPU_KERNEL(void, gae_contiguous,
                         (const at::Tensor& rewards, const at::Tensor& values,
                          const at::Tensor& episode_starts, const at::Tensor& last_values,
                          const at::Tensor& last_nonterminal, double gamma, double gae_lambda,
                          const at::Tensor& advantages, const at::Tensor& returns));

namespace pyppo {

void gae_cpu_kernel(const at::Tensor& rewards, const at::Tensor& values,
                    const at::Tensor& episode_starts, const at::Tensor& last_values,
                    const at::Tensor& last_nonterminal, double gamma, double gae_lambda,
                    const at::Tensor& advantages, const at::Tensor& returns) {
  PYPPO_CPU_DISPATCH(gae_contiguous, rewards, values, episode_starts, last_values,
                     last_nonterminal, gamma, gae_lambda, advantages, returns);
}

TORCH_LIBRARY_IMPL(pyppo, CPU, m) { m.impl("gae", &gae_op<gae_cpu_kernel>); }

}  // namespace pyppo
