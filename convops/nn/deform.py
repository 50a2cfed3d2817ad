"""Deformable convolution modules.

- DeformConv2d: torchvision.ops.DeformConv2d's twin (constructor, init, parameters,
  state_dict keys, repr, forward(input, offset, mask=None)); torchvision state_dicts load strictly.
- DeformConv2dPack / ModulatedDeformConv2dPack: self-contained layers (as mmcv's DCN / DCNv2)
  predicting their offsets (and mask) from the input with a zero-initialised conv, so at
  initialisation they compute exactly the plain convolution with their weight.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor
from torch.nn import init
from torch.nn.modules.utils import _pair

from .. import functional as cF
from .conv import Conv2d


class DeformConv2d(torch.nn.Module):
    """See convops.functional.deform_conv2d (torchvision.ops.DeformConv2d's twin)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True):
        super().__init__()
        if in_channels % groups != 0:
            raise ValueError("in_channels must be divisible by groups")
        if out_channels % groups != 0:
            raise ValueError("out_channels must be divisible by groups")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.dilation = _pair(dilation)
        self.groups = groups
        self.weight = torch.nn.Parameter(
            torch.empty(out_channels, in_channels // groups, self.kernel_size[0], self.kernel_size[1]))
        if bias:
            self.bias = torch.nn.Parameter(torch.empty(out_channels))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in, _ = init._calculate_fan_in_and_fan_out(self.weight)
            bound = 1 / math.sqrt(fan_in)
            init.uniform_(self.bias, -bound, bound)

    def forward(self, input: Tensor, offset: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        return cF.deform_conv2d(input, offset, self.weight, self.bias, stride=self.stride, padding=self.padding,
                                dilation=self.dilation, mask=mask)

    def __repr__(self) -> str:
        s = f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, " \
            f"stride={self.stride}"
        s += f", padding={self.padding}" if self.padding != (0, 0) else ""
        s += f", dilation={self.dilation}" if self.dilation != (1, 1) else ""
        s += f", groups={self.groups}" if self.groups != 1 else ""
        s += ", bias=False" if self.bias is None else ""
        return s + ")"


class _PackBase(DeformConv2d):
    """A DeformConv2d with its own zero-initialised offset predictor `conv_offset` (a conv of the
    same kernel, stride, padding and dilation, so its output has the deformable conv's size)."""

    _maps_per_tap = 2  # predicted channels per (deform group, tap)

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, deform_groups: int = 1, bias: bool = True):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        if deform_groups <= 0 or in_channels % deform_groups != 0:
            raise ValueError(f"in_channels ({in_channels}) must be divisible by deform_groups ({deform_groups})")
        self.deform_groups = deform_groups
        kh, kw = self.kernel_size
        self.conv_offset = Conv2d(in_channels, deform_groups * self._maps_per_tap * kh * kw, self.kernel_size,
                                  stride=self.stride, padding=self.padding, dilation=self.dilation, bias=True)
        self.init_offset()

    def init_offset(self) -> None:
        """Zero offsets (and mask 1): the layer starts as the plain convolution."""
        torch.nn.init.zeros_(self.conv_offset.weight)
        torch.nn.init.zeros_(self.conv_offset.bias)

    def _offset_channels(self) -> int:
        return 2 * self.deform_groups * self.kernel_size[0] * self.kernel_size[1]

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", deform_groups={self.deform_groups})"


class DeformConv2dPack(_PackBase):
    """Deformable conv v1 (mmcv's DeformConv2dPack): offsets = conv_offset(x)."""

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        return super().forward(x, self.conv_offset(x))


class ModulatedDeformConv2dPack(_PackBase):
    """Deformable conv v2 (mmcv's ModulatedDeformConv2dPack): conv_offset predicts the offsets
    and the mask logits m; mask = 2 * sigmoid(m). mmcv uses sigmoid(m), which is 0.5 at a zero
    initialisation and so halves the output; the factor 2 makes the initial mask exactly 1, so
    the layer starts as the plain convolution (a drop-in replacement keeps a trained network's
    outputs), with the same (0, 2)-bounded, smooth modulation around it."""

    _maps_per_tap = 3

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        out = self.conv_offset(x)
        split = self._offset_channels()
        offset, mask = out[:, :split], 2.0 * torch.sigmoid(out[:, split:])
        return super().forward(x, offset, mask)
