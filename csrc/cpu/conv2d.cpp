// CPU backend of the conv2d family: the im2col/col2im data movement. GEMM and tiling are in
// common/conv_gemm.h. The loops are compiled for AVX-512, AVX2 and baseline x86-64 and the
// variant is picked once at load time by CPUID (GCC target_clones / ifunc), so the same binary
// runs on every x86-64 CPU and never needs -march=native.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>

#include "../common/build_info.h"
#include "../common/conv_gemm.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CONVOPS_ISA_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#define CONVOPS_ISA_LIST "avx512f,avx2,default"
#else
#define CONVOPS_ISA_CLONES
#define CONVOPS_ISA_LIST "default"
#endif
#define CONVOPS_INLINE inline __attribute__((always_inline))

namespace convops {
namespace {

// Output columns [lo, hi) of a kernel tap read inside the input row; the rest is padding.
struct ValidSpan {
  int64_t lo, hi;
};

CONVOPS_INLINE ValidSpan valid_output_span(int64_t first_in, int64_t stride, int64_t in_size,
                                           int64_t out_size) {
  int64_t lo = first_in >= 0 ? 0 : (-first_in + stride - 1) / stride;
  int64_t hi = in_size - first_in <= 0 ? 0 : (in_size - first_in - 1) / stride + 1;
  lo = std::min(lo, out_size);
  hi = std::max(lo, std::min(hi, out_size));
  return {lo, hi};
}

// Rows [begin, end) of the column matrix; row i is (kernel row r = i / images, image i % images).
template <typename T>
CONVOPS_INLINE void im2col_range(const T* images, T* columns, const Conv2dGeometry& g,
                                 const ConvTile& t, int64_t begin, int64_t end) {
  const int64_t area = g.kernel_area(), row_len = t.rows * g.out_w;
  for (int64_t i = begin; i < end; ++i) {
    const int64_t r = i / t.images, b = i % t.images;
    const int64_t c = r / area, ki = (r % area) / g.kernel_w, kj = r % g.kernel_w;
    const T* plane = images + (b * g.in_channels + c) * g.in_area();
    T* dst = columns + i * row_len;
    const int64_t iw0 = kj * g.dilation_w - g.pad_w;
    const auto span = valid_output_span(iw0, g.stride_w, g.in_w, g.out_w);
    for (int64_t oh = 0; oh < t.rows; ++oh, dst += g.out_w) {
      const int64_t ih = (t.oh0 + oh) * g.stride_h - g.pad_h + ki * g.dilation_h;
      if (ih < 0 || ih >= g.in_h) {
        std::fill(dst, dst + g.out_w, T(0));
        continue;
      }
      const T* src = plane + ih * g.in_w + iw0;
      std::fill(dst, dst + span.lo, T(0));
      if (g.stride_w == 1) {
        std::memcpy(dst + span.lo, src + span.lo, (span.hi - span.lo) * sizeof(T));
      } else {
        for (int64_t ow = span.lo; ow < span.hi; ++ow) dst[ow] = src[ow * g.stride_w];
      }
      std::fill(dst + span.hi, dst + g.out_w, T(0));
    }
  }
}

// Image planes [begin, end) of (image b, channel c), p = b * C + c: each plane gathers every
// column row that reads it, in a fixed order, so the result is deterministic.
template <typename T>
CONVOPS_INLINE void col2im_range(const T* columns, T* images, const Conv2dGeometry& g,
                                 const ConvTile& t, int64_t begin, int64_t end) {
  const int64_t area = g.kernel_area(), row_len = t.rows * g.out_w;
  for (int64_t p = begin; p < end; ++p) {
    const int64_t b = p / g.in_channels, c = p % g.in_channels;
    T* plane = images + p * g.in_area();
    for (int64_t tap = 0; tap < area; ++tap) {
      const int64_t ki = tap / g.kernel_w, kj = tap % g.kernel_w;
      const T* src = columns + ((c * area + tap) * t.images + b) * row_len;
      const int64_t iw0 = kj * g.dilation_w - g.pad_w;
      const auto span = valid_output_span(iw0, g.stride_w, g.in_w, g.out_w);
      for (int64_t oh = 0; oh < t.rows; ++oh, src += g.out_w) {
        const int64_t ih = (t.oh0 + oh) * g.stride_h - g.pad_h + ki * g.dilation_h;
        if (ih < 0 || ih >= g.in_h) continue;
        T* dst = plane + ih * g.in_w + iw0;
        if (g.stride_w == 1) {
          for (int64_t ow = span.lo; ow < span.hi; ++ow) dst[ow] += src[ow];
        } else {
          for (int64_t ow = span.lo; ow < span.hi; ++ow) dst[ow * g.stride_w] += src[ow];
        }
      }
    }
  }
}

// One non-template, ISA-cloned entry point per dtype.
CONVOPS_ISA_CLONES void im2col_f32(const float* x, float* c, const Conv2dGeometry& g,
                                   const ConvTile& t, int64_t b, int64_t e) {
  im2col_range(x, c, g, t, b, e);
}
CONVOPS_ISA_CLONES void im2col_f64(const double* x, double* c, const Conv2dGeometry& g,
                                   const ConvTile& t, int64_t b, int64_t e) {
  im2col_range(x, c, g, t, b, e);
}
CONVOPS_ISA_CLONES void col2im_f32(const float* c, float* x, const Conv2dGeometry& g,
                                   const ConvTile& t, int64_t b, int64_t e) {
  col2im_range(c, x, g, t, b, e);
}
CONVOPS_ISA_CLONES void col2im_f64(const double* c, double* x, const Conv2dGeometry& g,
                                   const ConvTile& t, int64_t b, int64_t e) {
  col2im_range(c, x, g, t, b, e);
}

void im2col_dispatch(const float* x, float* c, const Conv2dGeometry& g, const ConvTile& t,
                     int64_t b, int64_t e) {
  im2col_f32(x, c, g, t, b, e);
}
void im2col_dispatch(const double* x, double* c, const Conv2dGeometry& g, const ConvTile& t,
                     int64_t b, int64_t e) {
  im2col_f64(x, c, g, t, b, e);
}
void col2im_dispatch(const float* c, float* x, const Conv2dGeometry& g, const ConvTile& t,
                     int64_t b, int64_t e) {
  col2im_f32(c, x, g, t, b, e);
}
void col2im_dispatch(const double* c, double* x, const Conv2dGeometry& g, const ConvTile& t,
                     int64_t b, int64_t e) {
  col2im_f64(c, x, g, t, b, e);
}

// Enough elements per task that threading pays for itself.
int64_t grain_for(int64_t elems_per_item) {
  return std::max<int64_t>(1, (int64_t(1) << 15) / std::max<int64_t>(1, elems_per_item));
}

struct CpuBackend {
  static void im2col(const at::Tensor& images, at::Tensor& columns, const Conv2dGeometry& g,
                     const ConvTile& t) {
    const int64_t items = g.in_channels * g.kernel_area() * t.images;
    AT_DISPATCH_FLOATING_TYPES(images.scalar_type(), "convops_im2col_cpu", [&] {
      const scalar_t* x = images.data_ptr<scalar_t>();
      scalar_t* c = columns.data_ptr<scalar_t>();
      at::parallel_for(0, items, grain_for(t.rows * g.out_w), [&](int64_t b, int64_t e) {
        im2col_dispatch(x, c, g, t, b, e);
      });
    });
  }

