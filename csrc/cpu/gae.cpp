// CPU gae: the backward recurrence runs over T, so the parallelism is across envs.
//
// A (T, N) rollout is row-major: at a fixed step t the N envs are contiguous. A tile of
// kTileVecs vectors of envs is scanned from t = T-1 down to 0, the running advantage of each
// env living in a vector register, so every element is read and written exactly once and each
// row access is a contiguous run of a few cache lines. Tiles are spread over threads.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>

#include "gae.h"

namespace pyppo {
namespace {

// 4 vectors = 32 float32 envs (128 bytes, two cache lines per row) with 256-bit vectors: wide
// enough for long contiguous runs, narrow enough that (2048, 64) still splits over 2 threads.
constexpr int64_t kTileVecs = 4;

template <typename T>
using Vec = at::vec::Vectorized<T>;

template <typename T>
inline Vec<T> load(const T* p, int64_t count) {
  return count == Vec<T>::size() ? Vec<T>::loadu(p) : Vec<T>::loadu(p, count);
}

template <typename T>
inline void store(const Vec<T>& v, T* p, int64_t count) {
  if (count == Vec<T>::size()) {
    v.store(p);
  } else {
    v.store(p, count);
  }
}

// next_nonterminal = 1 - episode_starts, lanes past `count` are don't-care.
template <typename T, typename S>
inline Vec<T> load_nonterminal(const S* p, int64_t count) {
  if constexpr (std::is_same_v<S, T>) {
    return Vec<T>(T(1)) - load(p, count);
  } else {
    // bool / uint8: nonzero means an episode starts here.
    alignas(64) T lanes[Vec<T>::size()] = {};
    for (int64_t k = 0; k < count; ++k) lanes[k] = p[k] != 0 ? T(0) : T(1);
    return Vec<T>::loadu(lanes);
  }
}

// Scans the envs [n0, n0 + width) of the rollout, width <= kTileVecs * Vec<T>::size().
template <typename T, typename S>
void gae_tile(const T* rewards, const T* values, const S* starts, const T* last_values,
              const T* last_nonterminal, T gamma, T gamma_lambda, T* adv_out, T* ret_out,
              int64_t steps, int64_t num_envs, int64_t n0, int64_t width) {
  constexpr int64_t W = Vec<T>::size();
  const int64_t nvec = (width + W - 1) / W;
  Vec<T> adv[kTileVecs], next_value[kTileVecs], next_nonterminal[kTileVecs];
  int64_t count[kTileVecs];
  for (int64_t j = 0; j < nvec; ++j) {
    count[j] = std::min(W, width - j * W);
    adv[j] = Vec<T>(T(0));
    next_value[j] = load(last_values + n0 + j * W, count[j]);
    next_nonterminal[j] = load(last_nonterminal + n0 + j * W, count[j]);
  }
  const Vec<T> g(gamma), gl(gamma_lambda);
  for (int64_t t = steps - 1; t >= 0; --t) {
    const int64_t row = t * num_envs + n0;
    for (int64_t j = 0; j < nvec; ++j) {
      const int64_t i = row + j * W;
      const Vec<T> r = load(rewards + i, count[j]);
      const Vec<T> v = load(values + i, count[j]);
      // Same operation order as the reference loop, so float32 results match it closely.
      const Vec<T> delta = r + g * next_value[j] * next_nonterminal[j] - v;
      adv[j] = delta + gl * next_nonterminal[j] * adv[j];
      store(adv[j], adv_out + i, count[j]);
      store(adv[j] + v, ret_out + i, count[j]);
      // What step t-1 sees as its successor.
      next_value[j] = v;
      next_nonterminal[j] = load_nonterminal<T>(starts + i, count[j]);
    }
  }
}

template <typename T, typename S>
void gae_cpu_typed(const at::Tensor& rewards, const at::Tensor& values,
                   const at::Tensor& episode_starts, const at::Tensor& last_values,
                   const at::Tensor& last_nonterminal, double gamma, double gae_lambda,
                   const at::Tensor& advantages, const at::Tensor& returns) {
  const int64_t steps = rewards.size(0), num_envs = rewards.size(1);
  const int64_t tile_envs = kTileVecs * Vec<T>::size();
  const int64_t num_tiles = (num_envs + tile_envs - 1) / tile_envs;
  // Give each task at least ~16K elements so that small rollouts stay on one thread.
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, steps * tile_envs));
  const T* r = rewards.const_data_ptr<T>();
  const T* v = values.const_data_ptr<T>();
  const S* s = episode_starts.const_data_ptr<S>();
  const T* lv = last_values.const_data_ptr<T>();
  const T* lnt = last_nonterminal.const_data_ptr<T>();
  T* adv = advantages.mutable_data_ptr<T>();
  T* ret = returns.mutable_data_ptr<T>();
  // gamma * lambda is formed in double and rounded once, as a Python scalar product would be.
  const T g = static_cast<T>(gamma), gl = static_cast<T>(gamma * gae_lambda);
  at::parallel_for(0, num_tiles, grain, [&](int64_t begin, int64_t end) {
    for (int64_t tile = begin; tile < end; ++tile) {
      const int64_t n0 = tile * tile_envs;
      gae_tile<T, S>(r, v, s, lv, lnt, g, gl, adv, ret, steps, num_envs, n0,
                     std::min(tile_envs, num_envs - n0));
    }
  });
}

}  // namespace

void gae_cpu_kernel(const at::Tensor& rewards, const at::Tensor& values,
                    const at::Tensor& episode_starts, const at::Tensor& last_values,
                    const at::Tensor& last_nonterminal, double gamma, double gae_lambda,
                    const at::Tensor& advantages, const at::Tensor& returns) {
  AT_DISPATCH_FLOATING_TYPES(rewards.scalar_type(), "gae", [&] {
    switch (episode_starts.scalar_type()) {
      case at::kBool:
        gae_cpu_typed<scalar_t, bool>(rewards, values, episode_starts, last_values,
                                      last_nonterminal, gamma, gae_lambda, advantages, returns);
        break;
      case at::kByte:
        gae_cpu_typed<scalar_t, uint8_t>(rewards, values, episode_starts, last_values,
                                         last_nonterminal, gamma, gae_lambda, advantages,
                                         returns);
        break;
      default:  // the value dtype (checked by check_gae_args)
        gae_cpu_typed<scalar_t, scalar_t>(rewards, values, episode_starts, last_values,
                                          last_nonterminal, gamma, gae_lambda, advantages,
                                          returns);
    }
  });
}

TORCH_LIBRARY_IMPL(pyppo, CPU, m) { m.impl("gae", &gae_op<gae_cpu_kernel>); }

}  // namespace pyppo
