"""Fake kernel and autograd of spatially_separable_conv2d (csrc/cpu/separable.cpp).

The op is two convs, a vertical kh x 1 one and a horizontal 1 x kw one:

    mid = conv2d(x, weight_v, None, (sh, 1), (ph, 0), (dh, 1), groups)
    out = conv2d(mid, weight_h, bias, (1, sw), (0, pw), (1, dw), groups)

so its backward is the dense conv backward applied twice, written with convops ops (double
backward works). `mid` is not saved: the backward recomputes it (one vertical pass) only when
weight_h's gradient is wanted, so the forward keeps nothing but its inputs alive.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .conv import _check_device_dtype, _check_hyper, _check_weight_groups, _conv2d_fake, _bias_grad
from .conv import conv2d_input_grad

ops = torch.ops.convops

__all__ = ["SpatiallySeparableConv2dFunction"]


def pass_args(stride, padding, dilation):
    """(stride, padding, dilation) of the vertical and of the horizontal pass."""
    vertical = ([stride[0], 1], [padding[0], 0], [dilation[0], 1])
    horizontal = ([1, stride[1]], [0, padding[1]], [1, dilation[1]])
    return vertical, horizontal


def check_spatially_separable(input, weight_v, weight_h, bias, stride, padding, dilation, groups):
    """Mirror of check_separable_weights (csrc/cpu/separable.cpp)."""
    _check_hyper(stride, padding, dilation, groups)
    torch._check(weight_v.dim() == 4 and weight_h.dim() == 4,
                 lambda: f"spatially_separable_conv2d: expected 4-dimensional weight_v and weight_h, but "
                         f"got weight_v of size {list(weight_v.shape)} and weight_h of size "
                         f"{list(weight_h.shape)}")
    torch._check(weight_v.shape[3] == 1,
                 lambda: f"spatially_separable_conv2d: expected weight_v of size (Cmid, Cin/groups, kh, 1) "
                         f"with kernel width 1, but got weight_v of size {list(weight_v.shape)} instead")
    torch._check(weight_h.shape[2] == 1,
                 lambda: f"spatially_separable_conv2d: expected weight_h of size (Cout, Cmid/groups, 1, kw) "
                         f"with kernel height 1, but got weight_h of size {list(weight_h.shape)} instead")
    _check_device_dtype(input, weight_v, bias)
    torch._check(input.device == weight_h.device,
                 lambda: f"Input and weight_h should be on the same device, but got input on "
                         f"{input.device} and weight_h on {weight_h.device}")
    torch._check(input.dtype == weight_h.dtype,
                 lambda: f"Input type ({input.dtype}) and weight_h type ({weight_h.dtype}) should be the same")
    _check_weight_groups(weight_v, groups)
    _check_weight_groups(weight_h, groups)
    torch._check(weight_h.shape[1] * groups == weight_v.shape[0],
                 lambda: f"Given groups={groups}, weight_h of size {list(weight_h.shape)}, expected weight_v "
                         f"to have {weight_h.shape[1] * groups} output channels (weight_h.size(1) * groups), "
                         f"but got weight_v of size {list(weight_v.shape)} instead")


@torch.library.register_fake("convops::spatially_separable_conv2d")
def _spatially_separable_fake(input, weight_v, weight_h, bias, stride, padding, dilation, groups):
    check_spatially_separable(input, weight_v, weight_h, bias, stride, padding, dilation, groups)
    (s1, p1, d1), (s2, p2, d2) = pass_args(stride, padding, dilation)
    mid = _conv2d_fake(input, weight_v, None, s1, p1, d1, groups)
    return _conv2d_fake(mid, weight_h, bias, s2, p2, d2, groups)


def _setup_context(ctx, inputs, output):
    input, weight_v, weight_h, bias, stride, padding, dilation, groups = inputs
    ctx.save_for_backward(input, weight_v, weight_h)
    ctx.hyper = (list(stride), list(padding), list(dilation), groups)


def _backward(ctx, grad: Tensor):
    input, weight_v, weight_h = ctx.saved_tensors
    if grad.dtype in (torch.float16, torch.bfloat16):
        # Like the forward: fp32 throughout, so the intermediates are not rounded to 16 bits.
        grads = _separable_grads(ctx, grad.float(), input.float(), weight_v.float(), weight_h.float())
        return tuple(g if g is None or not isinstance(g, Tensor) else g.to(grad.dtype) for g in grads)
    return _separable_grads(ctx, grad, input, weight_v, weight_h)


def _separable_grads(ctx, grad: Tensor, input: Tensor, weight_v: Tensor, weight_h: Tensor):
    stride, padding, dilation, groups = ctx.hyper
    (s1, p1, d1), (s2, p2, d2) = pass_args(stride, padding, dilation)
    need_x, need_v, need_h, need_b = ctx.needs_input_grad[:4]
    grad_input = grad_v = grad_h = grad_bias = None
    mid_hw = (grad.shape[2], input.shape[3])  # (Ho, W): the vertical pass keeps the width
    if need_h:
        mid = ops.conv2d(input, weight_v, None, s1, p1, d1, groups)
        grad_h = ops.conv2d_weight_grad(grad, mid, weight_h.shape[2:], s2, p2, d2, groups)
    if need_x or need_v:
        grad_mid = conv2d_input_grad(grad, weight_h, mid_hw, s2, p2, d2, groups)
        if need_x:
            grad_input = conv2d_input_grad(grad_mid, weight_v, input.shape[2:], s1, p1, d1, groups)
        if need_v:
            grad_v = ops.conv2d_weight_grad(grad_mid, input, weight_v.shape[2:], s1, p1, d1, groups)
    if need_b:
        grad_bias = _bias_grad(grad)
    return grad_input, grad_v, grad_h, grad_bias, None, None, None, None


torch.library.register_autograd("convops::spatially_separable_conv2d", _backward,
                                setup_context=_setup_context)


class SpatiallySeparableConv2dFunction(torch.autograd.Function):
    """spatially_separable_conv2d(input (N,Cin,H,W), weight_v (Cmid,Cin/g,kh,1),
    weight_h (Cout,Cmid/g,1,kw), bias, stride, padding, dilation, groups)."""

    @staticmethod
    def forward(input, weight_v, weight_h, bias, stride, padding, dilation, groups):
        return ops.spatially_separable_conv2d(input, weight_v, weight_h, bias, stride, padding, dilation,
                                              groups)

    setup_context = staticmethod(_setup_context)
    backward = staticmethod(_backward)
