// The three convolution primitives as im2col/col2im + batched GEMM, written once for every
// backend. A backend supplies only the two data-movement kernels:
//
//   Backend::im2col(images, columns, geometry, tile)  images (nb, C, H, W) contiguous ->
//       columns (C*kh*kw, nb, rows*width): the receptive fields of the tile's output block
//   Backend::col2im(columns, images, geometry, tile)  the adjoint: scatter-*adds* columns
//       back into images (nb, C, H, W), deterministically
//
// and GEMM comes from ATen (MKL/oneDNN BLAS on CPU, cuBLAS on CUDA). The work is tiled over
// images, output rows and (for very wide rows) row segments, so a tile's im2col columns plus
// its column-side block never exceed kColumnBudgetBytes.
//
// A backend may also take over the whole loop for shapes where it has a better schedule:
// Backend::forward_schedule (which also adds the bias) / input_grad_schedule /
// weight_grad_schedule receive the prepared (compute-dtype, contiguous) operands and return
// false to fall back to the tiles below.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <limits>

#include "conv_params.h"

namespace convops {

// Scratch memory of the conv kernels (column workspaces, GEMM blocks, per-thread partial
// sums). The high-water mark of what is live at once is readable from Python
// (torch.ops.convops._workspace_peak_bytes), so benchmarks report measured extra memory.
struct ScratchStats {
  std::atomic<int64_t> live{0};
  std::atomic<int64_t> peak{0};
};
ScratchStats& scratch_stats();

// Scratch memory is uninitialised; no result may depend on what it held. CONVOPS_POISON_SCRATCH=1
// (read per allocation, for tests) fills every floating-point buffer with NaN first, so a
// kernel that reads a word it never wrote shows it.
class ScratchBuffer {
 public:
  ScratchBuffer(int64_t elems, const at::TensorOptions& options)
      : tensor_(at::empty({elems}, options)), bytes_(static_cast<int64_t>(tensor_.nbytes())) {
    if (const char* poison = std::getenv("CONVOPS_POISON_SCRATCH");
        poison && poison[0] == '1' && at::isFloatingType(tensor_.scalar_type())) {
      tensor_.fill_(std::numeric_limits<double>::quiet_NaN());
    }
    auto& stats = scratch_stats();
    const int64_t live = stats.live.fetch_add(bytes_) + bytes_;
    int64_t seen = stats.peak.load();
    while (live > seen && !stats.peak.compare_exchange_weak(seen, live)) {
    }
  }
  ~ScratchBuffer() { scratch_stats().live.fetch_sub(bytes_); }
  ScratchBuffer(const ScratchBuffer&) = delete;
  ScratchBuffer& operator=(const ScratchBuffer&) = delete;

  const at::Tensor& tensor() const { return tensor_; }

