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

# [separable] suites

# [deformable] suites

def _deform_ours(input, offset, weight, bias, mask=None, **kw):
    return cF.deform_conv2d(input, offset, weight, bias, mask=mask, **kw)


def _deform_torchvision(input, offset, weight, bias, mask=None, **kw):
    from torchvision.ops import deform_conv2d
    return deform_conv2d(input, offset, weight, bias, mask=mask, **kw)


def _deform_dense(input, offset, weight, bias, mask=None, **kw):
    """The dense conv of the same shape (what a deformable layer costs on top of it)."""
    return F.conv2d(input, weight, bias, **kw)


def _deform(batch=8):
    def d(version, cin, cout, hw, offset_groups=1):
        mask = (("mask", (batch, offset_groups * 9, hw, hw), "uniform"),) if version == "v2" else ()
        name = f"{version} 3x3 {cin}->{cout} @{hw}" + (f" og{offset_groups}" if offset_groups > 1 else "")
        return Case("deform", name, "deform_conv2d", (batch, cin, hw, hw), (cout, cin, 3, 3),
                    dict(padding=(1, 1)),
                    tensors=(("input", (batch, cin, hw, hw), "randn"),
                             ("offset", (batch, 2 * offset_groups * 9, hw, hw), "randn*0.5"),
                             ("weight", (cout, cin, 3, 3), "weight"), ("bias", (cout,), "randn")) + mask)
    return [d(v, *shape) for shape in [(64, 64, 56), (256, 256, 14), (128, 128, 28, 4)] for v in ("v1", "v2")]


OPS["deform_conv2d"] = (_deform_ours, "torchvision.ops.deform_conv2d", _deform_torchvision,  # [deformable]
                        {"dense": _deform_dense})

SUITES = {"dense": _dense, "transposed": _transposed}
# [depthwise / grouped] SUITES.update(...)
# [separable] SUITES.update(...)
SUITES.update(deform=_deform)  # [deformable]
