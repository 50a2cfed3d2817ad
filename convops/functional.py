"""Public functions, each a drop-in for its torch.nn.functional twin (same signature, same
results, same errors). 1-D convolutions run on the 2-D kernels with a unit height."""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .ops import (Conv2dFunction, ConvTranspose2dFunction, DepthwiseConv2dFunction,
                  DepthwiseSeparableConv2dFunction, SpatiallySeparableConv2dFunction)
from .ops import DeformConv2dFunction  # [deformable]

__all__ = ["conv1d", "conv2d", "conv_transpose1d", "conv_transpose2d", "depthwise_conv2d",
           "depthwise_separable_conv2d", "PaddingStringError"]
# [separable] __all__ += [...]
__all__ += ["spatially_separable_conv2d"]
__all__ += ["deform_conv2d"]  # [deformable]

IntOrSeq = Union[int, Sequence[int]]


class PaddingStringError(ValueError, RuntimeError):
    """A padding string other than 'same'/'valid'. torch raises RuntimeError here and Python
    convention says ValueError; this is both, so code catching either keeps working."""


def _expand(value: IntOrSeq, n: int, name: str) -> list:
    if isinstance(value, (int, torch.SymInt)):
        return [value] * n
    value = list(value)
    if len(value) == 1:
        return value * n
    if len(value) != n:
        raise RuntimeError(f"expected {name} to be a single integer value or a list of {n} values to "
                           f"match the convolution dimensions, but got {name}={value}")
    return value


def _check_input_rank(input: Tensor, spatial: int, name: str) -> bool:
    """Returns whether input is batched; raises like torch for any other rank."""
    if input.dim() not in (spatial + 1, spatial + 2):
        raise RuntimeError(f"Expected {spatial + 1}D (unbatched) or {spatial + 2}D (batched) input to "
                           f"{name}, but got input of size: {list(input.shape)}")
    return input.dim() == spatial + 2


def _check_weight_rank(input: Tensor, weight: Tensor, spatial: int):
    if weight.dim() != spatial + 2:
        raise RuntimeError(f"Expected {weight.dim()}-dimensional input for {weight.dim()}-dimensional "
                           f"weight {list(weight.shape)}, but got {spatial + 2}-dimensional input of size "
                           f"{list(input.shape)} instead")


def _as_batched(input: Tensor, weight: Tensor, spatial: int, name: str):
    """Checks ranks like torch; returns the input with a batch dim and whether it had one."""
    batched = _check_input_rank(input, spatial, name)
    if not batched:
        input = input.unsqueeze(0)
    _check_weight_rank(input, weight, spatial)
    return input, batched


