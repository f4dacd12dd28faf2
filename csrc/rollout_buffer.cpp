// RolloutBuffer: one PPO rollout of num_steps x num_envs transitions in preallocated tensors
// on the training device, bound to Python with pybind11 (pyppo/buffer.py is its face).
//
// Why C++: add() runs once per environment step, so it is mostly per-call overhead. Here it
// is one Python -> C++ call that checks every field and then issues the writes; rewards and
// auxiliary targets go through the fused sanitize kernel straight from the caller's tensor
// into the buffer slot (one pass), and its counts accumulate in device tensors, so add()
// never waits on the device. compute_returns_and_advantage() runs the gae kernel straight
// into the buffer's own advantage and return tensors, and gather() cuts a minibatch with one
// index_select per field on flattened (T * N, ...) views.
#include <torch/python.h>

#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "checks.h"
#include "gae.h"
#include "sanitize.h"

namespace pyppo {
namespace {

std::string shape_str(at::IntArrayRef shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) {
    s += std::to_string(shape[i]);
    if (shape.size() == 1 || i + 1 < shape.size()) s += ", ";
  }
  if (shape.size() == 1) s.pop_back();
  return s + ")";
}

std::vector<int64_t> concat(std::vector<int64_t> a, at::IntArrayRef b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

}  // namespace

class RolloutBuffer {
 public:
  RolloutBuffer(int64_t num_steps, int64_t num_envs, std::vector<int64_t> obs_shape,
                at::Device device, int64_t num_aux, at::ScalarType dtype, double aux_limit,
                double reward_limit, std::vector<int64_t> action_shape,
                at::ScalarType action_dtype, bool sanitize)
      : num_steps_(num_steps),
        num_envs_(num_envs),
        num_aux_(num_aux),
        obs_shape_(std::move(obs_shape)),
        action_shape_(std::move(action_shape)),
        aux_limit_(aux_limit),
        reward_limit_(reward_limit),
        sanitize_(sanitize) {
    TORCH_CHECK_VALUE(num_steps > 0, "pyppo.RolloutBuffer: num_steps must be > 0, got ",
                      num_steps);
    TORCH_CHECK_VALUE(num_envs > 0, "pyppo.RolloutBuffer: num_envs must be > 0, got ", num_envs);
    TORCH_CHECK_VALUE(num_aux >= 0, "pyppo.RolloutBuffer: num_aux must be >= 0, got ", num_aux);
    for (int64_t d : obs_shape_) {
      TORCH_CHECK_VALUE(d > 0, "pyppo.RolloutBuffer: obs_shape must be positive, got ",
                        shape_str(obs_shape_));
    }
    for (int64_t d : action_shape_) {
      TORCH_CHECK_VALUE(d > 0, "pyppo.RolloutBuffer: action_shape must be positive, got ",
                        shape_str(action_shape_));
    }
    TORCH_CHECK_TYPE(is_gae_value_dtype(dtype),
                     "pyppo.RolloutBuffer: dtype must be float32 or float64, got ", dtype);
    TORCH_CHECK_VALUE(!std::isnan(aux_limit) && aux_limit >= 0,
                      "pyppo.RolloutBuffer: aux_limit must be >= 0, got ", aux_limit);
    TORCH_CHECK_VALUE(!std::isnan(reward_limit) && reward_limit >= 0,
                      "pyppo.RolloutBuffer: reward_limit must be >= 0, got ", reward_limit);
    if (device.is_cpu()) {
      sanitize_kernel_ = &sanitize_cpu_kernel;
      gae_kernel_ = &gae_cpu_kernel;
#ifdef PYPPO_WITH_CUDA
    } else if (device.is_cuda()) {
      sanitize_kernel_ = &sanitize_cuda_kernel;
      gae_kernel_ = &gae_cuda_kernel;
#endif
    } else {
      TORCH_CHECK_VALUE(false, "pyppo.RolloutBuffer: device ", device,
                        " is not supported by this build of pyppo (CPU",
#ifdef PYPPO_WITH_CUDA
                        " and CUDA"
#else
                        " only; it was built without CUDA kernels"
#endif
                        ")");
    }

    const auto opts = at::TensorOptions().device(device).dtype(dtype);
    const std::vector<int64_t> tn{num_steps, num_envs};
    obs_ = at::zeros(concat(tn, obs_shape_), opts);
    actions_ = at::zeros(concat(tn, action_shape_), opts.dtype(action_dtype));
    logprobs_ = at::zeros(tn, opts);
    rewards_ = at::zeros(tn, opts);
    values_ = at::zeros(tn, opts);
    episode_starts_ = at::zeros(tn, opts);
    aux_targets_ = at::zeros({num_steps, num_envs, num_aux}, opts);
    advantages_ = at::zeros(tn, opts);
    returns_ = at::zeros(tn, opts);
    // (T * N, ...) views of the fields a minibatch returns, in RolloutBatch order.
    for (const at::Tensor* x :
         {&obs_, &actions_, &logprobs_, &advantages_, &returns_, &values_, &aux_targets_}) {
      flat_.push_back(x->flatten(0, 1));
    }
    // "cuda" becomes "cuda:0" here, so later device comparisons are exact.
    device_ = obs_.device();
    reward_counts_ = new_sanitize_counts(obs_);
    aux_counts_ = new_sanitize_counts(obs_);
  }

