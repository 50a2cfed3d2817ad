// Specialised CPU kernels that conv2d's entry points (CpuBackend::direct_*, conv2d.cpp) try
// before the im2col+GEMM path. Each returns its result, or an undefined tensor when the geometry
// is not one it claims. `input`/`grad_output` are as received by the op (any dtype/layout).
#pragma once

#include <ATen/ATen.h>

#include "../common/conv_params.h"

namespace convops::cpu {

// groups == in_channels, one input channel per group (csrc/cpu/depthwise.cpp).
at::Tensor depthwise_forward(const at::Tensor& input, const at::Tensor& weight,
                             const c10::optional<at::Tensor>& bias, const Conv2dGeometry& g);
at::Tensor depthwise_input_grad(const at::Tensor& grad_output, const at::Tensor& weight,
                                const c10::optional<at::Tensor>& bias, const Conv2dGeometry& g);
at::Tensor depthwise_weight_grad(const at::Tensor& grad_output, const at::Tensor& input,
                                 const Conv2dGeometry& g);

// Grouped convolution with few channels per group (csrc/cpu/grouped_conv2d.cpp).
at::Tensor grouped_forward(const at::Tensor& input, const at::Tensor& weight,
                           const c10::optional<at::Tensor>& bias, const Conv2dGeometry& g);
at::Tensor grouped_input_grad(const at::Tensor& grad_output, const at::Tensor& weight,
                              const c10::optional<at::Tensor>& bias, const Conv2dGeometry& g);
// With grad_bias non-null, the bias gradient may come with it (where it is free): then
// *grad_bias is set, else left undefined.
at::Tensor grouped_weight_grad(const at::Tensor& grad_output, const at::Tensor& input,
                               const Conv2dGeometry& g, at::Tensor* grad_bias = nullptr);
// How many times the grouped kernel claimed a call (forward, input grad or weight grad), so
// tests can tell it ran rather than the GEMM path; reset=true returns the count and zeroes it.
int64_t grouped_kernel_calls_count(bool reset);

}  // namespace convops::cpu
