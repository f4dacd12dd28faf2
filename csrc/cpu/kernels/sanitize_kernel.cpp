// CPU sanitize over contiguous memory: one vectorized pass, parallel over ranges.
// Compiled once per CPU capability (see cpu_dispatch.h).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <array>
#include <cmath>

namespace pyppo::cpu::CPU_CAPABILITY {
namespace {

using Counts = std::array<int64_t, 2>;  // [nonfinite, clamped]
using fVec = at::vec::Vectorized<float>;

// Counts are summed in float lanes inside a block (exact: < 2^24 per lane) and flushed
// to int64 between blocks, so the inner loop stays branch-free.
constexpr int64_t kBlock = 1 << 14;

template <typename T>
inline T sanitize_one(T v, T limit, Counts& c) {
  if (!std::isfinite(v)) {
    ++c[0];
    return T(0);
  }
  if (v > limit) {
    ++c[1];
    return limit;
  }
  if (v < -limit) {
    ++c[1];
    return -limit;
  }
  return v;
}

template <typename Vec>
inline Vec sanitize_vec(Vec x, Vec limit, Vec& nonfinite_acc, Vec& clamped_acc) {
  const Vec one(1), zero(0);
  const Vec diff = x - x;  // NaN exactly where x is NaN or +-inf
  const Vec nonfinite = diff != diff;
  x = Vec::blendv(x, zero, nonfinite);
  const Vec over = x.abs() > limit;
  nonfinite_acc = nonfinite_acc + (nonfinite & one);
  clamped_acc = clamped_acc + (over & one);
  return at::vec::clamp(x, -limit, limit);
}

template <typename Vec>
inline void flush(Vec& acc, int64_t& total) {
  using T = typename Vec::value_type;
  alignas(64) T lanes[Vec::size()];
  acc.store(lanes);
  for (int64_t k = 0; k < Vec::size(); ++k) total += static_cast<int64_t>(lanes[k]);
  acc = Vec(0);
}

// float and double: compute in the storage type.
template <typename T>
Counts sanitize_range(const T* src, T* dst, int64_t begin, int64_t end, T limit) {
  using Vec = at::vec::Vectorized<T>;
  Counts c{0, 0};
  const Vec vlimit(limit);
  for (int64_t block = begin; block < end; block += kBlock) {
    const int64_t stop = std::min(end, block + kBlock);
    Vec nonfinite(0), clamped(0);
    int64_t i = block;
    for (; i + Vec::size() <= stop; i += Vec::size()) {
      sanitize_vec(Vec::loadu(src + i), vlimit, nonfinite, clamped).store(dst + i);
    }
    for (; i < stop; ++i) dst[i] = sanitize_one(src[i], limit, c);
    flush(nonfinite, c[0]);
    flush(clamped, c[1]);
  }
  return c;
}

// half and bfloat16: widen to float lanes; the limit was already rounded to the storage type.
template <typename T>
Counts sanitize_range_reduced(const T* src, T* dst, int64_t begin, int64_t end, T limit) {
  using Vec = at::vec::Vectorized<T>;
  Counts c{0, 0};
  const float flimit = static_cast<float>(limit);
  const fVec vlimit(flimit);
  for (int64_t block = begin; block < end; block += kBlock) {
    const int64_t stop = std::min(end, block + kBlock);
    fVec nonfinite(0), clamped(0);
    int64_t i = block;
    for (; i + Vec::size() <= stop; i += Vec::size()) {
      auto [lo, hi] = at::vec::convert_to_float<T>(Vec::loadu(src + i));
      lo = sanitize_vec(lo, vlimit, nonfinite, clamped);
      hi = sanitize_vec(hi, vlimit, nonfinite, clamped);
      at::vec::convert_from_float<T>(lo, hi).store(dst + i);
    }
    for (; i < stop; ++i) {
      dst[i] = static_cast<T>(sanitize_one(static_cast<float>(src[i]), flimit, c));
    }
    flush(nonfinite, c[0]);
    flush(clamped, c[1]);
  }
  return c;
}

}  // namespace

void sanitize_contiguous(const at::Tensor& src, const at::Tensor& dst, double limit,
                         int64_t* counts) {
  Counts total{0, 0};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, src.scalar_type(), "sanitize", [&] {
    const scalar_t* in = src.const_data_ptr<scalar_t>();
    scalar_t* out = dst.mutable_data_ptr<scalar_t>();
    // Round the limit to the tensor's dtype first, as torch.clamp with a Python scalar does.
    const scalar_t lim = static_cast<scalar_t>(limit);
    total = at::parallel_reduce(
        0, src.numel(), at::internal::GRAIN_SIZE * 4, Counts{0, 0},
        [&](int64_t begin, int64_t end, Counts) {
          if constexpr (std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, double>) {
            return sanitize_range(in, out, begin, end, lim);
          } else {
            return sanitize_range_reduced(in, out, begin, end, lim);
          }
        },
        [](Counts a, Counts b) { return Counts{a[0] + b[0], a[1] + b[1]}; });
  });
  counts[0] += total[0];
  counts[1] += total[1];
}

}  // namespace pyppo::cpu::CPU_CAPABILITY
