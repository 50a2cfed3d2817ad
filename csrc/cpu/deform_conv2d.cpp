// CPU kernels of deformable convolution (v1 and v2), torchvision.ops.deform_conv2d's semantics
// (see common/deform_params.h).
//
// Schedule. The work is split into (image, band of output rows). For a band, the sampling
// point of every (offset group, tap, position) is computed once into a small table: the index
// of its top-left corner in a zero-bordered copy of the image plane and its fractional parts
// (ly, lx). The one-pixel zero border makes every corner of a point inside (-1, H) x (-1, W)
// addressable and reads 0 exactly where torchvision's boundary rule gives 0, so the hot loops
// have no branches; points outside that region point at the border's corner with ly = lx = 0
// and so read, and differentiate to, 0. The same table then drives
//   forward:  the sampled columns (C*kh*kw, P) of the band (times the mask) and one GEMM per
//             weight group into the output;
//   backward: the column gradient W^T x grad_out, from which one pass over the corners gives
//             grad-input (scattered into a bordered per-thread image), grad-offset (the
//             bilinear derivatives), grad-mask (the unmasked sample), while grad-weight and
//             grad-bias accumulate grad_out x columns^T.
// Workspace is per thread and bounded by the band (kBandBytes) and one bordered image.
//
// Determinism. Forward: every output element is computed once, by single-threaded GEMMs
// whose shapes do not depend on the thread count. Backward: a fixed number of "shares" of
// images (from the batch and the weight size only, never from the thread count), each
// processed in order by one thread with its own grad-weight/bias partial sums, which are
// added in share order; grad-input of an image and grad-offset/mask of a position are only
// ever written by the share that owns the image, channels in order. So results are bitwise
// identical run to run and for any number of threads.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>

#include "../common/conv_gemm.h"
#include "../common/deform_params.h"
#include "cpu_parallel.h"

