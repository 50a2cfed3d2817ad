// CUDA backend of the conv2d family: im2col and col2im kernels. GEMM (cuBLAS through ATen)
// and tiling are in common/conv_gemm.h. col2im gathers (one thread per image element summing
// the column entries that read it), so it needs no atomics and is deterministic.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../common/build_info.h"
#include "../common/conv_gemm.h"
#include "direct_kernels.h"

#define CONVOPS_STR_(...) #__VA_ARGS__
#define CONVOPS_STR(...) CONVOPS_STR_(__VA_ARGS__)

namespace convops {
namespace {

constexpr int kThreads = 256;

inline int blocks_for(int64_t n) {
  return static_cast<int>(std::min<int64_t>((n + kThreads - 1) / kThreads, int64_t(1) << 16));
}

// One thread per column entry; the column layout is [C*kh*kw][images][rows][width].
template <typename T>
__global__ void im2col_kernel(const T* __restrict__ images, T* __restrict__ columns,
                              Conv2dGeometry g, ConvTile t, int64_t total) {
  const int64_t area = g.kernel_h * g.kernel_w;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(blockDim.x) * gridDim.x) {
    const int64_t ow = t.ow0 + idx % t.width;
    int64_t rest = idx / t.width;
    const int64_t oh = rest % t.rows;
    rest /= t.rows;
    const int64_t b = rest % t.images;
    const int64_t r = rest / t.images;
    const int64_t c = r / area, ki = (r % area) / g.kernel_w, kj = r % g.kernel_w;
    const int64_t ih = (t.oh0 + oh) * g.stride_h - g.pad_h + ki * g.dilation_h;
    const int64_t iw = ow * g.stride_w - g.pad_w + kj * g.dilation_w;
    const bool inside = ih >= 0 && ih < g.in_h && iw >= 0 && iw < g.in_w;
    columns[idx] = inside ? images[((b * g.in_channels + c) * g.in_h + ih) * g.in_w + iw] : T(0);
  }
}

// One thread per image element of the tile; adds the columns that read it.
template <typename T>
__global__ void col2im_kernel(const T* __restrict__ columns, T* __restrict__ images,
                              Conv2dGeometry g, ConvTile t, int64_t total) {
  const int64_t area = g.kernel_h * g.kernel_w;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(blockDim.x) * gridDim.x) {
    const int64_t iw = idx % g.in_w;
    const int64_t ih = (idx / g.in_w) % g.in_h;
    const int64_t c = (idx / (g.in_w * g.in_h)) % g.in_channels;
    const int64_t b = idx / (g.in_w * g.in_h * g.in_channels);
    T sum = T(0);
    for (int64_t ki = 0; ki < g.kernel_h; ++ki) {
      const int64_t hnum = ih + g.pad_h - ki * g.dilation_h;
      if (hnum < 0 || hnum % g.stride_h != 0) continue;
      const int64_t oh = hnum / g.stride_h - t.oh0;
      if (oh < 0 || oh >= t.rows) continue;
      for (int64_t kj = 0; kj < g.kernel_w; ++kj) {
        const int64_t wnum = iw + g.pad_w - kj * g.dilation_w;
        if (wnum < 0 || wnum % g.stride_w != 0) continue;
        const int64_t ow = wnum / g.stride_w - t.ow0;
        if (ow < 0 || ow >= t.width) continue;
        const int64_t r = c * area + ki * g.kernel_w + kj;
        sum += columns[((r * t.images + b) * t.rows + oh) * t.width + ow];
      }
    }
    images[idx] += sum;
  }
}

struct CudaBackend {
  // Specialised kernels claim their geometries here (see conv_gemm.h); undefined = GEMM path.
  // [depthwise / grouped]
  static at::Tensor direct_forward(const at::Tensor& x, const at::Tensor& w,
                                   const c10::optional<at::Tensor>& bias, const Conv2dGeometry& g) {
    return gpu::depthwise_forward(x, w, bias, g);
  }
  // input: the conv_transpose2d input (conv2d's grad_output); the result is conv2d's input grad.
  static at::Tensor direct_input_grad(const at::Tensor& y, const at::Tensor& w,
                                      const c10::optional<at::Tensor>& bias, const Conv2dGeometry& g) {
    return gpu::depthwise_input_grad(y, w, bias, g);
  }
  static at::Tensor direct_weight_grad(const at::Tensor& go, const at::Tensor& x, const Conv2dGeometry& g,
                                       at::Tensor* /*grad_bias: never fused here*/) {
    return gpu::depthwise_weight_grad(go, x, g);
  }

  // The generic tiles (one cuBLAS GEMM per tile) are the CUDA schedule.
  static bool forward_schedule(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                               at::Tensor&, const Conv2dGeometry&) {
    return false;
  }
  static bool input_grad_schedule(const at::Tensor&, const at::Tensor&, at::Tensor&,
                                  const Conv2dGeometry&) {
    return false;
  }
  static bool weight_grad_schedule(const at::Tensor&, const at::Tensor&, at::Tensor&,
                                   const Conv2dGeometry&) {
    return false;
  }

  static void im2col(const at::Tensor& images, at::Tensor& columns, const Conv2dGeometry& g,
                     const ConvTile& t) {
    const c10::cuda::CUDAGuard guard(images.device());
    const int64_t total = columns.numel();
    if (total == 0) return;
    auto stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES(images.scalar_type(), "convops_im2col_cuda", [&] {
      im2col_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(
          images.data_ptr<scalar_t>(), columns.data_ptr<scalar_t>(), g, t, total);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }

  static void col2im(const at::Tensor& columns, at::Tensor& images, const Conv2dGeometry& g,
                     const ConvTile& t) {
    const c10::cuda::CUDAGuard guard(images.device());
    const int64_t total = images.numel();
    if (total == 0) return;
    auto stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES(images.scalar_type(), "convops_col2im_cuda", [&] {
      col2im_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(
          columns.data_ptr<scalar_t>(), images.data_ptr<scalar_t>(), g, t, total);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
};

const bool kBuildInfoRegistered = [] {
#ifdef __CUDA_ARCH_LIST__
  build_info().cuda_archs = CONVOPS_STR(__CUDA_ARCH_LIST__);
#else
  build_info().cuda_archs = "unknown";
#endif
  return true;
}();

}  // namespace

TORCH_LIBRARY_IMPL(convops, CUDA, m) {
  m.impl("conv2d", &conv2d_op<CudaBackend>);
  m.impl("conv_transpose2d", &conv_transpose2d_op<CudaBackend>);
  m.impl("conv2d_weight_grad", &conv2d_weight_grad_op<CudaBackend>);
  m.impl("conv2d_weight_bias_grad", &conv2d_weight_bias_grad_op<CudaBackend>);
}

}  // namespace convops
