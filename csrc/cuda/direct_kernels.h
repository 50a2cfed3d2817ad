// Specialised CUDA kernels that conv2d's entry points (CudaBackend::direct_*, conv2d.cu) try
// before the im2col+GEMM path; like csrc/cpu/direct_kernels.h, each returns its result or an
// undefined tensor when the geometry is not one it claims.
#pragma once

#include <ATen/ATen.h>

#include "../common/conv_params.h"

namespace convops::gpu {

// groups == in_channels, one input channel per group (csrc/cuda/depthwise.cu).
at::Tensor depthwise_forward(const at::Tensor& input, const at::Tensor& weight,
                             const c10::optional<at::Tensor>& bias, const Conv2dGeometry& g);
at::Tensor depthwise_input_grad(const at::Tensor& grad_output, const at::Tensor& weight,
                                const c10::optional<at::Tensor>& bias, const Conv2dGeometry& g);
at::Tensor depthwise_weight_grad(const at::Tensor& grad_output, const at::Tensor& input,
                                 const Conv2dGeometry& g);

}  // namespace convops::gpu