namespace convops {
namespace {

using cpu::parallel_gemm_for;

// Per-thread bytes of a band's columns (and, in backward, its column gradient): the columns
// stay in L2 between the sampling that writes them and the GEMM that reads them.
constexpr int64_t kBandBytes = int64_t(1) << 20;
// Backward partial sums of grad-weight across shares are bounded by this many bytes.
constexpr int64_t kPartialBudgetBytes = int64_t(64) << 20;
constexpr int64_t kMaxShares = 64;

// The sampling table of one band: for entry e = (offset group, tap) and band position p,
// at [e * P + p]: corner index in the bordered plane, and the fractional parts.
template <typename T>
struct SampleTable {
  int32_t* corner;
  T* ly;
  T* lx;
};

struct BandGeometry {
  int64_t oh0, rows, positions;  // output rows [oh0, oh0 + rows), rows * out_w positions
};

// Width and height of a bordered plane.
struct Bordered {
  int64_t h, w;
  int64_t area() const { return h * w; }
};

inline Bordered bordered(const Conv2dGeometry& g) { return {g.in_h + 2, g.in_w + 2}; }

template <typename T>
CONVOPS_INLINE void build_table_impl(const DeformGeometry& d, const T* offset_n, BandGeometry b,
                                     SampleTable<T> tab) {
  const auto& g = d.conv;
  const Bordered bp = bordered(g);
  const int64_t taps = g.kernel_area(), out_area = g.out_area(), P = b.positions;
  const T H = T(g.in_h), W = T(g.in_w);
  for (int64_t e = 0; e < d.offset_groups * taps; ++e) {
    const int64_t tap = e % taps, ki = tap / g.kernel_w, kj = tap % g.kernel_w;
    const T* off_y = offset_n + (2 * e) * out_area + b.oh0 * g.out_w;
    const T* off_x = off_y + out_area;
    int32_t* corner = tab.corner + e * P;
    T* ly = tab.ly + e * P;
    T* lx = tab.lx + e * P;
    for (int64_t r = 0; r < b.rows; ++r) {
      const T base_y = T((b.oh0 + r) * g.stride_h - g.pad_h + ki * g.dilation_h);
      for (int64_t ow = 0; ow < g.out_w; ++ow) {
        const int64_t p = r * g.out_w + ow;
        const T y = base_y + off_y[p];
        const T x = T(ow * g.stride_w - g.pad_w + kj * g.dilation_w) + off_x[p];
        if (!(y > T(-1) && y < H && x > T(-1) && x < W)) {  // also catches NaN
          corner[p] = 0;
          ly[p] = T(0);
          lx[p] = T(0);
          continue;
        }
        const T fy = std::floor(y), fx = std::floor(x);
        // +1: the border; fy >= -1 and fx >= -1 here.
        corner[p] = static_cast<int32_t>((int64_t(fy) + 1) * bp.w + int64_t(fx) + 1);
        ly[p] = y - fy;
        lx[p] = x - fx;
      }
    }
  }
}

// Columns of the channels [c0, c1) of one entry: col[p] = mask[p] * bilinear(plane, p).
template <typename T>
CONVOPS_INLINE void sample_impl(const T* planes, int64_t plane_stride, int64_t row_stride,
                                const int32_t* corner, const T* ly, const T* lx, const T* mask,
                                T* cols, int64_t col_stride, int64_t channels, int64_t P) {
  for (int64_t c = 0; c < channels; ++c) {
    const T* s = planes + c * plane_stride;
    T* col = cols + c * col_stride;
    for (int64_t p = 0; p < P; ++p) {
      const T* q = s + corner[p];
      const T v00 = q[0], v01 = q[1], v10 = q[row_stride], v11 = q[row_stride + 1];
      const T top = v00 + lx[p] * (v01 - v00);
      const T bot = v10 + lx[p] * (v11 - v10);
      col[p] = top + ly[p] * (bot - top);
    }
    if (mask) {
      for (int64_t p = 0; p < P; ++p) col[p] *= mask[p];
    }
  }
}

// The backward of sample_impl for the channels of one entry: from the column gradient dcol,
// accumulates grad_y/grad_x (offset), grad_m (mask) over the channels in order, and scatters
// into the bordered grad-input planes.
template <typename T>
CONVOPS_INLINE void sample_backward_impl(const T* planes, T* grad_planes, int64_t plane_stride,
                                         int64_t row_stride, const int32_t* corner, const T* ly,
                                         const T* lx, const T* mask, const T* dcols,
                                         int64_t col_stride, int64_t channels, int64_t P,
                                         T* grad_y, T* grad_x, T* grad_m, T* scaled) {
  for (int64_t c = 0; c < channels; ++c) {
    const T* s = planes + c * plane_stride;
    const T* dcol = dcols + c * col_stride;
    if (mask) {
      for (int64_t p = 0; p < P; ++p) scaled[p] = dcol[p] * mask[p];
    } else {
      std::copy(dcol, dcol + P, scaled);
    }
    for (int64_t p = 0; p < P; ++p) {
      const T* q = s + corner[p];
      const T v00 = q[0], v01 = q[1], v10 = q[row_stride], v11 = q[row_stride + 1];
      const T a = ly[p], l = lx[p];
      const T top = v00 + l * (v01 - v00);
      const T bot = v10 + l * (v11 - v10);
      grad_y[p] += scaled[p] * (bot - top);
      grad_x[p] += scaled[p] * ((T(1) - a) * (v01 - v00) + a * (v11 - v10));
      if (grad_m) grad_m[p] += dcol[p] * (top + a * (bot - top));
    }
    T* gs = grad_planes + c * plane_stride;
    for (int64_t p = 0; p < P; ++p) {
      T* q = gs + corner[p];
      const T a = ly[p], l = lx[p], v = scaled[p];
      const T top = (T(1) - a) * v, bot = a * v;
      q[0] += top - l * top;
      q[1] += l * top;
      q[row_stride] += bot - l * bot;
      q[row_stride + 1] += l * bot;
    }
  }
}

// One non-template, ISA-cloned entry point per dtype and loop.
#define CONVOPS_DEFORM_CLONES(T, SUFFIX)                                                          \
  CONVOPS_ISA_CLONES void build_table_##SUFFIX(const DeformGeometry& d, const T* offset_n,       \
                                               BandGeometry b, SampleTable<T> tab) {              \
    build_table_impl(d, offset_n, b, tab);                                                        \
  }                                                                                               \
  CONVOPS_ISA_CLONES void sample_##SUFFIX(const T* planes, int64_t ps, int64_t rs,               \
                                          const int32_t* corner, const T* ly, const T* lx,        \
                                          const T* mask, T* cols, int64_t cs, int64_t ch,         \
                                          int64_t P) {                                            \
    sample_impl(planes, ps, rs, corner, ly, lx, mask, cols, cs, ch, P);                           \
  }                                                                                               \
  CONVOPS_ISA_CLONES void sample_backward_##SUFFIX(                                              \
      const T* planes, T* gplanes, int64_t ps, int64_t rs, const int32_t* corner, const T* ly,    \
      const T* lx, const T* mask, const T* dcols, int64_t cs, int64_t ch, int64_t P, T* gy,       \
      T* gx, T* gm, T* scaled) {                                                                  \
    sample_backward_impl(planes, gplanes, ps, rs, corner, ly, lx, mask, dcols, cs, ch, P, gy, gx, \
                         gm, scaled);                                                             \
  }                                                                                               \
  void build_table(const DeformGeometry& d, const T* o, BandGeometry b, SampleTable<T> t) {       \
    build_table_##SUFFIX(d, o, b, t);                                                             \
  }                                                                                               \
  void sample(const T* planes, int64_t ps, int64_t rs, const int32_t* corner, const T* ly,       \
              const T* lx, const T* mask, T* cols, int64_t cs, int64_t ch, int64_t P) {           \
    sample_##SUFFIX(planes, ps, rs, corner, ly, lx, mask, cols, cs, ch, P);                       \
  }                                                                                               \
  void sample_backward(const T* planes, T* gplanes, int64_t ps, int64_t rs,                       \
                       const int32_t* corner, const T* ly, const T* lx, const T* mask,            \
                       const T* dcols, int64_t cs, int64_t ch, int64_t P, T* gy, T* gx, T* gm,    \
                       T* scaled) {                                                               \
    sample_backward_##SUFFIX(planes, gplanes, ps, rs, corner, ly, lx, mask, dcols, cs, ch, P, gy, \
                             gx, gm, scaled);                                                     \
  }

