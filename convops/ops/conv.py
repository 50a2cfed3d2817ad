"""Fake kernels and autograd for the dense conv family: conv2d, conv_transpose2d, conv2d_weight_grad.

The three conv primitives close under differentiation, so every backward formula below is
written with convops ops and double (or higher) backward works:

    conv2d(x, w)                  d/dx -> conv_transpose2d(g, w)   d/dw -> conv2d_weight_grad(g, x)
    conv_transpose2d(y, w)        d/dy -> conv2d(g, w)             d/dw -> conv2d_weight_grad(y, g)
    conv2d_weight_grad(g, x)      d/dg -> conv2d(x, gg)            d/dx -> conv_transpose2d(g, gg)

Argument checks mirror csrc/common/conv_params.h with torch._check, so eager and compiled
code raise the same errors.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch._prims_common import suggest_memory_format

ops = torch.ops.convops

__all__ = ["Conv2dFunction", "ConvTranspose2dFunction"]


# ----------------------------------------------------------------------------- shapes

def conv_out_size(size, kernel, stride, pad, dilation):
    return (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1


def conv_transpose_out_size(size, kernel, stride, pad, dilation, output_padding):
    return (size - 1) * stride - 2 * pad + dilation * (kernel - 1) + output_padding + 1


def _output_format(input: Tensor, weight: Tensor) -> torch.memory_format:
    def is_cl(t):
        return t.dim() == 4 and suggest_memory_format(t) == torch.channels_last
    return torch.channels_last if is_cl(input) or is_cl(weight) else torch.contiguous_format


# ----------------------------------------------------------------------------- checks

def _check_hyper(stride, padding, dilation, groups):
    torch._check(len(stride) == 2 and len(padding) == 2 and len(dilation) == 2,
                 lambda: f"expected stride, padding and dilation to have 2 elements each, but got "
                         f"stride={list(stride)}, padding={list(padding)}, dilation={list(dilation)}")
    for s in stride:
        torch._check(s > 0, lambda: "non-positive stride is not supported")
    for p in padding:
        torch._check(p >= 0, lambda: "negative padding is not supported")
    for d in dilation:
        torch._check(d > 0, lambda: "non-positive dilation is not supported")
    torch._check(groups > 0, lambda: "non-positive groups is not supported")


def _check_device_dtype(input, weight, bias):
    torch._check(input.device == weight.device,
                 lambda: f"Input and weight should be on the same device, but got input on "
                         f"{input.device} and weight on {weight.device}")
    torch._check(input.dtype == weight.dtype,
                 lambda: f"Input type ({input.dtype}) and weight type ({weight.dtype}) should be the same")
    if bias is not None:
        torch._check(bias.device == input.device,
                     lambda: f"Input and bias should be on the same device, but got input on "
                             f"{input.device} and bias on {bias.device}")
        torch._check(bias.dtype == input.dtype,
                     lambda: f"Input type ({input.dtype}) and bias type ({bias.dtype}) should be the same")
    torch._check(input.dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16),
                 lambda: f"convops: expected input of a floating type (float32, float64, bfloat16, "
                         f"float16), but got {input.dtype}")


def _check_nonempty_spatial(input):
    torch._check(input.numel() != 0 or input.shape[0] == 0 or input.shape[1] == 0,
                 lambda: f"Only zero batch or zero channel inputs are supported, but got input shape: "
                         f"{list(input.shape)}")


def _check_weight_groups(weight, groups):
    torch._check(weight.shape[0] >= groups,
                 lambda: f"Given groups={groups}, expected weight to be at least {groups} at dimension 0, "
                         f"but got weight of size {list(weight.shape)} instead")
    torch._check(weight.shape[0] % groups == 0,
                 lambda: f"Given groups={groups}, expected weight to be divisible by {groups} at "
                         f"dimension 0, but got weight of size {list(weight.shape)} instead")


def _check_bias(bias, channels, weight, prefix="Given "):
    if bias is None:
        return
    torch._check(bias.dim() == 1 and bias.shape[0] == channels,
                 lambda: f"{prefix}weight of size {list(weight.shape)}, expected bias to be 1-dimensional "
                         f"with {channels} elements, but got bias of size {list(bias.shape)} instead")


def _check_kernel_fits(h, w, padding, dilation, kh, kw):
    ph, pw = h + 2 * padding[0], w + 2 * padding[1]
    eh, ew = dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1
    torch._check(ph >= eh and pw >= ew,
                 lambda: f"Calculated padded input size per channel: ({ph} x {pw}). Kernel size: "
                         f"({eh} x {ew}). Kernel size can't be greater than actual input size")


def _check_ranks(input, weight, name):
    torch._check(weight.dim() == 4,
                 lambda: f"Expected 4-dimensional weight for {name}, but got {weight.dim()}-dimensional "
                         f"weight of size {list(weight.shape)} instead")
    torch._check(input.dim() == 4,
                 lambda: f"Expected 4-dimensional input for 4-dimensional weight {list(weight.shape)}, "
                         f"but got {input.dim()}-dimensional input of size {list(input.shape)} instead")


def check_conv2d(input, weight, bias, stride, padding, dilation, groups):
    _check_hyper(stride, padding, dilation, groups)
    _check_ranks(input, weight, "conv2d")
    _check_device_dtype(input, weight, bias)
    _check_weight_groups(weight, groups)
    torch._check(input.shape[1] == weight.shape[1] * groups,
                 lambda: f"Given groups={groups}, weight of size {list(weight.shape)}, expected "
                         f"input{list(input.shape)} to have {weight.shape[1] * groups} channels, but got "
                         f"{input.shape[1]} channels instead")
    _check_bias(bias, weight.shape[0], weight)
    _check_kernel_fits(input.shape[2], input.shape[3], padding, dilation, weight.shape[2], weight.shape[3])
    _check_nonempty_spatial(input)


def check_conv_transpose2d(input, weight, bias, stride, padding, output_padding, groups, dilation):
    _check_hyper(stride, padding, dilation, groups)
    torch._check(len(output_padding) == 2,
                 lambda: f"expected output_padding to have 2 elements, but got {list(output_padding)}")
    _check_ranks(input, weight, "conv_transpose2d")
    _check_device_dtype(input, weight, bias)
    for p in output_padding:
        torch._check(p >= 0, lambda: "negative output_padding is not supported")
    torch._check(output_padding[0] < max(stride[0], dilation[0])
                 and output_padding[1] < max(stride[1], dilation[1]),
                 lambda: f"output padding must be smaller than either stride or dilation, but got "
                         f"output_padding_height: {output_padding[0]} output_padding_width: "
                         f"{output_padding[1]} stride_height: {stride[0]} stride_width: {stride[1]} "
                         f"dilation_height: {dilation[0]} dilation_width: {dilation[1]}")
    _check_weight_groups(weight, groups)
    torch._check(input.shape[1] == weight.shape[0],
                 lambda: f"Given transposed=1, weight of size {list(weight.shape)}, expected "
                         f"input{list(input.shape)} to have {weight.shape[0]} channels, but got "
                         f"{input.shape[1]} channels instead")
    _check_bias(bias, weight.shape[1] * groups, weight, prefix="Given transposed=1, ")
    _check_nonempty_spatial(input)


def _conv_transpose2d_out_hw(input, weight, stride, padding, output_padding, dilation):
    oh = conv_transpose_out_size(input.shape[2], weight.shape[2], stride[0], padding[0],
                                 dilation[0], output_padding[0])
    ow = conv_transpose_out_size(input.shape[3], weight.shape[3], stride[1], padding[1],
                                 dilation[1], output_padding[1])
    torch._check(oh > 0 and ow > 0,
                 lambda: f"Given input size per channel: ({input.shape[2]} x {input.shape[3]}). "
                         f"Calculated output size per channel: ({oh} x {ow}). Output size is too small")
    return oh, ow


# ----------------------------------------------------------------------------- fake kernels

@torch.library.register_fake("convops::conv2d")
def _conv2d_fake(input, weight, bias, stride, padding, dilation, groups):
    check_conv2d(input, weight, bias, stride, padding, dilation, groups)
    oh = conv_out_size(input.shape[2], weight.shape[2], stride[0], padding[0], dilation[0])
    ow = conv_out_size(input.shape[3], weight.shape[3], stride[1], padding[1], dilation[1])
    out = input.new_empty((input.shape[0], weight.shape[0], oh, ow))
    return out.contiguous(memory_format=_output_format(input, weight))


@torch.library.register_fake("convops::conv_transpose2d")
def _conv_transpose2d_fake(input, weight, bias, stride, padding, output_padding, groups, dilation):
    check_conv_transpose2d(input, weight, bias, stride, padding, output_padding, groups, dilation)
    oh, ow = _conv_transpose2d_out_hw(input, weight, stride, padding, output_padding, dilation)
    out = input.new_empty((input.shape[0], weight.shape[1] * groups, oh, ow))
    return out.contiguous(memory_format=_output_format(input, weight))


@torch.library.register_fake("convops::conv2d_weight_grad")
def _conv2d_weight_grad_fake(grad_output, input, kernel_size, stride, padding, dilation, groups):
    _check_hyper(stride, padding, dilation, groups)
    torch._check(input.dim() == 4 and grad_output.dim() == 4,
                 lambda: f"conv2d_weight: expected 4-dimensional input and grad_output, but got input "
                         f"of size {list(input.shape)} and grad_output of size {list(grad_output.shape)}")
    torch._check(input.shape[1] % groups == 0 and grad_output.shape[1] % groups == 0,
                 lambda: f"conv2d_weight: expected input channels ({input.shape[1]}) and grad_output "
                         f"channels ({grad_output.shape[1]}) to be divisible by groups={groups}")
    return input.new_empty((grad_output.shape[1], input.shape[1] // groups,
                            kernel_size[0], kernel_size[1]))


@torch.library.register_fake("convops::conv2d_weight_bias_grad")
def _conv2d_weight_bias_grad_fake(grad_output, input, kernel_size, stride, padding, dilation, groups):
    grad_weight = _conv2d_weight_grad_fake(grad_output, input, kernel_size, stride, padding, dilation, groups)
    return grad_weight, grad_output.new_empty((grad_output.shape[1],))


# ----------------------------------------------------------------------------- backward building blocks

def conv2d_input_grad(grad: Tensor, weight: Tensor, input_hw: Sequence, stride, padding, dilation,
                      groups) -> Tensor:
    """Gradient of conv2d w.r.t. an input of spatial size input_hw: a transposed conv whose
    output_padding restores the rows/cols that the forward's floor division dropped."""
    output_padding = [
        input_hw[i] - conv_transpose_out_size(grad.shape[2 + i], weight.shape[2 + i], stride[i],
                                              padding[i], dilation[i], 0)
        for i in range(2)
    ]
    return ops.conv_transpose2d(grad, weight, None, stride, padding, output_padding, groups, dilation)


