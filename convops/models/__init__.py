"""Model zoo built from convops conv modules.

    model = convops.models.get_model("resnet18", num_classes=10, conv_type="separable")
    convops.models.list_models()   # ['dcn_resnet50', 'lenet5', 'mobilenet_v2', ...]

ResNets, ResNeXt and MobileNetV2 use torchvision's module names: a torchvision state_dict loads
strictly and gives the same outputs. `conv_type` ("dense", "separable", "deformable",
"modulated") picks the family of the spatial (k > 1, non-stem) convs.
"""
from __future__ import annotations

from typing import Callable, Dict, List

from torch import nn

from ._convs import CONV_TYPES, torch_twin
from .lenet import LeNet5, lenet5
from .mobilenet import MobileNetV2, mobilenet_v2
from .resnet import (ResNet, dcn_resnet50, load_torchvision_weights, resnet18, resnet34, resnet50,
                     resnext50_32x4d)

_BUILDERS: Dict[str, Callable[..., nn.Module]] = {
    "lenet5": lenet5,
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "resnext50_32x4d": resnext50_32x4d,
    "mobilenet_v2": mobilenet_v2,
    "dcn_resnet50": dcn_resnet50,
}


def list_models() -> List[str]:
    """Names accepted by get_model, sorted."""
    return sorted(_BUILDERS)


def get_model(name: str, **kwargs) -> nn.Module:
    """Builds the named model; kwargs go to its builder (num_classes, in_channels, conv_type, ...)."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    return _BUILDERS[name](**kwargs)


def get_model_builder(name: str) -> Callable[..., nn.Module]:
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    return _BUILDERS[name]


__all__ = ["list_models", "get_model", "get_model_builder", "CONV_TYPES", "torch_twin",
           "load_torchvision_weights", "LeNet5", "ResNet", "MobileNetV2", "lenet5", "resnet18",
           "resnet34", "resnet50", "resnext50_32x4d", "mobilenet_v2", "dcn_resnet50"]
