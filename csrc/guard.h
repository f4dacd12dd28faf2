// guard_gradients_: one multi-tensor pass over a list of gradients that counts and zeroes
// NaN/+inf/-inf per group and accumulates each group's squared L2 norm of what is left;
// then a second pass scales every gradient by the clip coefficient, only when it is < 1.
// count_nonfinite: the read-only half of the first pass, one count per tensor.
//
// With num_members = M > 1, dim 0 of every gradient is the member (a population's stacked
// parameters) and each member is guarded on its own: its own counts, norms, clip
// coefficient and skip. The op cuts every gradient into its M member slices and gives slice
// (tensor i, member k) the group id k * num_groups + group_ids[i]; the kernels then only
// need to know that a group id's member is id / num_groups.
//
// The op logic (argument checks, non-dense tensors, member slices, output allocation) is
// written once, below, for every device. The device kernels share one contract:
//   grads:      each tensor is dense (its numel elements lie contiguously from data_ptr,
//               in any order), numel may be 0, dtypes may differ (fp32/fp64/fp16/bf16);
//               all on one device.
//   group_ids:  one per tensor, each in [0, num_members * num_groups).
//   out:        tensors on that device that the kernel OVERWRITES:
//               counts int64 [M * num_groups], norms float32 [M * num_groups],
//               total_norm float32 [M], clip_coef float32 [M].
// Norms accumulate in float32 (float64 for float64 gradients) and are summed in a fixed
// order, so a result never depends on thread counts or scheduling.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <tuple>
#include <vector>

#include "checks.h"

namespace pyppo {

// Elements per CPU work item (and the smallest CUDA chunk): big enough to amortize
// per-chunk bookkeeping, small enough that a chunk stays in L2 and that a ~40-tensor model
// splits evenly over the threads.
constexpr int64_t kGuardChunk = 1 << 16;

// What the finished guard adds to the clip coefficient's denominator (as clip_grad_norm_).
constexpr double kClipEps = 1e-6;

struct GuardOutputs {
  at::Tensor counts;      // int64 [num_members * num_groups]
  at::Tensor norms;       // float32 [num_members * num_groups]
  at::Tensor total_norm;  // float32 [num_members]
  at::Tensor clip_coef;   // float32 [num_members]
};

using GuardKernel = void (*)(const std::vector<at::Tensor>& grads,
                             const std::vector<int64_t>& group_ids, int64_t num_groups,
                             int64_t num_members, double max_norm, bool skip_nonfinite,
                             const GuardOutputs& out);

// Writes the number of non-finite elements of tensors[i] into counts[i] (int64, same device).
using CountNonfiniteKernel = void (*)(const std::vector<at::Tensor>& tensors,
                                      const at::Tensor& counts);

void guard_gradients_cpu_kernel(const std::vector<at::Tensor>& grads,
                                const std::vector<int64_t>& group_ids, int64_t num_groups,
                                int64_t num_members, double max_norm, bool skip_nonfinite,
                                const GuardOutputs& out);
void count_nonfinite_cpu_kernel(const std::vector<at::Tensor>& tensors, const at::Tensor& counts);
#ifdef PYPPO_WITH_CUDA
void guard_gradients_cuda_kernel(const std::vector<at::Tensor>& grads,
                                 const std::vector<int64_t>& group_ids, int64_t num_groups,
                                 int64_t num_members, double max_norm, bool skip_nonfinite,
                                 const GuardOutputs& out);
void count_nonfinite_cuda_kernel(const std::vector<at::Tensor>& tensors,
                                 const at::Tensor& counts);
#endif

// The clip coefficient both devices apply, rounded once to float32 so that every device
// and the reference multiply by the same number.
inline float clip_coefficient(double max_norm, double total_norm) {
  return static_cast<float>(std::min(1.0, max_norm / (total_norm + kClipEps)));
}

inline void check_tensor_list(at::TensorList tensors, std::string_view name) {
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto& t = tensors[i];
    TORCH_CHECK_VALUE(t.defined(), "pyppo: ", name, "[", i, "] is undefined (None)");
    TORCH_CHECK_TYPE(is_float_dtype(t.scalar_type()), "pyppo: ", name, "[", i,
                     "] must be a float32, float64, float16 or bfloat16 tensor, got ",
                     t.scalar_type());
    TORCH_CHECK_VALUE(t.device() == tensors[0].device(), "pyppo: ", name, "[", i, "] is on ",
                      t.device(), " but ", name, "[0] is on ", tensors[0].device(),
                      "; all tensors must be on one device");
  }
}