CONVOPS_DEFORM_CLONES(float, f32)
CONVOPS_DEFORM_CLONES(double, f64)
#undef CONVOPS_DEFORM_CLONES

// Output rows per band: the band's columns (and column gradient) within kBandBytes.
int64_t band_rows(const DeformGeometry& d, int64_t elem_size, bool backward) {
  const auto& g = d.conv;
  const int64_t per_position =
      std::max<int64_t>(1, g.in_channels * g.kernel_area() * elem_size * (backward ? 2 : 1));
  const int64_t rows =
      std::clamp<int64_t>(kBandBytes / (per_position * g.out_w), 1, g.out_h);
  const int64_t bands = (g.out_h + rows - 1) / rows;
  return (g.out_h + bands - 1) / bands;  // as even as possible
}

// A thread's scratch: a bordered image, its band columns and the band's sampling table.
template <typename T>
struct BandScratch {
  ScratchBuffer image, columns, table_index, table_frac;
  BandScratch(const DeformGeometry& d, int64_t max_positions, int64_t column_sets,
              int64_t extra_rows, const at::TensorOptions& opt)
      : image(d.conv.in_channels * bordered(d.conv).area(), opt),
        columns(column_sets * d.conv.in_channels * d.conv.kernel_area() * max_positions +
                    extra_rows * max_positions,
                opt),
        table_index(d.offset_groups * d.conv.kernel_area() * max_positions, opt.dtype(at::kInt)),
        table_frac(2 * d.offset_groups * d.conv.kernel_area() * max_positions, opt) {
    // The border stays zero; only the interior is rewritten per image.
    image.tensor().zero_();
  }
  T* image_ptr() const { return image.tensor().template data_ptr<T>(); }
  T* columns_ptr() const { return columns.tensor().template data_ptr<T>(); }
  // Entries are P apart; ly and lx each hold up to the whole index buffer's count.
  SampleTable<T> table() const {
    T* frac = table_frac.tensor().template data_ptr<T>();
    const int64_t n = table_index.tensor().numel();
    return {table_index.tensor().template data_ptr<int32_t>(), frac, frac + n};
  }
};

