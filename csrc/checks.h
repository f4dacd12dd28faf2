// Argument checks shared by every op: each failure becomes a Python exception
// (TypeError / ValueError / RuntimeError) with a message that names the argument.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <string_view>

namespace pyppo {

inline bool is_float_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

inline void check_float_tensor(const at::Tensor& t, std::string_view name) {
  TORCH_CHECK_TYPE(is_float_dtype(t.scalar_type()), "pyppo: ", name,
                   " must be a float32, float64, float16 or bfloat16 tensor, got ",
                   t.scalar_type());
}

inline void check_same_device(const at::Tensor& a, std::string_view a_name, const at::Tensor& b,
                              std::string_view b_name) {
  TORCH_CHECK(a.device() == b.device(), "pyppo: ", a_name, " is on ", a.device(), " but ",
              b_name, " is on ", b.device(), "; move them to one device");
}

inline void check_limit(double limit) {
  TORCH_CHECK_VALUE(!std::isnan(limit) && limit >= 0.0,
                    "pyppo: limit must be >= 0 (use float('inf') to only zero NaN/inf), got ",
                    limit);
}

}  // namespace pyppo