  // Writes step `pos` for every env. Every argument is checked before anything is written,
  // so a rejected call leaves the buffer as it was.
  void add(const at::Tensor& obs, const at::Tensor& actions, const at::Tensor& logprobs,
           const at::Tensor& rewards, const at::Tensor& values, const at::Tensor& episode_starts,
           const std::optional<at::Tensor>& aux_targets) {
    TORCH_CHECK(!full_, "pyppo.RolloutBuffer.add: the buffer is full (", num_steps_,
                " steps); call compute_returns_and_advantage() and minibatches(), then reset()");
    const at::ScalarType dt = dtype();
    check_field("obs", obs, {concat({num_envs_}, obs_shape_)}, {dt});
    check_field("actions", actions, per_env_shapes(action_shape_), {actions_.scalar_type()});
    check_field("logprobs", logprobs, per_env_shapes({}), {dt});
    check_field("rewards", rewards, per_env_shapes({}), {dt});
    check_field("values", values, per_env_shapes({}), {dt});
    check_field("episode_starts", episode_starts, per_env_shapes({}), {dt, at::kBool, at::kByte});
    if (aux_targets.has_value()) {
      check_field("aux_targets", *aux_targets, {{num_envs_, num_aux_}}, {dt});
    }

    const int64_t t = pos_;
    copy_row(obs_, t, obs);
    copy_row(actions_, t, actions);
    copy_row(logprobs_, t, logprobs);
    copy_row(values_, t, values);
    // bool / uint8 starts: nonzero means a start, stored as 1.
    const bool integral = episode_starts.scalar_type() != dt;
    copy_row(episode_starts_, t, integral ? episode_starts.ne(0) : episode_starts);
    // Fused: read the caller's tensor once, write the sanitized values into the slot.
    // sanitize_ = false stores them raw (only to show what the guards prevent).
    if (sanitize_) {
      sanitize_kernel_(rewards.reshape({num_envs_}).contiguous(), rewards_[t], reward_limit_,
                       reward_counts_);
    } else {
      rewards_[t].copy_(rewards.reshape({num_envs_}));
    }
    if (num_aux_ > 0) {
      if (aux_targets.has_value() && sanitize_) {
        sanitize_kernel_(aux_targets->contiguous(), aux_targets_[t], aux_limit_, aux_counts_);
      } else if (aux_targets.has_value()) {
        aux_targets_[t].copy_(*aux_targets);
      } else {
        aux_targets_[t].zero_();
      }
    }
    pos_ += 1;
    full_ = pos_ == num_steps_;
  }

  void compute_returns_and_advantage(const at::Tensor& last_values,
                                     const at::Tensor& last_episode_starts, double gamma,
                                     double gae_lambda) {
    check_gae_inputs(last_values, last_episode_starts);
    gae_into(gae_kernel_, rewards_, values_, episode_starts_, last_values.reshape({num_envs_}),
             last_episode_starts.reshape({num_envs_}), gamma, gae_lambda, advantages_, returns_);
    computed_ = true;
  }