// Copies image n (C, H, W) into the interior of the bordered planes.
template <typename T>
void copy_bordered(const T* image, T* dst, const Conv2dGeometry& g) {
  const Bordered bp = bordered(g);
  for (int64_t c = 0; c < g.in_channels; ++c) {
    for (int64_t h = 0; h < g.in_h; ++h) {
      std::copy(image + (c * g.in_h + h) * g.in_w, image + (c * g.in_h + h + 1) * g.in_w,
                dst + c * bp.area() + (h + 1) * bp.w + 1);
    }
  }
}

template <typename T>
void copy_interior(const T* bordered_planes, T* image, const Conv2dGeometry& g) {
  const Bordered bp = bordered(g);
  for (int64_t c = 0; c < g.in_channels; ++c) {
    for (int64_t h = 0; h < g.in_h; ++h) {
      const T* src = bordered_planes + c * bp.area() + (h + 1) * bp.w + 1;
      std::copy(src, src + g.in_w, image + (c * g.in_h + h) * g.in_w);
    }
  }
}

// The band's sampling table plus the sampled, masked columns (C*kh*kw, P).
template <typename T>
SampleTable<T> sample_band(const DeformGeometry& d, const BandScratch<T>& s, const T* offset_n,
                           const T* mask_n, const BandGeometry& b, T* cols) {
  const auto& g = d.conv;
  const int64_t taps = g.kernel_area(), P = b.positions, cg = d.channels_per_offset_group();
  const Bordered bp = bordered(g);
  const auto tab = s.table();
  build_table(d, offset_n, b, tab);
  for (int64_t og = 0; og < d.offset_groups; ++og) {
    for (int64_t tap = 0; tap < taps; ++tap) {
      const int64_t e = og * taps + tap;
      const T* m = mask_n ? mask_n + e * g.out_area() + b.oh0 * g.out_w : nullptr;
      sample(s.image_ptr() + og * cg * bp.area(), bp.area(), bp.w, tab.corner + e * P,
             tab.ly + e * P, tab.lx + e * P, m, cols + (og * cg * taps + tap) * P, taps * P, cg, P);
    }
  }
  return tab;
}

struct Prepared {
  at::Tensor x, w, offset, mask;  // compute dtype, contiguous; mask undefined for v1
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
void forward_cpu(const DeformGeometry& d, const Prepared& in, at::Tensor& out) {
  const auto& g = d.conv;
  const int64_t rows = band_rows(d, sizeof(T), false);
  const int64_t bands = (g.out_h + rows - 1) / rows;
  const int64_t taps = g.kernel_area(), K = g.in_channels * taps;
  const T* x = in.x.data_ptr<T>();
  const T* off = in.offset.data_ptr<T>();
  const T* msk = d.use_mask ? in.mask.data_ptr<T>() : nullptr;
  // Images are the outer loop of a thread's items, so each thread borders an image once.
  parallel_gemm_for(g.batch * bands, [&](int64_t begin, int64_t end) {
    BandScratch<T> s(d, rows * g.out_w, 1, 0, in.x.options());
    int64_t bordered_image = -1;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / bands, oh0 = item % bands * rows;
      const int64_t band_rows_here = std::min(rows, g.out_h - oh0);
      const int64_t P = band_rows_here * g.out_w;
      const BandGeometry band{oh0, band_rows_here, P};
      if (bordered_image != n) {
        copy_bordered(x + n * g.in_channels * g.in_area(), s.image_ptr(), g);
        bordered_image = n;
      }
      T* cols = s.columns_ptr();
      sample_band(d, s, off + n * d.offset_channels() * g.out_area(),
                  msk ? msk + n * d.mask_channels() * g.out_area() : nullptr, band, cols);
      const auto col_t = s.columns.tensor().narrow(0, 0, K * P).view({g.groups, g.col_rows_per_group(), P});
      auto dst = out.select(0, n).view({g.groups, g.out_per_group(), g.out_area()}).narrow(2, oh0 * g.out_w, P);
      for (int64_t grp = 0; grp < g.groups; ++grp) {
        auto o = dst.select(0, grp);
        at::mm_out(o, in.w.select(0, grp), col_t.select(0, grp));
      }
    }
  });
}

int64_t backward_shares(const DeformGeometry& d, int64_t weight_bytes) {
  const int64_t by_memory = std::max<int64_t>(1, kPartialBudgetBytes / std::max<int64_t>(1, weight_bytes));
  return std::max<int64_t>(1, std::min({d.conv.batch, by_memory, kMaxShares}));
}

