// CUDA gae. The recurrence runs backward in t and is independent across envs:
//     adv[t] = delta[t] + c[t] * adv[t+1],   c[t] = gamma * lambda * next_nonterminal[t]
// so a stretch of steps maps the advantage just after it to the advantage at its start by
// an affine function x -> A x + B, and such maps compose (the scan is associative).
//
// A block owns 32 envs (a warp-wide, coalesced row segment: threadIdx.x) and walks its
// time range backward in tiles of kTile steps. In a tile, each of the 32 rows of threads
// (threadIdx.y) takes kSteps consecutive steps of its envs:
//   1. every thread loads its steps into registers and folds them into (A, B);
//   2. warp w scans the 32 maps of env w across its lanes (shuffles), giving the advantage
//      that enters every row's steps, and carries the tile's result to the next tile;
//   3. every thread rescans its steps from that advantage, out of registers, and writes
//      advantages and returns.
// The loads of the next tile are issued before steps 2 and 3, so memory stays busy while
// the block scans. Each input is read once and each output written once.
//
// When there are too few envs to give every SM a block, the time axis is also cut into
// segments: a first launch folds every segment but the first into one map per env
// (`summary` mode, no writes), and in the second launch each segment's block composes the
// maps of the segments after it (one warp reduction) to learn the advantage entering it.
// With enough envs there is one segment and a single launch.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <type_traits>

#include "gae.h"

namespace pyppo {
namespace {

constexpr int kLanes = 32;               // envs per block
constexpr int kRows = 32;                // rows of threads per block (one warp each)
constexpr int kSteps = 4;                // consecutive steps per thread in a tile
constexpr int kTile = kRows * kSteps;    // steps per tile
constexpr int kThreads = kLanes * kRows;
constexpr int64_t kMaxSegments = 1024;   // 32 per lane in the carry reduction
static_assert(kRows == 32 && kLanes == 32, "the scan maps rows onto the 32 lanes of a warp");

template <typename T, typename S>
__device__ inline T nonterminal(S start) {
  if constexpr (std::is_same_v<S, T>) {
    return T(1) - start;
  } else {
    return start != 0 ? T(0) : T(1);  // bool / uint8: nonzero means an episode starts here
  }
}

// x -> a x + b. compose(later, earlier) is the map that applies `later` first: the scan
// runs backward in time, so the later steps act first.
template <typename T>
struct Affine {
  T a, b;
};

template <typename T>
__device__ inline Affine<T> compose(const Affine<T>& later, const Affine<T>& earlier) {
  return {earlier.a * later.a, earlier.a * later.b + earlier.b};
}

template <typename T>
__device__ inline Affine<T> shfl_up(const Affine<T>& m, int delta) {
  return {__shfl_up_sync(0xffffffffu, m.a, delta), __shfl_up_sync(0xffffffffu, m.b, delta)};
}

template <typename T>
__device__ inline Affine<T> shfl_down(const Affine<T>& m, int delta) {
  return {__shfl_down_sync(0xffffffffu, m.a, delta), __shfl_down_sync(0xffffffffu, m.b, delta)};
}

// One thread's kSteps steps of one env in one tile, newest first: steps t_hi-1, t_hi-2, ...
// down to t_lo (fewer than kSteps at the start of a segment; none past its start).
template <typename T, typename S>
struct Steps {
  T reward[kSteps], value[kSteps];
  S start[kSteps];
  T next_value, next_nonterminal;  // the successor of step t_hi-1
  int count = 0;

