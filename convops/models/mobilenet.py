"""MobileNetV2 (Sandler et al., 2018) on convops convolutions, torchvision's module names.

Each inverted residual is a depthwise-separable conv with an expansion in front: 1x1 expand,
3x3 depthwise (groups = channels, convops' depthwise kernel), 1x1 linear projection, with
BatchNorm and ReLU6 between them as torchvision has them (so its state_dict loads strictly;
the fused `convops.nn.DepthwiseSeparableConv2d` has no norm between its two convs and so
cannot hold these weights). `conv_type` picks the family of the depthwise 3x3 convs.
"""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor, nn

from .. import nn as cnn
from ._convs import conv_factory, init_weights


def _make_divisible(v: float, divisor: int, min_value: Optional[int] = None) -> int:
    """Channel counts rounded to a multiple of `divisor`, never below 90% of v (as torchvision)."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class ConvBNReLU6(nn.Sequential):
    """conv, BatchNorm, ReLU6 as indices 0, 1, 2 (torchvision's Conv2dNormActivation layout)."""

    def __init__(self, in_planes: int, out_planes: int, kernel_size: int = 3, stride: int = 1,
                 groups: int = 1, conv=None):
        conv = conv or cnn.Conv2d
        super().__init__(
            conv(in_planes, out_planes, kernel_size, stride=stride, padding=(kernel_size - 1) // 2,
                 groups=groups, bias=False),
            nn.BatchNorm2d(out_planes),
            nn.ReLU6(inplace=True),
        )
        self.out_channels = out_planes


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int, conv=None):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride should be 1 or 2 instead of {stride}")
        self.stride = stride
        hidden_dim = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: List[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU6(inp, hidden_dim, kernel_size=1))
        layers += [
            ConvBNReLU6(hidden_dim, hidden_dim, stride=stride, groups=hidden_dim, conv=conv),
            cnn.Conv2d(hidden_dim, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup
        self._is_cn = stride > 1

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0,
                 inverted_residual_setting: Optional[List[List[int]]] = None, round_nearest: int = 8,
                 dropout: float = 0.2, in_channels: int = 3, conv_type: str = "dense"):
        super().__init__()
        conv = conv_factory(conv_type)
        input_channel, last_channel = 32, 1280
        setting = inverted_residual_setting or [
            # expansion t, channels c, repeats n, first stride s
            [1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2],
            [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1],
        ]
        if len(setting) == 0 or len(setting[0]) != 4:
            raise ValueError(f"inverted_residual_setting should be non-empty or a 4-element list, got {setting}")
        input_channel = _make_divisible(input_channel * width_mult, round_nearest)
        self.last_channel = _make_divisible(last_channel * max(1.0, width_mult), round_nearest)
        features: List[nn.Module] = [ConvBNReLU6(in_channels, input_channel, stride=2)]
        for t, c, n, s in setting:
            output_channel = _make_divisible(c * width_mult, round_nearest)
            for i in range(n):
                features.append(InvertedResidual(input_channel, output_channel, s if i == 0 else 1, t, conv=conv))
                input_channel = output_channel
        features.append(ConvBNReLU6(input_channel, self.last_channel, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(self.last_channel, num_classes))
        init_weights(self, linear_std=0.01)

    def forward(self, x: Tensor) -> Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


def mobilenet_v2(**kwargs) -> MobileNetV2:
    """MobileNetV2 (torchvision-compatible state_dict); kwargs as MobileNetV2."""
    return MobileNetV2(**kwargs)
