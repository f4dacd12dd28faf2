// One kernel launch over many tensors: the multi-tensor scheme of PyTorch's
// MultiTensorApply.cuh and apex's multi_tensor_apply, adapted to pyppo's guards.
//
// Every tensor is cut into chunks of `chunk_size` elements (see guard.cu) and every CUDA
// block processes one chunk. The tensor list travels in the kernel's argument (a
// TensorTable, < 4 KB, so no host-to-device copy and no sync); a launch covers up to
// kMaxTensorsPerLaunch tensors and ALL of their chunks. A block finds its tensor by a
// binary search over the table's first-chunk offsets (instead of PyTorch's per-block lookup
// arrays, which would cap a launch at a few hundred blocks: a 1 GB gradient list is
// thousands of 64K chunks, one launch here).
//
// Tensors may have different dtypes within one launch: each block switches on its
// tensor's dtype, which is uniform across the block, so nothing diverges.
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <vector>

#include "guard.h"

namespace pyppo::cuda {

constexpr int kMaxTensorsPerLaunch = 110;
constexpr int kApplyThreads = 512;

enum class GradDType : uint8_t { kFloat, kHalf, kBFloat16, kDouble };

struct TensorTable {
  void* data[kMaxTensorsPerLaunch];
  int64_t numel[kMaxTensorsPerLaunch];
  int32_t group[kMaxTensorsPerLaunch];
  // Launch-local index of each tensor's first chunk; entry num_tensors is the chunk count.
  int32_t first_chunk[kMaxTensorsPerLaunch + 1];
  GradDType dtype[kMaxTensorsPerLaunch];
  int32_t num_tensors;
  int64_t chunk_offset;  // index of this launch's first chunk among all launches' chunks
  int32_t chunk_size;    // elements per chunk (the last chunk of a tensor may be shorter)
};
static_assert(sizeof(TensorTable) < 4000, "kernel arguments must stay below 4 KB");

// What a functor gets: one chunk of one tensor.
struct ChunkRef {
  void* data;      // the tensor's first element
  int64_t begin;   // first element of the chunk
  int32_t size;    // elements in the chunk (<= chunk_size)
  int32_t group;   // the tensor's group id
  int64_t index;   // global chunk index: where to write a per-chunk partial result
};

template <typename Functor>
__global__ void __launch_bounds__(kApplyThreads)
    multi_tensor_kernel(const __grid_constant__ TensorTable table, Functor functor,
                        bool last_chunk_first) {
  // Blocks start roughly in index order, so this also orders the chunks in time.
  const int32_t chunk = last_chunk_first ? gridDim.x - 1 - blockIdx.x : blockIdx.x;
  int lo = 0, hi = table.num_tensors - 1;  // the last tensor whose first chunk <= chunk
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (table.first_chunk[mid] <= chunk) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  const int64_t begin = static_cast<int64_t>(chunk - table.first_chunk[lo]) * table.chunk_size;
  const int64_t remaining = table.numel[lo] - begin;
  const ChunkRef ref{table.data[lo], begin,
                     static_cast<int32_t>(remaining < table.chunk_size ? remaining : table.chunk_size),
                     table.group[lo], table.chunk_offset + chunk};
  switch (table.dtype[lo]) {
    case GradDType::kFloat:
      functor.template apply<float>(ref);
      break;
    case GradDType::kHalf:
      functor.template apply<c10::Half>(ref);
      break;
    case GradDType::kBFloat16:
      functor.template apply<c10::BFloat16>(ref);
      break;
    case GradDType::kDouble:
      functor.template apply<double>(ref);
      break;
  }
}

inline GradDType grad_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return GradDType::kFloat;
    case at::kHalf:
      return GradDType::kHalf;
    case at::kBFloat16:
      return GradDType::kBFloat16;
    case at::kDouble:
      return GradDType::kDouble;
    default:
      break;
  }
  TORCH_CHECK(false, "pyppo: unsupported gradient dtype ", t);
}

inline int64_t num_chunks(int64_t numel, int32_t chunk_size) {
  return (numel + chunk_size - 1) / chunk_size;
}

// Total chunks over all tensors: the size of the per-chunk partial buffers.
inline int64_t total_chunks(const std::vector<at::Tensor>& tensors, int32_t chunk_size) {
  int64_t total = 0;
  for (const auto& t : tensors) total += num_chunks(t.numel(), chunk_size);
  return total;
}

// Runs functor.apply<T>(chunk) for every chunk of every (dense) tensor, in as few launches
// as the table allows, on `stream`. Chunks are numbered in tensor order across launches;
// `last_chunk_first` starts each launch's blocks from its last chunk instead of its first.
template <typename Functor>
void multi_tensor_apply(const std::vector<at::Tensor>& tensors,
                        const std::vector<int64_t>& group_ids, int32_t chunk_size,
                        const Functor& functor, cudaStream_t stream,
                        bool last_chunk_first = false) {
  TensorTable table;
  table.chunk_size = chunk_size;
  table.num_tensors = 0;
  table.first_chunk[0] = 0;
  table.chunk_offset = 0;
  auto launch = [&] {
    const int32_t chunks = table.first_chunk[table.num_tensors];
    if (chunks == 0) return;
    multi_tensor_kernel<<<chunks, kApplyThreads, 0, stream>>>(table, functor, last_chunk_first);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    table.chunk_offset += chunks;
    table.num_tensors = 0;
  };
  for (size_t i = 0; i < tensors.size(); ++i) {
    const int64_t n = tensors[i].numel();
    if (n == 0) continue;
    const int k = table.num_tensors;
    table.data[k] = tensors[i].data_ptr();
    table.numel[k] = n;
    table.group[k] = static_cast<int32_t>(group_ids[i]);
    table.dtype[k] = grad_dtype(tensors[i].scalar_type());
    table.first_chunk[k + 1] = table.first_chunk[k] + static_cast<int32_t>(num_chunks(n, chunk_size));
    table.num_tensors = k + 1;
    // A full table, or a grid about to outgrow gridDim.x, goes out now.
    if (table.num_tensors == kMaxTensorsPerLaunch || table.first_chunk[k + 1] > (1 << 30)) {
      launch();
    }
  }
  launch();
}

}  // namespace pyppo::cuda
