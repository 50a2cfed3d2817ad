"""Separable convolution modules.

SpatiallySeparableConv2d: a kh x 1 conv into `rank * groups` intermediate channels, then a
1 x kw conv (parameters `weight_v` (rank*groups, Cin/groups, kh, 1), `weight_h`
(Cout, rank, 1, kw), `bias` (Cout)). `from_conv2d(conv, rank)` converts a dense Conv2d by SVD
(convops.decompose), exactly at full rank.

DepthwiseSeparableConv2d: a depthwise kh x kw conv (in_channels * depth_multiplier channels)
then a 1x1 conv, run as one fused op. Parameters `depthwise.weight` (C*m, 1, kh, kw),
`pointwise.weight` (Cout, C*m, 1, 1) and, with bias=True, `pointwise.bias` (Cout). There is no
depthwise bias (like Keras' SeparableConv2D): with nothing between the two convs it would fold
into the pointwise bias.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import init
from torch.nn.modules.utils import _pair

from .. import decompose as _decompose
from .. import functional as cF
from .conv import Conv2d

__all__ = ["DepthwiseSeparableConv2d", "SpatiallySeparableConv2d"]

_PADDING_STRINGS = ("same", "valid")


def _check_channels(in_channels, out_channels, groups, cls):
    if groups <= 0:
        raise ValueError(f"{cls}: groups must be a positive integer, but got groups={groups}")
    if in_channels % groups != 0:
        raise ValueError(f"{cls}: in_channels must be divisible by groups, but got in_channels={in_channels}, "
                         f"groups={groups}")
    if out_channels % groups != 0:
        raise ValueError(f"{cls}: out_channels must be divisible by groups, but got out_channels={out_channels}, "
                         f"groups={groups}")


def _padding_arg(padding, stride, cls):
    if isinstance(padding, str):
        if padding not in _PADDING_STRINGS:
            raise ValueError(f"{cls}: invalid padding string {padding!r}, should be one of {_PADDING_STRINGS}")
        if padding == "same" and any(s != 1 for s in stride):
            raise ValueError(f"{cls}: padding='same' is not supported for strided convolutions")
        return padding
    return _pair(padding)


class SpatiallySeparableConv2d(torch.nn.Module):
    """Conv2d(in, out, (kh, kw)) as a kh x 1 conv then a 1 x kw conv through `rank` intermediate
    channels per group (`rank=None`: the full rank min(Cin/g*kh, Cout/g*kw), which can express
    every dense kernel). Same constructor arguments as torch's Conv2d plus `rank`; forward equals
    `functional.spatially_separable_conv2d(x, weight_v, weight_h, bias, stride, padding, dilation,
    groups)`. Init: kaiming-uniform of each factor, like torch's Conv2d; the bias bound uses the
    fan-in of the horizontal conv that adds it. `reconstruction_error` is set by `from_conv2d`
    (None otherwise)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, rank: Optional[int] = None,
                 stride=1, padding: Union[str, int, Tuple[int, int]] = 0, dilation=1, groups: int = 1,
                 bias: bool = True, device=None, dtype=None):
        super().__init__()
        cls = type(self).__name__
        _check_channels(in_channels, out_channels, groups, cls)
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.stride, self.dilation = _pair(kernel_size), _pair(stride), _pair(dilation)
        self.padding = _padding_arg(padding, self.stride, cls)
        kh, kw = self.kernel_size
        self.full_rank = min(in_channels // groups * kh, out_channels // groups * kw)
        if rank is None:
            rank = self.full_rank
        if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
            raise ValueError(f"{cls}: rank must be a positive int (or None for the full rank {self.full_rank}), "
                             f"but got rank={rank!r}")
        self.rank = rank
        self.reconstruction_error: Optional[float] = None
        factory = dict(device=device, dtype=dtype)
        self.weight_v = torch.nn.Parameter(torch.empty(rank * groups, in_channels // groups, kh, 1, **factory))
        self.weight_h = torch.nn.Parameter(torch.empty(out_channels, rank, 1, kw, **factory))
        if bias:
            self.bias = torch.nn.Parameter(torch.empty(out_channels, **factory))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # torch's Conv2d init (kaiming-uniform with a=sqrt(5), i.e. U(+-1/sqrt(fan_in))) per factor.
        init.kaiming_uniform_(self.weight_v, a=math.sqrt(5))
        init.kaiming_uniform_(self.weight_h, a=math.sqrt(5))
        if self.bias is not None:
            fan_in, _ = init._calculate_fan_in_and_fan_out(self.weight_h)
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            init.uniform_(self.bias, -bound, bound)

    def forward(self, input: Tensor) -> Tensor:
        return cF.spatially_separable_conv2d(input, self.weight_v, self.weight_h, self.bias, self.stride,
                                             self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, rank={self.rank}"
        s += f", stride={self.stride}"
        if self.padding != (0, 0):
            s += f", padding={self.padding!r}" if isinstance(self.padding, str) else f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s

    @classmethod
    def from_conv2d(cls, conv: torch.nn.Conv2d, rank: Optional[int] = None) -> "SpatiallySeparableConv2d":
        """The separable module closest to `conv` (a torch or convops Conv2d, padding_mode
        'zeros') with `rank` intermediate channels per group: truncated SVD of its weight (exact
        at rank=None, the full rank; ValueError outside [1, full]). The bias is copied; device and
        dtype are conv's; `.reconstruction_error` holds the relative Frobenius error of the
        kernel."""
        if not isinstance(conv, torch.nn.Conv2d):
            raise TypeError(f"{cls.__name__}.from_conv2d expects a torch.nn.Conv2d, got {type(conv).__name__}")
        if conv.padding_mode != "zeros":
            raise ValueError(f"{cls.__name__}.from_conv2d supports padding_mode='zeros' only, but got "
                             f"padding_mode={conv.padding_mode!r}")
        d = _decompose.decompose(conv.weight, rank, conv.groups)
        module = cls(conv.in_channels, conv.out_channels, conv.kernel_size, d.rank, conv.stride, conv.padding,
                     conv.dilation, conv.groups, conv.bias is not None, device=conv.weight.device,
                     dtype=conv.weight.dtype)
        with torch.no_grad():
            module.weight_v.copy_(d.weight_v)
            module.weight_h.copy_(d.weight_h)
            if conv.bias is not None:
                module.bias.copy_(conv.bias)
        module.reconstruction_error = d.error
        module.train(conv.training)
        return module


class DepthwiseSeparableConv2d(torch.nn.Module):
    """A depthwise conv (kernel_size, stride, padding, dilation, padding_mode; in_channels *
    depth_multiplier channels, no bias) then a 1x1 conv to out_channels (bias if bias=True), run by
    `functional.depthwise_separable_conv2d`. Equals
    `Sequential(Conv2d(C, C*m, k, s, p, d, groups=C, bias=False, padding_mode=...), Conv2d(C*m, out, 1, bias=bias))`
    with the same state_dict keys (`depthwise.weight`, `pointwise.weight`, `pointwise.bias`)
    and the same init. The two children are convops Conv2d modules holding the parameters."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1,
                 padding: Union[str, int, Tuple[int, int]] = 0, dilation=1, depth_multiplier: int = 1,
                 bias: bool = True, padding_mode: str = "zeros", device=None, dtype=None):
        super().__init__()
        if isinstance(depth_multiplier, bool) or not isinstance(depth_multiplier, int) or depth_multiplier <= 0:
            raise ValueError(f"{type(self).__name__}: depth_multiplier must be a positive int, but got "
                             f"depth_multiplier={depth_multiplier!r}")
        factory = dict(device=device, dtype=dtype)
        mid = in_channels * depth_multiplier
        self.depthwise = Conv2d(in_channels, mid, kernel_size, stride, padding, dilation, groups=in_channels,
                                bias=False, padding_mode=padding_mode, **factory)
        self.pointwise = Conv2d(mid, out_channels, 1, bias=bias, **factory)
        self.in_channels, self.out_channels, self.depth_multiplier = in_channels, out_channels, depth_multiplier

    def forward(self, input: Tensor) -> Tensor:
        dw, pw = self.depthwise, self.pointwise
        padding = dw.padding
        if dw.padding_mode != "zeros":
            input = F.pad(input, dw._reversed_padding_repeated_twice, mode=dw.padding_mode)
            padding = 0
        return cF.depthwise_separable_conv2d(input, dw.weight, pw.weight, None, pw.bias, dw.stride, padding,
                                             dw.dilation)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.depthwise.kernel_size}, "
                f"depth_multiplier={self.depth_multiplier}")
