// Spatially separable convolution: a kh x 1 conv (weight_v) then a 1 x kw conv (weight_h),
//
//   mid = conv2d(input, weight_v, None, (sh, 1), (ph, 0), (dh, 1), groups)   (N, Cmid, Ho, W)
//   out = conv2d(mid, weight_h, bias, (1, sw), (0, pw), (1, dw), groups)       (N, Cout, Ho, Wo)
//
// Both passes are convops' own conv2d, called through the dispatcher, so every backend's
// specialised schedule (the CPU band schedule, cuBLAS on CUDA) is used and the one kernel
// below serves CPU, CUDA and Meta alike (CompositeExplicitAutograd: autograd is registered in
// convops/ops/separable.py).
//
// Not fused, by measurement: on the benchmark layer (3x3 256->256 @28, batch 8, rank 64) both
// passes are GEMM-bound (0.6 GFLOP each) and the op takes the sum of the two passes' times; the
// intermediate (1.6 MB) is written once and read once from L2/L3, and that traffic is all that
// feeding the vertical band straight into the horizontal GEMM could save.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "../common/conv_gemm.h"

namespace convops {
namespace {

// The checks specific to the factor pair; conv2d then checks each pass (input channels, bias,
// kernel fit) with the messages torch's two F.conv2d calls give.
void check_separable_weights(const at::Tensor& input, const at::Tensor& weight_v,
                             const at::Tensor& weight_h, const c10::optional<at::Tensor>& bias,
                             const Conv2dArgs& a) {
  check_hyper_params(a);
  TORCH_CHECK(weight_v.dim() == 4 && weight_h.dim() == 4,
              "spatially_separable_conv2d: expected 4-dimensional weight_v and weight_h, but got "
              "weight_v of size ", weight_v.sizes(), " and weight_h of size ", weight_h.sizes());
  TORCH_CHECK(weight_v.size(3) == 1,
              "spatially_separable_conv2d: expected weight_v of size (Cmid, Cin/groups, kh, 1) "
              "with kernel width 1, but got weight_v of size ", weight_v.sizes(), " instead");
  TORCH_CHECK(weight_h.size(2) == 1,
              "spatially_separable_conv2d: expected weight_h of size (Cout, Cmid/groups, 1, kw) "
              "with kernel height 1, but got weight_h of size ", weight_h.sizes(), " instead");
  check_same_device_dtype(input, weight_v, bias);
  TORCH_CHECK(input.device() == weight_h.device(),
              "Input and weight_h should be on the same device, but got input on ",
              input.device(), " and weight_h on ", weight_h.device());
  TORCH_CHECK(input.scalar_type() == weight_h.scalar_type(), "Input type (",
              input.scalar_type(), ") and weight_h type (", weight_h.scalar_type(),
              ") should be the same");
  check_weight_groups(weight_v, a.groups);
  check_weight_groups(weight_h, a.groups);
  TORCH_CHECK(weight_h.size(1) * a.groups == weight_v.size(0), "Given groups=", a.groups,
              ", weight_h of size ", weight_h.sizes(), ", expected weight_v to have ",
              weight_h.size(1) * a.groups, " output channels (weight_h.size(1) * groups), but "
              "got weight_v of size ", weight_v.sizes(), " instead");
}

at::Tensor spatially_separable_conv2d(const at::Tensor& input, const at::Tensor& weight_v,
                                      const at::Tensor& weight_h,
                                      const c10::optional<at::Tensor>& bias,
                                      at::IntArrayRef stride, at::IntArrayRef padding,
                                      at::IntArrayRef dilation, int64_t groups) {
  check_separable_weights(input, weight_v, weight_h, bias, {stride, padding, dilation, groups});
  static const auto conv2d =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("convops::conv2d", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&,
                            at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, int64_t)>();
  // 16-bit inputs: both passes run in fp32 and the intermediate is never rounded to 16 bits
  // (one rounding, at the end; conv2d would widen each pass's operands anyway).
  const auto cdt = compute_dtype(input.scalar_type());
  const c10::optional<at::Tensor> bias_c =
      bias.has_value() && bias->defined() ? c10::optional<at::Tensor>(bias->to(cdt)) : c10::nullopt;
  const auto mid = conv2d.call(input.to(cdt), weight_v.to(cdt), c10::nullopt, {stride[0], 1},
                               {padding[0], 0}, {dilation[0], 1}, groups);
  return conv2d
      .call(mid, weight_h.to(cdt), bias_c, {1, stride[1]}, {0, padding[1]}, {1, dilation[1]}, groups)
      .to(input.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(convops, CompositeExplicitAutograd, m) {
  m.impl("spatially_separable_conv2d", &spatially_separable_conv2d);
}

}  // namespace convops
