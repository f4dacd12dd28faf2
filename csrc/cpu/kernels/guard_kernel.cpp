// CPU guard_gradients_ and count_nonfinite, compiled once per CPU capability
// (see cpu_dispatch.h).
//
// All tensors are cut into chunks of at most kGuardChunk elements; chunks are the unit of
// parallel work, and every chunk writes its partial result to its own slot, which are then
// summed in chunk order: results do not depend on the number of threads.
//
// The first pass is optimistic. Gradients are almost always finite, so a chunk is first
// read once to sum its squares; that sum is finite exactly when every element is finite
// (a square is >= 0, so NaN or inf cannot cancel). Only when it is not finite is the
// chunk, still in cache, searched for the bad elements, which are counted and zeroed (the
// sum can also overflow on huge finite values; the search then finds nothing to zero). So
// the common case costs one read and no write, like a plain `sum`.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstring>
#include <type_traits>

#include "guard.h"

namespace pyppo::cpu::CPU_CAPABILITY {
namespace {

using fVec = at::vec::Vectorized<float>;

struct Chunk {
  int64_t tensor;  // index into the tensor list
  int64_t begin;   // element range [begin, end) of that tensor
  int64_t end;
};

// What pass 1 finds in one chunk.
struct ChunkResult {
  double sum_squares = 0.0;  // of the finite elements
  int64_t nonfinite = 0;
};

std::vector<Chunk> make_chunks(const std::vector<at::Tensor>& tensors) {
  std::vector<Chunk> chunks;
  for (size_t t = 0; t < tensors.size(); ++t) {
    const int64_t n = tensors[t].numel();
    for (int64_t begin = 0; begin < n; begin += kGuardChunk) {
      chunks.push_back({static_cast<int64_t>(t), begin, std::min(n, begin + kGuardChunk)});
    }
  }
  return chunks;
}

// Below this many elements (8 x ATen's GRAIN_SIZE) the chunks are guarded on the calling
// thread: a model's gradients (~51 K elements by default) take a few microseconds, less than
// waking a second thread, which on a machine whose other core is busy costs milliseconds.
constexpr int64_t kParallelElements = 1 << 18;

// Runs fn(chunk_index) for every chunk: in parallel, one chunk per task, when there is
// enough work to share.
template <typename Fn>
void for_each_chunk(const std::vector<Chunk>& chunks, const Fn& fn) {
  int64_t elements = 0;
  for (const Chunk& c : chunks) elements += c.end - c.begin;
  if (elements < kParallelElements) {
    for (int64_t c = 0; c < static_cast<int64_t>(chunks.size()); ++c) fn(c);
    return;
  }
  at::parallel_for(0, static_cast<int64_t>(chunks.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) fn(c);
  });
}

// ---- pass 1, fast path: sum of squares, read only ---------------------------------------

// float and double, in the storage type. Four accumulators hide the FMA latency.
template <typename T>
T sum_squares(const T* x, int64_t n) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t W = Vec::size();
  Vec a0(0), a1(0), a2(0), a3(0);
  int64_t i = 0;
  for (; i + 4 * W <= n; i += 4 * W) {
    const Vec x0 = Vec::loadu(x + i), x1 = Vec::loadu(x + i + W);
    const Vec x2 = Vec::loadu(x + i + 2 * W), x3 = Vec::loadu(x + i + 3 * W);
    a0 = at::vec::fmadd(x0, x0, a0);
    a1 = at::vec::fmadd(x1, x1, a1);
    a2 = at::vec::fmadd(x2, x2, a2);
    a3 = at::vec::fmadd(x3, x3, a3);
  }
  for (; i + W <= n; i += W) {
    const Vec x0 = Vec::loadu(x + i);
    a0 = at::vec::fmadd(x0, x0, a0);
  }
  T s = at::vec::vec_reduce_all<T>([](Vec a, Vec b) { return a + b; }, (a0 + a1) + (a2 + a3));
  for (; i < n; ++i) s += x[i] * x[i];
  return s;
}

