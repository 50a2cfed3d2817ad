// Every convops schema, in one place. Kernels live in csrc/cpu and csrc/cuda; fake
// (meta) kernels and autograd are registered from Python (convops/ops/, one module per op family).
#include <Python.h>
#include <torch/library.h>

#include <sstream>

#include "common/build_info.h"
#include "common/conv_gemm.h"
#include "cpu/direct_kernels.h"

namespace convops {

BuildInfo& build_info() {
  static BuildInfo info;
  return info;
}

ScratchStats& scratch_stats() {
  static ScratchStats stats;
  return stats;
}

// The peak of live scratch bytes; reset=True returns it and restarts from what is live now.
static int64_t read_workspace_peak(bool reset) {
  auto& stats = scratch_stats();
  return reset ? stats.peak.exchange(stats.live.load()) : stats.peak.load();
}

static std::string build_info_string() {
  const auto& b = build_info();
  std::ostringstream ss;
  ss << "cpu_kernel_isas=" << b.cpu_kernel_isas << ";cpu_selected_isa=" << b.cpu_selected_isa
     << ";cuda_archs=" << b.cuda_archs;
  return ss.str();
}

TORCH_LIBRARY(convops, m) {
  m.def(
      "conv2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, "
      "int[2] dilation, int groups) -> Tensor");
  // The adjoint of conv2d in its input; also conv2d's input gradient.
  m.def(
      "conv_transpose2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, "
      "int[2] padding, SymInt[2] output_padding, int groups, int[2] dilation) -> Tensor");
  // conv2d's weight gradient (bilinear in grad_output and input).
  m.def(
      "conv2d_weight_grad(Tensor grad_output, Tensor input, SymInt[2] kernel_size, "
      "int[2] stride, int[2] padding, int[2] dilation, int groups) -> Tensor");
  // conv2d_weight_grad and conv2d's bias gradient (grad_output summed over all but the
  // channels) from one call, so a kernel that reads grad_output anyway can sum it on the way.
  m.def(
      "conv2d_weight_bias_grad(Tensor grad_output, Tensor input, SymInt[2] kernel_size, "
      "int[2] stride, int[2] padding, int[2] dilation, int groups) -> (Tensor, Tensor)");
  // [depthwise / grouped] (csrc/cpu/depthwise.cpp)
  // F.conv2d with groups = input channels; weight (C*m, 1, kh, kw).
  m.def(
      "depthwise_conv2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, "
      "int[2] padding, int[2] dilation) -> Tensor");
  // depthwise conv then 1x1 conv (pointwise_weight (O, C*m, 1, 1)), fused: the depthwise output
  // is never materialised in full.
  m.def(
      "depthwise_separable_conv2d(Tensor input, Tensor depthwise_weight, Tensor pointwise_weight, "
      "Tensor? depthwise_bias, Tensor? pointwise_bias, int[2] stride, int[2] padding, "
      "int[2] dilation) -> Tensor");
  // Its gradients (input, depthwise_weight, depthwise_bias, pointwise_weight; undefined where
  // output_mask is false), tile by tile; the pointwise bias's is grad_output's sum.
  m.def(
      "depthwise_separable_conv2d_backward(Tensor grad_output, Tensor input, "
      "Tensor depthwise_weight, Tensor pointwise_weight, Tensor? depthwise_bias, int[2] stride, "
      "int[2] padding, int[2] dilation, bool[4] output_mask) -> (Tensor, Tensor, Tensor, Tensor)");
  // Calls claimed by the grouped kernel (csrc/cpu/grouped_conv2d.cpp) since the last reset.
  m.def("_grouped_kernel_calls(bool reset=False) -> int", &cpu::grouped_kernel_calls_count);

  // [separable] (csrc/cpu/separable.cpp)
  // conv2d(conv2d(input, weight_v (Cmid, Cin/g, kh, 1)), weight_h (Cout, Cmid/g, 1, kw)) + bias:
  // the vertical pass has stride/padding/dilation (sh, 1), (ph, 0), (dh, 1), the horizontal one
  // (1, sw), (0, pw), (1, dw). One kernel for every backend (CompositeExplicitAutograd).
  m.def(
      "spatially_separable_conv2d(Tensor input, Tensor weight_v, Tensor weight_h, Tensor? bias, "
      "int[2] stride, int[2] padding, int[2] dilation, int groups) -> Tensor");

  // [deformable] (csrc/cpu/deform_conv2d.cpp)
  // torchvision.ops.deform_conv2d's op (its argument order; groups and offset_groups explicit,
  // use_mask = mask is not None). See common/deform_params.h for the layouts.
  m.def(
      "deform_conv2d(Tensor input, Tensor weight, Tensor offset, Tensor? mask, Tensor? bias, "
      "int[2] stride, int[2] padding, int[2] dilation, int groups, int offset_groups) -> Tensor");
  // (grad_input, grad_weight, grad_offset, grad_mask, grad_bias); grad_mask is empty (size [0])
  // without a mask. One fused pass: the sampling is shared by all five.
  m.def(
      "deform_conv2d_backward(Tensor grad_output, Tensor input, Tensor weight, Tensor offset, "
      "Tensor? mask, int[2] stride, int[2] padding, int[2] dilation, int groups, "
      "int offset_groups) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");

  m.def("_build_info() -> str", &build_info_string);
  // Peak of the scratch bytes live at once since the last reset.
  m.def("_workspace_peak_bytes(bool reset=False) -> int", &read_workspace_peak);
}

}  // namespace convops

// The extension is loaded with torch.ops.load_library-style import of this module; it has no
// Python functions of its own, only the operator registrations above.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
