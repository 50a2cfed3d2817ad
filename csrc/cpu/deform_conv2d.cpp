// CPU kernels of deformable convolution (v1 and v2), torchvision.ops.deform_conv2d's semantics
// (see common/deform_params.h).
//
// Layout. Each image is copied once, channels innermost, into a buffer with a one-pixel zero
// border: (H+2, W+2, C). Every corner of a sampling point inside (-1, H) x (-1, W) is then
// addressable and reads 0 exactly where torchvision's boundary rule gives 0 (points outside
// that region read 0 and are skipped), and the four corners of a point are four contiguous
// channel vectors. The sampled columns of a band of P output positions are stored transposed,
// (P, kh*kw*C) ordered [weight group][tap][channel], so that bilinear sampling is a
// weighted sum of four contiguous vectors (no gathers), and the weight is permuted to match,
// (O, [tap][channel]) per group. Sampling coordinates and bilinear weights are computed once
// per (position, tap, offset group) and applied to all the channels of the offset group.
//
// Schedule. Work items are (image, band of output rows); a band's columns (and in backward its
// column gradient) stay within kBandBytes, so they are in L2 between the sampling and the
// single-threaded GEMMs that use them:
//   forward:  columns, then out_band = W x columns^T per weight group;
//   backward: columns (for grad-weight), column gradient = grad_out^T x W, then one pass over
//             the corners gives grad-input (into the bordered per-thread image), grad-offset
//             (the bilinear derivatives) and grad-mask (the unmasked sample); grad-weight and
//             grad-bias accumulate grad_out x columns.
// Workspace is per thread: one bordered image and a band's columns.
//
// Determinism. Forward: each output element is computed once by a single-threaded GEMM whose
// shape does not depend on the thread count. Backward: a fixed number of "shares" of images
// (from the batch and the weight size only, never from the thread count), each processed in
// order by one thread with its own grad-weight/bias partial sums, added in share order at the
// end; grad-input of an image and grad-offset/mask of a position are written only by the share
// owning the image, in a fixed order; sums over channels use fixed vector lanes (Vec), so the
// vector width of the selected ISA does not change them either. Results are bitwise identical
// run to run and for any number of threads.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <tuple>

#include "../common/conv_gemm.h"
#include "../common/deform_params.h"
#include "cpu_parallel.h"