// half and bfloat16, widened to float lanes.
template <typename T>
float sum_squares_reduced(const T* x, int64_t n) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t W = Vec::size();
  fVec a0(0), a1(0);
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    auto [lo, hi] = at::vec::convert_to_float<T>(Vec::loadu(x + i));
    a0 = at::vec::fmadd(lo, lo, a0);
    a1 = at::vec::fmadd(hi, hi, a1);
  }
  float s = at::vec::vec_reduce_all<float>([](fVec a, fVec b) { return a + b; }, a0 + a1);
  for (; i < n; ++i) {
    const float v = static_cast<float>(x[i]);
    s += v * v;
  }
  return s;
}

// Sum of squares in the accumulation type of T (float, or double for double).
template <typename T>
auto sum_squares_any(const T* x, int64_t n) {
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
    return sum_squares(x, n);
  } else {
    return sum_squares_reduced(x, n);
  }
}

// ---- pass 1, careful path: find, count (and zero) the non-finite elements ----------------

// Sub-blocks of the careful path: small, so that the scalar loop only runs around the bad
// elements themselves (a poisoned head has a few NaN among many finite values).
constexpr int64_t kSubBlock = 256;

// The chunk (already in cache) is read again in sub-blocks with the fast sum; only the
// sub-blocks whose sum is not finite go through the scalar loop that counts and zeroes.
template <bool kZero, typename T>
ChunkResult count_nonfinite_range(T* x, int64_t n) {
  ChunkResult r;
  for (int64_t block = 0; block < n; block += kSubBlock) {
    const int64_t size = std::min(kSubBlock, n - block);
    const auto fast = sum_squares_any(x + block, size);
    if (std::isfinite(fast)) {
      r.sum_squares += static_cast<double>(fast);
      continue;
    }
    using Acc = std::remove_const_t<decltype(fast)>;
    Acc sum_sq = 0;
    for (int64_t i = block; i < block + size; ++i) {
      const Acc v = static_cast<Acc>(x[i]);
      if (std::isfinite(v)) {
        sum_sq += v * v;
      } else {
        ++r.nonfinite;
        if constexpr (kZero) x[i] = T(0);
      }
    }
    r.sum_squares += static_cast<double>(sum_sq);
  }
  return r;
}

// Pass 1 over one chunk: the fast read, then the careful path only if something was off.
template <bool kZero>
ChunkResult inspect_chunk(const at::Tensor& t, const Chunk& c) {
  ChunkResult r;
  const int64_t n = c.end - c.begin;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t.scalar_type(), "guard", [&] {
    // const_cast: count_nonfinite (kZero = false) never writes through this pointer.
    scalar_t* x = const_cast<scalar_t*>(t.const_data_ptr<scalar_t>()) + c.begin;
    const auto s = sum_squares_any(x, n);
    r = std::isfinite(s) ? ChunkResult{static_cast<double>(s), 0}
                         : count_nonfinite_range<kZero>(x, n);
  });
  return r;
}

template <bool kZero>
std::vector<ChunkResult> inspect_all(const std::vector<at::Tensor>& tensors,
                                     const std::vector<Chunk>& chunks) {
  std::vector<ChunkResult> results(chunks.size());
  for_each_chunk(chunks, [&](int64_t c) {
    results[c] = inspect_chunk<kZero>(tensors[chunks[c].tensor], chunks[c]);
  });
  return results;
}

// ---- pass 2: scale by the clip coefficient, or zero everything --------------------------

template <typename T>
void scale_range(T* x, int64_t n, float coef) {
  using Vec = at::vec::Vectorized<T>;
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
    const T k = static_cast<T>(coef);
    at::vec::map([k](Vec v) { return v * Vec(k); }, x, x, n);
  } else {
    const fVec k(coef);
    int64_t i = 0;
    for (; i + Vec::size() <= n; i += Vec::size()) {
      auto [lo, hi] = at::vec::convert_to_float<T>(Vec::loadu(x + i));
      at::vec::convert_from_float<T>(lo * k, hi * k).store(x + i);
    }
    for (; i < n; ++i) x[i] = static_cast<T>(static_cast<float>(x[i]) * coef);
  }
}

