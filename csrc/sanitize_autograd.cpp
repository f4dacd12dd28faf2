// The gradient of pyppo::sanitize, which makes it pyppo.ops.guarded_clamp: it passes where
// x was finite and inside [-limit, limit] and is exactly 0 elsewhere (never NaN).
//
// Written in C++ rather than with torch.library.register_autograd because the model guards
// its outputs in every forward pass: a Python autograd round trip there cost more than
// the kernel itself (~70 us per forward and backward on the CPU, ~5 % of a PPO update).
#include <ATen/Dispatch.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <cmath>

namespace pyppo {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// `limit` as the forward kernels apply it: rounded to x's dtype, as torch.clamp rounds a
// Python scalar (pyppo.reference.rounded_limit).
double rounded_limit(double limit, at::ScalarType dtype) {
  double rounded = limit;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "rounded_limit", [&] {
    rounded = static_cast<double>(static_cast<scalar_t>(limit));
  });
  return rounded;
}

class GuardedClamp : public torch::autograd::Function<GuardedClamp> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, double limit) {
    static const auto sanitize = c10::Dispatcher::singleton()
                                     .findSchemaOrThrow("pyppo::sanitize", "")
                                     .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, double)>();
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [y, counts] = sanitize.call(x, limit);
    ctx->save_for_backward({x});
    ctx->saved_data["limit"] = limit;
    ctx->mark_non_differentiable({counts});
    return {y, counts};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor& grad_y = grads[0];
    if (!grad_y.defined()) return {at::Tensor(), at::Tensor()};
    const at::Tensor x = ctx->get_saved_variables()[0];
    const double lim = rounded_limit(ctx->saved_data["limit"].toDouble(), x.scalar_type());
    // NaN fails the comparison, and so does +-inf against a finite limit.
    const at::Tensor passes = std::isinf(lim) ? at::isfinite(x) : x.abs().le(lim);
    // where, not multiply: 0 * NaN would be NaN.
    return {at::where(passes, grad_y, at::Scalar(0.0)), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> guarded_clamp(const at::Tensor& x, double limit) {
  variable_list out = GuardedClamp::apply(x, limit);
  return {out[0], out[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(pyppo, Autograd, m) { m.impl("sanitize", &guarded_clamp); }

}  // namespace pyppo
