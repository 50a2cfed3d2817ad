// Depthwise convolution (groups == in_channels, depth multiplier m = out_channels / in_channels)
// on CUDA, and the depthwise-separable op as the depthwise kernel + one cuBLAS GEMM.
//
// Forward: one thread per output element. Input gradient: one thread per input element,
// gathering the outputs that read it (no atomics). Weight gradient: one block per (output
// channel, tap); each thread sums a fixed strided share of the (image, position) pairs and the
// block reduces the shares in a fixed tree, so the result is deterministic. Half/bfloat16 are
// computed in fp32 (compute_dtype); all indices are 64-bit.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../common/conv_gemm.h"
#include "direct_kernels.h"

namespace convops::gpu {
namespace {

constexpr int kThreads = 256;

int blocks_for(int64_t n) {
  return static_cast<int>(std::min<int64_t>((n + kThreads - 1) / kThreads, int64_t(1) << 16));
}

// x (N, C, H, W), w (C*m, taps), bias (C*m) or null -> y (N, C*m, Ho, Wo); all contiguous.
template <typename T>
__global__ void depthwise_forward_kernel(const T* __restrict__ x, const T* __restrict__ w,
                                         const T* __restrict__ bias, T* __restrict__ y,
                                         Conv2dGeometry g, int64_t total) {
  const int64_t m = g.out_channels / g.in_channels;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(blockDim.x) * gridDim.x) {
    const int64_t ow = idx % g.out_w;
    const int64_t oh = (idx / g.out_w) % g.out_h;
    const int64_t o = (idx / (g.out_w * g.out_h)) % g.out_channels;
    const int64_t n = idx / (g.out_w * g.out_h * g.out_channels);
    const T* plane = x + (n * g.in_channels + o / m) * g.in_h * g.in_w;
    const T* wo = w + o * g.kernel_h * g.kernel_w;
    T acc = bias ? bias[o] : T(0);
    for (int64_t ki = 0; ki < g.kernel_h; ++ki) {
      const int64_t ih = oh * g.stride_h - g.pad_h + ki * g.dilation_h;
      if (ih < 0 || ih >= g.in_h) continue;
      for (int64_t kj = 0; kj < g.kernel_w; ++kj) {
        const int64_t iw = ow * g.stride_w - g.pad_w + kj * g.dilation_w;
        if (iw < 0 || iw >= g.in_w) continue;
        acc += wo[ki * g.kernel_w + kj] * plane[ih * g.in_w + iw];
      }
    }
    y[idx] = acc;
  }
}

// gy (N, C*m, Ho, Wo), w (C*m, taps), bias (C) or null -> gx (N, C, H, W).
template <typename T>
__global__ void depthwise_input_grad_kernel(const T* __restrict__ gy, const T* __restrict__ w,
                                            const T* __restrict__ bias, T* __restrict__ gx,
                                            Conv2dGeometry g, int64_t total) {
  const int64_t m = g.out_channels / g.in_channels;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(blockDim.x) * gridDim.x) {
    const int64_t iw = idx % g.in_w;
    const int64_t ih = (idx / g.in_w) % g.in_h;
    const int64_t c = (idx / (g.in_w * g.in_h)) % g.in_channels;
    const int64_t n = idx / (g.in_w * g.in_h * g.in_channels);
    T acc = bias ? bias[c] : T(0);
    for (int64_t o = c * m; o < (c + 1) * m; ++o) {
      const T* plane = gy + (n * g.out_channels + o) * g.out_h * g.out_w;
      const T* wo = w + o * g.kernel_h * g.kernel_w;
      for (int64_t ki = 0; ki < g.kernel_h; ++ki) {
        const int64_t th = ih + g.pad_h - ki * g.dilation_h;
        if (th < 0 || th % g.stride_h != 0 || th / g.stride_h >= g.out_h) continue;
        for (int64_t kj = 0; kj < g.kernel_w; ++kj) {
          const int64_t tw = iw + g.pad_w - kj * g.dilation_w;
          if (tw < 0 || tw % g.stride_w != 0 || tw / g.stride_w >= g.out_w) continue;
          acc += wo[ki * g.kernel_w + kj] * plane[(th / g.stride_h) * g.out_w + tw / g.stride_w];
        }
      }
    }
    gx[idx] = acc;
  }
}

// One block per (output channel o, tap): gw[o][tap] = sum over (n, oh, ow) of
// gy[n][o][oh][ow] * x[n][o/m][ih][iw]. Fixed shares and a fixed tree: deterministic.
template <typename T>
__global__ void depthwise_weight_grad_kernel(const T* __restrict__ gy, const T* __restrict__ x,
                                             T* __restrict__ gw, Conv2dGeometry g) {
  __shared__ T partial[kThreads];
  const int64_t m = g.out_channels / g.in_channels;
  const int64_t taps = g.kernel_h * g.kernel_w;
  const int64_t o = blockIdx.x / taps, tap = blockIdx.x % taps;
  const int64_t ki = tap / g.kernel_w, kj = tap % g.kernel_w;
  const int64_t area = g.out_h * g.out_w, count = g.batch * area;
  T acc = T(0);
  for (int64_t i = threadIdx.x; i < count; i += blockDim.x) {
    const int64_t n = i / area, p = i % area;
    const int64_t oh = p / g.out_w, ow = p % g.out_w;
    const int64_t ih = oh * g.stride_h - g.pad_h + ki * g.dilation_h;
    const int64_t iw = ow * g.stride_w - g.pad_w + kj * g.dilation_w;
    if (ih < 0 || ih >= g.in_h || iw < 0 || iw >= g.in_w) continue;
    acc += gy[(n * g.out_channels + o) * area + p] *
           x[((n * g.in_channels + o / m) * g.in_h + ih) * g.in_w + iw];
  }
  partial[threadIdx.x] = acc;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) partial[threadIdx.x] += partial[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) gw[o * taps + tap] = partial[0];
}

