// CUDA guard_gradients_ and count_nonfinite: three kernels on the current stream, no host
// synchronisation.
//   1. inspect (multi-tensor): per chunk, count NaN/inf (and zero them), sum the squares of
//      the rest; each block writes its partial result to its own slot of a buffer.
//   2. finalize (one block): sums the slots per group in a fixed order (deterministic, no
//      float atomics), writes counts, norms, total norm, clip coefficient, and the factor
//      pass 3 must apply: 0 when the skip policy fires, else the clip coefficient; one of
//      each per member (a group id is member * num_groups + group, see guard.h).
//   3. scale (multi-tensor): every block reads its member's factor from device memory and
//      returns at once when it is >= 1, so "clip only when needed" is decided on the
//      device.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdlib>
#include <type_traits>

#include "guard.h"
#include "multi_tensor_apply.cuh"
#include "vec_access.cuh"

namespace pyppo {
namespace {

using cuda::ChunkRef;
using cuda::kApplyThreads;

// Packs of 16 bytes in flight per thread per loop trip: enough loads outstanding to
// saturate HBM.
constexpr int kUnroll = 4;

template <typename T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

// Calls fn(elements, count) over the chunk: as 16-byte packs (count = VEC), with kUnroll
// packs loaded before any is processed, and element by element (count = 1) for the few
// elements before the first 16-byte boundary and after the last full pack. Gradients that
// are views into one flat buffer start anywhere, and moving them one element at a time
// would cost a third of the bandwidth, so the bulk is always packed. count is a
// std::integral_constant, so the loops over a pack unroll and the pack stays in registers.
// fn returns true when it changed the elements of a pack, which is then stored (single
// elements are changed in place).
template <typename T, typename Fn>
__device__ inline void for_each_pack(T* x, int32_t n, Fn fn) {
  constexpr int VEC = cuda::pack_size<T>();
  using Pack = cuda::Pack<T, VEC>;
  const auto misaligned = static_cast<int>(reinterpret_cast<std::uintptr_t>(x) % sizeof(Pack));
  // A chunk has at most 1M elements: 32-bit indices suffice.
  int head = misaligned == 0 ? 0 : static_cast<int>((sizeof(Pack) - misaligned) / sizeof(T));
  if (misaligned % sizeof(T) != 0) head = n;  // not even element-aligned: no packs at all
  head = min(head, n);
  if (static_cast<int>(threadIdx.x) < head) fn(x + threadIdx.x, std::integral_constant<int, 1>{});

  const int packs = (n - head) / VEC;
  Pack* p = reinterpret_cast<Pack*>(x + head);
  for (int base = threadIdx.x; base < packs; base += kApplyThreads * kUnroll) {
    Pack v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int i = base + u * kApplyThreads;
      if (i < packs) v[u] = p[i];
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int i = base + u * kApplyThreads;
      if (i < packs && fn(v[u].v, std::integral_constant<int, VEC>{})) p[i] = v[u];
    }
  }
  for (int i = head + packs * VEC + threadIdx.x; i < n; i += kApplyThreads) {
    fn(x + i, std::integral_constant<int, 1>{});
  }
}

// Pass 1. kZero = false makes it read-only (count_nonfinite).
template <bool kZero>
struct InspectFunctor {
  double* chunk_sum_sq;
  unsigned* chunk_nonfinite;
  int32_t* chunk_group;

  template <typename T>
  __device__ void apply(const ChunkRef& c) const {
    using Acc = acc_t<T>;
    __shared__ Acc scratch_sum[kApplyThreads / 32];
    __shared__ unsigned scratch_count[kApplyThreads / 32];
    T* x = static_cast<T*>(c.data) + c.begin;
    Acc sum_sq = 0;
    unsigned nonfinite = 0;
    for_each_pack(x, c.size, [&](T* v, auto count) {
      bool changed = false;
#pragma unroll
      for (int k = 0; k < decltype(count)::value; ++k) {
        const Acc a = static_cast<Acc>(v[k]);
        if (isfinite(a)) {
          sum_sq += a * a;
        } else {
          ++nonfinite;
          if constexpr (kZero) {
            v[k] = T(0);
            changed = true;
          }
        }
      }
      return changed;
    });
    sum_sq = cuda::block_sum(sum_sq, scratch_sum);
    nonfinite = cuda::block_sum(nonfinite, scratch_count);
    if (threadIdx.x == 0) {
      chunk_sum_sq[c.index] = static_cast<double>(sum_sq);
      chunk_nonfinite[c.index] = nonfinite;
      chunk_group[c.index] = c.group;
    }
  }
};

// Pass 3.
struct ScaleFunctor {
  const float* factor;  // one per member
  int32_t num_groups;