def _resolve_padding_string(input: Tensor, weight: Tensor, padding: str, stride: list,
                            dilation: list, spatial: int):
    """'valid' is no padding. 'same' pads d*(k-1) per dim, the odd extra on the right/bottom
    like torch; the symmetric part goes to the kernel, the extra is an explicit zero pad."""
    if padding == "valid":
        return input, [0] * spatial
    if padding != "same":
        raise PaddingStringError(f"Invalid padding string: '{padding}'")
    if any(s != 1 for s in stride):
        raise RuntimeError("padding='same' is not supported for strided convolutions")
    total = [dilation[i] * (weight.shape[2 + i] - 1) for i in range(spatial)]
    left = [t // 2 for t in total]
    extra = [t - 2 * l for t, l in zip(total, left)]
    if any(extra):
        pad_nd = []
        for e in reversed(extra):  # F.pad lists the last dim first
            pad_nd += [0, e]
        input = F.pad(input, pad_nd)
    return input, left


def _autocast(input: Tensor, weight: Tensor, bias: Optional[Tensor]):
    """Under torch.autocast, convolutions run in the autocast dtype like torch's (conv is on
    autocast's lower-precision list): floating inputs other than float64 are cast, in the graph,
    so the float32 parameters get float32 gradients."""
    device = input.device.type
    if not torch.is_autocast_enabled(device):
        return input, weight, bias
    dtype = torch.get_autocast_dtype(device)

    def cast(t):
        return t if t is None or not t.is_floating_point() or t.dtype == torch.float64 else t.to(dtype)
    return cast(input), cast(weight), cast(bias)


_EAGER_TWINS = {}


def _without_grad_mode(fn, *args):
    """fn(*args) with grad mode off, below the autograd dispatch key: what each convops op's
    registered autograd kernel (Python, torch.library) does itself when grad mode is off, minus
    its per-call overhead (~5-10 us an op; 192ch@28 channels_last depthwise forward: ~5%)."""
    with torch._C._AutoDispatchBelowAutograd():
        return fn(*args)


def _eager_twin(function):
    """A ctx-first ("old style") twin of a setup_context-style autograd.Function: the same
    forward, setup_context and backward. apply binds a setup_context-style function's arguments
    to forward's signature with inspect on every call (~40 us, and garbage for the collector);
    a ctx-first forward skips that. Its forward (always run with grad mode off) and its backward
    when grad mode is off (no create_graph) call the ops below the autograd key. torch.func
    transforms need setup_context, so _apply uses the twin only outside them."""
    twin = _EAGER_TWINS.get(function)
    if twin is None:
        def forward(ctx, *args):
            output = _without_grad_mode(function.forward, *args)
            function.setup_context(ctx, args, output)
            return output

        def backward(ctx, *grads):
            if torch.is_grad_enabled():  # double backward: the ops record their graph
                return function.backward(ctx, *grads)
            return _without_grad_mode(function.backward, ctx, *grads)

        twin = type(function.__name__ + "Eager", (torch.autograd.Function,),
                    {"forward": staticmethod(forward), "backward": staticmethod(backward)})
        _EAGER_TWINS[function] = twin
    return twin


def _apply(function, *args):
    """function.apply(*args), or, when no argument needs a gradient, function.forward (the
    registered op) directly; in plain eager mode (not compiling, no torch.func transform)
    through its ctx-first twin (_eager_twin) and, with grad mode off, below the autograd key
    (a training step of a small grouped conv, 1x256x2x2 g32: ~17% faster; of 256->256 g32 @28,
    where the kernels take ~6 ms, ~1%)."""
    eager = not torch.compiler.is_compiling() and not torch._C._are_functorch_transforms_active()
    if torch.is_grad_enabled():
        if any(isinstance(a, Tensor) and a.requires_grad for a in args):
            return _eager_twin(function).apply(*args) if eager else function.apply(*args)
        return function.forward(*args)
    return _without_grad_mode(function.forward, *args) if eager else function.forward(*args)


def _conv(input, weight, bias, stride, padding, dilation, groups, spatial, name):
    input, weight, bias = _autocast(input, weight, bias)
    input, batched = _as_batched(input, weight, spatial, name)
    stride = _expand(stride, spatial, "stride")
    dilation = _expand(dilation, spatial, "dilation")
    if isinstance(padding, str):
        input, padding = _resolve_padding_string(input, weight, padding, stride, dilation, spatial)
    else:
        padding = _expand(padding, spatial, "padding")
    if spatial == 1:
        out = _apply(Conv2dFunction, input.unsqueeze(2), weight.unsqueeze(2), bias, [1] + stride,
                                   [0] + padding, [1] + dilation, groups).squeeze(2)
    else:
        out = _apply(Conv2dFunction, input, weight, bias, stride, padding, dilation, groups)
    return out if batched else out.squeeze(0)


def conv2d(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None, stride: IntOrSeq = 1,
           padding: Union[IntOrSeq, str] = 0, dilation: IntOrSeq = 1, groups: int = 1) -> Tensor:
    """Drop-in twin of `F.conv2d`: same signature, results and errors."""
    return _conv(input, weight, bias, stride, padding, dilation, groups, 2, "conv2d")


def conv1d(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None, stride: IntOrSeq = 1,
           padding: Union[IntOrSeq, str] = 0, dilation: IntOrSeq = 1, groups: int = 1) -> Tensor:
    """Drop-in twin of `F.conv1d`: same signature, results and errors."""
    return _conv(input, weight, bias, stride, padding, dilation, groups, 1, "conv1d")


def _conv_transpose(input, weight, bias, stride, padding, output_padding, groups, dilation, spatial, name):
    input, weight, bias = _autocast(input, weight, bias)
    input, batched = _as_batched(input, weight, spatial, name)
    stride = _expand(stride, spatial, "stride")
    padding = _expand(padding, spatial, "padding")
    output_padding = _expand(output_padding, spatial, "output_padding")
    dilation = _expand(dilation, spatial, "dilation")
    if spatial == 1:
        out = _apply(ConvTranspose2dFunction, input.unsqueeze(2), weight.unsqueeze(2), bias, [1] + stride,
                                            [0] + padding, [0] + output_padding, groups,
                                            [1] + dilation).squeeze(2)
    else:
        out = _apply(ConvTranspose2dFunction, input, weight, bias, stride, padding, output_padding, groups,
                                            dilation)
    return out if batched else out.squeeze(0)


def conv_transpose2d(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None, stride: IntOrSeq = 1,
                     padding: IntOrSeq = 0, output_padding: IntOrSeq = 0, groups: int = 1,
                     dilation: IntOrSeq = 1) -> Tensor:
    """Drop-in twin of `F.conv_transpose2d` (note: groups before dilation)."""
    return _conv_transpose(input, weight, bias, stride, padding, output_padding, groups, dilation, 2,
                           "conv_transpose2d")


def conv_transpose1d(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None, stride: IntOrSeq = 1,
                     padding: IntOrSeq = 0, output_padding: IntOrSeq = 0, groups: int = 1,
                     dilation: IntOrSeq = 1) -> Tensor:
    """Drop-in twin of `F.conv_transpose1d`."""
    return _conv_transpose(input, weight, bias, stride, padding, output_padding, groups, dilation, 1,
                           "conv_transpose1d")


# ----------------------------------------------------------------------------- [depthwise / grouped]

def _depthwise_args(input, weight, stride, padding, dilation, name):
    """Like torch: batch dim added to an unbatched input, int-or-pair arguments expanded,
    'same'/'valid' resolved (the odd extra of an even kernel as an explicit zero pad)."""
    input, batched = _as_batched(input, weight, 2, name)
    stride = _expand(stride, 2, "stride")
    dilation = _expand(dilation, 2, "dilation")
    if isinstance(padding, str):
        input, padding = _resolve_padding_string(input, weight, padding, stride, dilation, 2)
    else:
        padding = _expand(padding, 2, "padding")
    return input, batched, stride, padding, dilation


def depthwise_conv2d(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None, stride: IntOrSeq = 1,
                     padding: Union[IntOrSeq, str] = 0, dilation: IntOrSeq = 1) -> Tensor:
    """`F.conv2d(input, weight, bias, stride, padding, dilation, groups=C)` with weight (C*m, 1, kh, kw)."""
    input, batched, stride, padding, dilation = _depthwise_args(input, weight, stride, padding, dilation,
                                                                "conv2d")
    out = _apply(DepthwiseConv2dFunction, input, weight, bias, stride, padding, dilation)
    return out if batched else out.squeeze(0)


def depthwise_separable_conv2d(input: Tensor, depthwise_weight: Tensor, pointwise_weight: Tensor,
                               depthwise_bias: Optional[Tensor] = None,
                               pointwise_bias: Optional[Tensor] = None, stride: IntOrSeq = 1,
                               padding: Union[IntOrSeq, str] = 0, dilation: IntOrSeq = 1) -> Tensor:
    """A depthwise conv then a 1x1 conv, fused: `F.conv2d(F.conv2d(x, dw, db, stride, padding,
    dilation, groups=C), pw, pb)` without materialising the depthwise output (nor, in the CPU
    backward, its gradient: both live in tiles of a band of rows)."""
    input, batched, stride, padding, dilation = _depthwise_args(input, depthwise_weight, stride, padding,
                                                                dilation, "conv2d")
    out = _apply(DepthwiseSeparableConv2dFunction, input, depthwise_weight, pointwise_weight, depthwise_bias,
                                                 pointwise_bias, stride, padding, dilation)
    return out if batched else out.squeeze(0)


# ----------------------------------------------------------------------------- [separable]

class _KernelShape:
    """Stands in for a weight where only its (.., kh, kw) shape is read (padding='same')."""

    def __init__(self, kernel_size):
        self.shape = (1, 1, *kernel_size)


def spatially_separable_conv2d(input: Tensor, weight_v: Tensor, weight_h: Tensor,
                               bias: Optional[Tensor] = None, stride: IntOrSeq = 1,
                               padding: Union[IntOrSeq, str] = 0, dilation: IntOrSeq = 1,
                               groups: int = 1) -> Tensor:
    """A kh x 1 conv then a 1 x kw conv, with the (height, width) hyper-parameters split between
    them: `F.conv2d(F.conv2d(x, weight_v, None, (sh, 1), (ph, 0), (dh, 1), groups), weight_h,
    bias, (1, sw), (0, pw), (1, dw), groups)`; weight_v (Cmid, Cin/g, kh, 1), weight_h
    (Cout, Cmid/g, 1, kw). Unbatched 3-D input and padding='same'/'valid' as in `conv2d`."""
    input, batched = _as_batched(input, weight_v, 2, "spatially_separable_conv2d")
    stride = _expand(stride, 2, "stride")
    dilation = _expand(dilation, 2, "dilation")
    if isinstance(padding, str):
        kernel = _KernelShape((weight_v.shape[2], weight_h.shape[-1]))
        input, padding = _resolve_padding_string(input, kernel, padding, stride, dilation, 2)
    else:
        padding = _expand(padding, 2, "padding")
    out = _apply(SpatiallySeparableConv2dFunction, input, weight_v, weight_h, bias, stride, padding,
                                                 dilation, groups)
    return out if batched else out.squeeze(0)



# ----------------------------------------------------------------------------- [deformable]

def _pair_arg(value, name: str) -> list:
    """torchvision's _pair: an int or a 2-sequence."""
    if isinstance(value, (int, torch.SymInt)):
        return [value, value]
    value = list(value)
    if len(value) != 2:
        raise RuntimeError(f"deform_conv2d: expected {name} to be an int or a pair of ints, but got {name}={value}")
    return value


def deform_conv2d(input: Tensor, offset: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                  stride: IntOrSeq = (1, 1), padding: IntOrSeq = (0, 0), dilation: IntOrSeq = (1, 1),
                  mask: Optional[Tensor] = None) -> Tensor:
    """Drop-in twin of `torchvision.ops.deform_conv2d`: deformable convolution v1 (mask=None) or
    v2 (modulated, with mask). offset (N, 2*G*kh*kw, Ho, Wo) holds (dy, dx) per offset group and
    kernel tap; mask (N, G*kh*kw, Ho, Wo). Weight groups are C_in // weight.shape[1] and offset
    groups offset.shape[1] // (2*kh*kw), as in torchvision."""
    if input.dim() != 4 or weight.dim() != 4 or offset.dim() != 4:
        raise RuntimeError(f"deform_conv2d: expected 4-dimensional input, weight and offset, but got input of "
                           f"size {list(input.shape)}, weight of size {list(weight.shape)} and offset of size "
                           f"{list(offset.shape)}")
    kh, kw = weight.shape[-2:]
    offset_groups = offset.shape[1] // (2 * kh * kw) if kh * kw > 0 else 0
    if offset_groups == 0:
        raise RuntimeError(
            "deform_conv2d: the shape of the offset tensor at dimension 1 is not valid: expected a positive "
            f"multiple of 2 * weight.size(2) * weight.size(3) = {2 * kh * kw} channels, but got offset of size "
            f"{list(offset.shape)}")
    if weight.shape[1] == 0 or input.shape[1] % weight.shape[1] != 0:
        raise RuntimeError(f"deform_conv2d: expected input channels ({input.shape[1]}) to be divisible by "
                           f"weight.size(1) ({weight.shape[1]}), the input channels per group, but got input of "
                           f"size {list(input.shape)} and weight of size {list(weight.shape)}")
    groups = input.shape[1] // weight.shape[1]
    return _apply(DeformConv2dFunction, input, weight, offset, mask, bias, _pair_arg(stride, "stride"),
                                      _pair_arg(padding, "padding"), _pair_arg(dilation, "dilation"), groups,
                                      offset_groups)
