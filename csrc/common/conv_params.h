// Shape description and argument checks shared by every conv kernel (CPU and CUDA).
//
// A conv2d, its input gradient (= a transposed conv) and its weight gradient all describe
// the same geometry: an "image" side (N, C_in, H, W) and a "column" side (N, C_out, Ho, Wo),
// related by a (C_out, C_in/groups, kh, kw) weight. Conv2dGeometry holds that geometry once.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <sstream>
#include <string>

namespace convops {

struct Conv2dGeometry {
  int64_t batch = 0;
  int64_t in_channels = 0;   // image side channels (conv input)
  int64_t out_channels = 0;  // column side channels (conv output)
  int64_t groups = 1;
  int64_t in_h = 0, in_w = 0;
  int64_t out_h = 0, out_w = 0;
  int64_t kernel_h = 1, kernel_w = 1;
  int64_t stride_h = 1, stride_w = 1;
  int64_t pad_h = 0, pad_w = 0;
  int64_t dilation_h = 1, dilation_w = 1;

  int64_t in_per_group() const { return in_channels / groups; }
  int64_t out_per_group() const { return out_channels / groups; }
  int64_t kernel_area() const { return kernel_h * kernel_w; }
  // Rows of the im2col matrix of one group: one per (input channel, kernel tap).
  int64_t col_rows_per_group() const { return in_per_group() * kernel_area(); }
  int64_t in_area() const { return in_h * in_w; }
  int64_t out_area() const { return out_h * out_w; }
  // A 1x1, stride-1, unpadded conv reads its input as the column matrix unchanged.
  bool is_pointwise() const {
    return kernel_h == 1 && kernel_w == 1 && stride_h == 1 && stride_w == 1 && pad_h == 0 &&
           pad_w == 0;
  }
};

inline int64_t conv_out_size(int64_t in, int64_t kernel, int64_t stride, int64_t pad,
                             int64_t dilation) {
  return (in + 2 * pad - dilation * (kernel - 1) - 1) / stride + 1;
}

inline int64_t conv_transpose_out_size(int64_t in, int64_t kernel, int64_t stride, int64_t pad,
                                       int64_t dilation, int64_t output_padding) {
  return (in - 1) * stride - 2 * pad + dilation * (kernel - 1) + output_padding + 1;
}

template <typename T>
std::string sizes_str(const T& sizes) {
  std::ostringstream ss;
  ss << "[";
  bool first = true;
  for (auto s : sizes) {
    ss << (first ? "" : ", ") << s;
    first = false;
  }
  ss << "]";
  return ss.str();
}

// Hyper-parameters as the ops receive them; 2-element lists (conv1d is lifted to 2-D).
struct Conv2dArgs {
  at::IntArrayRef stride, padding, dilation;
  int64_t groups;
};

// The geometry's kernel and hyper-parameters; the sizes are filled in by each op.
inline Conv2dGeometry geometry_from_args(const Conv2dArgs& a, int64_t kernel_h,
                                         int64_t kernel_w) {
  Conv2dGeometry g;
  g.groups = a.groups;
  g.kernel_h = kernel_h;
  g.kernel_w = kernel_w;
  g.stride_h = a.stride[0];
  g.stride_w = a.stride[1];
  g.pad_h = a.padding[0];
  g.pad_w = a.padding[1];
  g.dilation_h = a.dilation[0];
  g.dilation_w = a.dilation[1];
  return g;
}

inline void check_hyper_params(const Conv2dArgs& a) {
  TORCH_CHECK(a.stride.size() == 2 && a.padding.size() == 2 && a.dilation.size() == 2,
              "expected stride, padding and dilation to have 2 elements each, but got stride=",
              a.stride, ", padding=", a.padding, ", dilation=", a.dilation);
  for (auto s : a.stride) TORCH_CHECK(s > 0, "non-positive stride is not supported");
  for (auto p : a.padding) TORCH_CHECK(p >= 0, "negative padding is not supported");
  for (auto d : a.dilation) TORCH_CHECK(d > 0, "non-positive dilation is not supported");
  TORCH_CHECK(a.groups > 0, "non-positive groups is not supported");
}

inline void check_same_device_dtype(const at::Tensor& input, const at::Tensor& weight,
                                    const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(input.device() == weight.device(),
              "Input and weight should be on the same device, but got input on ",
              input.device(), " and weight on ", weight.device());
  TORCH_CHECK(input.scalar_type() == weight.scalar_type(), "Input type (",
              input.scalar_type(), ") and weight type (", weight.scalar_type(),
              ") should be the same");
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->device() == input.device(),
                "Input and bias should be on the same device, but got input on ",
                input.device(), " and bias on ", bias->device());
    TORCH_CHECK(bias->scalar_type() == input.scalar_type(), "Input type (",
                input.scalar_type(), ") and bias type (", bias->scalar_type(),
                ") should be the same");
  }
  auto dt = input.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble || dt == at::kBFloat16 || dt == at::kHalf,
              "convops: expected input of a floating type (float32, float64, bfloat16, "
              "float16), but got ", dt);
}