  // GAE with a gamma and lambda per member: the envs are cut into gammas.size() equal blocks
  // of columns, member by member, and each block runs the kernel with its own settings. The
  // kernel takes gamma and lambda as scalars of its recurrence, so a member's block is
  // copied out contiguous, run, and copied back: one call per member, paid only when the
  // members' settings differ (the trainer takes the one-call form above otherwise).
  void compute_returns_and_advantage_by_member(const at::Tensor& last_values,
                                               const at::Tensor& last_episode_starts,
                                               const std::vector<double>& gammas,
                                               const std::vector<double>& gae_lambdas) {
    check_gae_inputs(last_values, last_episode_starts);
    const int64_t members = static_cast<int64_t>(gammas.size());
    TORCH_CHECK_VALUE(members >= 1 && gae_lambdas.size() == gammas.size(),
                      "pyppo.RolloutBuffer.compute_returns_and_advantage: give one gamma and one "
                      "gae_lambda per member, got ", gammas.size(), " and ", gae_lambdas.size());
    TORCH_CHECK_VALUE(num_envs_ % members == 0, "pyppo.RolloutBuffer.compute_returns_and_advantage: ",
                      num_envs_, " envs cannot be cut into ", members, " equal member blocks");
    const int64_t width = num_envs_ / members;
    const at::Tensor last = last_values.reshape({num_envs_});
    const at::Tensor last_starts = last_episode_starts.reshape({num_envs_});
    for (int64_t k = 0; k < members; ++k) {
      const auto block = [&](const at::Tensor& t) { return t.narrow(-1, k * width, width).contiguous(); };
      at::Tensor advantages = at::empty({num_steps_, width}, rewards_.options());
      at::Tensor returns = at::empty({num_steps_, width}, rewards_.options());
      gae_into(gae_kernel_, block(rewards_), block(values_), block(episode_starts_), block(last),
               block(last_starts), gammas[k], gae_lambdas[k], advantages, returns);
      advantages_.narrow(1, k * width, width).copy_(advantages);
      returns_.narrow(1, k * width, width).copy_(returns);
    }
    computed_ = true;
  }

  void check_gae_inputs(const at::Tensor& last_values, const at::Tensor& last_episode_starts) const {
    TORCH_CHECK(full_, "pyppo.RolloutBuffer.compute_returns_and_advantage: the buffer holds ",
                pos_, " of ", num_steps_, " steps; add() the rest first");
    const at::ScalarType dt = dtype();
    check_field("last_values", last_values, per_env_shapes({}), {dt}, "compute_returns_and_advantage");
    check_field("last_episode_starts", last_episode_starts, per_env_shapes({}),
                {dt, at::kBool, at::kByte}, "compute_returns_and_advantage");
  }

  // The transitions at flat indices t * num_envs + n, one contiguous tensor per field:
  // (obs, actions, old_logprobs, advantages, returns, values, aux_targets).
  std::vector<at::Tensor> gather(const at::Tensor& indices) const {
    TORCH_CHECK(computed_,
                "pyppo.RolloutBuffer.minibatches: call compute_returns_and_advantage() first "
                "(after the buffer is full)");
    TORCH_CHECK_TYPE(indices.scalar_type() == at::kLong,
                     "pyppo.RolloutBuffer.gather: indices must be int64, got ",
                     indices.scalar_type());
    TORCH_CHECK_VALUE(indices.dim() == 1, "pyppo.RolloutBuffer.gather: indices must be 1-D");
    TORCH_CHECK(indices.device() == device_, "pyppo.RolloutBuffer.gather: indices are on ",
                indices.device(), " but the buffer is on ", device_);
    std::vector<at::Tensor> batch;
    batch.reserve(flat_.size());
    for (const at::Tensor& field : flat_) batch.push_back(field.index_select(0, indices));
    return batch;
  }

  // Starts a new rollout: pos 0, not full, sanitize counts zeroed (in place, so tensors the
  // caller holds stay valid). Storage is not cleared: every add() overwrites its whole step.
  void reset() {
    pos_ = 0;
    full_ = false;
    computed_ = false;
    reward_counts_.zero_();
    aux_counts_.zero_();
  }

  int64_t num_steps() const { return num_steps_; }
  int64_t num_envs() const { return num_envs_; }
  int64_t num_aux() const { return num_aux_; }
  int64_t pos() const { return pos_; }
  bool full() const { return full_; }
  bool computed() const { return computed_; }
  at::Device device() const { return device_; }
  at::ScalarType dtype() const { return obs_.scalar_type(); }
  std::vector<int64_t> obs_shape() const { return obs_shape_; }
  std::vector<int64_t> action_shape() const { return action_shape_; }
  double aux_limit() const { return aux_limit_; }
  double reward_limit() const { return reward_limit_; }

  at::Tensor obs_, actions_, logprobs_, rewards_, values_, episode_starts_, aux_targets_;
  at::Tensor advantages_, returns_;
  at::Tensor reward_counts_, aux_counts_;

 private:
  std::vector<at::Tensor> flat_;
  // A per-env field may come as (N, *shape) or, for scalars, also as (N, 1).
  std::vector<std::vector<int64_t>> per_env_shapes(const std::vector<int64_t>& shape) const {
    std::vector<std::vector<int64_t>> shapes{concat({num_envs_}, shape)};
    if (shape.empty()) shapes.push_back({num_envs_, 1});
    return shapes;
  }