// A dense tensor can be processed as a flat run of numel elements from data_ptr; any other
// layout is processed through a contiguous copy.
inline at::Tensor dense_or_contiguous(const at::Tensor& t) {
  return t.is_non_overlapping_and_dense() ? t : t.contiguous();
}

template <GuardKernel kernel>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> guard_gradients_op(
    at::TensorList grads, at::IntArrayRef group_ids, int64_t num_groups, double max_norm,
    bool skip_nonfinite, int64_t num_members) {
  TORCH_CHECK_VALUE(group_ids.size() == grads.size(), "pyppo: got ", grads.size(),
                    " gradients but ", group_ids.size(), " group ids; pass one id per gradient");
  TORCH_CHECK_VALUE(num_groups >= 1, "pyppo: num_groups must be >= 1, got ", num_groups);
  for (size_t i = 0; i < group_ids.size(); ++i) {
    TORCH_CHECK_VALUE(group_ids[i] >= 0 && group_ids[i] < num_groups, "pyppo: group_ids[", i,
                      "] = ", group_ids[i], " is out of range for num_groups = ", num_groups);
  }
  TORCH_CHECK_VALUE(!std::isnan(max_norm) && max_norm >= 0.0,
                    "pyppo: max_norm must be >= 0 (float('inf') disables clipping), got ",
                    max_norm);
  TORCH_CHECK_VALUE(num_members >= 1, "pyppo: num_members must be >= 1, got ", num_members);
  check_tensor_list(grads, "grads");
  if (num_members > 1) {
    for (size_t i = 0; i < grads.size(); ++i) {
      TORCH_CHECK_VALUE(grads[i].dim() >= 1 && grads[i].size(0) == num_members, "pyppo: grads[",
                        i, "] has shape ", grads[i].sizes(), "; with num_members = ",
                        num_members, " dim 0 of every gradient is the member");
    }
  }

  const auto device = grads.empty() ? at::Device(at::kCPU) : grads[0].device();
  const auto f32 = at::TensorOptions().device(device).dtype(at::kFloat);
  const int64_t slots = num_members * num_groups;
  GuardOutputs out{at::empty({slots}, f32.dtype(at::kLong)), at::empty({slots}, f32),
                   at::empty({num_members}, f32), at::empty({num_members}, f32)};
  // One member: today's shapes ([G], [G], [], []); M members: [M, G], [M, G], [M], [M].
  auto shaped = [&]() -> std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> {
    if (num_members == 1) {
      return {out.counts, out.norms, out.total_norm.squeeze(0), out.clip_coef.squeeze(0)};
    }
    return {out.counts.view({num_members, num_groups}), out.norms.view({num_members, num_groups}),
            out.total_norm, out.clip_coef};
  };
  if (grads.empty()) {
    out.counts.zero_();
    out.norms.zero_();
    out.total_norm.zero_();
    out.clip_coef.fill_(clip_coefficient(max_norm, 0.0));
    return shaped();
  }

  // A member's slice must be one dense block: with members, gradients are made contiguous.
  std::vector<at::Tensor> dense;
  dense.reserve(grads.size());
  for (const auto& g : grads) {
    dense.push_back(num_members == 1 ? dense_or_contiguous(g) : g.contiguous());
  }
  std::vector<at::Tensor> slices;
  std::vector<int64_t> slice_groups;
  slices.reserve(dense.size() * num_members);
  slice_groups.reserve(dense.size() * num_members);
  for (int64_t k = 0; k < num_members; ++k) {
    for (size_t i = 0; i < dense.size(); ++i) {
      slices.push_back(num_members == 1 ? dense[i] : dense[i].select(0, k));
      slice_groups.push_back(k * num_groups + group_ids[i]);
    }
  }
  kernel(slices, slice_groups, num_groups, num_members, max_norm, skip_nonfinite, out);
  // Gradients that went through a contiguous copy get their guarded values back.
  for (size_t i = 0; i < grads.size(); ++i) {
    if (!dense[i].is_same(grads[i])) grads[i].copy_(dense[i]);
  }
  return shaped();
}

template <CountNonfiniteKernel kernel>
at::Tensor count_nonfinite_op(at::TensorList tensors) {
  check_tensor_list(tensors, "tensors");
  const auto device = tensors.empty() ? at::Device(at::kCPU) : tensors[0].device();
  at::Tensor counts =
      at::empty({static_cast<int64_t>(tensors.size())}, at::TensorOptions().device(device).dtype(at::kLong));
  if (tensors.empty()) return counts;
  std::vector<at::Tensor> dense;
  dense.reserve(tensors.size());
  for (const auto& t : tensors) dense.push_back(dense_or_contiguous(t));
  kernel(dense, counts);
  return counts;
}

}  // namespace pyppo