namespace convops {
namespace {

using cpu::parallel_gemm_for;

// Per-thread bytes of a band's columns (and, in backward, its column gradient).
constexpr int64_t kBandBytes = int64_t(3) << 19;  // 1.5 MiB
// Backward partial sums of grad-weight across shares are bounded by this many bytes.
constexpr int64_t kPartialBudgetBytes = int64_t(64) << 20;
constexpr int64_t kMaxShares = 64;

// A sampling point: its top-left corner's pixel in the bordered image and the bilinear
// fractions; `inside` is false where torchvision's rule makes it read 0.
template <typename T>
struct SamplePoint {
  int64_t corner;
  T ly, lx;
  bool inside;
};

template <typename T>
CONVOPS_INLINE SamplePoint<T> sample_point(const Conv2dGeometry& g, int64_t bordered_w, T y, T x) {
  if (!(y > T(-1) && y < T(g.in_h) && x > T(-1) && x < T(g.in_w))) return {0, T(0), T(0), false};
  const T fy = std::floor(y), fx = std::floor(x);
  // +1: the border (fy, fx >= -1 here)
  return {(int64_t(fy) + 1) * bordered_w + int64_t(fx) + 1, y - fy, x - fx, true};
}

// What a band needs to know about where it is.
template <typename T>
struct BandArgs {
  const DeformGeometry* d;
  const T* image;     // bordered (H+2, W+2, C)
  const T* offset;    // offset of this image (2*G*K, Ho, Wo)
  const T* mask;      // mask of this image (G*K, Ho, Wo), or null
  int64_t oh0, rows;  // output rows [oh0, oh0 + rows)
};

// Calls fn(p, tap, og, e, pos, point, mask value) for every sampling point of the band: p is the
// position in the band, pos in the output plane, e = og * taps + tap the offset/mask row.
template <typename T, class Fn>
CONVOPS_INLINE void for_each_point(const BandArgs<T>& a, Fn&& fn) {
  const auto& d = *a.d;
  const auto& g = d.conv;
  const int64_t taps = g.kernel_area(), area = g.out_area(), bw = g.in_w + 2;
  for (int64_t r = 0; r < a.rows; ++r) {
    const int64_t oh = a.oh0 + r;
    for (int64_t ow = 0; ow < g.out_w; ++ow) {
      const int64_t p = r * g.out_w + ow, pos = oh * g.out_w + ow;
      for (int64_t tap = 0; tap < taps; ++tap) {
        const int64_t ki = tap / g.kernel_w, kj = tap % g.kernel_w;
        const T base_y = T(oh * g.stride_h - g.pad_h + ki * g.dilation_h);
        const T base_x = T(ow * g.stride_w - g.pad_w + kj * g.dilation_w);
        for (int64_t og = 0; og < d.offset_groups; ++og) {
          const int64_t e = og * taps + tap;
          const T y = base_y + a.offset[(2 * e) * area + pos];
          const T x = base_x + a.offset[(2 * e + 1) * area + pos];
          const T m = a.mask ? a.mask[e * area + pos] : T(1);
          fn(p, tap, og, e, pos, sample_point(g, bw, y, x), m);
        }
      }
    }
  }
}

// Channel segments [c0, c1) of offset group og, split at weight-group boundaries, with the
// offset of each segment's first channel in a column row ([group][tap][channel]).
template <class Fn>
CONVOPS_INLINE void for_each_segment(const DeformGeometry& d, int64_t og, int64_t tap, Fn&& fn) {
  const auto& g = d.conv;
  const int64_t cpg = g.in_per_group(), cog = d.channels_per_offset_group(), taps = g.kernel_area();
  for (int64_t c = og * cog; c < (og + 1) * cog;) {
    const int64_t grp = c / cpg;
    const int64_t end = std::min((og + 1) * cog, (grp + 1) * cpg);
    fn(c, end, grp * taps * cpg + tap * cpg + (c - grp * cpg));
    c = end;
  }
}

// 64 bytes of T as one GCC vector: zmm with AVX-512, two ymm with AVX2, four xmm otherwise;
// the lane arithmetic (and so every rounding) is the same in every ISA variant.
template <typename T>
struct Vec {
  static constexpr int kLanes = int(64 / sizeof(T));
  typedef T type __attribute__((vector_size(64)));
};
template <typename T>
using vec_t = typename Vec<T>::type;

template <typename T>
CONVOPS_INLINE vec_t<T> vload(const T* p) {
  vec_t<T> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
template <typename T>
CONVOPS_INLINE void vstore(T* p, vec_t<T> v) {
  std::memcpy(p, &v, sizeof(v));
}
template <typename T>
CONVOPS_INLINE vec_t<T> vbroadcast(T x) {
  return vec_t<T>{} + x;
}

template <typename T>
CONVOPS_INLINE void bilinear_channels(T* __restrict__ dst, const T* __restrict__ v00,
                                      const T* __restrict__ v01, const T* __restrict__ v10,
                                      const T* __restrict__ v11, int64_t n, T w00, T w01, T w10,
                                      T w11) {
  constexpr int L = Vec<T>::kLanes;
  const auto a = vbroadcast(w00), b = vbroadcast(w01), c = vbroadcast(w10), d = vbroadcast(w11);
  int64_t i = 0;
  for (; i + L <= n; i += L) {
    vstore(dst + i, a * vload(v00 + i) + b * vload(v01 + i) + c * vload(v10 + i) + d * vload(v11 + i));
  }
  for (; i < n; ++i) dst[i] = w00 * v00[i] + w01 * v01[i] + w10 * v10[i] + w11 * v11[i];
}

// The band's columns (P, K*C), masked.
template <typename T>
CONVOPS_INLINE void fill_columns_impl(const BandArgs<T>& a, T* cols) {
  const auto& g = a.d->conv;
  const int64_t C = g.in_channels, row = g.kernel_area() * C, bw = g.in_w + 2;
  for_each_point(a, [&](int64_t p, int64_t tap, int64_t og, int64_t, int64_t, SamplePoint<T> pt, T m) CONVOPS_LAMBDA_INLINE {
    T* dst_row = cols + p * row;
    const T hy = T(1) - pt.ly, hx = T(1) - pt.lx;
    const T w00 = hy * hx * m, w01 = hy * pt.lx * m, w10 = pt.ly * hx * m, w11 = pt.ly * pt.lx * m;
    const T* q = a.image + pt.corner * C;
    for_each_segment(*a.d, og, tap, [&](int64_t c0, int64_t c1, int64_t col) CONVOPS_LAMBDA_INLINE {
      if (!pt.inside) {
        std::fill(dst_row + col, dst_row + col + (c1 - c0), T(0));
        return;
      }
      bilinear_channels(dst_row + col, q + c0, q + C + c0, q + bw * C + c0, q + (bw + 1) * C + c0,
                        c1 - c0, w00, w01, w10, w11);
    });
  });
}

// Sums over channels in fixed vector lanes, added in lane order at the end.
template <typename T>
struct LaneSums {
  vec_t<T> y, x, m;
  void clear() { y = x = m = vec_t<T>{}; }
  static T total(vec_t<T> v) {
    T s = T(0);
    for (int l = 0; l < Vec<T>::kLanes; ++l) s += v[l];
    return s;
  }
};

// One channel segment of the backward: derivatives of the sample in y and x (times the column
// gradient), the unmasked sample (times the column gradient), and the scatter of the masked
// column gradient into the four corners of the grad image.
template <typename T>
CONVOPS_INLINE void corner_backward(const T* __restrict__ dcol, const T* __restrict__ v00,
                                    const T* __restrict__ v01, const T* __restrict__ v10,
                                    const T* __restrict__ v11, T* __restrict__ g00,
                                    T* __restrict__ g01, T* __restrict__ g10, T* __restrict__ g11,
                                    int64_t n, T ly, T lx, T m, bool want_mask, LaneSums<T>& acc) {
  constexpr int L = Vec<T>::kLanes;
  const T hy = T(1) - ly, hx = T(1) - lx;
  const T w00 = hy * hx * m, w01 = hy * lx * m, w10 = ly * hx * m, w11 = ly * lx * m;
  const auto vly = vbroadcast(ly), vlx = vbroadcast(lx), vhy = vbroadcast(hy);
  const auto u00 = vbroadcast(w00), u01 = vbroadcast(w01), u10 = vbroadcast(w10), u11 = vbroadcast(w11);
  int64_t i = 0;
  for (; i + L <= n; i += L) {
    const auto d = vload(dcol + i);
    const auto a = vload(v00 + i), b = vload(v01 + i), c = vload(v10 + i), e = vload(v11 + i);
    const auto top = a + vlx * (b - a), bot = c + vlx * (e - c);
    acc.y += d * (bot - top);
    acc.x += d * (vhy * (b - a) + vly * (e - c));
    if (want_mask) acc.m += d * (top + vly * (bot - top));
    vstore(g00 + i, vload(g00 + i) + u00 * d);
    vstore(g01 + i, vload(g01 + i) + u01 * d);
    vstore(g10 + i, vload(g10 + i) + u10 * d);
    vstore(g11 + i, vload(g11 + i) + u11 * d);
  }
  for (int l = 0; i < n; ++i, ++l) {
    const T d = dcol[i];
    const T a = v00[i], b = v01[i], c = v10[i], e = v11[i];
    const T top = a + lx * (b - a), bot = c + lx * (e - c);
    acc.y[l] += d * (bot - top);
    acc.x[l] += d * (hy * (b - a) + ly * (e - c));
    if (want_mask) acc.m[l] += d * (top + ly * (bot - top));
    g00[i] += w00 * d;
    g01[i] += w01 * d;
    g10[i] += w10 * d;
    g11[i] += w11 * d;
  }
}

// grad-offset / grad-mask / grad-input of a band from its column gradient (P, K*C).
template <typename T>
CONVOPS_INLINE void band_backward_impl(const BandArgs<T>& a, const T* dcols, T* grad_image,
                                       T* grad_offset, T* grad_mask) {
  const auto& g = a.d->conv;
  const int64_t C = g.in_channels, row = g.kernel_area() * C, bw = g.in_w + 2, area = g.out_area();
  LaneSums<T> acc;
  for_each_point(a, [&](int64_t p, int64_t tap, int64_t og, int64_t e, int64_t pos, SamplePoint<T> pt, T m) CONVOPS_LAMBDA_INLINE {
    if (!pt.inside) return;  // reads 0 and has zero derivatives: the gradients stay 0
    acc.clear();
    const T* q = a.image + pt.corner * C;
    T* gq = grad_image + pt.corner * C;
    for_each_segment(*a.d, og, tap, [&](int64_t c0, int64_t c1, int64_t col) CONVOPS_LAMBDA_INLINE {
      corner_backward(dcols + p * row + col, q + c0, q + C + c0, q + bw * C + c0,
                      q + (bw + 1) * C + c0, gq + c0, gq + C + c0, gq + bw * C + c0,
                      gq + (bw + 1) * C + c0, c1 - c0, pt.ly, pt.lx, m, grad_mask != nullptr, acc);
    });
    // d/dy and d/dx of m * sample: the lanes carry the unmasked column gradient
    grad_offset[(2 * e) * area + pos] = m * LaneSums<T>::total(acc.y);
    grad_offset[(2 * e + 1) * area + pos] = m * LaneSums<T>::total(acc.x);
    if (grad_mask) grad_mask[e * area + pos] = LaneSums<T>::total(acc.m);
  });
}

// One non-template, ISA-cloned entry point per dtype and loop.
#define CONVOPS_DEFORM_CLONES(T, SUFFIX)                                                       \
  CONVOPS_ISA_CLONES void fill_columns_##SUFFIX(const BandArgs<T>& a, T* cols) {               \
    fill_columns_impl(a, cols);                                                                \
  }                                                                                            \
  CONVOPS_ISA_CLONES void band_backward_##SUFFIX(const BandArgs<T>& a, const T* dcols, T* gi, \
                                                 T* go, T* gm) {                               \
    band_backward_impl(a, dcols, gi, go, gm);                                                  \
  }                                                                                            \
  void fill_columns(const BandArgs<T>& a, T* cols) { fill_columns_##SUFFIX(a, cols); }         \
  void band_backward(const BandArgs<T>& a, const T* dcols, T* gi, T* go, T* gm) {              \
    band_backward_##SUFFIX(a, dcols, gi, go, gm);                                              \
  }

CONVOPS_DEFORM_CLONES(float, f32)
CONVOPS_DEFORM_CLONES(double, f64)
#undef CONVOPS_DEFORM_CLONES

// Output rows per band: the band's columns (and column gradient) within kBandBytes.
int64_t band_rows(const DeformGeometry& d, int64_t elem_size, bool backward) {
  const auto& g = d.conv;
  const int64_t per_position =
      std::max<int64_t>(1, g.in_channels * g.kernel_area() * elem_size * (backward ? 2 : 1));
  const int64_t rows = std::clamp<int64_t>(kBandBytes / (per_position * g.out_w), 1, g.out_h);
  const int64_t bands = (g.out_h + rows - 1) / rows;
  return (g.out_h + bands - 1) / bands;  // as even as possible
}

// Image n (C, H, W) into the interior of the bordered (H+2, W+2, C) buffer, and back.
at::Tensor bordered_interior(const at::Tensor& buf, const Conv2dGeometry& g) {
  return buf.view({g.in_h + 2, g.in_w + 2, g.in_channels}).narrow(0, 1, g.in_h).narrow(1, 1, g.in_w);
}

struct Prepared {
  at::Tensor x, w, offset, mask;  // compute dtype; w permuted to (groups, O/g, K*C/g); mask may be undefined
};

Prepared prepare(const DeformGeometry& d, const at::Tensor& input, const at::Tensor& weight,
                 const at::Tensor& offset, const c10::optional<at::Tensor>& mask) {
  const auto cdt = compute_dtype(input.scalar_type());
  const auto& g = d.conv;
  Prepared p;
  p.x = input.to(cdt);  // any layout: it is copied image by image into the bordered buffer
  p.w = weight.to(cdt)
            .reshape({g.groups, g.out_per_group(), g.in_per_group(), g.kernel_area()})
            .permute({0, 1, 3, 2})
            .contiguous()
            .view({g.groups, g.out_per_group(), g.col_rows_per_group()});
  p.offset = offset.to(cdt).contiguous();
  if (d.use_mask) p.mask = mask->to(cdt).contiguous();
  return p;
}

template <typename T>
BandArgs<T> band_args(const DeformGeometry& d, const Prepared& in, const at::Tensor& image_buf,
                      int64_t n, int64_t oh0, int64_t rows) {
  const auto& g = d.conv;
  return {&d, image_buf.data_ptr<T>(), in.offset.data_ptr<T>() + n * d.offset_channels() * g.out_area(),
          d.use_mask ? in.mask.data_ptr<T>() + n * d.mask_channels() * g.out_area() : nullptr, oh0, rows};
}

// The (P, K*C/g) block of a weight group in a band's transposed columns.
at::Tensor group_block(const at::Tensor& buf, const Conv2dGeometry& g, int64_t P, int64_t grp) {
  const int64_t row = g.groups * g.col_rows_per_group();
  return buf.narrow(0, 0, P * row).view({P, row}).narrow(1, grp * g.col_rows_per_group(), g.col_rows_per_group());
}

template <typename T>
void forward_cpu(const DeformGeometry& d, const Prepared& in, at::Tensor& out) {
  const auto& g = d.conv;
  const int64_t rows = band_rows(d, sizeof(T), false);
  const int64_t bands = (g.out_h + rows - 1) / rows;
  const int64_t KC = g.groups * g.col_rows_per_group();
  parallel_gemm_for(g.batch * bands, [&](int64_t begin, int64_t end) {
    const ScratchBuffer image(g.in_channels * (g.in_h + 2) * (g.in_w + 2), in.x.options());
    const ScratchBuffer columns(KC * rows * g.out_w, in.x.options());
    image.tensor().zero_();
    int64_t bordered_image = -1;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / bands, oh0 = item % bands * rows;
      const int64_t band_h = std::min(rows, g.out_h - oh0), P = band_h * g.out_w;
      if (bordered_image != n) {
        bordered_interior(image.tensor(), g).copy_(in.x.select(0, n).permute({1, 2, 0}));
        bordered_image = n;
      }
      fill_columns(band_args<T>(d, in, image.tensor(), n, oh0, band_h), columns.tensor().data_ptr<T>());
      auto dst = out.select(0, n).view({g.groups, g.out_per_group(), g.out_area()}).narrow(2, oh0 * g.out_w, P);
      for (int64_t grp = 0; grp < g.groups; ++grp) {
        auto o = dst.select(0, grp);
        at::mm_out(o, in.w.select(0, grp), group_block(columns.tensor(), g, P, grp).t());
      }
    }
  });
}

int64_t backward_shares(const DeformGeometry& d, int64_t weight_bytes) {
  const int64_t by_memory = std::max<int64_t>(1, kPartialBudgetBytes / std::max<int64_t>(1, weight_bytes));
  return std::max<int64_t>(1, std::min({d.conv.batch, by_memory, kMaxShares}));
}

struct Grads {
  at::Tensor input, weight, offset, mask, bias;  // compute dtype; weight permuted like Prepared::w
};

template <typename T>
void backward_cpu(const DeformGeometry& d, const Prepared& in, const at::Tensor& grad_out, Grads& gr) {
  const auto& g = d.conv;
  const int64_t rows = band_rows(d, sizeof(T), true);
  const int64_t bands = (g.out_h + rows - 1) / rows;
  const int64_t KC = g.groups * g.col_rows_per_group();
  const int64_t shares = backward_shares(d, in.w.numel() * int64_t(sizeof(T)));
  const ScratchBuffer weight_partial(shares * in.w.numel(), in.x.options());
  const ScratchBuffer bias_partial(shares * g.out_channels, in.x.options());
  auto wp = weight_partial.tensor().zero_().view({shares, g.groups, g.out_per_group(), g.col_rows_per_group()});
  auto bpart = bias_partial.tensor().zero_().view({shares, g.out_channels});
  T* goff = gr.offset.data_ptr<T>();
  T* gmask = d.use_mask ? gr.mask.data_ptr<T>() : nullptr;

  parallel_gemm_for(shares, [&](int64_t sb, int64_t se) {
    const ScratchBuffer image(g.in_channels * (g.in_h + 2) * (g.in_w + 2), in.x.options());
    const ScratchBuffer grad_image(g.in_channels * (g.in_h + 2) * (g.in_w + 2), in.x.options());
    const ScratchBuffer columns(2 * KC * rows * g.out_w, in.x.options());
    image.tensor().zero_();
    const auto cols_buf = columns.tensor().narrow(0, 0, KC * rows * g.out_w);
    const auto dcols_buf = columns.tensor().narrow(0, KC * rows * g.out_w, KC * rows * g.out_w);
    for (int64_t share = sb; share < se; ++share) {
      auto w_acc = wp.select(0, share);
      auto b_acc = bpart.select(0, share);
      for (int64_t n = share * g.batch / shares; n < (share + 1) * g.batch / shares; ++n) {
        bordered_interior(image.tensor(), g).copy_(in.x.select(0, n).permute({1, 2, 0}));
        grad_image.tensor().zero_();
        const auto go_n = grad_out.select(0, n).view({g.groups, g.out_per_group(), g.out_area()});
        b_acc.add_(grad_out.select(0, n).view({g.out_channels, g.out_area()}).sum(1));
        for (int64_t band = 0; band < bands; ++band) {
          const int64_t oh0 = band * rows, band_h = std::min(rows, g.out_h - oh0), P = band_h * g.out_w;
          const auto args = band_args<T>(d, in, image.tensor(), n, oh0, band_h);
          fill_columns(args, cols_buf.data_ptr<T>());
          const auto go_band = go_n.narrow(2, oh0 * g.out_w, P);
          for (int64_t grp = 0; grp < g.groups; ++grp) {
            auto dc = group_block(dcols_buf, g, P, grp);
            at::mm_out(dc, go_band.select(0, grp).t(), in.w.select(0, grp));
            w_acc.select(0, grp).addmm_(go_band.select(0, grp), group_block(cols_buf, g, P, grp));
          }
          band_backward(args, dcols_buf.data_ptr<T>(), grad_image.tensor().data_ptr<T>(),
                        goff + n * d.offset_channels() * g.out_area(),
                        gmask ? gmask + n * d.mask_channels() * g.out_area() : nullptr);
        }
        gr.input.select(0, n).copy_(bordered_interior(grad_image.tensor(), g).permute({2, 0, 1}));
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
    // computed in the permuted layout (groups, O/g, [tap][channel]) of Prepared::w
    auto permuted = at::empty({g.groups, g.out_per_group(), g.col_rows_per_group()}, opt);
    Grads view{gr.input, permuted, gr.offset, gr.mask, gr.bias};
    AT_DISPATCH_FLOATING_TYPES(opt.dtype().toScalarType(), "convops_deform_conv2d_backward_cpu",
                               [&] { backward_cpu<scalar_t>(d, in, go, view); });
    gr.weight.view({g.groups, g.out_per_group(), g.in_per_group(), g.kernel_area()})
        .copy_(permuted.view({g.groups, g.out_per_group(), g.kernel_area(), g.in_per_group()})
                   .permute({0, 1, 3, 2}));
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
