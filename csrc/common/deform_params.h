// Geometry and argument checks of deformable convolution (torchvision.ops.deform_conv2d's
// semantics), shared by the CPU and CUDA kernels.
//
// input (N, C, H, W), weight (O, C/groups, kh, kw), offset (N, 2*G*kh*kw, Ho, Wo) with G offset
// groups laid out as [group][tap][dy, dx], mask (N, G*kh*kw, Ho, Wo) laid out as [group][tap].
// Tap (i, j) of output (oh, ow) samples input channel c of offset group c / (C/G) at
//   y = oh*stride_h - pad_h + i*dilation_h + dy,   x = ow*stride_w - pad_w + j*dilation_w + dx
// bilinearly, zero outside the image (a point with y <= -1, y >= H, x <= -1 or x >= W reads 0;
// otherwise each of the four corners that lies inside contributes), times the mask.
#pragma once

#include <ATen/ATen.h>

#include "conv_params.h"

namespace convops {

struct DeformGeometry {
  Conv2dGeometry conv;  // groups = weight groups
  int64_t offset_groups = 1;
  bool use_mask = false;

  int64_t channels_per_offset_group() const { return conv.in_channels / offset_groups; }
  // Rows of the offset tensor: 2 per (offset group, tap); of the mask: 1.
  int64_t offset_channels() const { return 2 * offset_groups * conv.kernel_area(); }
  int64_t mask_channels() const { return offset_groups * conv.kernel_area(); }
};

inline void check_deform_tensor_like(const at::Tensor& input, const at::Tensor& t,
                                     const char* name) {
  TORCH_CHECK(t.device() == input.device(), "deform_conv2d: expected input and ", name,
              " to be on the same device, but got input on ", input.device(), " and ", name,
              " on ", t.device());
  TORCH_CHECK(t.scalar_type() == input.scalar_type(), "deform_conv2d: expected ", name,
              " to have the input's dtype ", input.scalar_type(), ", but got ", t.scalar_type());
}

inline DeformGeometry deform_conv2d_geometry(const at::Tensor& input, const at::Tensor& weight,
                                             const at::Tensor& offset,
                                             const c10::optional<at::Tensor>& mask,
                                             const c10::optional<at::Tensor>& bias,
                                             const Conv2dArgs& a, int64_t offset_groups) {
  check_hyper_params(a);
  TORCH_CHECK(offset_groups > 0, "deform_conv2d: expected offset_groups > 0, but got ",
              offset_groups);
  const bool use_mask = mask.has_value() && mask->defined();
  TORCH_CHECK(input.dim() == 4, "deform_conv2d: expected 4-dimensional input (N, C, H, W), but got ",
              input.dim(), "-dimensional input of size ", input.sizes());
  TORCH_CHECK(weight.dim() == 4,
              "deform_conv2d: expected 4-dimensional weight (O, C/groups, kh, kw), but got ",
              weight.dim(), "-dimensional weight of size ", weight.sizes());
  TORCH_CHECK(offset.dim() == 4,
              "deform_conv2d: expected 4-dimensional offset (N, 2*offset_groups*kh*kw, Ho, Wo), "
              "but got ", offset.dim(), "-dimensional offset of size ", offset.sizes());
  TORCH_CHECK(!use_mask || mask->dim() == 4,
              "deform_conv2d: expected 4-dimensional mask (N, offset_groups*kh*kw, Ho, Wo), but "
              "got ", mask->dim(), "-dimensional mask of size ", mask->sizes());
  check_same_device_dtype(input, weight, bias);
  check_deform_tensor_like(input, offset, "offset");
  if (use_mask) check_deform_tensor_like(input, *mask, "mask");
  const int64_t kh = weight.size(2), kw = weight.size(3);
  TORCH_CHECK(kh > 0 && kw > 0, "deform_conv2d: expected a non-empty kernel, but got weight of size ",
              weight.sizes());
  check_weight_groups(weight, a.groups);
  TORCH_CHECK(input.size(1) == weight.size(1) * a.groups, "deform_conv2d: given groups=", a.groups,
              " and weight of size ", weight.sizes(), ", expected input channels to be ",
              weight.size(1) * a.groups, ", but got input of size ", input.sizes());
  check_bias(bias, weight.size(0), weight);
  TORCH_CHECK(input.size(1) % offset_groups == 0, "deform_conv2d: expected input channels (",
              input.size(1), ") to be divisible by offset_groups=", offset_groups,
              ", but got input of size ", input.sizes(), " and offset of size ", offset.sizes());

  TORCH_CHECK(input.size(2) > 0 && input.size(3) > 0,
              "deform_conv2d: expected input of positive height and width, but got input of size ",
              input.sizes());

  DeformGeometry d;
  d.offset_groups = offset_groups;
  d.use_mask = use_mask;
  auto& g = d.conv;
  g = geometry_from_args(a, kh, kw);
  g.batch = input.size(0);
  g.in_channels = input.size(1);
  g.out_channels = weight.size(0);
  g.in_h = input.size(2);
  g.in_w = input.size(3);
  g.out_h = conv_out_size(g.in_h, kh, g.stride_h, g.pad_h, g.dilation_h);
  g.out_w = conv_out_size(g.in_w, kw, g.stride_w, g.pad_w, g.dilation_w);
  TORCH_CHECK(g.out_h > 0 && g.out_w > 0, "deform_conv2d: calculated output size (", g.out_h,
              " x ", g.out_w, ") is too small for input of size ", input.sizes(),
              " and kernel (", kh, " x ", kw, ") with the given padding and dilation");

  const auto expected = [&](int64_t channels) {
    return sizes_str(std::array<int64_t, 4>{g.batch, channels, g.out_h, g.out_w});
  };
  TORCH_CHECK(offset.size(1) == d.offset_channels(),
              "deform_conv2d: the shape of the offset tensor at dimension 1 is not valid: "
              "expected 2 * offset_groups * kernel_h * kernel_w = 2 * ", offset_groups, " * ", kh,
              " * ", kw, " = ", d.offset_channels(), " channels, but got offset of size ",
              offset.sizes());
  TORCH_CHECK(offset.size(0) == g.batch && offset.size(2) == g.out_h && offset.size(3) == g.out_w,
              "deform_conv2d: the shape of the offset is not valid: expected offset of size ",
              expected(d.offset_channels()), " (batch and output size), but got ", offset.sizes());
  if (use_mask) {
    TORCH_CHECK(mask->size(1) == d.mask_channels(),
                "deform_conv2d: mask.shape[1] is not valid: expected offset_groups * kernel_h * "
                "kernel_w = ", offset_groups, " * ", kh, " * ", kw, " = ", d.mask_channels(),
                ", but got mask of size ", mask->sizes());
    TORCH_CHECK(mask->size(0) == g.batch && mask->size(2) == g.out_h && mask->size(3) == g.out_w,
                "deform_conv2d: the shape of the mask is not valid: expected mask of size ",
                expected(d.mask_channels()), " (batch and output size), but got ", mask->sizes());
  }
  return d;
}

// The backward's grad_output must have the forward output's size.
inline void check_deform_grad_output(const DeformGeometry& d, const at::Tensor& input,
                                     const at::Tensor& grad_output) {
  const auto& g = d.conv;
  check_deform_tensor_like(input, grad_output, "grad_output");
  const std::array<int64_t, 4> expected{g.batch, g.out_channels, g.out_h, g.out_w};
  TORCH_CHECK(grad_output.dim() == 4 && grad_output.sizes() == at::IntArrayRef(expected),
              "deform_conv2d_backward: expected grad_output of size ", sizes_str(expected),
              ", but got ", grad_output.sizes());
}

}  // namespace convops
