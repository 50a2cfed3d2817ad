"""Benchmark suites. Each case is a layer from a real network, with the reference it must beat."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .. import decompose
from .. import functional as cF


@dataclass(frozen=True)
class Approximation:
    """convops computes an approximation of the reference: `fn(*prepare(*tensors), **kwargs)`,
    where `prepare` (untimed; e.g. the SVD of a dense weight) maps the case's tensors to fn's
    operands and must pass the input (tensors[0]) through unchanged. The runner reports the
    error as information, not as a parity failure, compares only the output and the input's
    gradient, and also times the exact convops op (OPS[op]) for a second ratio."""
    fn: Callable
    prepare: Callable


@dataclass(frozen=True)
class Case:
    """One benchmark row. The op functions are called as fn(*tensors, **kwargs) with the tensors
    made from `tensors` (default: input, weight, bias). Each spec is (name, shape, init) with init
    "randn" (N(0,1)), "weight" (N(0,1)*0.05), "uniform" (U(0,1), e.g. a mask), "none" (None) or a
    callable (shape, generator) -> float32 tensor."""
    suite: str
    name: str
    op: str                      # key of OPS
    input_shape: tuple
    weight_shape: tuple
    kwargs: dict = field(default_factory=dict)
    tensors: tuple = ()          # optional explicit (name, shape, init) specs replacing the default
    bytes_moved: int = 0         # optional: minimal DRAM bytes of the fwd pass, for a GB/s column
    approximate: Optional[Approximation] = None  # convops runs an approximation (see Approximation)
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

def _torch_spatially_separable(x, weight_v, weight_h, bias=None, stride=1, padding=0, dilation=1, groups=1):
    (sh, sw), (ph, pw), (dh, dw) = ((v, v) if isinstance(v, int) else v for v in (stride, padding, dilation))
    mid = F.conv2d(x, weight_v, None, (sh, 1), (ph, 0), (dh, 1), groups)
    return F.conv2d(mid, weight_h, bias, (1, sw), (0, pw), (1, dw), groups)


OPS["spatially_separable_conv2d"] = (cF.spatially_separable_conv2d, "F.conv2d(F.conv2d(x, weight_v), weight_h)",
                                     _torch_spatially_separable)


def _from_dense(rank):
    """Approximation of a dense conv2d(x, w, b) by its rank-`rank` separable pair."""
    def prepare(x, w, b):
        return (x, *decompose.spatially_separable(w, rank), b)
    return Approximation(cF.spatially_separable_conv2d, prepare)


def _decaying_spectrum(shape, generator):
    """A (Cout, Cin, kh, kw) kernel whose (Cin*kh) x (Cout*kw) matrix has singular values
    exp(-i/32), like trained kernels (random ones have a flat spectrum), scaled to std 0.05."""
    cout, cin, kh, kw = shape
    rows, cols = cin * kh, cout * kw
    u, _ = torch.linalg.qr(torch.randn(rows, rows, generator=generator, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(cols, cols, generator=generator, dtype=torch.float64))
    n = min(rows, cols)
    a = (u[:, :n] * torch.exp(-torch.arange(n, dtype=torch.float64) / 32)) @ v[:, :n].T
    a *= 0.05 * math.sqrt(a.numel()) / a.norm()
    return a.reshape(cin, kh, cout, kw).permute(2, 0, 1, 3).contiguous().float()


def _separable_spatial(batch=8):
    """3x3 256->256 @28 as its rank-64 / rank-128 separable pair (from the SVD of the dense weight)
    against the dense torch conv (ratio) and the dense convops conv (ratio_vs_convops)."""
    x, w = (batch, 256, 28, 28), (256, 256, 3, 3)
    dense = lambda name, rank, init="weight": Case(  # noqa: E731
        "separable", name, "conv2d", x, w, dict(padding=1),
        tensors=(("input", x, "randn"), ("weight", w, init), ("bias", (256,), "randn")),
        approximate=_from_dense(rank))
    return [
        dense("3x3 256->256 @28 sep rank 64", 64),
        dense("3x3 256->256 @28 sep rank 128", 128),
        dense("3x3 256->256 @28 sep rank 64 decaying", 64, _decaying_spectrum),
        Case("separable", "3x1+1x3 256->128->256 @28 (exact)", "spatially_separable_conv2d", x, (128, 256, 3, 1),
             dict(padding=1), tensors=(("input", x, "randn"), ("weight_v", (128, 256, 3, 1), "weight"),
                                       ("weight_h", (256, 128, 1, 3), "weight"), ("bias", (256,), "randn"))),
    ]


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
SUITES.update(depthwise=_depthwise, grouped=_grouped)
# [separable] SUITES.update(...)
SUITES["separable"] = lambda batch=8: _separable(batch) + _separable_spatial(batch)
SUITES.update(deform=_deform)  # [deformable]