inline void check_weight_groups(const at::Tensor& weight, int64_t groups) {
  TORCH_CHECK(weight.size(0) >= groups, "Given groups=", groups, ", expected weight to be at least ",
              groups, " at dimension 0, but got weight of size ", weight.sizes(), " instead");
  TORCH_CHECK(weight.size(0) % groups == 0, "Given groups=", groups,
              ", expected weight to be divisible by ", groups,
              " at dimension 0, but got weight of size ", weight.sizes(), " instead");
}

inline void check_bias(const c10::optional<at::Tensor>& bias, int64_t channels,
                       const at::Tensor& weight, const char* prefix = "Given ") {
  if (!bias.has_value() || !bias->defined()) return;
  TORCH_CHECK(bias->dim() == 1 && bias->size(0) == channels, prefix, "weight of size ",
              weight.sizes(), ", expected bias to be 1-dimensional with ", channels,
              " elements, but got bias of size ", bias->sizes(), " instead");
}

// Like ATen: an empty input is fine only when the emptiness is in the batch or channels.
inline void check_nonempty_spatial(const at::Tensor& input) {
  TORCH_CHECK(input.numel() != 0 || input.size(0) == 0 || input.size(1) == 0,
              "Only zero batch or zero channel inputs are supported, but got input shape: ",
              input.sizes());
}

inline void check_kernel_fits(int64_t in_h, int64_t in_w, const Conv2dArgs& a, int64_t kh,
                              int64_t kw) {
  const int64_t padded_h = in_h + 2 * a.padding[0], padded_w = in_w + 2 * a.padding[1];
  const int64_t ext_h = a.dilation[0] * (kh - 1) + 1, ext_w = a.dilation[1] * (kw - 1) + 1;
  TORCH_CHECK(padded_h >= ext_h && padded_w >= ext_w,
              "Calculated padded input size per channel: (", padded_h, " x ", padded_w,
              "). Kernel size: (", ext_h, " x ", ext_w,
              "). Kernel size can't be greater than actual input size");
}

// conv2d: input (N, C, H, W), weight (O, C/g, kh, kw).
inline Conv2dGeometry conv2d_geometry(const at::Tensor& input, const at::Tensor& weight,
                                      const c10::optional<at::Tensor>& bias,
                                      const Conv2dArgs& a) {
  check_hyper_params(a);
  TORCH_CHECK(weight.dim() == 4, "Expected 4-dimensional weight for conv2d, but got ",
              weight.dim(), "-dimensional weight of size ", weight.sizes(), " instead");
  TORCH_CHECK(input.dim() == 4, "Expected 4-dimensional input for 4-dimensional weight ",
              weight.sizes(), ", but got ", input.dim(), "-dimensional input of size ",
              input.sizes(), " instead");
  check_same_device_dtype(input, weight, bias);
  check_weight_groups(weight, a.groups);
  TORCH_CHECK(input.size(1) == weight.size(1) * a.groups, "Given groups=", a.groups,
              ", weight of size ", weight.sizes(), ", expected input", input.sizes(),
              " to have ", weight.size(1) * a.groups, " channels, but got ", input.size(1),
              " channels instead");
  check_bias(bias, weight.size(0), weight);
  check_kernel_fits(input.size(2), input.size(3), a, weight.size(2), weight.size(3));
  check_nonempty_spatial(input);

  auto g = geometry_from_args(a, weight.size(2), weight.size(3));
  g.batch = input.size(0);
  g.in_channels = input.size(1);
  g.out_channels = weight.size(0);
  g.in_h = input.size(2);
  g.in_w = input.size(3);
  g.out_h = conv_out_size(g.in_h, g.kernel_h, g.stride_h, g.pad_h, g.dilation_h);
  g.out_w = conv_out_size(g.in_w, g.kernel_w, g.stride_w, g.pad_w, g.dilation_w);
  return g;
}

