// CPU gae, compiled once per CPU capability (see cpu_dispatch.h): the backward recurrence runs over T, so the parallelism is across envs.
//
// A (T, N) rollout is row-major: at a fixed step t the N envs are contiguous. Each thread
// owns a range of envs and sweeps it in pieces of up to kPieceBytes per row: for t = T-1 down
// to 0 it streams the piece's run of row t (one long contiguous run per array, which the
// hardware prefetcher follows) while the per-env state of the scan (running advantage, next
// value, next non-terminal) lives in small scratch arrays that stay in L1. Every element is
// read and written once. (Narrow per-env tiles with the state in registers were 10-30x
// slower for wide N: a 128-byte run per row, rows 4-16 KiB apart, costs a TLB miss and
// defeats the prefetcher on every access.)
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <type_traits>

#include "gae.h"


namespace pyppo::cpu::CPU_CAPABILITY {
namespace {

// One page per row and array per piece; the three state arrays then take 12 KiB of L1.
constexpr int64_t kPieceBytes = 1024;

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

// Scans the envs [n0, n0 + width) of the rollout, width <= kPieceBytes / sizeof(T).
template <typename T, typename S>
void gae_piece(const T* rewards, const T* values, const S* starts, const T* last_values,
               const T* last_nonterminal, T gamma, T gamma_lambda, T* adv_out, T* ret_out,
               int64_t steps, int64_t num_envs, int64_t n0, int64_t width) {
  constexpr int64_t W = Vec<T>::size();
  constexpr int64_t kPiece = kPieceBytes / sizeof(T);
  alignas(64) T adv[kPiece], next_value[kPiece], next_nonterminal[kPiece];
  std::fill(adv, adv + width, T(0));
  std::copy(last_values + n0, last_values + n0 + width, next_value);
  std::copy(last_nonterminal + n0, last_nonterminal + n0 + width, next_nonterminal);
  const Vec<T> g(gamma), gl(gamma_lambda);
  // One vector of envs at step t; `count` < W only for the last, partial vector.
  auto step = [&](int64_t i, int64_t j, int64_t count) {
    const Vec<T> r = load(rewards + i, count);
    const Vec<T> v = load(values + i, count);
    const Vec<T> nv = load(next_value + j, count);
    const Vec<T> nnt = load(next_nonterminal + j, count);
    // Same operation order as the reference loop, so results match it bit for bit.
    const Vec<T> delta = r + g * nv * nnt - v;
    const Vec<T> a = delta + gl * nnt * load(adv + j, count);
    store(a, adv_out + i, count);
    store(a + v, ret_out + i, count);
    // What step t-1 sees as its successor.
    store(a, adv + j, count);
    store(v, next_value + j, count);
    store(load_nonterminal<T>(starts + i, count), next_nonterminal + j, count);
  };
  const int64_t full = width - width % W;
  for (int64_t t = steps - 1; t >= 0; --t) {
    const int64_t row = t * num_envs + n0;
    // A compile-time W lets the full vectors compile to plain vector loads and stores.
    for (int64_t j = 0; j < full; j += W) step(row + j, j, W);
    if (full < width) step(row + full, full, width - full);
  }
}

// Elements per parallel task (4 x ATen's GRAIN_SIZE): below this, work stays on the calling
// thread.
constexpr int64_t kMinTaskElements = 1 << 17;

template <typename T, typename S>
void gae_cpu_typed(const at::Tensor& rewards, const at::Tensor& values,
                   const at::Tensor& episode_starts, const at::Tensor& last_values,
                   const at::Tensor& last_nonterminal, double gamma, double gae_lambda,
                   const at::Tensor& advantages, const at::Tensor& returns) {
  const int64_t steps = rewards.size(0), num_envs = rewards.size(1);
  constexpr int64_t W = Vec<T>::size();
  constexpr int64_t kPiece = kPieceBytes / sizeof(T);
  // Threads split the envs in whole vectors, each task at least kMinTaskElements: GAE reads
  // each element once, so a rollout under that (a 2,048 x 64 one takes ~0.1 ms) finishes on
  // the calling thread before a second thread could even be woken, and a busy neighbour
  // core would make that wake cost milliseconds.
  const int64_t num_blocks = (num_envs + W - 1) / W;
  const int64_t grain = std::max<int64_t>(1, kMinTaskElements / std::max<int64_t>(1, steps * W));
  const T* r = rewards.const_data_ptr<T>();
  const T* v = values.const_data_ptr<T>();
  const S* s = episode_starts.const_data_ptr<S>();
  const T* lv = last_values.const_data_ptr<T>();
  const T* lnt = last_nonterminal.const_data_ptr<T>();
  T* adv = advantages.mutable_data_ptr<T>();
  T* ret = returns.mutable_data_ptr<T>();
  // gamma * lambda is formed in double and rounded once, as a Python scalar product would be.
  const T g = static_cast<T>(gamma), gl = static_cast<T>(gamma * gae_lambda);
  at::parallel_for(0, num_blocks, grain, [&](int64_t begin, int64_t end) {
    const int64_t stop = std::min(num_envs, end * W);
    for (int64_t n0 = begin * W; n0 < stop; n0 += kPiece) {
      gae_piece<T, S>(r, v, s, lv, lnt, g, gl, adv, ret, steps, num_envs, n0,
                      std::min(kPiece, stop - n0));
    }
  });
}

}  // namespace

void gae_contiguous(const at::Tensor& rewards, const at::Tensor& values,
                    const at::Tensor& episode_starts, const at::Tensor& last_values,
                    const at::Tensor& last_nonterminal, double gamma, double gae_lambda,
                    const at::Tensor& advantages, const at::Tensor& returns) {
  AT_DISPATCH_FLOATING_TYPES(rewards.scalar_type(), "gae", [&] {
    dispatch_start_type<scalar_t>(episode_starts.scalar_type(), [&](auto start) {
      gae_cpu_typed<scalar_t, decltype(start)>(rewards, values, episode_starts, last_values,
                                               last_nonterminal, gamma, gae_lambda, advantages,
                                               returns);
    });
  });
}

}  // namespace pyppo::cpu::CPU_CAPABILITY