template <typename T>
const T* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

// conv2d forward of a depthwise geometry, NCHW in the compute dtype.
at::Tensor forward_compute(const at::Tensor& input, const at::Tensor& weight,
                           const c10::optional<at::Tensor>& bias, const Conv2dGeometry& g) {
  const c10::cuda::CUDAGuard guard(input.device());
  const auto cdt = compute_dtype(input.scalar_type());
  const auto x = input.to(cdt).contiguous();
  const auto w = weight.to(cdt).contiguous();
  const auto b = contiguous_or_undefined(bias, cdt);
  auto y = at::empty({g.batch, g.out_channels, g.out_h, g.out_w}, x.options());
  const int64_t total = y.numel();
  if (total == 0) return y;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(cdt, "convops_depthwise_forward_cuda", [&] {
    depthwise_forward_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(
        x.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), ptr_or_null<scalar_t>(b),
        y.data_ptr<scalar_t>(), g, total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return y;
}

at::Tensor depthwise_conv2d_op(const at::Tensor& input, const at::Tensor& weight,
                               const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                               at::IntArrayRef padding, at::IntArrayRef dilation) {
  const auto g = depthwise_conv2d_geometry(input, weight, bias, stride, padding, dilation);
  return depthwise_forward(input, weight, bias, g);
}

// The depthwise output in full, then one batched GEMM (cuBLAS) for the 1x1 conv.
at::Tensor depthwise_separable_conv2d_op(const at::Tensor& input, const at::Tensor& dw_weight,
                                         const at::Tensor& pw_weight,
                                         const c10::optional<at::Tensor>& dw_bias,
                                         const c10::optional<at::Tensor>& pw_bias,
                                         at::IntArrayRef stride, at::IntArrayRef padding,
                                         at::IntArrayRef dilation) {
  const auto g = depthwise_conv2d_geometry(input, dw_weight, dw_bias, stride, padding, dilation);
  check_pointwise_weight(pw_weight, pw_bias, input, g);
  const c10::cuda::CUDAGuard guard(input.device());
  const auto cdt = compute_dtype(input.scalar_type());
  const auto mid = forward_compute(input, dw_weight, dw_bias, g);
  const int64_t out_channels = pw_weight.size(0);
  const auto pw = pw_weight.to(cdt).contiguous().view({out_channels, g.out_channels});
  auto out = at::matmul(pw, mid.view({g.batch, g.out_channels, g.out_area()}));
  const auto pb = contiguous_or_undefined(pw_bias, cdt);
  if (pb.defined()) out.add_(pb.view({1, out_channels, 1}));
  return out.view({g.batch, out_channels, g.out_h, g.out_w})
      .to(input.scalar_type())
      .contiguous(conv_output_format(input, dw_weight));
}

}  // namespace

at::Tensor depthwise_forward(const at::Tensor& input, const at::Tensor& weight,
                             const c10::optional<at::Tensor>& bias, const Conv2dGeometry& g) {
  if (!is_depthwise(g)) return {};
  return forward_compute(input, weight, bias, g)
      .to(input.scalar_type())
      .contiguous(conv_output_format(input, weight));
}

at::Tensor depthwise_input_grad(const at::Tensor& grad_output, const at::Tensor& weight,
                                const c10::optional<at::Tensor>& bias, const Conv2dGeometry& g) {
  if (!is_depthwise(g)) return {};
  const c10::cuda::CUDAGuard guard(grad_output.device());
  const auto cdt = compute_dtype(grad_output.scalar_type());
  const auto gy = grad_output.to(cdt).contiguous();
  const auto w = weight.to(cdt).contiguous();
  const auto b = contiguous_or_undefined(bias, cdt);
  auto gx = at::empty({g.batch, g.in_channels, g.in_h, g.in_w}, gy.options());
  const int64_t total = gx.numel();
  if (total > 0) {
    auto stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES(cdt, "convops_depthwise_input_grad_cuda", [&] {
      depthwise_input_grad_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(
          gy.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), ptr_or_null<scalar_t>(b),
          gx.data_ptr<scalar_t>(), g, total);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return gx.to(grad_output.scalar_type()).contiguous(conv_output_format(grad_output, weight));
}

at::Tensor depthwise_weight_grad(const at::Tensor& grad_output, const at::Tensor& input,
                                 const Conv2dGeometry& g) {
  if (!is_depthwise(g)) return {};
  const c10::cuda::CUDAGuard guard(input.device());
  const auto cdt = compute_dtype(input.scalar_type());
  const auto gy = grad_output.to(cdt).contiguous();
  const auto x = input.to(cdt).contiguous();
  auto gw = at::zeros({g.out_channels, 1, g.kernel_h, g.kernel_w}, x.options());
  const int64_t blocks = g.out_channels * g.kernel_area();
  if (g.batch > 0 && blocks > 0) {
    TORCH_CHECK(blocks < (int64_t(1) << 31), "convops: too many depthwise weight elements (",
                blocks, ") for one CUDA grid");
    auto stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES(cdt, "convops_depthwise_weight_grad_cuda", [&] {
      depthwise_weight_grad_kernel<scalar_t><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
          gy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), gw.data_ptr<scalar_t>(), g);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return gw.to(input.scalar_type());
}

TORCH_LIBRARY_IMPL(convops, CUDA, m) {
  m.impl("depthwise_conv2d", &depthwise_conv2d_op);
  m.impl("depthwise_separable_conv2d", &depthwise_separable_conv2d_op);
}

}  // namespace convops::gpu