  void check_field(const char* name, const at::Tensor& x,
                   const std::vector<std::vector<int64_t>>& shapes,
                   const std::vector<at::ScalarType>& dtypes, const char* method = "add") const {
    TORCH_CHECK(x.device() == device_, "pyppo.RolloutBuffer.", method, ": ", name, " is on ",
                x.device(), " but the buffer is on ", device_);
    bool shape_ok = false;
    std::string expected;
    for (const auto& s : shapes) {
      shape_ok = shape_ok || x.sizes() == at::IntArrayRef(s);
      expected += (expected.empty() ? "" : " or ") + shape_str(s);
    }
    TORCH_CHECK_VALUE(shape_ok, "pyppo.RolloutBuffer.", method, ": ", name, " must have shape ",
                      expected, ", got ", shape_str(x.sizes()));
    bool dtype_ok = false;
    std::string allowed;
    for (at::ScalarType t : dtypes) {
      dtype_ok = dtype_ok || x.scalar_type() == t;
      allowed += (allowed.empty() ? "" : " or ") + std::string(c10::toString(t));
    }
    TORCH_CHECK_TYPE(dtype_ok, "pyppo.RolloutBuffer.", method, ": ", name, " must be ", allowed,
                     ", got ", x.scalar_type());
  }

  static void copy_row(const at::Tensor& storage, int64_t t, const at::Tensor& x) {
    at::Tensor slot = storage[t];
    slot.copy_(x.reshape(slot.sizes()));
  }

  int64_t num_steps_, num_envs_, num_aux_;
  std::vector<int64_t> obs_shape_, action_shape_;
  double aux_limit_, reward_limit_;
  bool sanitize_;
  at::Device device_{at::kCPU};
  SanitizeKernel sanitize_kernel_ = nullptr;
  GaeKernel gae_kernel_ = nullptr;
  int64_t pos_ = 0;
  bool full_ = false;
  bool computed_ = false;
};

void bind_rollout_buffer(pybind11::module& m) {
  namespace py = pybind11;
  using RB = RolloutBuffer;
  py::class_<RB>(m, "RolloutBuffer",
                 "C++ rollout storage; use it through pyppo.RolloutBuffer (pyppo/buffer.py).")
      .def(py::init<int64_t, int64_t, std::vector<int64_t>, at::Device, int64_t, at::ScalarType,
                    double, double, std::vector<int64_t>, at::ScalarType, bool>(),
           py::arg("num_steps"), py::arg("num_envs"), py::arg("obs_shape"), py::arg("device"),
           py::arg("num_aux"), py::arg("dtype"), py::arg("aux_limit"), py::arg("reward_limit"),
           py::arg("action_shape"), py::arg("action_dtype"), py::arg("sanitize") = true)
      .def("add", &RB::add, py::arg("obs"), py::arg("actions"), py::arg("logprobs"),
           py::arg("rewards"), py::arg("values"), py::arg("episode_starts"),
           py::arg("aux_targets") = py::none())
      .def("compute_returns_and_advantage", &RB::compute_returns_and_advantage,
           py::arg("last_values"), py::arg("last_episode_starts"), py::arg("gamma"),
           py::arg("gae_lambda"))
      .def("compute_returns_and_advantage_by_member",
           &RB::compute_returns_and_advantage_by_member, py::arg("last_values"),
           py::arg("last_episode_starts"), py::arg("gammas"), py::arg("gae_lambdas"))
      .def("gather", &RB::gather, py::arg("indices"))
      .def("reset", &RB::reset)
      .def_property_readonly("num_steps", &RB::num_steps)
      .def_property_readonly("num_envs", &RB::num_envs)
      .def_property_readonly("num_aux", &RB::num_aux)
      .def_property_readonly("pos", &RB::pos)
      .def_property_readonly("full", &RB::full)
      .def_property_readonly("computed", &RB::computed)
      .def_property_readonly("device", &RB::device)
      .def_property_readonly("dtype", &RB::dtype)
      .def_property_readonly("obs_shape", &RB::obs_shape)
      .def_property_readonly("action_shape", &RB::action_shape)
      .def_property_readonly("aux_limit", &RB::aux_limit)
      .def_property_readonly("reward_limit", &RB::reward_limit)
      .def_readonly("obs", &RB::obs_)
      .def_readonly("actions", &RB::actions_)
      .def_readonly("logprobs", &RB::logprobs_)
      .def_readonly("rewards", &RB::rewards_)
      .def_readonly("values", &RB::values_)
      .def_readonly("episode_starts", &RB::episode_starts_)
      .def_readonly("aux_targets", &RB::aux_targets_)
      .def_readonly("advantages", &RB::advantages_)
      .def_readonly("returns", &RB::returns_)
      .def_readonly("reward_counts", &RB::reward_counts_)
      .def_readonly("aux_counts", &RB::aux_counts_);
}

}  // namespace pyppo
