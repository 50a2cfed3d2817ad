"""Benchmark suites. Each case is a layer from a real network, with the reference it must beat."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn.functional as F

from .. import functional as cF


@dataclass(frozen=True)
class Case:
    """One benchmark row. The op functions are called as fn(*tensors, **kwargs) with the tensors
    made from `tensors` (default: input, weight, bias). Each spec is (name, shape, init) with init
    "randn" (N(0,1)), "weight" (N(0,1)*0.05), "uniform" (U(0,1), e.g. a mask) or "none" (None)."""
    suite: str
    name: str
    op: str                      # key of OPS
    input_shape: tuple
    weight_shape: tuple
    kwargs: dict = field(default_factory=dict)
    tensors: tuple = ()          # optional explicit (name, shape, init) specs replacing the default
    bytes_moved: int = 0         # optional: minimal DRAM bytes of the fwd pass, for a GB/s column

    def tensor_specs(self) -> tuple:
        if self.tensors:
            return self.tensors
        bias_len = self.weight_shape[1] * self.kwargs.get("groups", 1) if self.op.startswith("conv_transpose") \
            else self.weight_shape[0]
        return (("input", self.input_shape, "randn"), ("weight", self.weight_shape, "weight"),
                ("bias", (bias_len,), "randn"))

    @property
    def shapes(self) -> dict:
        return {**{name: list(shape) for name, shape, init in self.tensor_specs() if init != "none"},
                **self.kwargs}


# op name -> (convops function, reference name, reference function); oracles live here only.
OPS = {
    "conv2d": (cF.conv2d, "torch.nn.functional.conv2d", F.conv2d),
    "conv1d": (cF.conv1d, "torch.nn.functional.conv1d", F.conv1d),
    "conv_transpose2d": (cF.conv_transpose2d, "torch.nn.functional.conv_transpose2d", F.conv_transpose2d),
}


def _dense(batch=8):
    c = lambda name, cin, cout, hw, k, **kw: Case(  # noqa: E731
        "dense", name, "conv2d", (batch, cin, hw, hw), (cout, cin, k, k), kw)
    return [
        c("resnet 3x3 64->64 @56", 64, 64, 56, 3, padding=1),
        c("resnet 3x3 128->128 @28", 128, 128, 28, 3, padding=1),
        c("resnet 3x3 256->256 @14", 256, 256, 14, 3, padding=1),
        c("resnet 3x3 512->512 @7", 512, 512, 7, 3, padding=1),
        c("stem 7x7 s2 3->64 @224", 3, 64, 224, 7, stride=2, padding=3),
        c("1x1 s2 64->128 @56", 64, 128, 56, 1, stride=2),
        c("dilated 3x3 d2 256->256 @28", 256, 256, 28, 3, padding=2, dilation=2),
        Case("dense", "conv1d k3 256->256 L=4096", "conv1d", (batch, 256, 4096), (256, 256, 3), {"padding": 1}),
    ]


def _transposed(batch=16):
    t = lambda name, cin, cout, hw, k, **kw: Case(  # noqa: E731
        "transposed", name, "conv_transpose2d", (batch, cin, hw, hw), (cin, cout, k, k), kw)
    return [
        t("4x4 s2 p1 256->128 @16->32", 256, 128, 16, 4, stride=2, padding=1),
        t("4x4 s2 p1 128->64 @32->64", 128, 64, 32, 4, stride=2, padding=1),
        t("3x3 s2 p1 op1 64->32 @56->112", 64, 32, 56, 3, stride=2, padding=1, output_padding=1),
        t("2x2 s2 128->64 @28->56", 128, 64, 28, 2, stride=2),
    ]


# [depthwise / grouped] suites

def _grouped(batch=8):
    """ResNeXt-50 32x4d 3x3 layers: 4 and 8 channels per group, where oneDNN is weakest."""
    def c(name, ch, hw, groups=32, **kw):
        return Case("grouped", name, "conv2d", (batch, ch, hw, hw), (ch, ch // groups, 3, 3),
                    dict(padding=1, groups=groups, **kw))
    return [
        c("resnext 3x3 128->128 g32 @56", 128, 56),
        c("resnext 3x3 256->256 g32 @28", 256, 28),
        c("resnext 3x3 s2 256->256 g32 @56", 256, 56, stride=2),
    ]


# [separable] suites

# [deformable] suites

SUITES = {"dense": _dense, "transposed": _transposed}
# [depthwise / grouped] SUITES.update(...)
SUITES.update(grouped=_grouped)
# [separable] SUITES.update(...)
# [deformable] SUITES.update(...)