struct Grads {
  at::Tensor input, weight, offset, mask, bias;  // compute dtype
};

template <typename T>
void backward_cpu(const DeformGeometry& d, const Prepared& in, const at::Tensor& grad_out,
                  Grads& gr) {
  const auto& g = d.conv;
  const int64_t rows = band_rows(d, sizeof(T), true);
  const int64_t bands = (g.out_h + rows - 1) / rows;
  const int64_t taps = g.kernel_area(), K = g.in_channels * taps, cg = d.channels_per_offset_group();
  const Bordered bp = bordered(g);
  const int64_t max_p = rows * g.out_w;
  const int64_t shares = backward_shares(d, in.w.numel() * int64_t(sizeof(T)));
  const ScratchBuffer weight_partial(shares * in.w.numel(), in.x.options());
  const ScratchBuffer bias_partial(shares * g.out_channels, in.x.options());
  auto wp = weight_partial.tensor().zero_().view({shares, g.groups, g.out_per_group(), g.col_rows_per_group()});
  auto bpart = bias_partial.tensor().zero_().view({shares, g.out_channels});
  const auto wt = in.w.transpose(1, 2);  // (groups, C/g*kh*kw, O/g)
  const T* off = in.offset.data_ptr<T>();
  const T* msk = d.use_mask ? in.mask.data_ptr<T>() : nullptr;
  T* goff = gr.offset.data_ptr<T>();
  T* gmask = d.use_mask ? gr.mask.data_ptr<T>() : nullptr;
  T* gin = gr.input.data_ptr<T>();

  parallel_gemm_for(shares, [&](int64_t sb, int64_t se) {
    // columns, column gradient; extra rows: the scaled column gradient of one channel.
    BandScratch<T> s(d, max_p, 2, 1, in.x.options());
    const ScratchBuffer grad_image(g.in_channels * bp.area(), in.x.options());
    T* gimg = grad_image.tensor().template data_ptr<T>();
    for (int64_t share = sb; share < se; ++share) {
      auto w_acc = wp.select(0, share);
      auto b_acc = bpart.select(0, share);
      for (int64_t n = share * g.batch / shares; n < (share + 1) * g.batch / shares; ++n) {
        copy_bordered(in.x.data_ptr<T>() + n * g.in_channels * g.in_area(), s.image_ptr(), g);
        grad_image.tensor().zero_();
        const T* off_n = off + n * d.offset_channels() * g.out_area();
        const T* msk_n = msk ? msk + n * d.mask_channels() * g.out_area() : nullptr;
        const auto go_n = grad_out.select(0, n).view({g.groups, g.out_per_group(), g.out_area()});
        b_acc.add_(grad_out.select(0, n).view({g.out_channels, g.out_area()}).sum(1));
        for (int64_t band = 0; band < bands; ++band) {
          const int64_t oh0 = band * rows, P = std::min(rows, g.out_h - oh0) * g.out_w;
          const BandGeometry b{oh0, std::min(rows, g.out_h - oh0), P};
          T* cols = s.columns_ptr();
          T* dcols = cols + K * P;
          T* scaled = dcols + K * P;
          const auto tab = sample_band(d, s, off_n, msk_n, b, cols);
          const auto& col_buf = s.columns.tensor();
          const auto col_t = col_buf.narrow(0, 0, K * P).view({g.groups, g.col_rows_per_group(), P});
          auto dcol_t = col_buf.narrow(0, K * P, K * P).view({g.groups, g.col_rows_per_group(), P});
          const auto go_band = go_n.narrow(2, oh0 * g.out_w, P);
          for (int64_t grp = 0; grp < g.groups; ++grp) {
            auto dc = dcol_t.select(0, grp);
            at::mm_out(dc, wt.select(0, grp), go_band.select(0, grp));
            w_acc.select(0, grp).addmm_(go_band.select(0, grp), col_t.select(0, grp).t());
          }
          for (int64_t og = 0; og < d.offset_groups; ++og) {
            for (int64_t tap = 0; tap < taps; ++tap) {
              const int64_t e = og * taps + tap;
              const int64_t pos0 = oh0 * g.out_w;
              T* gy = goff + (n * d.offset_channels() + 2 * e) * g.out_area() + pos0;
              T* gx = gy + g.out_area();
              T* gm = gmask ? gmask + (n * d.mask_channels() + e) * g.out_area() + pos0 : nullptr;
              const T* m = msk_n ? msk_n + e * g.out_area() + pos0 : nullptr;
              sample_backward(s.image_ptr() + og * cg * bp.area(), gimg + og * cg * bp.area(),
                              bp.area(), bp.w, tab.corner + e * P, tab.ly + e * P, tab.lx + e * P,
                              m, dcols + (og * cg * taps + tap) * P, taps * P, cg, P, gy, gx, gm,
                              scaled);
            }
          }
        }
        copy_interior(gimg, gin + n * g.in_channels * g.in_area(), g);
      }
    }
  });
  gr.weight.copy_(wp.select(0, 0));
  gr.bias.copy_(bpart.select(0, 0));
  for (int64_t share = 1; share < shares; ++share) {
    gr.weight.add_(wp.select(0, share));
    gr.bias.add_(bpart.select(0, share));
  }
}