 private:
  at::Tensor tensor_;
  int64_t bytes_;
};

// Low-precision inputs are computed in fp32 so that every sum accumulates in fp32.
inline at::ScalarType compute_dtype(at::ScalarType t) {
  return (t == at::kHalf || t == at::kBFloat16) ? at::kFloat : t;
}

// An optional operand (a bias) as a contiguous tensor of `dtype`, or an undefined tensor.
inline at::Tensor contiguous_or_undefined(const c10::optional<at::Tensor>& t, at::ScalarType dtype) {
  return (t.has_value() && t->defined()) ? t->to(dtype).contiguous() : at::Tensor();
}

// Like ATen: the output is channels_last when the input or the weight is.
inline at::MemoryFormat conv_output_format(const at::Tensor& input, const at::Tensor& weight) {
  auto is_cl = [](const at::Tensor& t) {
    return t.dim() == 4 && t.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
  };
  return (is_cl(input) || is_cl(weight)) ? at::MemoryFormat::ChannelsLast
                                         : at::MemoryFormat::Contiguous;
}

// A block of the column side: images [n0, n0+images), output rows [oh0, oh0+rows) and in
// them output columns [ow0, ow0+width). A tile narrower than a row is one row high, so its
// block is a contiguous range of each output plane.
struct ConvTile {
  int64_t n0, images, oh0, rows, ow0, width;
  int64_t columns_per_image() const { return rows * width; }
  int64_t columns() const { return images * rows * width; }
};

constexpr int64_t kColumnBudgetBytes = int64_t(32) << 20;
// Small images are batched so that one GEMM has at least this many columns.
constexpr int64_t kMinGemmColumns = 2048;

struct TilePlan {
  int64_t images_per_tile = 1;
  int64_t rows_per_tile = 1;
  int64_t width_per_tile = 1;
  int64_t workspace_elems = 0;    // im2col columns of one tile, in elements
  int64_t column_side_elems = 0;  // one tile's block of the column side (N, O, Ho, Wo)
};

inline TilePlan plan_tiles(const Conv2dGeometry& g, int64_t elem_size) {
  TilePlan p;
  const int64_t rows_k = g.groups * g.col_rows_per_group();
  // Each output position of a tile costs its im2col column and its column-side block entries.
  const int64_t bytes_per_out_col = std::max<int64_t>(1, (rows_k + g.out_channels) * elem_size);
  const int64_t bytes_per_out_row = bytes_per_out_col * std::max<int64_t>(1, g.out_w);
  const int64_t bytes_per_image = bytes_per_out_row * std::max<int64_t>(1, g.out_h);
  p.width_per_tile = g.out_w;
  if (bytes_per_out_row > kColumnBudgetBytes) {
    p.images_per_tile = 1;
    p.rows_per_tile = 1;
    p.width_per_tile = std::max<int64_t>(1, kColumnBudgetBytes / bytes_per_out_col);
  } else if (bytes_per_image > kColumnBudgetBytes) {
    p.images_per_tile = 1;
    p.rows_per_tile = std::max<int64_t>(1, kColumnBudgetBytes / bytes_per_out_row);
  } else {
    const int64_t area = std::max<int64_t>(1, g.out_area());
    const int64_t wanted = (kMinGemmColumns + area - 1) / area;
    p.images_per_tile = std::max<int64_t>(
        1, std::min({g.batch, wanted, kColumnBudgetBytes / bytes_per_image}));
    p.rows_per_tile = g.out_h;
  }
  p.rows_per_tile = std::min(std::max<int64_t>(p.rows_per_tile, 1), std::max<int64_t>(g.out_h, 1));
  p.width_per_tile = std::min(std::max<int64_t>(p.width_per_tile, 1), std::max<int64_t>(g.out_w, 1));
  const int64_t tile_columns = p.images_per_tile * p.rows_per_tile * p.width_per_tile;
  p.workspace_elems = rows_k * tile_columns;
  p.column_side_elems = g.out_channels * tile_columns;
  return p;
}

template <class Fn>
void for_each_tile(const Conv2dGeometry& g, const TilePlan& p, Fn&& fn) {
  for (int64_t n0 = 0; n0 < g.batch; n0 += p.images_per_tile) {
    const int64_t nb = std::min(p.images_per_tile, g.batch - n0);
    for (int64_t oh0 = 0; oh0 < g.out_h; oh0 += p.rows_per_tile) {
      const int64_t rows = std::min(p.rows_per_tile, g.out_h - oh0);
      for (int64_t ow0 = 0; ow0 < g.out_w; ow0 += p.width_per_tile) {
        fn(ConvTile{n0, nb, oh0, rows, ow0, std::min(p.width_per_tile, g.out_w - ow0)});
      }
    }
  }
}

namespace detail {

inline bool tile_is_one_whole_image(const Conv2dGeometry& g, const ConvTile& t) {
  return t.images == 1 && t.rows == g.out_h && t.width == g.out_w;
}

// out[b] = a[b] @ b[b] over the group dimension; plain mm when there is one group.
inline void grouped_mm_out(at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  if (a.size(0) == 1) {
    auto o = out.select(0, 0);
    at::mm_out(o, a.select(0, 0), b.select(0, 0));
  } else {
    at::bmm_out(out, a, b);
  }
}

// The column-side block of a tile as a (groups, C/groups, images*rows*width) matrix: a view
// for one whole image, else gathered into buf.
inline at::Tensor gather_column_side(const at::Tensor& t, const Conv2dGeometry& g,
                                     const ConvTile& tile, const at::Tensor& buf) {
  const int64_t cols = tile.columns();
  if (tile_is_one_whole_image(g, tile)) {
    return t.select(0, tile.n0).view({g.groups, g.out_per_group(), cols});
  }
  auto block = buf.narrow(0, 0, g.out_channels * cols)
                   .view({g.out_channels, tile.images, tile.rows, tile.width});
  block.copy_(t.narrow(0, tile.n0, tile.images)
                  .narrow(2, tile.oh0, tile.rows)
                  .narrow(3, tile.ow0, tile.width)
                  .permute({1, 0, 2, 3}));
  return block.view({g.groups, g.out_per_group(), cols});
}

inline void scatter_column_side(at::Tensor& dst, const at::Tensor& block,
                                const Conv2dGeometry& g, const ConvTile& tile) {
  dst.narrow(0, tile.n0, tile.images)
      .narrow(2, tile.oh0, tile.rows)
      .narrow(3, tile.ow0, tile.width)
      .copy_(block.view({g.out_channels, tile.images, tile.rows, tile.width}).permute({1, 0, 2, 3}));
}

inline at::Tensor column_view(const at::Tensor& workspace, const Conv2dGeometry& g,
                              const ConvTile& tile) {
  const int64_t cols = tile.columns();
  return workspace.narrow(0, 0, g.groups * g.col_rows_per_group() * cols)
      .view({g.groups, g.col_rows_per_group(), cols});
}

}  // namespace detail

// conv2d: images (N, C, H, W) -> columns side (N, O, Ho, Wo).
template <class Backend>
at::Tensor conv2d_gemm(const at::Tensor& input, const at::Tensor& weight,
                       const c10::optional<at::Tensor>& bias, const Conv2dGeometry& g) {
  const auto cdt = compute_dtype(input.scalar_type());
  const auto x = input.to(cdt).contiguous();
  const auto w = weight.to(cdt).contiguous().view({g.groups, g.out_per_group(), g.col_rows_per_group()});
  const at::Tensor b = contiguous_or_undefined(bias, cdt);
  // Every output element is written by a GEMM, unless the reduction is empty (no channels).
  const bool empty_reduction = g.col_rows_per_group() == 0;
  auto out = empty_reduction ? at::zeros({g.batch, g.out_channels, g.out_h, g.out_w}, x.options())
                             : at::empty({g.batch, g.out_channels, g.out_h, g.out_w}, x.options());
  const bool has_work = out.numel() > 0 && !empty_reduction;
  const bool scheduled = has_work && Backend::forward_schedule(x, w, b, out, g);
  if (has_work && !scheduled) {
    const auto plan = plan_tiles(g, x.element_size());
    const bool direct_columns = g.is_pointwise();
    const bool whole_images = plan.images_per_tile == 1 && plan.rows_per_tile == g.out_h &&
                              plan.width_per_tile == g.out_w;
    // A whole image is written straight into the output; a 1x1 one is also read in place.
    const ScratchBuffer workspace(direct_columns && whole_images ? 0 : plan.workspace_elems,
                                  x.options());
    const ScratchBuffer block_buf(whole_images ? 0 : plan.column_side_elems, x.options());
    for_each_tile(g, plan, [&](const ConvTile& t) {
      at::Tensor cols;
      if (direct_columns && detail::tile_is_one_whole_image(g, t)) {
        cols = x.select(0, t.n0).view({g.groups, g.col_rows_per_group(), g.out_area()});
      } else {
        cols = detail::column_view(workspace.tensor(), g, t);
        Backend::im2col(x.narrow(0, t.n0, t.images), cols, g, t);
      }
      if (detail::tile_is_one_whole_image(g, t)) {
        auto dst = out.select(0, t.n0).view({g.groups, g.out_per_group(), g.out_area()});
        detail::grouped_mm_out(dst, w, cols);
      } else {
        auto block = block_buf.tensor()
                         .narrow(0, 0, g.out_channels * cols.size(2))
                         .view({g.groups, g.out_per_group(), cols.size(2)});
        detail::grouped_mm_out(block, w, cols);
        detail::scatter_column_side(out, block, g, t);
      }
    });
  }
  if (b.defined() && !scheduled) out.add_(b.view({1, g.out_channels, 1, 1}));
  return out.to(input.scalar_type()).contiguous(conv_output_format(input, weight));
}

// The adjoint of conv2d in its input: column side (N, O, Ho, Wo) -> images (N, C, H, W).
// This is conv2d's input gradient and, with the weight read as (Cin, Cout/g, kh, kw),
// conv_transpose2d's forward.
template <class Backend>
at::Tensor conv2d_input_grad_gemm(const at::Tensor& columns_side, const at::Tensor& weight,
                                  const c10::optional<at::Tensor>& bias,
                                  const Conv2dGeometry& g, at::MemoryFormat format) {
  const auto cdt = compute_dtype(columns_side.scalar_type());
  const auto y = columns_side.to(cdt).contiguous();
  // (groups, C/g*kh*kw, O/g): the transposed weight of each group.
  const auto wt = weight.to(cdt)
                      .contiguous()
                      .view({g.groups, g.out_per_group(), g.col_rows_per_group()})
                      .transpose(1, 2);
  auto images = at::zeros({g.batch, g.in_channels, g.in_h, g.in_w}, y.options());
  if (images.numel() > 0 && y.numel() > 0 && g.out_per_group() > 0 &&
      !Backend::input_grad_schedule(y, wt, images, g)) {
    const auto plan = plan_tiles(g, y.element_size());
    const ScratchBuffer workspace(plan.workspace_elems, y.options());
    const ScratchBuffer y_buf(plan.column_side_elems, y.options());
    for_each_tile(g, plan, [&](const ConvTile& t) {
      const auto y_block = detail::gather_column_side(y, g, t, y_buf.tensor());
      if (g.is_pointwise() && detail::tile_is_one_whole_image(g, t)) {
        auto dst = images.select(0, t.n0).view({g.groups, g.col_rows_per_group(), g.in_area()});
        detail::grouped_mm_out(dst, wt, y_block);
        return;
      }
      auto cols = detail::column_view(workspace.tensor(), g, t);
      detail::grouped_mm_out(cols, wt, y_block);
      auto img = images.narrow(0, t.n0, t.images);
      Backend::col2im(cols, img, g, t);
    });
  }
  if (bias.has_value() && bias->defined()) {
    images.add_(bias->to(cdt).view({1, g.in_channels, 1, 1}));
  }
  return images.to(columns_side.scalar_type()).contiguous(format);
}

// conv2d's weight gradient: sum over images and positions of grad_output x receptive field.
template <class Backend>
at::Tensor conv2d_weight_grad_gemm(const at::Tensor& grad_output, const at::Tensor& input,
                                   const Conv2dGeometry& g) {
  const auto cdt = compute_dtype(input.scalar_type());
  const auto x = input.to(cdt).contiguous();
  const auto go = grad_output.to(cdt).contiguous();
  auto grad_w = at::zeros({g.groups, g.out_per_group(), g.col_rows_per_group()}, x.options());
  if (grad_w.numel() > 0 && go.numel() > 0 && !Backend::weight_grad_schedule(go, x, grad_w, g)) {
    const auto plan = plan_tiles(g, x.element_size());
    const ScratchBuffer workspace(plan.workspace_elems, x.options());
    const ScratchBuffer go_buf(plan.column_side_elems, x.options());
    for_each_tile(g, plan, [&](const ConvTile& t) {
      const auto go_block = detail::gather_column_side(go, g, t, go_buf.tensor());
      at::Tensor cols;
      if (g.is_pointwise() && detail::tile_is_one_whole_image(g, t)) {
        cols = x.select(0, t.n0).view({g.groups, g.col_rows_per_group(), g.out_area()});
      } else {
        cols = detail::column_view(workspace.tensor(), g, t);
        Backend::im2col(x.narrow(0, t.n0, t.images), cols, g, t);
      }
      if (g.groups == 1) {
        grad_w.select(0, 0).addmm_(go_block.select(0, 0), cols.select(0, 0).t());
      } else {
        grad_w.baddbmm_(go_block, cols.transpose(1, 2));
      }
    });
  }
  return grad_w.view({g.out_channels, g.in_per_group(), g.kernel_h, g.kernel_w})
      .to(input.scalar_type());
}

// Operator entry points: validate, describe, compute. Registered per backend.
// Backend::direct_forward / direct_input_grad / direct_weight_grad let a backend claim the
// geometries a specialised kernel (depthwise, few channels per group, ...) is faster on: they
// return the result, or an undefined tensor to fall through to the GEMM path.
template <class Backend>
at::Tensor conv2d_op(const at::Tensor& input, const at::Tensor& weight,
                     const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                     at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  const auto g = conv2d_geometry(input, weight, bias, {stride, padding, dilation, groups});
  if (auto direct = Backend::direct_forward(input, weight, bias, g); direct.defined()) return direct;
  return conv2d_gemm<Backend>(input, weight, bias, g);
}

template <class Backend>
at::Tensor conv_transpose2d_op(const at::Tensor& input, const at::Tensor& weight,
                               const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                               at::IntArrayRef padding, at::IntArrayRef output_padding,
                               int64_t groups, at::IntArrayRef dilation) {
  const auto g = conv_transpose2d_geometry(input, weight, bias, {stride, padding, dilation, groups},
                                           output_padding);
  if (auto direct = Backend::direct_input_grad(input, weight, bias, g); direct.defined()) return direct;
  return conv2d_input_grad_gemm<Backend>(input, weight, bias, g, conv_output_format(input, weight));
}

template <class Backend>
at::Tensor conv2d_weight_grad_op(const at::Tensor& grad_output, const at::Tensor& input,
                                 at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                 at::IntArrayRef padding, at::IntArrayRef dilation,
                                 int64_t groups) {
  const auto g = conv2d_weight_geometry(grad_output, input, kernel_size,
                                        {stride, padding, dilation, groups});
  if (auto direct = Backend::direct_weight_grad(grad_output, input, g, nullptr); direct.defined()) {
    return direct;
  }
  return conv2d_weight_grad_gemm<Backend>(grad_output, input, g);
}

template <class Backend>
std::tuple<at::Tensor, at::Tensor> conv2d_weight_bias_grad_op(
    const at::Tensor& grad_output, const at::Tensor& input, at::IntArrayRef kernel_size,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  const auto g = conv2d_weight_geometry(grad_output, input, kernel_size,
                                        {stride, padding, dilation, groups});
  at::Tensor grad_bias;
  auto grad_weight = Backend::direct_weight_grad(grad_output, input, g, &grad_bias);
  if (!grad_weight.defined()) grad_weight = conv2d_weight_grad_gemm<Backend>(grad_output, input, g);
  if (!grad_bias.defined()) grad_bias = grad_output.sum({0, 2, 3});
  return {grad_weight, grad_bias};
}

}  // namespace convops
