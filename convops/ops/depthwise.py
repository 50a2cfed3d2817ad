"""Fake kernels and autograd for the depthwise family: depthwise_conv2d and the fused
depthwise_separable_conv2d (csrc/cpu/depthwise.cpp).

depthwise_conv2d is conv2d with groups = input channels, so its backward is the dense family's
ops with groups=C (which route to the same depthwise kernels):

    depthwise_conv2d(x, w)   d/dx -> conv_transpose2d(g, w, groups=C)   d/dw -> conv2d_weight_grad(g, x, groups=C)

The fused separable op's backward on the CPU is its own op, depthwise_separable_conv2d_backward:
per band of rows, the band's tile of the depthwise output's gradient (pointwise_weight^T grad)
feeds every gradient, and the depthwise output is recomputed a band at a time for the pointwise
weight's (the forward never keeps it). When the backward itself is differentiated (double
backward) or runs elsewhere, it is the composition of convops ops on the recomputed depthwise
output instead.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .conv import (_bias_grad, _check_bias, _check_device_dtype, _output_format, check_conv2d,
                   conv2d_input_grad, conv_out_size)

ops = torch.ops.convops

__all__ = ["DepthwiseConv2dFunction", "DepthwiseSeparableConv2dFunction"]


# ----------------------------------------------------------------------------- checks (mirror conv_params.h)

def check_depthwise_conv2d(input, weight, bias, stride, padding, dilation) -> int:
    """Checks like F.conv2d with groups = input channels; returns that channel count."""
    channels = input.shape[1] if input.dim() == 4 else 1
    if input.dim() == 4 and weight.dim() == 4:
        torch._check(weight.shape[1] == 1,
                     lambda: f"Given groups={channels} (depthwise: one group per input channel), expected "
                             f"weight to have 1 channel per group at dimension 1, but got weight of size "
                             f"{list(weight.shape)} instead")
    check_conv2d(input, weight, bias, stride, padding, dilation, channels)
    return channels


def _depthwise_out_shape(input, weight, stride, padding, dilation):
    oh = conv_out_size(input.shape[2], weight.shape[2], stride[0], padding[0], dilation[0])
    ow = conv_out_size(input.shape[3], weight.shape[3], stride[1], padding[1], dilation[1])
    return input.shape[0], weight.shape[0], oh, ow


def check_pointwise_weight(pointwise_weight, pointwise_bias, input, mid_shape):
    torch._check(pointwise_weight.dim() == 4 and pointwise_weight.shape[2] == 1 and pointwise_weight.shape[3] == 1,
                 lambda: f"Expected pointwise_weight of size [out_channels, {mid_shape[1]}, 1, 1], but got "
                         f"pointwise_weight of size {list(pointwise_weight.shape)} instead")
    _check_device_dtype(input, pointwise_weight, pointwise_bias)
    torch._check(pointwise_weight.shape[1] == mid_shape[1],
                 lambda: f"Given groups=1, weight of size {list(pointwise_weight.shape)}, expected "
                         f"input{list(mid_shape)} to have {pointwise_weight.shape[1]} channels, but got "
                         f"{mid_shape[1]} channels instead")
    _check_bias(pointwise_bias, pointwise_weight.shape[0], pointwise_weight)


# ----------------------------------------------------------------------------- fake kernels

@torch.library.register_fake("convops::depthwise_conv2d")
def _depthwise_conv2d_fake(input, weight, bias, stride, padding, dilation):
    check_depthwise_conv2d(input, weight, bias, stride, padding, dilation)
    out = input.new_empty(_depthwise_out_shape(input, weight, stride, padding, dilation))
    return out.contiguous(memory_format=_output_format(input, weight))


@torch.library.register_fake("convops::depthwise_separable_conv2d")
def _depthwise_separable_conv2d_fake(input, depthwise_weight, pointwise_weight, depthwise_bias,
                                     pointwise_bias, stride, padding, dilation):
    check_depthwise_conv2d(input, depthwise_weight, depthwise_bias, stride, padding, dilation)
    n, mid, oh, ow = _depthwise_out_shape(input, depthwise_weight, stride, padding, dilation)
    check_pointwise_weight(pointwise_weight, pointwise_bias, input, (n, mid, oh, ow))
    out = input.new_empty((n, pointwise_weight.shape[0], oh, ow))
    return out.contiguous(memory_format=_output_format(input, depthwise_weight))


@torch.library.register_fake("convops::depthwise_separable_conv2d_backward")
def _depthwise_separable_conv2d_backward_fake(grad_output, input, depthwise_weight, pointwise_weight,
                                              depthwise_bias, stride, padding, dilation, output_mask):
    check_depthwise_conv2d(input, depthwise_weight, depthwise_bias, stride, padding, dilation)
    n, mid, oh, ow = _depthwise_out_shape(input, depthwise_weight, stride, padding, dilation)
    check_pointwise_weight(pointwise_weight, None, input, (n, mid, oh, ow))
    expected = [n, pointwise_weight.shape[0], oh, ow]
    torch._check(list(grad_output.shape) == expected,
                 lambda: f"depthwise_separable_conv2d_backward: expected grad_output of size {expected}, "
                         f"but got {list(grad_output.shape)}")
    grad_input = input.new_empty(input.shape).contiguous(memory_format=_output_format(input, depthwise_weight))
    grads = (grad_input, depthwise_weight.new_empty(depthwise_weight.shape), input.new_empty((mid,)),
             pointwise_weight.new_empty(pointwise_weight.shape))
    return tuple(g if wanted else None for g, wanted in zip(grads, output_mask))


# ----------------------------------------------------------------------------- depthwise_conv2d autograd

def _depthwise_grads(ctx_needs, grad, input, weight, stride, padding, dilation):
    """(grad_input, grad_weight, grad_bias) of a depthwise conv; None where not needed."""
    groups = input.shape[1]
    grad_input = grad_weight = grad_bias = None
    if ctx_needs[0]:
        grad_input = conv2d_input_grad(grad, weight, input.shape[2:], stride, padding, dilation, groups)
    if ctx_needs[1]:
        grad_weight = ops.conv2d_weight_grad(grad, input, weight.shape[2:], stride, padding, dilation, groups)
    if ctx_needs[2]:
        grad_bias = _bias_grad(grad)
    return grad_input, grad_weight, grad_bias


def _depthwise_setup_context(ctx, inputs, output):
    input, weight, bias, stride, padding, dilation = inputs
    ctx.save_for_backward(input, weight)
    ctx.hyper = (list(stride), list(padding), list(dilation))


def _depthwise_backward(ctx, grad):
    input, weight = ctx.saved_tensors
    grads = _depthwise_grads(ctx.needs_input_grad[:3], grad, input, weight, *ctx.hyper)
    return (*grads, None, None, None)


torch.library.register_autograd("convops::depthwise_conv2d", _depthwise_backward,
                                setup_context=_depthwise_setup_context)


class DepthwiseConv2dFunction(torch.autograd.Function):
    """depthwise_conv2d(input (N,C,H,W), weight (C*m,1,kh,kw), bias, stride, padding, dilation)."""

    @staticmethod
    def forward(input, weight, bias, stride, padding, dilation):
        return ops.depthwise_conv2d(input, weight, bias, stride, padding, dilation)

    setup_context = staticmethod(_depthwise_setup_context)
    backward = staticmethod(_depthwise_backward)


# ----------------------------------------------------------------------------- depthwise_separable_conv2d autograd

def _separable_setup_context(ctx, inputs, output):
    input, dw_weight, pw_weight, dw_bias, pw_bias, stride, padding, dilation = inputs
    ctx.save_for_backward(input, dw_weight, pw_weight, dw_bias)
    ctx.hyper = (list(stride), list(padding), list(dilation))


def _separable_backward(ctx, grad):
    input, dw_weight, pw_weight, dw_bias = ctx.saved_tensors
    stride, padding, dilation = ctx.hyper
    needs = ctx.needs_input_grad
    grad_pb = _bias_grad(grad) if needs[4] else None
    if input.device.type == "cpu" and not torch.is_grad_enabled():
        # Fused, tile by tile (csrc/cpu/depthwise.cpp). Not differentiable itself: a backward
        # that records a graph (double backward) takes the composition below.
        mask = [needs[0], needs[1], needs[3], needs[2]]
        grad_input, grad_dw, grad_db, grad_pw = ops.depthwise_separable_conv2d_backward(
            grad, input, dw_weight, pw_weight, dw_bias, stride, padding, dilation, mask)
        return grad_input, grad_dw, grad_pw, grad_db, grad_pb, None, None, None
    grad_pw = grad_input = grad_dw = grad_db = None
    if needs[2]:
        # The depthwise output is recomputed, not kept by the forward.
        mid = ops.depthwise_conv2d(input, dw_weight, dw_bias, stride, padding, dilation)
        grad_pw = ops.conv2d_weight_grad(grad, mid, [1, 1], [1, 1], [0, 0], [1, 1], 1)
    if needs[0] or needs[1] or needs[3]:
        grad_mid = ops.conv_transpose2d(grad, pw_weight, None, [1, 1], [0, 0], [0, 0], 1, [1, 1])
        grad_input, grad_dw, grad_db = _depthwise_grads((needs[0], needs[1], needs[3]), grad_mid, input,
                                                        dw_weight, stride, padding, dilation)
    return grad_input, grad_dw, grad_pw, grad_db, grad_pb, None, None, None


torch.library.register_autograd("convops::depthwise_separable_conv2d", _separable_backward,
                                setup_context=_separable_setup_context)


class DepthwiseSeparableConv2dFunction(torch.autograd.Function):
    """depthwise_separable_conv2d(input (N,C,H,W), depthwise_weight (C*m,1,kh,kw), pointwise_weight
    (O,C*m,1,1), depthwise_bias, pointwise_bias, stride, padding, dilation)."""

    @staticmethod
    def forward(input, depthwise_weight, pointwise_weight, depthwise_bias, pointwise_bias, stride, padding,
                dilation):
        return ops.depthwise_separable_conv2d(input, depthwise_weight, pointwise_weight, depthwise_bias,
                                              pointwise_bias, stride, padding, dilation)

    setup_context = staticmethod(_separable_setup_context)
    backward = staticmethod(_separable_backward)