  template <typename T>
  __device__ void apply(const ChunkRef& c) const {
    const float f = factor[c.group / num_groups];
    if (f >= 1.0f) return;  // no clipping needed: the gradients are not touched
    T* x = static_cast<T*>(c.data) + c.begin;
    for_each_pack(x, c.size, [&](T* v, auto count) {
#pragma unroll
      for (int k = 0; k < decltype(count)::value; ++k) {
        // f == 0 (skip policy, or max_norm 0) stores +0.0, not -0.0 from a negative value.
        v[k] = f == 0.0f ? T(0) : static_cast<T>(static_cast<acc_t<T>>(v[k]) * f);
      }
      return true;
    });
  }
};

constexpr int kFinalizeThreads = 1024;

// Pass 2: one block. For each group of each member, the threads stride over all chunk
// slots in a fixed pattern and the block reduces in a fixed tree: the same bits every run.
__global__ void __launch_bounds__(kFinalizeThreads)
    finalize_kernel(const double* chunk_sum_sq, const unsigned* chunk_nonfinite,
                    const int32_t* chunk_group, int64_t num_chunks, int64_t num_groups,
                    int64_t num_members, double max_norm, bool skip_nonfinite, int64_t* counts,
                    float* norms, float* total_norm, float* clip_coef, float* factor) {
  __shared__ double scratch_sum[kFinalizeThreads / 32];
  __shared__ unsigned long long scratch_count[kFinalizeThreads / 32];
  for (int64_t m = 0; m < num_members; ++m) {
    double total_sum_sq = 0.0;             // meaningful in thread 0
    unsigned long long any_nonfinite = 0;  // likewise
    for (int64_t g = m * num_groups; g < (m + 1) * num_groups; ++g) {
      double sum_sq = 0.0;
      unsigned long long nonfinite = 0;
      for (int64_t c = threadIdx.x; c < num_chunks; c += kFinalizeThreads) {
        if (chunk_group[c] == g) {
          sum_sq += chunk_sum_sq[c];
          nonfinite += chunk_nonfinite[c];
        }
      }
      sum_sq = cuda::block_sum(sum_sq, scratch_sum);
      nonfinite = cuda::block_sum(nonfinite, scratch_count);
      if (threadIdx.x == 0) {
        counts[g] = static_cast<int64_t>(nonfinite);
        norms[g] = static_cast<float>(sqrt(sum_sq));
        total_sum_sq += sum_sq;
        any_nonfinite += nonfinite;
      }
    }
    if (threadIdx.x == 0) {
      const double total = sqrt(total_sum_sq);
      // clip_coefficient() of guard.h, spelled for the device.
      const float coef = static_cast<float>(fmin(1.0, max_norm / (total + kClipEps)));
      total_norm[m] = static_cast<float>(total);
      clip_coef[m] = coef;
      factor[m] = (skip_nonfinite && any_nonfinite > 0) ? 0.0f : coef;
    }
  }
}

struct ChunkPartials {
  at::Tensor sum_sq, nonfinite, group;
};

// Elements per block: 64K, as in apex. Each block ends with a reduction and a store of
// its partial sums, but many small blocks balance better across the SMs than few large
// ones: on an H200, 1 GB of gradients in 64K chunks guarded 7 % faster than in 256K ones.
// PYPPO_GUARD_CUDA_CHUNK (1024 to 16M elements) overrides it, for tuning.
int32_t choose_chunk_size() {
  if (const char* env = std::getenv("PYPPO_GUARD_CUDA_CHUNK")) {
    const long value = std::strtol(env, nullptr, 10);
    if (value >= 1024 && value <= (1 << 24)) return static_cast<int32_t>(value);
  }
  return 1 << 16;
}

ChunkPartials inspect(const std::vector<at::Tensor>& tensors,
                      const std::vector<int64_t>& group_ids, int32_t chunk_size,
                      bool zero_nonfinite, cudaStream_t stream) {
  const int64_t chunks = cuda::total_chunks(tensors, chunk_size);
  const auto options = tensors[0].options();
  ChunkPartials p{at::empty({chunks}, options.dtype(at::kDouble)),
                  at::empty({chunks}, options.dtype(at::kInt)),
                  at::empty({chunks}, options.dtype(at::kInt))};
  auto* sum_sq = p.sum_sq.mutable_data_ptr<double>();
  auto* nonfinite = reinterpret_cast<unsigned*>(p.nonfinite.mutable_data_ptr<int32_t>());
  auto* group = p.group.mutable_data_ptr<int32_t>();
  if (zero_nonfinite) {
    cuda::multi_tensor_apply(tensors, group_ids, chunk_size,
                             InspectFunctor<true>{sum_sq, nonfinite, group}, stream);
  } else {
    cuda::multi_tensor_apply(tensors, group_ids, chunk_size,
                             InspectFunctor<false>{sum_sq, nonfinite, group}, stream);
  }
  return p;
}

void finalize(const ChunkPartials& p, int64_t num_groups, int64_t num_members, double max_norm,
              bool skip_nonfinite, const GuardOutputs& out, const at::Tensor& factor,
              cudaStream_t stream) {
  finalize_kernel<<<1, kFinalizeThreads, 0, stream>>>(
      p.sum_sq.const_data_ptr<double>(),
      reinterpret_cast<const unsigned*>(p.nonfinite.const_data_ptr<int32_t>()),
      p.group.const_data_ptr<int32_t>(), p.sum_sq.numel(), num_groups, num_members, max_norm,
      skip_nonfinite,
      out.counts.mutable_data_ptr<int64_t>(), out.norms.mutable_data_ptr<float>(),
      out.total_norm.mutable_data_ptr<float>(), out.clip_coef.mutable_data_ptr<float>(),
      factor.mutable_data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void guard_gradients_cuda_kernel(const std::vector<at::Tensor>& grads,
                                 const std::vector<int64_t>& group_ids, int64_t num_groups,
                                 int64_t num_members, double max_norm, bool skip_nonfinite,
                                 const GuardOutputs& out) {
  const c10::cuda::CUDAGuard device_guard(grads[0].device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int32_t chunk_size = choose_chunk_size();
  const ChunkPartials partials =
      inspect(grads, group_ids, chunk_size, /*zero_nonfinite=*/true, stream);
  at::Tensor factor = at::empty({num_members}, out.clip_coef.options());
  finalize(partials, num_groups, num_members, max_norm, skip_nonfinite, out, factor, stream);
  // Last chunk first: the chunks inspected last are still in L2.
  const ScaleFunctor scale{factor.const_data_ptr<float>(), static_cast<int32_t>(num_groups)};
  cuda::multi_tensor_apply(grads, group_ids, chunk_size, scale, stream,
                           /*last_chunk_first=*/true);
}

void count_nonfinite_cuda_kernel(const std::vector<at::Tensor>& tensors,
                                 const at::Tensor& counts) {
  const c10::cuda::CUDAGuard device_guard(tensors[0].device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t n = static_cast<int64_t>(tensors.size());
  std::vector<int64_t> own_group(n);  // every tensor its own group
  for (int64_t i = 0; i < n; ++i) own_group[i] = i;
  const ChunkPartials partials = inspect(tensors, own_group, choose_chunk_size(),
                                         /*zero_nonfinite=*/false, stream);
  const auto f32 = counts.options().dtype(at::kFloat);
  const GuardOutputs out{counts, at::empty({n}, f32), at::empty({1}, f32), at::empty({1}, f32)};
  finalize(partials, n, /*num_members=*/1, /*max_norm=*/0.0, /*skip_nonfinite=*/false, out,
           at::empty({1}, f32), stream);
}

}  // namespace pyppo