at::Tensor deform_conv2d_cpu(const at::Tensor& input, const at::Tensor& weight,
                             const at::Tensor& offset, const c10::optional<at::Tensor>& mask,
                             const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                             at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                             int64_t offset_groups) {
  const auto d = deform_conv2d_geometry(input, weight, offset, mask, bias,
                                        {stride, padding, dilation, groups}, offset_groups);
  const auto& g = d.conv;
  const auto in = prepare(d, input, weight, offset, mask);
  const bool has_work = g.batch > 0 && g.out_channels > 0 && g.col_rows_per_group() > 0;
  auto out = has_work ? at::empty({g.batch, g.out_channels, g.out_h, g.out_w}, in.x.options())
                      : at::zeros({g.batch, g.out_channels, g.out_h, g.out_w}, in.x.options());
  if (has_work) {
    AT_DISPATCH_FLOATING_TYPES(in.x.scalar_type(), "convops_deform_conv2d_cpu",
                               [&] { forward_cpu<scalar_t>(d, in, out); });
  }
  if (bias.has_value() && bias->defined() && out.numel() > 0) {
    out.add_(bias->to(out.scalar_type()).view({1, g.out_channels, 1, 1}));
  }
  return out.to(input.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> deform_conv2d_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const at::Tensor& offset, const c10::optional<at::Tensor>& mask, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, int64_t offset_groups) {
  const auto d = deform_conv2d_geometry(input, weight, offset, mask, c10::nullopt,
                                        {stride, padding, dilation, groups}, offset_groups);
  const auto& g = d.conv;
  check_deform_grad_output(d, input, grad_output);
  const auto in = prepare(d, input, weight, offset, mask);
  const auto go = grad_output.to(in.x.scalar_type()).contiguous();
  const auto opt = in.x.options();
  Grads gr;
  gr.input = at::zeros(input.sizes(), opt);
  gr.offset = at::zeros(offset.sizes(), opt);
  gr.mask = d.use_mask ? at::zeros(mask->sizes(), opt) : at::zeros({0}, opt);
  gr.weight = at::zeros(weight.sizes(), opt);
  gr.bias = at::zeros({g.out_channels}, opt);
  if (g.batch > 0 && g.out_channels > 0 && g.col_rows_per_group() > 0) {
    auto gw = gr.weight.view({g.groups, g.out_per_group(), g.col_rows_per_group()});
    Grads view{gr.input, gw, gr.offset, gr.mask, gr.bias};
    AT_DISPATCH_FLOATING_TYPES(opt.dtype().toScalarType(), "convops_deform_conv2d_backward_cpu",
                               [&] { backward_cpu<scalar_t>(d, in, go, view); });
  } else if (g.batch > 0) {
    gr.bias = go.sum({0, 2, 3});
  }
  const auto dt = input.scalar_type();
  return {gr.input.to(dt), gr.weight.to(dt), gr.offset.to(dt), gr.mask.to(dt), gr.bias.to(dt)};
}

}  // namespace

TORCH_LIBRARY_IMPL(convops, CPU, m) {
  m.impl("deform_conv2d", &deform_conv2d_cpu);
  m.impl("deform_conv2d_backward", &deform_conv2d_backward_cpu);
}

}  // namespace convops
