"""The conv modules the zoo is built from, chosen by `conv_type=`, and the shared weight init."""
from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn

from .. import nn as cnn
from ..nn.conv import _FromTorch

# conv_type -> (convops.nn attribute, what it is). The non-dense families are looked up lazily:
# a model with conv_type="dense" must not depend on them.
CONV_TYPES = {
    "dense": ("Conv2d", "dense convolution"),
    "separable": ("SpatiallySeparableConv2d", "spatially separable (kh x 1 then 1 x kw, full rank)"),
    "deformable": ("DeformConv2dPack", "deformable convolution v1 (learned offsets)"),
    "modulated": ("ModulatedDeformConv2dPack", "modulated deformable convolution v2 (offsets + mask)"),
}


def check_conv_type(conv_type: str) -> str:
    if conv_type not in CONV_TYPES:
        raise ValueError(f"unknown conv_type {conv_type!r}; expected one of {', '.join(CONV_TYPES)}")
    return conv_type


def conv_module(conv_type: str) -> type:
    """The convops.nn class behind `conv_type` (ImportError if this convops lacks it)."""
    name = CONV_TYPES[check_conv_type(conv_type)][0]
    module = getattr(cnn, name, None)
    if module is None:
        raise ImportError(f"conv_type={conv_type!r} needs convops.nn.{name}, which this convops "
                          f"build does not provide")
    return module


def make_conv(conv_type: str, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
              padding: int = 0, dilation: int = 1, groups: int = 1, bias: bool = False) -> nn.Module:
    """A k x k convolution of the requested family; every family takes the same arguments and
    keeps its main kernel as `.weight` where it has one (dense, deformable, modulated), so the
    torchvision state_dict keys of those convs are unchanged."""
    cls = conv_module(conv_type)
    if conv_type == "dense" or kernel_size == 1:
        # A 1x1 conv has nothing to separate or deform: always dense.
        return cnn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                          dilation=dilation, groups=groups, bias=bias)
    return cls(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
               dilation=dilation, groups=groups, bias=bias)


def conv_factory(conv_type: str) -> Callable[..., nn.Module]:
    """make_conv bound to conv_type, after checking the family is available (fail at build time)."""
    conv_module(conv_type)
    return lambda *args, **kwargs: make_conv(conv_type, *args, **kwargs)


def init_weights(model: nn.Module, linear_std: float | None = None) -> None:
    """torchvision's init: kaiming-normal (fan_out, relu) convs, unit/zero norms, and either
    torch's default Linear init (linear_std=None) or normal(0, linear_std) with zero bias.
    A conv module's own children (the zero-initialised offset/mask predictor of a deformable
    conv) keep their init, so such a model still equals its dense twin at init."""
    skip = set()
    for m in model.modules():
        if id(m) in skip:
            continue
        if isinstance(m, nn.Conv2d) or _is_conv_family(m):
            weight = getattr(m, "weight", None)
            if isinstance(weight, torch.Tensor) and weight.dim() == 4:
                nn.init.kaiming_normal_(weight, mode="fan_out", nonlinearity="relu")
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
            skip.update(id(child) for child in m.modules() if child is not m)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear_std is not None:
            nn.init.normal_(m.weight, 0, linear_std)
            nn.init.zeros_(m.bias)


def _is_conv_family(module: nn.Module) -> bool:
    return any(getattr(cnn, name, None) is type(module) for name, _ in CONV_TYPES.values())


def torch_twin(model: nn.Module) -> nn.Module:
    """A deep copy of `model` whose convops conv modules are torch's own (same weights): the
    reference for --compare-torch. Only dense convops modules have a torch twin."""
    twin = copy.deepcopy(model)
    for name, m in twin.named_modules():
        if isinstance(m, _FromTorch):
            # The convops modules only override forward: the torch base class is the same object.
            m.__class__ = m._torch_base
        elif _is_conv_family(m):
            raise ValueError(f"module {name!r} ({type(m).__name__}) has no torch equivalent; "
                             f"a torch twin needs conv_type='dense'")
    return twin