// conv_transpose2d: input (N, Cin, H, W), weight (Cin, Cout/g, kh, kw). In the geometry the
// transposed conv's input is the column side and its output the image side.
inline Conv2dGeometry conv_transpose2d_geometry(const at::Tensor& input,
                                                const at::Tensor& weight,
                                                const c10::optional<at::Tensor>& bias,
                                                const Conv2dArgs& a,
                                                at::IntArrayRef output_padding) {
  check_hyper_params(a);
  TORCH_CHECK(output_padding.size() == 2, "expected output_padding to have 2 elements, but got ",
              output_padding);
  TORCH_CHECK(weight.dim() == 4, "Expected 4-dimensional weight for conv_transpose2d, but got ",
              weight.dim(), "-dimensional weight of size ", weight.sizes(), " instead");
  TORCH_CHECK(input.dim() == 4, "Expected 4-dimensional input for 4-dimensional weight ",
              weight.sizes(), ", but got ", input.dim(), "-dimensional input of size ",
              input.sizes(), " instead");
  check_same_device_dtype(input, weight, bias);
  for (auto p : output_padding) TORCH_CHECK(p >= 0, "negative output_padding is not supported");
  TORCH_CHECK(output_padding[0] < std::max(a.stride[0], a.dilation[0]) &&
                  output_padding[1] < std::max(a.stride[1], a.dilation[1]),
              "output padding must be smaller than either stride or dilation, but got "
              "output_padding_height: ", output_padding[0], " output_padding_width: ",
              output_padding[1], " stride_height: ", a.stride[0], " stride_width: ",
              a.stride[1], " dilation_height: ", a.dilation[0], " dilation_width: ",
              a.dilation[1]);
  check_weight_groups(weight, a.groups);
  TORCH_CHECK(input.size(1) == weight.size(0), "Given transposed=1, weight of size ",
              weight.sizes(), ", expected input", input.sizes(), " to have ", weight.size(0),
              " channels, but got ", input.size(1), " channels instead");
  check_bias(bias, weight.size(1) * a.groups, weight, "Given transposed=1, ");
  check_nonempty_spatial(input);

  auto g = geometry_from_args(a, weight.size(2), weight.size(3));
  g.batch = input.size(0);
  g.out_channels = input.size(1);
  g.in_channels = weight.size(1) * a.groups;
  g.out_h = input.size(2);
  g.out_w = input.size(3);
  g.in_h = conv_transpose_out_size(g.out_h, g.kernel_h, g.stride_h, g.pad_h, g.dilation_h,
                                   output_padding[0]);
  g.in_w = conv_transpose_out_size(g.out_w, g.kernel_w, g.stride_w, g.pad_w, g.dilation_w,
                                   output_padding[1]);
  TORCH_CHECK(g.in_h > 0 && g.in_w > 0, "Given input size per channel: (", g.out_h, " x ",
              g.out_w, "). Calculated output size per channel: (", g.in_h, " x ", g.in_w,
              "). Output size is too small");
  return g;
}

