// Depthwise convolution (groups == in_channels) on the CPU.
// No geometry is claimed yet: conv2d uses the im2col+GEMM path for all of them.
#include "direct_kernels.h"

namespace convops::cpu {

at::Tensor depthwise_forward(const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&,
                             const Conv2dGeometry&) {
  return {};
}

at::Tensor depthwise_input_grad(const at::Tensor&, const at::Tensor&,
                                const c10::optional<at::Tensor>&, const Conv2dGeometry&) {
  return {};
}

at::Tensor depthwise_weight_grad(const at::Tensor&, const at::Tensor&, const Conv2dGeometry&) {
  return {};
}

}  // namespace convops::cpu
