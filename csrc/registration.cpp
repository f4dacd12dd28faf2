// The op schemas (one place for all of them) and the pybind11 module pyppo._C.
// Device implementations register themselves next to their kernels (cpu/, cuda/).
#include <Python.h>
#include <torch/library.h>
#include <torch/python.h>

namespace pyppo {
void bind_rollout_buffer(pybind11::module& m);  // rollout_buffer.cpp
}

TORCH_LIBRARY(pyppo, m) {
  m.def("sanitize_(Tensor(a!) x, float limit) -> Tensor");
  m.def("sanitize(Tensor x, float limit) -> (Tensor, Tensor)");
  m.def(
      "gae(Tensor rewards, Tensor values, Tensor episode_starts, Tensor last_values, "
      "Tensor last_episode_starts, float gamma, float gae_lambda) -> (Tensor, Tensor)");
  // Returns (nonfinite counts [num_groups], norms [num_groups], total norm, clip coef), each
  // with a leading [num_members] dimension when num_members > 1.
  m.def(
      "guard_gradients_(Tensor(a!)[] grads, int[] group_ids, int num_groups, float max_norm, "
      "bool skip_nonfinite, int num_members=1) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("count_nonfinite(Tensor[] tensors) -> Tensor");
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "pyppo's C++/CUDA kernels; use them through pyppo.ops and pyppo.RolloutBuffer.";
  m.def("cuda_kernels_built", [] {
#ifdef PYPPO_WITH_CUDA
    return true;
#else
    return false;
#endif
  });
  m.attr("torch_version") = PYPPO_TORCH_VERSION;
  pyppo::bind_rollout_buffer(m);
}