def _fit_columns(columns: Tensor, image_hw, kernel_hw, stride, padding, dilation) -> Tensor:
    """A transposed conv with output_padding >= stride (allowed when dilation > stride) has
    trailing image rows that no column reads; the conv view of that image has one more column
    row, which we supply as zeros so conv2d_weight_grad sees the geometry it expects."""
    want = [conv_out_size(image_hw[i], kernel_hw[i], stride[i], padding[i], dilation[i]) for i in range(2)]
    extra_h, extra_w = want[0] - columns.shape[2], want[1] - columns.shape[3]
    if extra_h == 0 and extra_w == 0:
        return columns
    return F.pad(columns, (0, extra_w, 0, extra_h))


def _bias_grad(grad: Tensor) -> Tensor:
    return grad.sum((0, 2, 3))


def _save(ctx, first: Tensor, second: Tensor, stride, padding, dilation, groups):
    ctx.save_for_backward(first, second)
    ctx.hyper = (list(stride), list(padding), list(dilation), groups)


# ----------------------------------------------------------------------------- conv2d autograd

def _conv2d_setup_context(ctx, inputs, output):
    input, weight, bias, stride, padding, dilation, groups = inputs
    _save(ctx, input, weight, stride, padding, dilation, groups)


def _conv2d_backward(ctx, grad):
    input, weight = ctx.saved_tensors
    stride, padding, dilation, groups = ctx.hyper
    grad_input = grad_weight = grad_bias = None
    if ctx.needs_input_grad[0]:
        grad_input = conv2d_input_grad(grad, weight, input.shape[2:], stride, padding, dilation, groups)
    if ctx.needs_input_grad[1] and ctx.needs_input_grad[2]:  # one pass over grad
        grad_weight, grad_bias = ops.conv2d_weight_bias_grad(grad, input, weight.shape[2:], stride, padding,
                                                             dilation, groups)
    elif ctx.needs_input_grad[1]:
        grad_weight = ops.conv2d_weight_grad(grad, input, weight.shape[2:], stride, padding, dilation, groups)
    elif ctx.needs_input_grad[2]:
        grad_bias = _bias_grad(grad)
    return grad_input, grad_weight, grad_bias, None, None, None, None