// conv2d weight gradient: grad_output (N, O, Ho, Wo), input (N, C, H, W).
inline Conv2dGeometry conv2d_weight_geometry(const at::Tensor& grad_output,
                                             const at::Tensor& input,
                                             at::IntArrayRef kernel_size, const Conv2dArgs& a) {
  check_hyper_params(a);
  TORCH_CHECK(kernel_size.size() == 2 && kernel_size[0] > 0 && kernel_size[1] > 0,
              "expected kernel_size to be 2 positive ints, but got ", kernel_size);
  TORCH_CHECK(input.dim() == 4 && grad_output.dim() == 4,
              "conv2d_weight: expected 4-dimensional input and grad_output, but got input of "
              "size ", input.sizes(), " and grad_output of size ", grad_output.sizes());
  TORCH_CHECK(input.device() == grad_output.device() &&
                  input.scalar_type() == grad_output.scalar_type(),
              "conv2d_weight: expected input and grad_output of the same device and dtype, "
              "but got ", input.device(), "/", input.scalar_type(), " and ",
              grad_output.device(), "/", grad_output.scalar_type());
  TORCH_CHECK(input.size(1) % a.groups == 0 && grad_output.size(1) % a.groups == 0,
              "conv2d_weight: expected input channels (", input.size(1),
              ") and grad_output channels (", grad_output.size(1),
              ") to be divisible by groups=", a.groups);
  check_kernel_fits(input.size(2), input.size(3), a, kernel_size[0], kernel_size[1]);

  auto g = geometry_from_args(a, kernel_size[0], kernel_size[1]);
  g.batch = input.size(0);
  g.in_channels = input.size(1);
  g.out_channels = grad_output.size(1);
  g.in_h = input.size(2);
  g.in_w = input.size(3);
  g.out_h = conv_out_size(g.in_h, g.kernel_h, g.stride_h, g.pad_h, g.dilation_h);
  g.out_w = conv_out_size(g.in_w, g.kernel_w, g.stride_w, g.pad_w, g.dilation_w);
  TORCH_CHECK(grad_output.size(0) == g.batch && grad_output.size(2) == g.out_h &&
                  grad_output.size(3) == g.out_w,
              "conv2d_weight: expected grad_output of size ",
              sizes_str(std::array<int64_t, 4>{g.batch, g.out_channels, g.out_h, g.out_w}),
              ", but got ", grad_output.sizes());
  return g;
}

// A depthwise geometry: one input channel per group, groups == in_channels (the depth
// multiplier out_channels / in_channels is whole). The direct depthwise kernels of every
// backend claim exactly these.
inline bool is_depthwise(const Conv2dGeometry& g) {
  return g.in_per_group() == 1 && g.groups == g.in_channels && g.out_channels % g.groups == 0;
}

// depthwise_conv2d: input (N, C, H, W), weight (C*m, 1, kh, kw); F.conv2d with groups=C, so
// every other check (and its message) is conv2d's with groups = C.
inline Conv2dGeometry depthwise_conv2d_geometry(const at::Tensor& input, const at::Tensor& weight,
                                                const c10::optional<at::Tensor>& bias,
                                                at::IntArrayRef stride, at::IntArrayRef padding,
                                                at::IntArrayRef dilation) {
  const int64_t channels = input.dim() == 4 ? input.size(1) : 1;
  if (input.dim() == 4 && weight.dim() == 4) {
    TORCH_CHECK(weight.size(1) == 1, "Given groups=", channels, " (depthwise: one group per input "
                "channel), expected weight to have 1 channel per group at dimension 1, but got "
                "weight of size ", weight.sizes(), " instead");
  }
  return conv2d_geometry(input, weight, bias, {stride, padding, dilation, channels});
}

// The 1x1 weight (O, C*m, 1, 1) that follows a depthwise conv of `depthwise` geometry.
inline void check_pointwise_weight(const at::Tensor& pointwise_weight,
                                   const c10::optional<at::Tensor>& pointwise_bias,
                                   const at::Tensor& input, const Conv2dGeometry& depthwise) {
  TORCH_CHECK(pointwise_weight.dim() == 4 && pointwise_weight.size(2) == 1 &&
                  pointwise_weight.size(3) == 1,
              "Expected pointwise_weight of size [out_channels, ", depthwise.out_channels,
              ", 1, 1], but got pointwise_weight of size ", pointwise_weight.sizes(), " instead");
  check_same_device_dtype(input, pointwise_weight, pointwise_bias);
  TORCH_CHECK(pointwise_weight.size(1) == depthwise.out_channels, "Given groups=1, weight of size ",
              pointwise_weight.sizes(), ", expected input",
              sizes_str(std::array<int64_t, 4>{depthwise.batch, depthwise.out_channels,
                                               depthwise.out_h, depthwise.out_w}),
              " to have ", pointwise_weight.size(1), " channels, but got ",
              depthwise.out_channels, " channels instead");
  check_bias(pointwise_bias, pointwise_weight.size(0), pointwise_weight);
}

}  // namespace convops
