// CPU registration of guard_gradients_ and count_nonfinite; the kernels are in
// kernels/guard_kernel.cpp.
#include <torch/library.h>

#include "cpu/cpu_dispatch.h"
#include "guard.h"

PYPPO_DECLARE_CPU_KERNEL(void, guard_gradients,
                         (const std::vector<at::Tensor>& grads,
                          const std::vector<int64_t>& group_ids, int64_t num_groups,
                          int64_t num_members, double max_norm, bool skip_nonfinite,
                          const pyppo::GuardOutputs& out));
PYPPO_DECLARE_CPU_KERNEL(void, count_nonfinite,
                         (const std::vector<at::Tensor>& tensors, const at::Tensor& counts));

namespace pyppo {

void guard_gradients_cpu_kernel(const std::vector<at::Tensor>& grads,
                                const std::vector<int64_t>& group_ids, int64_t num_groups,
                                int64_t num_members, double max_norm, bool skip_nonfinite,
                                const GuardOutputs& out) {
  PYPPO_CPU_DISPATCH(guard_gradients, grads, group_ids, num_groups, num_members, max_norm,
                     skip_nonfinite, out);
}

void count_nonfinite_cpu_kernel(const std::vector<at::Tensor>& tensors, const at::Tensor& counts) {
  PYPPO_CPU_DISPATCH(count_nonfinite, tensors, counts);
}

TORCH_LIBRARY_IMPL(pyppo, CPU, m) {
  m.impl("guard_gradients_", &guard_gradients_op<guard_gradients_cpu_kernel>);
  m.impl("count_nonfinite", &count_nonfinite_op<count_nonfinite_cpu_kernel>);
}

namespace {

[[noreturn]] void unsupported_device(const at::Tensor& t) {
  TORCH_CHECK(false, "pyppo: the guard kernels support CPU and CUDA tensors, got a tensor on ",
              t.device());
}

void guard_gradients_unsupported(const std::vector<at::Tensor>& grads, const std::vector<int64_t>&,
                                 int64_t, int64_t, double, bool, const GuardOutputs&) {
  unsupported_device(grads[0]);
}

void count_nonfinite_unsupported(const std::vector<at::Tensor>& tensors, const at::Tensor&) {
  unsupported_device(tensors[0]);
}

}  // namespace

// An empty tensor list carries no device to dispatch on; the dispatcher then uses the
// CompositeExplicitAutograd kernel, which checks the arguments and returns the neutral
// result (and says which devices are supported when it meets any other backend).
TORCH_LIBRARY_IMPL(pyppo, CompositeExplicitAutograd, m) {
  m.impl("guard_gradients_", &guard_gradients_op<guard_gradients_unsupported>);
  m.impl("count_nonfinite", &count_nonfinite_op<count_nonfinite_unsupported>);
}

}  // namespace pyppo