torch.library.register_autograd("convops::conv2d", _conv2d_backward, setup_context=_conv2d_setup_context)


class Conv2dFunction(torch.autograd.Function):
    """conv2d(input (N,C,H,W), weight (O,C/g,kh,kw), bias, stride, padding, dilation, groups)."""

    @staticmethod
    def forward(input, weight, bias, stride, padding, dilation, groups):
        return ops.conv2d(input, weight, bias, stride, padding, dilation, groups)

    setup_context = staticmethod(_conv2d_setup_context)
    backward = staticmethod(_conv2d_backward)


# ----------------------------------------------------------------------------- conv_transpose2d autograd

def _conv_transpose2d_setup_context(ctx, inputs, output):
    input, weight, bias, stride, padding, output_padding, groups, dilation = inputs
    _save(ctx, input, weight, stride, padding, dilation, groups)


def _conv_transpose2d_backward(ctx, grad):
    input, weight = ctx.saved_tensors
    stride, padding, dilation, groups = ctx.hyper
    grad_input = grad_weight = grad_bias = None
    if ctx.needs_input_grad[0]:
        grad_input = ops.conv2d(grad, weight, None, stride, padding, dilation, groups)
        grad_input = grad_input[:, :, : input.shape[2], : input.shape[3]]
    if ctx.needs_input_grad[1]:
        columns = _fit_columns(input, grad.shape[2:], weight.shape[2:], stride, padding, dilation)
        grad_weight = ops.conv2d_weight_grad(columns, grad, weight.shape[2:], stride, padding, dilation, groups)
    if ctx.needs_input_grad[2]:
        grad_bias = _bias_grad(grad)
    return grad_input, grad_weight, grad_bias, None, None, None, None, None


