// CPU backend of the conv2d family: the im2col/col2im data movement and the CPU schedule
// (per-thread bands, below). The generic tiles are in common/conv_gemm.h; GEMM is ATen's.
// The data-movement loops are compiled per ISA (CONVOPS_ISA_CLONES, cpu_parallel.h).
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>

#include "../common/build_info.h"
#include "../common/conv_gemm.h"
#include "cpu_parallel.h"
#include "direct_kernels.h"

namespace convops {
namespace {

using cpu::parallel_gemm_for;

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

// The same span for kernel column kj, restricted to the tile's output columns and counted
// from its first one; first_in is the input column that the tile's first output reads.
struct TileRowSpan {
  ValidSpan span;
  int64_t first_in;
};

CONVOPS_INLINE TileRowSpan tile_row_span(const Conv2dGeometry& g, const ConvTile& t, int64_t kj) {
  const int64_t first_in = (t.ow0 * g.stride_w) - g.pad_w + kj * g.dilation_w;
  return {valid_output_span(first_in, g.stride_w, g.in_w, t.width), first_in};
}

// Rows [begin, end) of the column matrix; row i is (kernel row r = i / images, image i % images).
template <typename T>
CONVOPS_INLINE void im2col_range(const T* images, T* columns, const Conv2dGeometry& g,
                                 const ConvTile& t, int64_t begin, int64_t end) {
  const int64_t area = g.kernel_area(), row_len = t.columns_per_image();
  for (int64_t i = begin; i < end; ++i) {
    const int64_t r = i / t.images, b = i % t.images;
    const int64_t c = r / area, ki = (r % area) / g.kernel_w, kj = r % g.kernel_w;
    const T* plane = images + (b * g.in_channels + c) * g.in_area();
    T* dst = columns + i * row_len;
    const auto [span, first_in] = tile_row_span(g, t, kj);
    for (int64_t oh = 0; oh < t.rows; ++oh, dst += t.width) {
      const int64_t ih = (t.oh0 + oh) * g.stride_h - g.pad_h + ki * g.dilation_h;
      if (ih < 0 || ih >= g.in_h) {
        std::fill(dst, dst + t.width, T(0));
        continue;
      }
      const T* src = plane + ih * g.in_w + first_in;
      std::fill(dst, dst + span.lo, T(0));
      if (g.stride_w == 1) {
        std::memcpy(dst + span.lo, src + span.lo, (span.hi - span.lo) * sizeof(T));
      } else {
        for (int64_t ow = span.lo; ow < span.hi; ++ow) dst[ow] = src[ow * g.stride_w];
      }
      std::fill(dst + span.hi, dst + t.width, T(0));
    }
  }
}

// Image planes [begin, end) of (image b, channel c), p = b * C + c: each plane gathers every
// column row that reads it, in a fixed order, so the result is deterministic.
template <typename T>
CONVOPS_INLINE void col2im_range(const T* columns, T* images, const Conv2dGeometry& g,
                                 const ConvTile& t, int64_t begin, int64_t end) {
  const int64_t area = g.kernel_area(), row_len = t.columns_per_image();
  for (int64_t p = begin; p < end; ++p) {
    const int64_t b = p / g.in_channels, c = p % g.in_channels;
    T* plane = images + p * g.in_area();
    for (int64_t tap = 0; tap < area; ++tap) {
      const int64_t ki = tap / g.kernel_w, kj = tap % g.kernel_w;
      const T* src = columns + ((c * area + tap) * t.images + b) * row_len;
      const auto [span, first_in] = tile_row_span(g, t, kj);
      for (int64_t oh = 0; oh < t.rows; ++oh, src += t.width) {
        const int64_t ih = (t.oh0 + oh) * g.stride_h - g.pad_h + ki * g.dilation_h;
        if (ih < 0 || ih >= g.in_h) continue;
        T* dst = plane + ih * g.in_w + first_in;
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

// The CPU schedule. Threads take (image, band of output rows) items; a band's columns are
// sized to stay in cache between the im2col that writes them and the single-threaded GEMM that
// reads them, so the column matrix never travels through DRAM, and the skinny GEMMs of
// convolutions (few output channels, long rows) are split by us rather than inside BLAS,
// where they scale poorly. Needs at least one image per thread; otherwise the generic tiles
// (one BLAS-threaded GEMM per tile) run.
// 1.5 MiB: measured best of 0.375/0.75/1.5/3 MiB on the dense suite (Zen 4, 1 MiB L2 per
// core): wider GEMMs outweigh the band spilling a little into L3.
constexpr int64_t kBandBytes = int64_t(1536) << 10;

// Bands of `rows` output rows, or, when one row alone is too wide, one-row segments of
// `width` columns; `bands` per image.
struct BandPlan {
  int64_t rows, width, segments_per_row, bands;
};

// n parts of at most `part` each, as equal as possible: no sliver at the end.
int64_t even_part(int64_t total, int64_t part) {
  const int64_t parts = (total + part - 1) / part;
  return (total + parts - 1) / parts;
}

BandPlan band_plan(const Conv2dGeometry& g, int64_t elem_size) {
  const int64_t col_bytes = std::max<int64_t>(1, g.groups * g.col_rows_per_group() * elem_size);
  const int64_t row_bytes = col_bytes * g.out_w;
  BandPlan bp{1, g.out_w, 1, 0};
  if (row_bytes > kBandBytes) {
    bp.width = even_part(g.out_w, std::max<int64_t>(1, kBandBytes / col_bytes));
    bp.segments_per_row = (g.out_w + bp.width - 1) / bp.width;
  } else {
    bp.rows = even_part(g.out_h, std::clamp<int64_t>(kBandBytes / row_bytes, 1, g.out_h));
  }
  bp.bands = (g.out_h + bp.rows - 1) / bp.rows * bp.segments_per_row;
  return bp;
}

// Below this many output positions per image, per-image GEMMs are too narrow for BLAS; the
// generic tiles batch several images into one wide GEMM instead.
constexpr int64_t kMinBandArea = 128;

bool band_schedule_applies(const Conv2dGeometry& g) {
  return g.batch >= at::get_num_threads() && g.out_area() >= kMinBandArea;
}

// The band of item i: image n, output rows [oh0, oh0 + rows), columns [ow0, ow0 + width).
struct Band {
  int64_t n;
  ConvTile tile;  // relative to image n
  int64_t columns() const { return tile.columns_per_image(); }
  // First output position of the band in its (flattened) output plane.
  int64_t offset(const Conv2dGeometry& g) const { return tile.oh0 * g.out_w + tile.ow0; }
};

Band band_of(const Conv2dGeometry& g, const BandPlan& bp, int64_t item) {
  const int64_t n = item / bp.bands, in_image = item % bp.bands;
  const int64_t oh0 = in_image / bp.segments_per_row * bp.rows;
  const int64_t ow0 = in_image % bp.segments_per_row * bp.width;
  return {n, ConvTile{0, 1, oh0, std::min(bp.rows, g.out_h - oh0), ow0,
                      std::min(bp.width, g.out_w - ow0)}};
}

// (groups, C/groups, P) view of a band of a column-side tensor (N, C, Ho, Wo).
at::Tensor column_side_band(const at::Tensor& t, const Conv2dGeometry& g, const Band& b) {
  const int64_t channels = t.size(1);
  return t.select(0, b.n)
      .view({g.groups, channels / g.groups, g.out_area()})
      .narrow(2, b.offset(g), b.columns());
}

// The band's im2col matrix (groups, C/g*kh*kw, P), in buf, or the input itself for a 1x1 conv.
at::Tensor band_columns(const at::Tensor& x, const at::Tensor& buf, const Conv2dGeometry& g,
                        const Band& b) {
  if (g.is_pointwise()) return column_side_band(x, g, b);
  auto cols = detail::column_view(buf, g, b.tile);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "convops_im2col_band", [&] {
    im2col_dispatch(x.data_ptr<scalar_t>() + b.n * g.in_channels * g.in_area(),
                    cols.data_ptr<scalar_t>(), g, b.tile, 0, g.groups * g.col_rows_per_group());
  });
  return cols;
}

// Per-thread column buffer; none for a 1x1 conv, whose input is its own column matrix.
int64_t band_workspace_elems(const Conv2dGeometry& g, const BandPlan& bp) {
  return g.is_pointwise() ? 0 : g.groups * g.col_rows_per_group() * bp.rows * bp.width;
}

struct CpuBackend {
  // Specialised kernels claim their geometries first (see conv_gemm.h, direct_kernels.h).
  static at::Tensor direct_forward(const at::Tensor& x, const at::Tensor& w,
                                   const c10::optional<at::Tensor>& bias, const Conv2dGeometry& g) {
    if (auto y = cpu::depthwise_forward(x, w, bias, g); y.defined()) return y;
    return cpu::grouped_forward(x, w, bias, g);
  }
  // y: the conv_transpose2d input (conv2d's grad_output); the result is conv2d's input grad.
  static at::Tensor direct_input_grad(const at::Tensor& y, const at::Tensor& w,
                                      const c10::optional<at::Tensor>& bias, const Conv2dGeometry& g) {
    if (auto dx = cpu::depthwise_input_grad(y, w, bias, g); dx.defined()) return dx;
    return cpu::grouped_input_grad(y, w, bias, g);
  }
  static at::Tensor direct_weight_grad(const at::Tensor& go, const at::Tensor& x, const Conv2dGeometry& g,
                                       at::Tensor* grad_bias) {
    if (auto dw = cpu::depthwise_weight_grad(go, x, g); dw.defined()) return dw;
    return cpu::grouped_weight_grad(go, x, g, grad_bias);
  }

  static void im2col(const at::Tensor& images, at::Tensor& columns, const Conv2dGeometry& g,
                     const ConvTile& t) {
    const int64_t items = g.in_channels * g.kernel_area() * t.images;
    AT_DISPATCH_FLOATING_TYPES(images.scalar_type(), "convops_im2col_cpu", [&] {
      const scalar_t* x = images.data_ptr<scalar_t>();
      scalar_t* c = columns.data_ptr<scalar_t>();
      at::parallel_for(0, items, grain_for(t.columns_per_image()), [&](int64_t b, int64_t e) {
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
      at::parallel_for(0, planes, grain_for(g.kernel_area() * t.columns_per_image()),
                       [&](int64_t b, int64_t e) { col2im_dispatch(c, x, g, t, b, e); });
    });
  }

  // out (N, O, Ho, Wo) = w (G, O/G, K) x columns + bias, band by band (the bias is added
  // while the band is still in cache).
  static bool forward_schedule(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias,
                               at::Tensor& out, const Conv2dGeometry& g) {
    if (!band_schedule_applies(g)) return false;
    const auto bp = band_plan(g, x.element_size());
    parallel_gemm_for(g.batch * bp.bands, [&](int64_t begin, int64_t end) {
      const ScratchBuffer band_buf(band_workspace_elems(g, bp), x.options());
      const at::Tensor& buf = band_buf.tensor();
      for (int64_t item = begin; item < end; ++item) {
        const Band b = band_of(g, bp, item);
        const auto cols = band_columns(x, buf, g, b);
        auto dst = column_side_band(out, g, b);
        for (int64_t grp = 0; grp < g.groups; ++grp) {
          auto d = dst.select(0, grp);
          at::mm_out(d, w.select(0, grp), cols.select(0, grp));
        }
        if (bias.defined()) dst.add_(bias.view({g.groups, g.out_per_group(), 1}));
      }
    });
    return true;
  }

  // grad_w (G, O/G, K) = sum over bands of grad_output band x columns^T. Each thread sums its
  // fixed share of the bands into its own buffer; the buffers are added in thread order, so
  // the result is deterministic for a given thread count.
  static bool weight_grad_schedule(const at::Tensor& go, const at::Tensor& x, at::Tensor& grad_w,
                                   const Conv2dGeometry& g) {
    if (!band_schedule_applies(g)) return false;
    const auto bp = band_plan(g, x.element_size());
    const int64_t items = g.batch * bp.bands;
    const int64_t shares = std::min<int64_t>(at::get_num_threads(), items);
    const ScratchBuffer partial_buf(shares * grad_w.numel(), x.options());
    auto partial = partial_buf.tensor().zero_().view(
        {shares, g.groups, g.out_per_group(), g.col_rows_per_group()});
    parallel_gemm_for(shares, [&](int64_t sb, int64_t se) {
      const ScratchBuffer band_buf(band_workspace_elems(g, bp), x.options());
      const at::Tensor& buf = band_buf.tensor();
      for (int64_t share = sb; share < se; ++share) {
        auto acc = partial.select(0, share);
        for (int64_t item = share * items / shares; item < (share + 1) * items / shares; ++item) {
          const Band b = band_of(g, bp, item);
          const auto cols = band_columns(x, buf, g, b);
          const auto go_band = column_side_band(go, g, b);
          for (int64_t grp = 0; grp < g.groups; ++grp) {
            acc.select(0, grp).addmm_(go_band.select(0, grp), cols.select(0, grp).t());
          }
        }
      }
    });
    grad_w.copy_(partial.select(0, 0));
    for (int64_t share = 1; share < shares; ++share) grad_w.add_(partial.select(0, share));
    return true;
  }

  // images (N, C, H, W) = col2im(wt (G, K, O/G) x grad_output band). Bands of one image
  // overlap in the image, so an image belongs to one thread.
  static bool input_grad_schedule(const at::Tensor& y, const at::Tensor& wt, at::Tensor& images,
                                  const Conv2dGeometry& g) {
    if (!band_schedule_applies(g)) return false;
    const auto bp = band_plan(g, y.element_size());
    parallel_gemm_for(g.batch, [&](int64_t begin, int64_t end) {
      const ScratchBuffer band_buf(band_workspace_elems(g, bp), y.options());
      const at::Tensor& buf = band_buf.tensor();
      for (int64_t n = begin; n < end; ++n) {
        for (int64_t band = 0; band < bp.bands; ++band) {
          const Band b = band_of(g, bp, n * bp.bands + band);
          const auto y_band = column_side_band(y, g, b);
          at::Tensor cols = g.is_pointwise() ? column_side_band(images, g, b)
                                             : detail::column_view(buf, g, b.tile);
          for (int64_t grp = 0; grp < g.groups; ++grp) {
            auto c = cols.select(0, grp);
            at::mm_out(c, wt.select(0, grp), y_band.select(0, grp));
          }
          if (g.is_pointwise()) continue;
          AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "convops_col2im_band", [&] {
            col2im_dispatch(cols.data_ptr<scalar_t>(),
                            images.data_ptr<scalar_t>() + n * g.in_channels * g.in_area(), g,
                            b.tile, 0, g.in_channels);
          });
        }
      }
    });
    return true;
  }
};

const bool kBuildInfoRegistered = [] {
  build_info().cpu_kernel_isas = CONVOPS_ISA_LIST;
  build_info().cpu_selected_isa = cpu::selected_isa();
  return true;
}();

}  // namespace

TORCH_LIBRARY_IMPL(convops, CPU, m) {
  m.impl("conv2d", &conv2d_op<CpuBackend>);
  m.impl("conv_transpose2d", &conv_transpose2d_op<CpuBackend>);
  m.impl("conv2d_weight_grad", &conv2d_weight_grad_op<CpuBackend>);
  m.impl("conv2d_weight_bias_grad", &conv2d_weight_bias_grad_op<CpuBackend>);
}

}  // namespace convops
