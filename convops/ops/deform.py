"""Fake kernels and autograd for deformable convolution (torchvision.ops.deform_conv2d's
semantics): convops::deform_conv2d and its fused backward convops::deform_conv2d_backward.

The fake kernel validates shapes for real (torchvision's trusts the offset shape), mirroring
csrc/common/deform_params.h with torch._check, so eager and compiled code raise the same errors.
Double backward is not supported (torchvision has none either): differentiating the backward
raises a clear error.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .conv import _check_bias, _check_device_dtype, _check_hyper, _check_weight_groups, conv_out_size

ops = torch.ops.convops

__all__ = ["DeformConv2dFunction"]


def _check_like(input, t, name):
    torch._check(t.device == input.device,
                 lambda: f"deform_conv2d: expected input and {name} to be on the same device, but got "
                         f"input on {input.device} and {name} on {t.device}")
    torch._check(t.dtype == input.dtype,
                 lambda: f"deform_conv2d: expected {name} to have the input's dtype {input.dtype}, but got "
                         f"{t.dtype}")


def check_deform_conv2d(input, weight, offset, mask, bias, stride, padding, dilation, groups, offset_groups):
    """Mirror of deform_conv2d_geometry (csrc/common/deform_params.h); returns (out_h, out_w)."""
    _check_hyper(stride, padding, dilation, groups)
    torch._check(offset_groups > 0, lambda: f"deform_conv2d: expected offset_groups > 0, but got {offset_groups}")
    torch._check(input.dim() == 4,
                 lambda: f"deform_conv2d: expected 4-dimensional input (N, C, H, W), but got {input.dim()}-"
                         f"dimensional input of size {list(input.shape)}")
    torch._check(weight.dim() == 4,
                 lambda: f"deform_conv2d: expected 4-dimensional weight (O, C/groups, kh, kw), but got "
                         f"{weight.dim()}-dimensional weight of size {list(weight.shape)}")
    torch._check(offset.dim() == 4,
                 lambda: f"deform_conv2d: expected 4-dimensional offset (N, 2*offset_groups*kh*kw, Ho, Wo), "
                         f"but got {offset.dim()}-dimensional offset of size {list(offset.shape)}")
    torch._check(mask is None or mask.dim() == 4,
                 lambda: f"deform_conv2d: expected 4-dimensional mask (N, offset_groups*kh*kw, Ho, Wo), but "
                         f"got {mask.dim()}-dimensional mask of size {list(mask.shape)}")
    _check_device_dtype(input, weight, bias)
    _check_like(input, offset, "offset")
    if mask is not None:
        _check_like(input, mask, "mask")
    kh, kw = weight.shape[2], weight.shape[3]
    torch._check(kh > 0 and kw > 0,
                 lambda: f"deform_conv2d: expected a non-empty kernel, but got weight of size {list(weight.shape)}")
    _check_weight_groups(weight, groups)
    torch._check(input.shape[1] == weight.shape[1] * groups,
                 lambda: f"deform_conv2d: given groups={groups} and weight of size {list(weight.shape)}, "
                         f"expected input channels to be {weight.shape[1] * groups}, but got input of size "
                         f"{list(input.shape)}")
    _check_bias(bias, weight.shape[0], weight)
    torch._check(input.shape[1] % offset_groups == 0,
                 lambda: f"deform_conv2d: expected input channels ({input.shape[1]}) to be divisible by "
                         f"offset_groups={offset_groups}, but got input of size {list(input.shape)} and "
                         f"offset of size {list(offset.shape)}")
    torch._check(input.shape[2] > 0 and input.shape[3] > 0,
                 lambda: f"deform_conv2d: expected input of positive height and width, but got input of "
                         f"size {list(input.shape)}")
    oh = conv_out_size(input.shape[2], kh, stride[0], padding[0], dilation[0])
    ow = conv_out_size(input.shape[3], kw, stride[1], padding[1], dilation[1])
    torch._check(oh > 0 and ow > 0,
                 lambda: f"deform_conv2d: calculated output size ({oh} x {ow}) is too small for input of "
                         f"size {list(input.shape)} and kernel ({kh} x {kw}) with the given padding and dilation")
    n = input.shape[0]
    off_ch, mask_ch = 2 * offset_groups * kh * kw, offset_groups * kh * kw
    torch._check(offset.shape[1] == off_ch,
                 lambda: f"deform_conv2d: the shape of the offset tensor at dimension 1 is not valid: expected "
                         f"2 * offset_groups * kernel_h * kernel_w = 2 * {offset_groups} * {kh} * {kw} = {off_ch} "
                         f"channels, but got offset of size {list(offset.shape)}")
    torch._check(offset.shape[0] == n and offset.shape[2] == oh and offset.shape[3] == ow,
                 lambda: f"deform_conv2d: the shape of the offset is not valid: expected offset of size "
                         f"{[n, off_ch, oh, ow]} (batch and output size), but got {list(offset.shape)}")
    if mask is not None:
        torch._check(mask.shape[1] == mask_ch,
                     lambda: f"deform_conv2d: mask.shape[1] is not valid: expected offset_groups * kernel_h * "
                             f"kernel_w = {offset_groups} * {kh} * {kw} = {mask_ch}, but got mask of size "
                             f"{list(mask.shape)}")
        torch._check(mask.shape[0] == n and mask.shape[2] == oh and mask.shape[3] == ow,
                     lambda: f"deform_conv2d: the shape of the mask is not valid: expected mask of size "
                             f"{[n, mask_ch, oh, ow]} (batch and output size), but got {list(mask.shape)}")
    return oh, ow


@torch.library.register_fake("convops::deform_conv2d")
def _deform_conv2d_fake(input, weight, offset, mask, bias, stride, padding, dilation, groups, offset_groups):
    oh, ow = check_deform_conv2d(input, weight, offset, mask, bias, stride, padding, dilation, groups,
                                 offset_groups)
    return input.new_empty((input.shape[0], weight.shape[0], oh, ow))


@torch.library.register_fake("convops::deform_conv2d_backward")
def _deform_conv2d_backward_fake(grad_output, input, weight, offset, mask, stride, padding, dilation, groups,
                                 offset_groups):
    oh, ow = check_deform_conv2d(input, weight, offset, mask, None, stride, padding, dilation, groups,
                                 offset_groups)
    _check_like(input, grad_output, "grad_output")
    expected = [input.shape[0], weight.shape[0], oh, ow]
    torch._check(grad_output.dim() == 4 and list(grad_output.shape) == expected,
                 lambda: f"deform_conv2d_backward: expected grad_output of size {expected}, but got "
                         f"{list(grad_output.shape)}")
    grad_mask = mask.new_empty(mask.shape) if mask is not None else input.new_empty((0,))
    return (input.new_empty(input.shape), weight.new_empty(weight.shape), offset.new_empty(offset.shape),
            grad_mask, input.new_empty((weight.shape[0],)))


# ----------------------------------------------------------------------------- autograd

def _setup_context(ctx, inputs, output):
    input, weight, offset, mask, bias, stride, padding, dilation, groups, offset_groups = inputs
    ctx.save_for_backward(input, weight, offset, mask)
    ctx.hyper = (list(stride), list(padding), list(dilation), groups, offset_groups)


def _backward(ctx, grad):
    input, weight, offset, mask = ctx.saved_tensors
    stride, padding, dilation, groups, offset_groups = ctx.hyper
    g_input, g_weight, g_offset, g_mask, g_bias = ops.deform_conv2d_backward(
        grad, input, weight, offset, mask, stride, padding, dilation, groups, offset_groups)
    need = ctx.needs_input_grad
    return (g_input if need[0] else None, g_weight if need[1] else None, g_offset if need[2] else None,
            g_mask if mask is not None and need[3] else None, g_bias if need[4] else None,
            None, None, None, None, None)


torch.library.register_autograd("convops::deform_conv2d", _backward, setup_context=_setup_context)


def _no_double_backward(ctx, *grads):
    raise RuntimeError("convops: double backward of deform_conv2d is not supported (torchvision.ops."
                       "deform_conv2d has none either); use create_graph=False")


def _backward_setup_context(ctx, inputs, output):
    pass


torch.library.register_autograd("convops::deform_conv2d_backward", _no_double_backward,
                                setup_context=_backward_setup_context)


class DeformConv2dFunction(torch.autograd.Function):
    """deform_conv2d(input (N,C,H,W), weight (O,C/groups,kh,kw), offset (N,2*G*kh*kw,Ho,Wo),
    mask (N,G*kh*kw,Ho,Wo) or None, bias, stride, padding, dilation, groups, offset_groups):
    the op with its fused backward."""

    @staticmethod
    def forward(input, weight, offset, mask, bias, stride, padding, dilation, groups, offset_groups):
        return ops.deform_conv2d(input, weight, offset, mask, bias, stride, padding, dilation, groups,
                                 offset_groups)

    setup_context = staticmethod(_setup_context)
    backward = staticmethod(_backward)