torch.library.register_autograd("convops::conv_transpose2d", _conv_transpose2d_backward,
                                setup_context=_conv_transpose2d_setup_context)


class ConvTranspose2dFunction(torch.autograd.Function):
    """conv_transpose2d(input (N,Cin,H,W), weight (Cin,Cout/g,kh,kw), bias, stride, padding,
    output_padding, groups, dilation)."""

    @staticmethod
    def forward(input, weight, bias, stride, padding, output_padding, groups, dilation):
        return ops.conv_transpose2d(input, weight, bias, stride, padding, output_padding, groups, dilation)

    setup_context = staticmethod(_conv_transpose2d_setup_context)
    backward = staticmethod(_conv_transpose2d_backward)


# ----------------------------------------------------------------------------- weight-gradient autograd

def _weight_grad_setup_context(ctx, inputs, output):
    grad_output, input, kernel_size, stride, padding, dilation, groups = inputs
    _save(ctx, grad_output, input, stride, padding, dilation, groups)


def _weight_grad_backward(ctx, grad_grad_weight, grad_grad_bias=None):
    """Backward of conv2d_weight_grad and of conv2d_weight_bias_grad (whose bias gradient is
    grad_output summed: its adjoint broadcasts, which conv2d's bias does)."""
    grad_output, input = ctx.saved_tensors
    stride, padding, dilation, groups = ctx.hyper
    d_grad_output = d_input = None
    if ctx.needs_input_grad[0]:
        d_grad_output = ops.conv2d(input, grad_grad_weight, grad_grad_bias, stride, padding, dilation, groups)
    if ctx.needs_input_grad[1]:
        d_input = conv2d_input_grad(grad_output, grad_grad_weight, input.shape[2:], stride, padding,
                                    dilation, groups)
    return d_grad_output, d_input, None, None, None, None, None


for _name in ("convops::conv2d_weight_grad", "convops::conv2d_weight_bias_grad"):
    torch.library.register_autograd(_name, _weight_grad_backward, setup_context=_weight_grad_setup_context)


def build_info() -> dict:
    """What the compiled extension holds: CPU ISA variants, the selected one, CUDA archs."""
    pairs = (kv.split("=", 1) for kv in ops._build_info().split(";"))
    return {k: v for k, v in pairs}
