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
    channels_last: bool = False  # 4-D tensors made channels_last (the input and its twins)

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
    # [depthwise / grouped] OPS
    "depthwise_separable_conv2d": (cF.depthwise_separable_conv2d, "conv2d(conv2d(x, dw, groups=C), pw)",
                                   lambda *a, **k: _two_torch_calls(*a, **k)),
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

def _depthwise(batch=8):
    """3x3 depthwise layers of MobileNetV2 (groups = channels), NCHW then channels_last."""
    layers = [(32, 112, 1), (96, 112, 2), (144, 56, 1), (192, 28, 1), (384, 14, 1), (960, 7, 1)]
    cases = []
    for channels_last in (False, True):
        for c, hw, stride in layers:
            out_hw = (hw - 1) // stride + 1
            name = f"dw3x3 {c}ch @{hw}" + (f" s2->{out_hw}" if stride > 1 else "") + (" CL" if channels_last else "")
            elems = batch * c * (hw * hw + out_hw * out_hw) + c * 9
            cases.append(Case("depthwise", name, "conv2d", (batch, c, hw, hw), (c, 1, 3, 3),
                              dict(stride=stride, padding=1, groups=c), bytes_moved=4 * elems,
                              channels_last=channels_last))
    return cases

# [separable] suites

def _separable(batch=8):
    """MobileNetV2 depthwise-separable blocks: dw3x3 (+bias) then pw1x1 (+bias), fused vs two torch calls."""
    cases = []
    for c, out, hw in [(144, 24, 56), (384, 64, 14)]:
        tensors = (("input", (batch, c, hw, hw), "randn"), ("depthwise_weight", (c, 1, 3, 3), "weight"),
                   ("pointwise_weight", (out, c, 1, 1), "weight"), ("depthwise_bias", (c,), "randn"),
                   ("pointwise_bias", (out,), "randn"))
        elems = batch * hw * hw * (c + out) + c * 9 + out * c
        cases.append(Case("separable", f"dw3x3+pw1x1 {c}->{out} @{hw}", "depthwise_separable_conv2d",
                          (batch, c, hw, hw), (c, 1, 3, 3), dict(padding=1), tensors=tensors,
                          bytes_moved=4 * elems))
    return cases


def _two_torch_calls(x, dw, pw, db=None, pb=None, stride=1, padding=0, dilation=1):
    return F.conv2d(F.conv2d(x, dw, db, stride, padding, dilation, x.shape[-3]), pw, pb)

# [deformable] suites

SUITES = {"dense": _dense, "transposed": _transposed}
# [depthwise / grouped] SUITES.update(...)
SUITES.update(depthwise=_depthwise, separable=_separable)
# [separable] SUITES.update(...)
# [deformable] SUITES.update(...)
