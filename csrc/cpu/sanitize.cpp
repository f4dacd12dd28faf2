// CPU registration of sanitize; the kernel itself is in kernels/sanitize_kernel.cpp.
#include <torch/library.h>

#include "cpu/cpu_dispatch.h"
#include "sanitize.h"

PYPPO_DECLARE_CPU_KERNEL(void, sanitize_contiguous,
                         (const at::Tensor& src, const at::Tensor& dst, double limit,
                          int64_t* counts));

namespace pyppo {

void sanitize_cpu_kernel(const at::Tensor& src, const at::Tensor& dst, double limit,
                         const at::Tensor& counts) {
  PYPPO_CPU_DISPATCH(sanitize_contiguous, src, dst, limit, counts.mutable_data_ptr<int64_t>());
}

TORCH_LIBRARY_IMPL(pyppo, CPU, m) {
  m.impl("sanitize_", &sanitize_inplace_op<sanitize_cpu_kernel>);
  m.impl("sanitize", &sanitize_op<sanitize_cpu_kernel>);
}

}  // namespace pyppo
