"""FLOP formulas for the convops operators, registered with torch.utils.flop_counter so that
`FlopCounterMode` counts a convops model exactly as it counts the same model built from torch
convolutions (forward and backward).

torch's conventions, which we follow for comparability:
- a multiply-add is 2 FLOPs; bias additions are not counted;
- a convolution costs 2 * N * C_out * (C_in / groups) * prod(kernel) * prod(output spatial);
  a transposed one the same with the *input* spatial size;
- conv2d's input gradient is a transposed conv and is counted as one; its weight gradient is
  counted by torch as 2 * N * C_in * C_out * prod(kernel) * prod(grad_output spatial), i.e.
  without dividing by groups (torch's `conv_backward_flop` transposes shapes and loses the
  groups). convops' weight-gradient op reproduces that figure so totals stay equal to torch's;
  for grouped convolutions the true multiply count of the weight gradient is that figure / groups.
"""
from __future__ import annotations

import torch
from torch.utils import flop_counter
from torch.utils.flop_counter import conv_flop_count

ops = torch.ops.convops

__all__ = ["FORMULAS", "register"]


def _swap01(shape):
    return [shape[1], shape[0]] + list(shape[2:])


def conv2d_flop(input_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
    """convops::conv2d(input, weight, bias, stride, padding, dilation, groups)."""
    return conv_flop_count(list(input_shape), list(weight_shape), list(out_shape), transposed=False)


def conv_transpose2d_flop(input_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
    """convops::conv_transpose2d(input, weight, bias, ...): every input position scatters a full
    kernel, so the count runs over the input's spatial size (as torch's)."""
    return conv_flop_count(list(input_shape), list(weight_shape), list(out_shape), transposed=True)


def conv2d_weight_grad_flop(grad_output_shape, input_shape, *args, out_shape=None, **kwargs) -> int:
    """convops::conv2d_weight_grad(grad_output, input, kernel_size, ...): a conv of the input with
    grad_output as the kernel (batch and channels swapped), counted as torch counts the weight
    half of aten.convolution_backward. The same op computes conv_transpose2d's weight gradient
    (there its arguments are the transposed conv's input and grad_output), where torch's count
    reduces to the same expression."""
    return conv_flop_count(_swap01(input_shape), _swap01(grad_output_shape), _swap01(out_shape),
                           transposed=False)


def conv2d_weight_bias_grad_flop(grad_output_shape, input_shape, *args, out_shape=None, **kwargs) -> int:
    """convops::conv2d_weight_bias_grad: the weight gradient's count (the bias's sum is not
    counted, as torch does not count it in aten.convolution_backward)."""
    return conv2d_weight_grad_flop(grad_output_shape, input_shape, out_shape=out_shape[0])


# ----------------------------------------------------------------------------- [depthwise / grouped]

def depthwise_conv2d_flop(input_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
    """convops::depthwise_conv2d: torch's count for F.conv2d(groups=C) (weight (C*m, 1, kh, kw))."""
    return conv_flop_count(list(input_shape), list(weight_shape), list(out_shape), transposed=False)


def depthwise_separable_conv2d_flop(input_shape, depthwise_shape, pointwise_shape, *args, out_shape=None,
                                    **kwargs) -> int:
    """convops::depthwise_separable_conv2d: the depthwise conv plus the 1x1 conv, as torch counts
    the two F.conv2d calls it fuses."""
    mid_shape = [input_shape[0], depthwise_shape[0]] + list(out_shape[2:])
    return (conv_flop_count(list(input_shape), list(depthwise_shape), mid_shape)
            + conv_flop_count(mid_shape, list(pointwise_shape), list(out_shape)))


def depthwise_separable_conv2d_backward_flop(grad_output_shape, input_shape, depthwise_shape, pointwise_shape,
                                             depthwise_bias, stride, padding, dilation, output_mask,
                                             out_shape=None, **kwargs) -> int:
    """convops::depthwise_separable_conv2d_backward: torch's counts for the backward of the two
    convs it fuses, gradient by gradient as output_mask asks, plus the depthwise output it
    recomputes for the pointwise weight's gradient."""
    need_input, need_depthwise, need_depthwise_bias, need_pointwise = output_mask
    mid_shape = [input_shape[0], depthwise_shape[0]] + list(grad_output_shape[2:])
    count = 0
    if need_pointwise:
        count += conv_flop_count(list(input_shape), list(depthwise_shape), mid_shape)
        count += conv2d_weight_grad_flop(grad_output_shape, mid_shape, out_shape=list(pointwise_shape))
    if need_input or need_depthwise or need_depthwise_bias:  # the depthwise output's gradient
        count += conv_flop_count(list(grad_output_shape), list(pointwise_shape), mid_shape, transposed=True)
    if need_input:
        count += conv_flop_count(mid_shape, list(depthwise_shape), list(input_shape), transposed=True)
    if need_depthwise:
        count += conv2d_weight_grad_flop(mid_shape, input_shape, out_shape=list(depthwise_shape))
    return count


# ----------------------------------------------------------------------------- [separable]

def spatially_separable_conv2d_flop(input_shape, weight_v_shape, weight_h_shape, bias, stride, padding,
                                    dilation, groups, out_shape=None, **kwargs) -> int:
    """convops::spatially_separable_conv2d: the vertical (kh x 1) conv, whose output keeps the
    input's width, then the horizontal (1 x kw) conv, as torch counts the two F.conv2d calls."""
    mid_h = out_shape[2]
    mid_shape = [input_shape[0], weight_v_shape[0], mid_h, input_shape[3]]
    return (conv_flop_count(list(input_shape), list(weight_v_shape), mid_shape)
            + conv_flop_count(mid_shape, list(weight_h_shape), list(out_shape)))


# ----------------------------------------------------------------------------- [deformable]
# torchvision's deform_conv2d has no FLOP formula in torch (FlopCounterMode counts 0), so this is
# our convention, documented in the README:
#   GEMM      2 * N * Cout * Cin/groups * kh * kw * oh * ow  (a dense conv of the same shape)
#   sampling  8 FLOPs per sampled value (bilinear interpolation: 4 multiply-adds), one value per
#             (input channel, kernel tap, output position); +1 with a modulation mask.
#             Coordinates and interpolation weights (per offset group, not per channel) are
#             index arithmetic and not counted, like the padding of a dense conv.
#   backward  both GEMMs (columns gradient and weight gradient, each the forward GEMM count), the
#             scatter of the columns gradient into the input (8 per sample, +1 with a mask), the
#             offset gradient (2 coordinates x 8 per sample) and the mask gradient (the sample's
#             value again, 8, times the columns gradient, 2 per sample).
BILINEAR_FLOPS = 8


def _deform_samples(input_shape, weight_shape, out_shape) -> int:
    return input_shape[0] * input_shape[1] * weight_shape[2] * weight_shape[3] * out_shape[2] * out_shape[3]


def deform_conv2d_flop(input_shape, weight_shape, offset_shape, mask_shape, *args, out_shape=None,
                       **kwargs) -> int:
    """convops::deform_conv2d: the dense-conv GEMM plus the bilinear sampling (see above)."""
    gemm = conv_flop_count(list(input_shape), list(weight_shape), list(out_shape))
    per_sample = BILINEAR_FLOPS + (1 if mask_shape is not None else 0)
    return gemm + per_sample * _deform_samples(input_shape, weight_shape, out_shape)


def deform_conv2d_backward_flop(grad_output_shape, input_shape, weight_shape, offset_shape, mask_shape,
                                *args, out_shape=None, **kwargs) -> int:
    """convops::deform_conv2d_backward: two GEMMs plus the sampling gradients (see above)."""
    gemm = conv_flop_count(list(input_shape), list(weight_shape), list(grad_output_shape))
    has_mask = mask_shape is not None
    per_sample = (BILINEAR_FLOPS + has_mask) + 2 * BILINEAR_FLOPS + (BILINEAR_FLOPS + 2) * has_mask
    return 2 * gemm + per_sample * _deform_samples(input_shape, weight_shape, grad_output_shape)


# op name -> formula; an op is registered only if the extension defines it.
FORMULAS = {
    "conv2d": conv2d_flop,
    "conv_transpose2d": conv_transpose2d_flop,
    "conv2d_weight_grad": conv2d_weight_grad_flop,
    "conv2d_weight_bias_grad": conv2d_weight_bias_grad_flop,
    "depthwise_conv2d": depthwise_conv2d_flop,
    "depthwise_separable_conv2d": depthwise_separable_conv2d_flop,
    "depthwise_separable_conv2d_backward": depthwise_separable_conv2d_backward_flop,
    "spatially_separable_conv2d": spatially_separable_conv2d_flop,
    "deform_conv2d": deform_conv2d_flop,
    "deform_conv2d_backward": deform_conv2d_backward_flop,
}


def register() -> list:
    """Registers every formula whose op exists (idempotent); returns the registered op names."""
    registered = []
    for name, formula in FORMULAS.items():
        if not hasattr(ops, name):
            continue
        packet = getattr(ops, name)
        if packet not in flop_counter.flop_registry:
            flop_counter.register_flop_formula(packet)(formula)
        registered.append(name)
    return registered


register()