  static void col2im(const at::Tensor& columns, at::Tensor& images, const Conv2dGeometry& g,
                     const ConvTile& t) {
    const int64_t planes = t.images * g.in_channels;
    AT_DISPATCH_FLOATING_TYPES(images.scalar_type(), "convops_col2im_cpu", [&] {
      const scalar_t* c = columns.data_ptr<scalar_t>();
      scalar_t* x = images.data_ptr<scalar_t>();
      at::parallel_for(0, planes, grain_for(g.kernel_area() * t.rows * g.out_w),
                       [&](int64_t b, int64_t e) { col2im_dispatch(c, x, g, t, b, e); });
    });
  }
};

const char* selected_isa() {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return "avx512f";
  if (__builtin_cpu_supports("avx2")) return "avx2";
#endif
  return "default";
}

const bool kBuildInfoRegistered = [] {
  build_info().cpu_kernel_isas = CONVOPS_ISA_LIST;
  build_info().cpu_selected_isa = selected_isa();
  return true;
}();

}  // namespace

TORCH_LIBRARY_IMPL(convops, CPU, m) {
  m.impl("conv2d", &conv2d_op<CpuBackend>);
  m.impl("conv_transpose2d", &conv_transpose2d_op<CpuBackend>);
  m.impl("conv2d_weight_grad", &conv2d_weight_grad_op<CpuBackend>);
}

}  // namespace convops
