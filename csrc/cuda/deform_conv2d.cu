// CUDA kernels of deformable convolution (v1 and v2), torchvision.ops.deform_conv2d's semantics
// (see common/deform_params.h). Image by image: a bilinear im2col kernel writes the masked
// columns (C*kh*kw, Ho*Wo) and cuBLAS (through ATen) multiplies them by the weight, per group.
// Backward: the column gradient W^T x grad_out (cuBLAS), grad-weight += grad_out x columns^T,
// grad-offset/mask by one thread per (offset group, tap, position) summing its channels in
// order (no atomics), and grad-input either by atomicAdd scatter (fast, order-dependent) or,
// when torch.use_deterministic_algorithms(True), by one thread per input channel scattering its
// column rows in a fixed order (no atomics, bitwise reproducible). Half/bfloat16 are computed
// in float32; indices are 64-bit.
#include <ATen/Context.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <tuple>

#include "../common/conv_gemm.h"
#include "../common/deform_params.h"

namespace convops {
namespace {

constexpr int kThreads = 256;

inline int blocks_for(int64_t n) {
  return static_cast<int>(std::min<int64_t>((n + kThreads - 1) / kThreads, int64_t(1) << 16));
}

#define CONVOPS_GRID_LOOP(i, n) \
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < (n); i += int64_t(blockDim.x) * gridDim.x)

// A sampling point with its four corners; a corner outside the image has weight 0. Points
// with y <= -1, y >= H, x <= -1 or x >= W read 0 (torchvision's rule).
template <typename T>
struct Corners {
  bool inside;
  int64_t y0, x0;
  T ly, lx;
  bool valid[4];  // (y0,x0), (y0,x0+1), (y0+1,x0), (y0+1,x0+1)
};

template <typename T>
__device__ __forceinline__ Corners<T> corners_of(T y, T x, int64_t H, int64_t W) {
  Corners<T> c{};
  c.inside = y > T(-1) && y < T(H) && x > T(-1) && x < T(W);
  if (!c.inside) return c;
  const T fy = floor(y), fx = floor(x);
  c.y0 = static_cast<int64_t>(fy);
  c.x0 = static_cast<int64_t>(fx);
  c.ly = y - fy;
  c.lx = x - fx;
  const bool top = c.y0 >= 0, bottom = c.y0 + 1 < H, left = c.x0 >= 0, right = c.x0 + 1 < W;
  c.valid[0] = top && left;
  c.valid[1] = top && right;
  c.valid[2] = bottom && left;
  c.valid[3] = bottom && right;
  return c;
}

template <typename T>
__device__ __forceinline__ void corner_values(const T* plane, int64_t W, const Corners<T>& c, T v[4]) {
  const int64_t base = c.y0 * W + c.x0;
  v[0] = c.valid[0] ? plane[base] : T(0);
  v[1] = c.valid[1] ? plane[base + 1] : T(0);
  v[2] = c.valid[2] ? plane[base + W] : T(0);
  v[3] = c.valid[3] ? plane[base + W + 1] : T(0);
}

// The sampling point of (offset group og, tap, output position pos) of one image.
template <typename T>
__device__ __forceinline__ Corners<T> point_of(const DeformGeometry& d, const T* offset, int64_t og,
                                               int64_t tap, int64_t pos) {
  const auto& g = d.conv;
  const int64_t area = g.out_h * g.out_w, e = og * g.kernel_h * g.kernel_w + tap;
  const int64_t oh = pos / g.out_w, ow = pos % g.out_w;
  const int64_t ki = tap / g.kernel_w, kj = tap % g.kernel_w;
  const T y = T(oh * g.stride_h - g.pad_h + ki * g.dilation_h) + offset[(2 * e) * area + pos];
  const T x = T(ow * g.stride_w - g.pad_w + kj * g.dilation_w) + offset[(2 * e + 1) * area + pos];
  return corners_of(y, x, g.in_h, g.in_w);
}

// columns[(c*K + tap) * P + pos] = mask * bilinear(input[c], point); one thread per (c, pos).
template <typename T>
__global__ void deform_im2col_kernel(const T* __restrict__ input, const T* __restrict__ offset,
                                     const T* __restrict__ mask, T* __restrict__ columns,
                                     DeformGeometry d) {
  const auto& g = d.conv;
  const int64_t P = g.out_h * g.out_w, taps = g.kernel_h * g.kernel_w;
  const int64_t total = g.in_channels * P, cog = g.in_channels / d.offset_groups;
  CONVOPS_GRID_LOOP(idx, total) {
    const int64_t c = idx / P, pos = idx % P, og = c / cog;
    const T* plane = input + c * g.in_h * g.in_w;
    for (int64_t tap = 0; tap < taps; ++tap) {
      const auto pt = point_of(d, offset, og, tap, pos);
      T val = T(0);
      if (pt.inside) {
        T v[4];
        corner_values(plane, g.in_w, pt, v);
        const T hy = T(1) - pt.ly, hx = T(1) - pt.lx;
        val = hy * hx * v[0] + hy * pt.lx * v[1] + pt.ly * hx * v[2] + pt.ly * pt.lx * v[3];
        if (mask) val *= mask[(og * taps + tap) * P + pos];
      }
      columns[(c * taps + tap) * P + pos] = val;
    }
  }
}

// grad-offset and grad-mask: one thread per (offset group, tap, position), channels in order.
template <typename T>
__global__ void deform_offset_grad_kernel(const T* __restrict__ input, const T* __restrict__ offset,
                                          const T* __restrict__ mask, const T* __restrict__ dcols,
                                          T* __restrict__ grad_offset, T* __restrict__ grad_mask,
                                          DeformGeometry d) {
  const auto& g = d.conv;
  const int64_t P = g.out_h * g.out_w, taps = g.kernel_h * g.kernel_w;
  const int64_t total = d.offset_groups * taps * P, cog = g.in_channels / d.offset_groups;
  CONVOPS_GRID_LOOP(idx, total) {
    const int64_t pos = idx % P, e = idx / P, tap = e % taps, og = e / taps;
    const auto pt = point_of(d, offset, og, tap, pos);
    T gy = T(0), gx = T(0), gm = T(0);
    if (pt.inside) {
      const T hy = T(1) - pt.ly, hx = T(1) - pt.lx;
      for (int64_t c = og * cog; c < (og + 1) * cog; ++c) {
        T v[4];
        corner_values(input + c * g.in_h * g.in_w, g.in_w, pt, v);
        const T dc = dcols[(c * taps + tap) * P + pos];
        gy += dc * (hx * (v[2] - v[0]) + pt.lx * (v[3] - v[1]));
        gx += dc * (hy * (v[1] - v[0]) + pt.ly * (v[3] - v[2]));
        gm += dc * (hy * hx * v[0] + hy * pt.lx * v[1] + pt.ly * hx * v[2] + pt.ly * pt.lx * v[3]);
      }
    }
    const T m = mask ? mask[e * P + pos] : T(1);
    grad_offset[(2 * e) * P + pos] = m * gy;
    grad_offset[(2 * e + 1) * P + pos] = m * gx;
    if (grad_mask) grad_mask[e * P + pos] = gm;
  }
}

template <typename T>
__device__ __forceinline__ void scatter_point(T* plane, int64_t W, const Corners<T>& pt, T grad,
                                              bool atomic) {
  const T hy = T(1) - pt.ly, hx = T(1) - pt.lx;
  const T w[4] = {hy * hx, hy * pt.lx, pt.ly * hx, pt.ly * pt.lx};
  const int64_t base = pt.y0 * W + pt.x0, at[4] = {base, base + 1, base + W, base + W + 1};
  for (int k = 0; k < 4; ++k) {
    if (!pt.valid[k]) continue;
    if (atomic) {
      atomicAdd(plane + at[k], w[k] * grad);
    } else {
      plane[at[k]] += w[k] * grad;
    }
  }
}

// grad-input by atomics: one thread per column entry (c, tap, pos).
template <typename T>
__global__ void deform_col2im_atomic_kernel(const T* __restrict__ offset, const T* __restrict__ mask,
                                            const T* __restrict__ dcols, T* __restrict__ grad_input,
                                            DeformGeometry d) {
  const auto& g = d.conv;
  const int64_t P = g.out_h * g.out_w, taps = g.kernel_h * g.kernel_w;
  const int64_t total = g.in_channels * taps * P, cog = g.in_channels / d.offset_groups;
  CONVOPS_GRID_LOOP(idx, total) {
    const int64_t pos = idx % P, tap = (idx / P) % taps, c = idx / (P * taps), og = c / cog;
    const auto pt = point_of(d, offset, og, tap, pos);
    if (!pt.inside) continue;
    const T m = mask ? mask[(og * taps + tap) * P + pos] : T(1);
    scatter_point(grad_input + c * g.in_h * g.in_w, g.in_w, pt, m * dcols[idx], true);
  }
}

// Deterministic grad-input: one thread per input channel, its column rows in a fixed order.
template <typename T>
__global__ void deform_col2im_ordered_kernel(const T* __restrict__ offset, const T* __restrict__ mask,
                                             const T* __restrict__ dcols, T* __restrict__ grad_input,
                                             DeformGeometry d) {
  const auto& g = d.conv;
  const int64_t P = g.out_h * g.out_w, taps = g.kernel_h * g.kernel_w, cog = g.in_channels / d.offset_groups;
  CONVOPS_GRID_LOOP(c, g.in_channels) {
    const int64_t og = c / cog;
    T* plane = grad_input + c * g.in_h * g.in_w;
    for (int64_t tap = 0; tap < taps; ++tap) {
      for (int64_t pos = 0; pos < P; ++pos) {
        const auto pt = point_of(d, offset, og, tap, pos);
        if (!pt.inside) continue;
        const T m = mask ? mask[(og * taps + tap) * P + pos] : T(1);
        scatter_point(plane, g.in_w, pt, m * dcols[(c * taps + tap) * P + pos], false);
      }
    }
  }
}

struct Prepared {
  at::Tensor x, w, offset, mask;  // compute dtype, contiguous; w (groups, O/g, C/g*K)
};

Prepared prepare(const DeformGeometry& d, const at::Tensor& input, const at::Tensor& weight,
                 const at::Tensor& offset, const c10::optional<at::Tensor>& mask) {
  const auto cdt = compute_dtype(input.scalar_type());
  const auto& g = d.conv;
  Prepared p;
  p.x = input.to(cdt).contiguous();
  p.w = weight.to(cdt).contiguous().view({g.groups, g.out_per_group(), g.col_rows_per_group()});
  p.offset = offset.to(cdt).contiguous();
  if (d.use_mask) p.mask = mask->to(cdt).contiguous();
  return p;
}

template <typename T>
void im2col(const DeformGeometry& d, const Prepared& in, int64_t n, at::Tensor& cols, cudaStream_t stream) {
  const auto& g = d.conv;
  const int64_t total = g.in_channels * g.out_area();
  deform_im2col_kernel<T><<<blocks_for(total), kThreads, 0, stream>>>(
      in.x.data_ptr<T>() + n * g.in_channels * g.in_area(),
      in.offset.data_ptr<T>() + n * d.offset_channels() * g.out_area(),
      d.use_mask ? in.mask.data_ptr<T>() + n * d.mask_channels() * g.out_area() : nullptr,
      cols.data_ptr<T>(), d);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor deform_conv2d_cuda(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& offset,
                              const c10::optional<at::Tensor>& mask, const c10::optional<at::Tensor>& bias,
                              at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                              int64_t groups, int64_t offset_groups) {
  const auto d = deform_conv2d_geometry(input, weight, offset, mask, bias, {stride, padding, dilation, groups},
                                        offset_groups);
  const auto& g = d.conv;
  const c10::cuda::CUDAGuard guard(input.device());
  const auto in = prepare(d, input, weight, offset, mask);
  auto out = at::zeros({g.batch, g.out_channels, g.out_h, g.out_w}, in.x.options());
  if (g.batch > 0 && g.out_channels > 0 && g.col_rows_per_group() > 0) {
    auto stream = at::cuda::getCurrentCUDAStream();
    auto cols = at::empty({g.groups, g.col_rows_per_group(), g.out_area()}, in.x.options());
    AT_DISPATCH_FLOATING_TYPES(in.x.scalar_type(), "convops_deform_conv2d_cuda", [&] {
      for (int64_t n = 0; n < g.batch; ++n) {
        im2col<scalar_t>(d, in, n, cols, stream);
        auto dst = out.select(0, n).view({g.groups, g.out_per_group(), g.out_area()});
        at::bmm_out(dst, in.w, cols);
      }
    });
  }
  if (bias.has_value() && bias->defined() && out.numel() > 0) {
    out.add_(bias->to(out.scalar_type()).view({1, g.out_channels, 1, 1}));
  }
  return out.to(input.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> deform_conv2d_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight, const at::Tensor& offset,
    const c10::optional<at::Tensor>& mask, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, int64_t groups, int64_t offset_groups) {
  const auto d = deform_conv2d_geometry(input, weight, offset, mask, c10::nullopt,
                                        {stride, padding, dilation, groups}, offset_groups);
  const auto& g = d.conv;
  check_deform_grad_output(d, input, grad_output);
  const c10::cuda::CUDAGuard guard(input.device());
  const auto in = prepare(d, input, weight, offset, mask);
  const auto go = grad_output.to(in.x.scalar_type()).contiguous();
  const auto opt = in.x.options();
  auto grad_input = at::zeros(input.sizes(), opt);
  auto grad_offset = at::zeros(offset.sizes(), opt);
  auto grad_mask = d.use_mask ? at::zeros(mask->sizes(), opt) : at::zeros({0}, opt);
  auto grad_weight = at::zeros({g.groups, g.out_per_group(), g.col_rows_per_group()}, opt);
  auto grad_bias = g.batch > 0 ? go.sum({0, 2, 3}) : at::zeros({g.out_channels}, opt);
  if (g.batch > 0 && g.out_channels > 0 && g.col_rows_per_group() > 0) {
    auto stream = at::cuda::getCurrentCUDAStream();
    const bool deterministic = at::globalContext().deterministicAlgorithms();
    auto cols = at::empty({g.groups, g.col_rows_per_group(), g.out_area()}, opt);
    auto dcols = at::empty({g.groups, g.col_rows_per_group(), g.out_area()}, opt);
    const auto wt = in.w.transpose(1, 2);
    AT_DISPATCH_FLOATING_TYPES(opt.dtype().toScalarType(), "convops_deform_conv2d_backward_cuda", [&] {
      using T = scalar_t;
      for (int64_t n = 0; n < g.batch; ++n) {
        const auto go_n = go.select(0, n).view({g.groups, g.out_per_group(), g.out_area()});
        im2col<T>(d, in, n, cols, stream);
        at::bmm_out(dcols, wt, go_n);
        grad_weight.baddbmm_(go_n, cols.transpose(1, 2));
        const T* off_n = in.offset.data_ptr<T>() + n * d.offset_channels() * g.out_area();
        const T* mask_n = d.use_mask ? in.mask.data_ptr<T>() + n * d.mask_channels() * g.out_area() : nullptr;
        const int64_t points = d.offset_groups * g.kernel_area() * g.out_area();
        deform_offset_grad_kernel<T><<<blocks_for(points), kThreads, 0, stream>>>(
            in.x.data_ptr<T>() + n * g.in_channels * g.in_area(), off_n, mask_n, dcols.data_ptr<T>(),
            grad_offset.data_ptr<T>() + n * d.offset_channels() * g.out_area(),
            d.use_mask ? grad_mask.data_ptr<T>() + n * d.mask_channels() * g.out_area() : nullptr, d);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        T* gin = grad_input.data_ptr<T>() + n * g.in_channels * g.in_area();
        if (deterministic) {
          deform_col2im_ordered_kernel<T><<<blocks_for(g.in_channels), kThreads, 0, stream>>>(
              off_n, mask_n, dcols.data_ptr<T>(), gin, d);
        } else {
          const int64_t entries = g.in_channels * g.kernel_area() * g.out_area();
          deform_col2im_atomic_kernel<T><<<blocks_for(entries), kThreads, 0, stream>>>(
              off_n, mask_n, dcols.data_ptr<T>(), gin, d);
        }
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    });
  }
  const auto dt = input.scalar_type();
  return {grad_input.to(dt), grad_weight.view(weight.sizes()).to(dt), grad_offset.to(dt), grad_mask.to(dt),
          grad_bias.to(dt)};
}

}  // namespace

TORCH_LIBRARY_IMPL(convops, CUDA, m) {
  m.impl("deform_conv2d", &deform_conv2d_cuda);
  m.impl("deform_conv2d_backward", &deform_conv2d_backward_cuda);
}

}  // namespace convops
