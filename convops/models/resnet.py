"""ResNet-18/34/50, ResNeXt-50 32x4d and DCN-ResNet-50 on convops convolutions.

Module names, shapes and init follow torchvision.models.resnet (v1.5: the stride sits on the
3x3 conv of a bottleneck), so `model.load_state_dict(torchvision_model.state_dict())` loads
strictly and both give the same outputs. `conv_type` picks the family of every 3x3 conv in the
residual blocks ("dense", "separable", "deformable", "modulated"); the 7x7 stem and the 1x1
convs stay dense. The dense/deformable/modulated convs keep torchvision's `.weight` key; the
deformable ones add their (zero-initialised) offset predictors, so load a torchvision
state_dict into them with strict=False (see `load_torchvision_weights`).
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Type, Union

import torch
from torch import Tensor, nn

from .. import nn as cnn
from ._convs import check_conv_type, conv_factory, init_weights

ConvFactory = Callable[..., nn.Module]


def _conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Module:
    return cnn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None,
                 groups: int = 1, base_width: int = 64, dilation: int = 1,
                 norm_layer: Optional[Callable[..., nn.Module]] = None, conv: ConvFactory = None):
        super().__init__()
        norm_layer = norm_layer or nn.BatchNorm2d
        if groups != 1 or base_width != 64:
            raise ValueError("BasicBlock only supports groups=1 and base_width=64")
        if dilation > 1:
            raise NotImplementedError("Dilation > 1 not supported in BasicBlock")
        self.conv1 = conv(inplanes, planes, 3, stride=stride, padding=1)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv(planes, planes, 3, padding=1)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None,
                 groups: int = 1, base_width: int = 64, dilation: int = 1,
                 norm_layer: Optional[Callable[..., nn.Module]] = None, conv: ConvFactory = None):
        super().__init__()
        norm_layer = norm_layer or nn.BatchNorm2d
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = _conv1x1(inplanes, width)
        self.bn1 = norm_layer(width)
        self.conv2 = conv(width, width, 3, stride=stride, padding=dilation, dilation=dilation, groups=groups)
        self.bn2 = norm_layer(width)
        self.conv3 = _conv1x1(width, planes * self.expansion)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision's ResNet with two additions: `in_channels` (default 3) and `conv_type`, a
    family name for every 3x3 block conv or a sequence of four, one per stage (layer1..layer4)."""

    def __init__(self, block: Type[Union[BasicBlock, Bottleneck]], layers: List[int], num_classes: int = 1000,
                 zero_init_residual: bool = False, groups: int = 1, width_per_group: int = 64,
                 replace_stride_with_dilation: Optional[List[bool]] = None,
                 norm_layer: Optional[Callable[..., nn.Module]] = None, in_channels: int = 3,
                 conv_type: Union[str, Sequence[str]] = "dense"):
        super().__init__()
        norm_layer = norm_layer or nn.BatchNorm2d
        self._norm_layer = norm_layer
        stage_types = [conv_type] * 4 if isinstance(conv_type, str) else list(conv_type)
        if len(stage_types) != 4:
            raise ValueError(f"conv_type must be one family name or 4 (one per stage), got {conv_type!r}")
        self.conv_types = tuple(check_conv_type(t) for t in stage_types)
        self.inplanes = 64
        self.dilation = 1
        replace_stride_with_dilation = replace_stride_with_dilation or [False, False, False]
        if len(replace_stride_with_dilation) != 3:
            raise ValueError("replace_stride_with_dilation should be None or a 3-element tuple, "
                             f"got {replace_stride_with_dilation}")
        self.groups = groups
        self.base_width = width_per_group
        self.conv1 = cnn.Conv2d(in_channels, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0], conv_type=self.conv_types[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2, dilate=replace_stride_with_dilation[0],
                                       conv_type=self.conv_types[1])
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2, dilate=replace_stride_with_dilation[1],
                                       conv_type=self.conv_types[2])
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2, dilate=replace_stride_with_dilation[2],
                                       conv_type=self.conv_types[3])
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)

        init_weights(self)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck) and m.bn3.weight is not None:
                    nn.init.constant_(m.bn3.weight, 0)
                elif isinstance(m, BasicBlock) and m.bn2.weight is not None:
                    nn.init.constant_(m.bn2.weight, 0)

    def _make_layer(self, block, planes: int, blocks: int, stride: int = 1, dilate: bool = False,
                    conv_type: str = "dense") -> nn.Sequential:
        norm_layer = self._norm_layer
        conv = conv_factory(conv_type)
        downsample = None
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(_conv1x1(self.inplanes, planes * block.expansion, stride),
                                       norm_layer(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample, self.groups, self.base_width,
                        previous_dilation, norm_layer, conv=conv)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes, groups=self.groups, base_width=self.base_width,
                                dilation=self.dilation, norm_layer=norm_layer, conv=conv))
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(**kwargs) -> ResNet:
    """ResNet-18 (torchvision-compatible state_dict); kwargs as ResNet (num_classes, conv_type, ...)."""
    return ResNet(BasicBlock, [2, 2, 2, 2], **kwargs)


def resnet34(**kwargs) -> ResNet:
    """ResNet-34 (torchvision-compatible state_dict)."""
    return ResNet(BasicBlock, [3, 4, 6, 3], **kwargs)


def resnet50(**kwargs) -> ResNet:
    """ResNet-50 v1.5 (torchvision-compatible state_dict)."""
    return ResNet(Bottleneck, [3, 4, 6, 3], **kwargs)


def resnext50_32x4d(**kwargs) -> ResNet:
    """ResNeXt-50 32x4d: grouped (32 groups) 3x3 convs (torchvision-compatible state_dict)."""
    return ResNet(Bottleneck, [3, 4, 6, 3], groups=32, width_per_group=4, **kwargs)


def dcn_resnet50(dcn_stages: Sequence[int] = (3, 4), deform_type: str = "modulated", **kwargs) -> ResNet:
    """ResNet-50 whose 3x3 convs in the given stages (layer3 and layer4 by default; DCNv2's own
    setting, conv3-conv5, is dcn_stages=(2, 3, 4)) are modulated deformable convs
    (ModulatedDeformConv2dPack: offsets and sigmoid mask predicted by a zero-initialised conv, so
    at init the model equals resnet50 with the same weights). deform_type="deformable" gives DCNv1."""
    if "conv_type" in kwargs:
        raise TypeError("dcn_resnet50 picks its conv types itself; use dcn_stages / deform_type")
    if not set(dcn_stages) <= {1, 2, 3, 4}:
        raise ValueError(f"dcn_stages must be stage numbers among 1..4 (layer1..layer4), got {dcn_stages}")
    conv_type = [deform_type if stage in dcn_stages else "dense" for stage in (1, 2, 3, 4)]
    return ResNet(Bottleneck, [3, 4, 6, 3], conv_type=conv_type, **kwargs)


def load_torchvision_weights(model: nn.Module, state_dict: dict) -> List[str]:
    """Loads a torchvision state_dict into a zoo model whose convs may carry extra parameters
    (deformable offset/mask predictors). Every torchvision key must be used; returns the model's
    keys the state_dict did not provide (those extra parameters, left at their init)."""
    result = model.load_state_dict(state_dict, strict=False)
    if result.unexpected_keys:
        raise RuntimeError(f"keys not in the model: {result.unexpected_keys}")
    return list(result.missing_keys)
