// Aligned vector loads and stores: VEC elements of T moved as one 16-byte transaction.
#pragma once

#include <cstdint>

namespace pyppo::cuda {

template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

template <typename T>
constexpr int pack_size() {
  return 16 / sizeof(T);
}

inline bool is_aligned(const void* p, int bytes) {
  return reinterpret_cast<std::uintptr_t>(p) % bytes == 0;
}

// Sum of `v` over the block, valid in thread 0. `scratch` holds one slot per warp.
template <typename T>
__device__ inline T block_sum(T v, T* scratch) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = 0;
  if (warp == 0) {
    if (lane < (blockDim.x + 31) / 32) v = scratch[lane];
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  }
  __syncthreads();  // scratch may be reused right after
  return v;
}

}  // namespace pyppo::cuda