void scale_chunk(const at::Tensor& t, const Chunk& c, float coef) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t.scalar_type(), "guard_scale", [&] {
    scale_range(t.mutable_data_ptr<scalar_t>() + c.begin, c.end - c.begin, coef);
  });
}

void zero_chunk(const at::Tensor& t, const Chunk& c) {
  // All-zero bits are +0.0 in every float format.
  auto* bytes = static_cast<char*>(t.mutable_data_ptr());
  const int64_t item = t.element_size();
  std::memset(bytes + c.begin * item, 0, (c.end - c.begin) * item);
}

}  // namespace

void guard_gradients(const std::vector<at::Tensor>& grads,
                     const std::vector<int64_t>& group_ids, int64_t num_groups,
                     int64_t num_members, double max_norm, bool skip_nonfinite,
                     const GuardOutputs& out) {
  const std::vector<Chunk> chunks = make_chunks(grads);
  const std::vector<ChunkResult> found = inspect_all</*kZero=*/true>(grads, chunks);

  // Per-group totals (a group id is member * num_groups + group), summed in chunk order.
  const int64_t slots = num_members * num_groups;
  std::vector<double> group_sum_sq(slots, 0.0);
  std::vector<int64_t> group_nonfinite(slots, 0);
  for (size_t c = 0; c < chunks.size(); ++c) {
    const int64_t g = group_ids[chunks[c].tensor];
    group_sum_sq[g] += found[c].sum_squares;
    group_nonfinite[g] += found[c].nonfinite;
  }
  auto* counts = out.counts.mutable_data_ptr<int64_t>();
  auto* norms = out.norms.mutable_data_ptr<float>();
  auto* total_norms = out.total_norm.mutable_data_ptr<float>();
  auto* coefs = out.clip_coef.mutable_data_ptr<float>();
  // What pass 2 does to each member: 0 zeroes, a factor < 1 scales, 1 leaves alone.
  std::vector<float> factor(num_members, 1.0f);
  for (int64_t m = 0; m < num_members; ++m) {
    double total_sum_sq = 0.0;
    int64_t total_nonfinite = 0;
    for (int64_t g = m * num_groups; g < (m + 1) * num_groups; ++g) {
      counts[g] = group_nonfinite[g];
      norms[g] = static_cast<float>(std::sqrt(group_sum_sq[g]));
      total_sum_sq += group_sum_sq[g];
      total_nonfinite += group_nonfinite[g];
    }
    const double total_norm = std::sqrt(total_sum_sq);
    const float coef = clip_coefficient(max_norm, total_norm);
    total_norms[m] = static_cast<float>(total_norm);
    coefs[m] = coef;
    // coef 0 (max_norm 0 or an overflowing norm) zeroes too: +0.0 rather than x * 0 = -0.0.
    factor[m] = (skip_nonfinite && total_nonfinite > 0) ? 0.0f : coef;
  }
  if (std::all_of(factor.begin(), factor.end(), [](float f) { return f >= 1.0f; })) return;
  for_each_chunk(chunks, [&](int64_t c) {
    const float f = factor[group_ids[chunks[c].tensor] / num_groups];
    if (f == 0.0f) {
      zero_chunk(grads[chunks[c].tensor], chunks[c]);
    } else if (f < 1.0f) {
      scale_chunk(grads[chunks[c].tensor], chunks[c], f);
    }
  });
}

void count_nonfinite(const std::vector<at::Tensor>& tensors, const at::Tensor& counts) {
  const std::vector<Chunk> chunks = make_chunks(tensors);
  const std::vector<ChunkResult> found = inspect_all</*kZero=*/false>(tensors, chunks);
  auto* out = counts.mutable_data_ptr<int64_t>();
  std::fill(out, out + tensors.size(), 0);
  for (size_t c = 0; c < chunks.size(); ++c) out[chunks[c].tensor] += found[c].nonfinite;
}

}  // namespace pyppo::cpu::CPU_CAPABILITY