  __device__ void load(const T* rewards, const T* values, const S* starts, const T* last_values,
                       const T* last_nonterminal, int64_t steps, int64_t num_envs, int64_t n,
                       int64_t t_lo, int64_t t_hi) {
    const int64_t span = t_hi - t_lo;
    count = n >= num_envs || span <= 0 ? 0 : (span < kSteps ? static_cast<int>(span) : kSteps);
#pragma unroll
    for (int k = 0; k < kSteps; ++k) {
      if (k < count) {
        const int64_t i = (t_hi - 1 - k) * num_envs + n;
        reward[k] = rewards[i];
        value[k] = values[i];
        start[k] = starts[i];
      }
    }
    if (count > 0) {
      if (t_hi == steps) {
        next_value = last_values[n];
        next_nonterminal = last_nonterminal[n];
      } else {
        next_value = values[t_hi * num_envs + n];
        next_nonterminal = nonterminal<T>(starts[t_hi * num_envs + n]);
      }
    }
  }
};

// What the rescan needs of a thread's steps, computed once in the fold.
template <typename T>
struct Folded {
  T delta[kSteps], decay[kSteps], value[kSteps];
  int count;
};

template <typename T, typename S>
__device__ inline Affine<T> fold(const Steps<T, S>& in, T gamma, T gamma_lambda, Folded<T>& out) {
  Affine<T> m{T(1), T(0)};
  T next_value = in.next_value, next_nonterminal = in.next_nonterminal;
  out.count = in.count;
#pragma unroll
  for (int k = 0; k < kSteps; ++k) {
    if (k < in.count) {
      const T v = in.value[k];
      // Same operation order as the reference loop.
      out.delta[k] = in.reward[k] + gamma * next_value * next_nonterminal - v;
      out.decay[k] = gamma_lambda * next_nonterminal;
      out.value[k] = v;
      m.b = out.delta[k] + out.decay[k] * m.b;
      m.a = out.decay[k] * m.a;
      next_value = v;
      next_nonterminal = nonterminal<T>(in.start[k]);
    }
  }
  return m;
}

// The advantage entering segment `segment` of env n: the maps of all later segments applied
// to adv[T] = 0, newest first. Lane l composes a contiguous run of them, then the warp
// composes the 32 runs in order (a tree over neighbours keeps the order). Valid in lane 0.
template <typename T>
__device__ inline T segment_carry(const T* seg_a, const T* seg_b, int64_t num_envs, int64_t n,
                                  int64_t segment, int64_t num_segments) {
  const int lane = threadIdx.x & 31;
  const int64_t first = segment + 1, count = num_segments - first;
  const int64_t per_lane = (count + 31) / 32;
  const int64_t lo = first + lane * per_lane;
  const int64_t hi = lo + per_lane < num_segments ? lo + per_lane : num_segments;
  Affine<T> run{T(1), T(0)};  // maps of segments [lo, hi): hi-1 acts first
  if (n < num_envs) {
    for (int64_t s = hi - 1; s >= lo; --s) {
      const int64_t i = s * num_envs + n;
      run = compose(run, Affine<T>{seg_a[i], seg_b[i]});
    }
  }
  // Lane l's run is earlier in time than lane l+1's: fold lane l+delta into lane l.
  for (int delta = 1; delta < 32; delta <<= 1) {
    const Affine<T> later = shfl_down(run, delta);
    if ((lane & (2 * delta - 1)) == 0) run = compose(later, run);
  }
  return run.b;  // (A x + B) at x = adv[T] = 0
}

// grid: (env groups of kLanes, segments); block: (kLanes, kRows).
// kSummary: fold segment blockIdx.y + 1 into seg_a/seg_b; otherwise write advantages and
// returns of segment blockIdx.y, starting from the carry of the segments after it.
template <bool kSummary, typename T, typename S>
__global__ void __launch_bounds__(kThreads)
    gae_tile_kernel(const T* __restrict__ rewards, const T* __restrict__ values,
                    const S* __restrict__ starts, const T* __restrict__ last_values,
                    const T* __restrict__ last_nonterminal, T gamma, T gamma_lambda,
                    int64_t steps, int64_t num_envs, int64_t segment_len, int64_t num_segments,
                    T* __restrict__ seg_a, T* __restrict__ seg_b, T* __restrict__ advantages,
                    T* __restrict__ returns) {
  __shared__ T tile_a[kRows][kLanes + 1];  // +1: the scan reads columns without bank conflicts
  __shared__ T tile_b[kRows][kLanes + 1];
  __shared__ T enter[kRows][kLanes + 1];   // the advantage entering each thread's steps

  const int lane = threadIdx.x, row = threadIdx.y;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kLanes;
  const int64_t n = n0 + lane;  // the env this thread loads and writes
  const int64_t segment = kSummary ? blockIdx.y + 1 : blockIdx.y;
  const int64_t begin = segment * segment_len;
  const int64_t end = begin + segment_len < steps ? begin + segment_len : steps;

  // Warp `row` scans env n0 + row; it keeps that env's running state across tiles.
  const int64_t scan_env = n0 + row;
  Affine<T> running{T(1), T(0)};  // summary: the map of the tiles done so far
  T carry = T(0);                 // final: the advantage entering the tile being done
  if constexpr (!kSummary) {
    if (segment + 1 < num_segments) {
      carry = segment_carry(seg_a, seg_b, num_envs, scan_env, segment, num_segments);
      carry = __shfl_sync(0xffffffffu, carry, 0);
    }
  }

  auto rows_of = [&](int64_t tile_end, int64_t& t_lo, int64_t& t_hi) {
    t_hi = tile_end - static_cast<int64_t>(row) * kSteps;
    t_lo = t_hi - kSteps > begin ? t_hi - kSteps : begin;
  };
  Steps<T, S> in;
  int64_t t_lo, t_hi;
  rows_of(end, t_lo, t_hi);
  in.load(rewards, values, starts, last_values, last_nonterminal, steps, num_envs, n, t_lo, t_hi);

  for (int64_t tile_end = end; tile_end > begin; tile_end -= kTile) {
    // 1. Fold this thread's steps.
    Folded<T> folded;
    const Affine<T> mine = fold(in, gamma, gamma_lambda, folded);
    tile_a[row][lane] = mine.a;
    tile_b[row][lane] = mine.b;
    __syncthreads();

    // The registers of `in` are free: start loading the next tile now.
    const int64_t next_end = tile_end - kTile;
    if (next_end > begin) {
      rows_of(next_end, t_lo, t_hi);
      in.load(rewards, values, starts, last_values, last_nonterminal, steps, num_envs, n, t_lo,
              t_hi);
    }

    // 2. Warp `row` scans env n0 + row over the tile's rows (lane = row of the tile):
    // prefix[l] = the maps of tile rows 0..l (row 0 holds the newest steps) composed.
    Affine<T> prefix{tile_a[lane][row], tile_b[lane][row]};
    for (int delta = 1; delta < 32; delta <<= 1) {
      const Affine<T> newer = shfl_up(prefix, delta);
      if (lane >= delta) prefix = compose(newer, prefix);
    }
    if constexpr (kSummary) {
      const Affine<T> whole{__shfl_sync(0xffffffffu, prefix.a, 31),
                            __shfl_sync(0xffffffffu, prefix.b, 31)};
      running = compose(running, whole);
    } else {
      const T leaving = prefix.a * carry + prefix.b;  // adv at the first step of tile row `lane`
      const T entering = __shfl_up_sync(0xffffffffu, leaving, 1);
      enter[lane][row] = lane == 0 ? carry : entering;
      carry = __shfl_sync(0xffffffffu, leaving, 31);
    }
    __syncthreads();

    // 3. Rescan this thread's steps from the advantage entering them.
    if constexpr (!kSummary) {
      T adv = enter[row][lane];
      const int64_t tile_hi = tile_end - static_cast<int64_t>(row) * kSteps;
#pragma unroll
      for (int k = 0; k < kSteps; ++k) {
        if (k < folded.count) {
          adv = folded.delta[k] + folded.decay[k] * adv;
          const int64_t i = (tile_hi - 1 - k) * num_envs + n;
          advantages[i] = adv;
          returns[i] = adv + folded.value[k];
        }
      }
    }
    // The next tile's first __syncthreads() orders these reads of `enter` before its writes.
  }

  if constexpr (kSummary) {
    if (lane == 0 && scan_env < num_envs) {
      seg_a[segment * num_envs + scan_env] = running.a;
      seg_b[segment * num_envs + scan_env] = running.b;
    }
  }
}

// Segments per rollout: one, unless the env groups leave SMs without a block; then enough
// to give every SM one, each at least one tile long.
int64_t choose_num_segments(int64_t steps, int64_t num_envs) {
  const int64_t groups = (num_envs + kLanes - 1) / kLanes;
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  if (2 * groups > sms) return 1;  // a second pass over the data would cost more than idle SMs
  const int64_t tiles = (steps + kTile - 1) / kTile;
  return std::clamp<int64_t>((sms + groups - 1) / groups, 1, std::min(tiles, kMaxSegments));
}

template <typename T, typename S>
void gae_cuda_typed(const at::Tensor& rewards, const at::Tensor& values,
                    const at::Tensor& episode_starts, const at::Tensor& last_values,
                    const at::Tensor& last_nonterminal, double gamma, double gae_lambda,
                    const at::Tensor& advantages, const at::Tensor& returns) {
  const int64_t steps = rewards.size(0), num_envs = rewards.size(1);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const T* r = rewards.const_data_ptr<T>();
  const T* v = values.const_data_ptr<T>();
  const S* s = episode_starts.const_data_ptr<S>();
  const T* lv = last_values.const_data_ptr<T>();
  const T* lnt = last_nonterminal.const_data_ptr<T>();
  // gamma * lambda is formed in double and rounded once, as a Python scalar product would be.
  const T g = static_cast<T>(gamma), gl = static_cast<T>(gamma * gae_lambda);

  int64_t num_segments = choose_num_segments(steps, num_envs);
  const int64_t tiles = (steps + kTile - 1) / kTile;
  const int64_t segment_len = (tiles + num_segments - 1) / num_segments * kTile;
  num_segments = (steps + segment_len - 1) / segment_len;  // none is empty

  const dim3 block(kLanes, kRows);
  const auto groups = static_cast<unsigned>((num_envs + kLanes - 1) / kLanes);
  T* seg_a = nullptr;
  T* seg_b = nullptr;
  at::Tensor workspace;
  if (num_segments > 1) {
    workspace = at::empty({2, num_segments, num_envs}, rewards.options());
    seg_a = workspace.select(0, 0).mutable_data_ptr<T>();
    seg_b = workspace.select(0, 1).mutable_data_ptr<T>();
    // Segment 0's map is never needed: nothing comes before it.
    gae_tile_kernel<true, T, S>
        <<<dim3(groups, static_cast<unsigned>(num_segments - 1)), block, 0, stream>>>(
            r, v, s, lv, lnt, g, gl, steps, num_envs, segment_len, num_segments, seg_a, seg_b,
            nullptr, nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  gae_tile_kernel<false, T, S>
      <<<dim3(groups, static_cast<unsigned>(num_segments)), block, 0, stream>>>(
          r, v, s, lv, lnt, g, gl, steps, num_envs, segment_len, num_segments, seg_a, seg_b,
          advantages.mutable_data_ptr<T>(), returns.mutable_data_ptr<T>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void gae_cuda_kernel(const at::Tensor& rewards, const at::Tensor& values,
                     const at::Tensor& episode_starts, const at::Tensor& last_values,
                     const at::Tensor& last_nonterminal, double gamma, double gae_lambda,
                     const at::Tensor& advantages, const at::Tensor& returns) {
  const c10::cuda::CUDAGuard guard(rewards.device());
  AT_DISPATCH_FLOATING_TYPES(rewards.scalar_type(), "gae", [&] {
    dispatch_start_type<scalar_t>(episode_starts.scalar_type(), [&](auto start) {
      gae_cuda_typed<scalar_t, decltype(start)>(rewards, values, episode_starts, last_values,
                                                last_nonterminal, gamma, gae_lambda, advantages,
                                                returns);
    });
  });
}

}  // namespace pyppo
