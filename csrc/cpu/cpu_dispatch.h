// Runtime choice of the CPU instruction set, as ATen does it.
//
// Files in csrc/cpu/kernels/ are compiled once per capability (DEFAULT, and on x86-64 also
// AVX2 and AVX512) with CPU_CAPABILITY set, so `at::vec::Vectorized` maps to real SIMD
// registers in each copy while the binary still runs on any x86-64. Their functions live
// in namespace pyppo::cpu::CPU_CAPABILITY; PYPPO_CPU_DISPATCH calls the best copy that the
// running CPU (and ATEN_CPU_CAPABILITY, if set) allows.
#pragma once

#include <cstdlib>
#include <cstring>

// Declares a kernel in every compiled capability's namespace:
//   PYPPO_DECLARE_CPU_KERNEL(void, sanitize_contiguous, (const at::Tensor&, ...));
#define PYPPO_DECLARE_IN(CAP, RET, NAME, PARAMS) \
  namespace pyppo::cpu::CAP {                    \
  RET NAME PARAMS;                               \
  }

#if defined(PYPPO_CPU_HAS_AVX512)
#define PYPPO_DECLARE_CPU_KERNEL(RET, NAME, PARAMS) \
  PYPPO_DECLARE_IN(DEFAULT, RET, NAME, PARAMS)      \
  PYPPO_DECLARE_IN(AVX2, RET, NAME, PARAMS)         \
  PYPPO_DECLARE_IN(AVX512, RET, NAME, PARAMS)
#define PYPPO_CPU_DISPATCH(NAME, ...)                                      \
  (::pyppo::cpu::capability() == ::pyppo::cpu::Capability::AVX512         \
       ? ::pyppo::cpu::AVX512::NAME(__VA_ARGS__)                          \
   : ::pyppo::cpu::capability() == ::pyppo::cpu::Capability::AVX2         \
       ? ::pyppo::cpu::AVX2::NAME(__VA_ARGS__)                            \
       : ::pyppo::cpu::DEFAULT::NAME(__VA_ARGS__))
#else
#define PYPPO_DECLARE_CPU_KERNEL(RET, NAME, PARAMS) PYPPO_DECLARE_IN(DEFAULT, RET, NAME, PARAMS)
#define PYPPO_CPU_DISPATCH(NAME, ...) ::pyppo::cpu::DEFAULT::NAME(__VA_ARGS__)
#endif

namespace pyppo::cpu {

enum class Capability { DEFAULT, AVX2, AVX512 };

// The best capability this CPU supports, lowered by ATEN_CPU_CAPABILITY=default|avx2 as
// torch itself is (useful to benchmark or test the fallback paths).
inline Capability capability() {
#if defined(PYPPO_CPU_HAS_AVX512)
  static const Capability cap = [] {
    __builtin_cpu_init();
    Capability best = Capability::DEFAULT;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
        __builtin_cpu_supports("f16c")) {
      best = Capability::AVX2;
      if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
        best = Capability::AVX512;
      }
    }
    if (const char* env = std::getenv("ATEN_CPU_CAPABILITY")) {
      if (std::strcmp(env, "default") == 0) best = Capability::DEFAULT;
      if (std::strcmp(env, "avx2") == 0 && best == Capability::AVX512) best = Capability::AVX2;
    }
    return best;
  }();
  return cap;
#else
  return Capability::DEFAULT;
#endif
}

}  // namespace pyppo::cpu
