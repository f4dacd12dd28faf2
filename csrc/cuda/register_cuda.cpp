// CUDA implementations of the ops, registered from a C++ file so that the .cu files
// only need ATen.
#include <torch/library.h>

#include "gae.h"
#include "guard.h"
#include "sanitize.h"

namespace pyppo {

TORCH_LIBRARY_IMPL(pyppo, CUDA, m) {
  m.impl("sanitize_", &sanitize_inplace_op<sanitize_cuda_kernel>);
  m.impl("sanitize", &sanitize_op<sanitize_cuda_kernel>);
  m.impl("gae", &gae_op<gae_cuda_kernel>);
  m.impl("guard_gradients_", &guard_gradients_op<guard_gradients_cuda_kernel>);
  m.impl("count_nonfinite", &count_nonfinite_op<count_nonfinite_cuda_kernel>);
}

}  // namespace pyppo
