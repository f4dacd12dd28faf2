// sanitize: NaN/+inf/-inf -> 0, finite values outside [-limit, limit] clamped, both counted.
//
// The device kernels share one contract so that the op logic (argument checks, contiguity,
// in-place vs out-of-place) is written once, below, for every device:
//   src, dst: contiguous, same dtype and numel > 0; dst may alias src.
//   counts:   int64 tensor of 2 on the same device; the kernel ADDS [nonfinite, clamped].
// Adding rather than overwriting lets the rollout buffer keep running totals on the device.
#pragma once

#include <ATen/ATen.h>

#include "checks.h"

namespace pyppo {

using SanitizeKernel = void (*)(const at::Tensor& src, const at::Tensor& dst, double limit,
                                const at::Tensor& counts);

void sanitize_cpu_kernel(const at::Tensor& src, const at::Tensor& dst, double limit,
                         const at::Tensor& counts);
#ifdef PYPPO_WITH_CUDA
void sanitize_cuda_kernel(const at::Tensor& src, const at::Tensor& dst, double limit,
                          const at::Tensor& counts);
#endif

inline at::Tensor new_sanitize_counts(const at::Tensor& like) {
  return at::zeros({2}, like.options().dtype(at::kLong));
}

// Sanitizes x in place (also when x is not contiguous) and adds the counts into `counts`.
inline void sanitize_into(SanitizeKernel kernel, const at::Tensor& x, double limit,
                          const at::Tensor& counts) {
  check_float_tensor(x, "x");
  check_limit(limit);
  if (x.numel() == 0) return;
  if (x.is_contiguous()) {
    kernel(x, x, limit, counts);
  } else {
    at::Tensor tmp = x.contiguous();
    kernel(tmp, tmp, limit, counts);
    x.copy_(tmp);
  }
}

template <SanitizeKernel kernel>
at::Tensor sanitize_inplace_op(at::Tensor x, double limit) {
  at::Tensor counts = new_sanitize_counts(x);
  sanitize_into(kernel, x, limit, counts);
  return counts;
}

template <SanitizeKernel kernel>
std::tuple<at::Tensor, at::Tensor> sanitize_op(const at::Tensor& x, double limit) {
  check_float_tensor(x, "x");
  check_limit(limit);
  at::Tensor counts = new_sanitize_counts(x);
  at::Tensor y = at::empty(x.sizes(), x.options());
  if (x.numel() > 0) kernel(x.contiguous(), y, limit, counts);
  return {y, counts};
}

}  // namespace pyppo
