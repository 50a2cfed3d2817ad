"""convops.nn.SpatiallySeparableConv2d / DepthwiseSeparableConv2d against torch compositions,
from_conv2d, state_dict, repr, padding modes, and convert(separable_rank=..., report=...)."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import convops
from convops import decompose as D
from convops import nn as cnn

from conftest import assert_close, compare_with_reference, make


def _torch_separable(m, x, weight_v, weight_h, bias):
    """The module's computation with torch's convs (the oracle)."""
    (sh, sw), (dh, dw) = m.stride, m.dilation
    if isinstance(m.padding, str):  # as one dense kernel, which F.conv2d pads the same way
        dense = torch.einsum("gmcp,gomq->gocpq", weight_v[..., 0].reshape(m.groups, -1, *weight_v.shape[1:3]),
                             weight_h[:, :, 0].reshape(m.groups, m.out_channels // m.groups, *weight_h.shape[1:2],
                                                       m.kernel_size[1]))
        return F.conv2d(x, dense.reshape(m.out_channels, -1, *m.kernel_size), bias, m.stride, m.padding,
                        m.dilation, m.groups)
    ph, pw = m.padding
    mid = F.conv2d(x, weight_v, None, (sh, 1), (ph, 0), (dh, 1), m.groups)
    return F.conv2d(mid, weight_h, bias, (1, sw), (0, pw), (1, dw), m.groups)


def _called_with(module, names):
    """fn(x, *params): the module's forward with its parameters `names` replaced."""
    return lambda x, *params: torch.func.functional_call(
        module, {n: p for n, p in zip(names, params) if p is not None}, (x,))


# ----------------------------------------------------------------------------- SpatiallySeparableConv2d

@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")  # torch's oracle
@pytest.mark.parametrize("args,kwargs", [
    ((4, 6, 3), dict(padding=1)),
    ((4, 6, (3, 5)), dict(rank=2, stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2)),
    ((3, 5, 5), dict(rank=1, bias=False, stride=2)),
    ((4, 4, (2, 4)), dict(padding="same", groups=4)),
])
def test_spatially_separable_module_matches_torch(args, kwargs):
    torch.manual_seed(0)
    m = cnn.SpatiallySeparableConv2d(*args, **kwargs, dtype=torch.float64)
    x = make((2, args[0], 11, 10), torch.float64, requires_grad=True)
    params = [x, m.weight_v, m.weight_h, m.bias]
    compare_with_reference(_called_with(m, ["weight_v", "weight_h", "bias"]),
                           lambda *t: _torch_separable(m, *t), params, torch.float64)
    # unbatched
    assert_close(m(x[0]), m(x[:1])[0])


def test_spatially_separable_default_rank_and_init():
    torch.manual_seed(0)
    m = cnn.SpatiallySeparableConv2d(16, 8, (3, 5), groups=2)
    assert m.rank == m.full_rank == min(8 * 3, 4 * 5) == 20
    assert m.weight_v.shape == (40, 8, 3, 1) and m.weight_h.shape == (8, 20, 1, 5) and m.bias.shape == (8,)
    assert m.reconstruction_error is None
    # torch's Conv2d init per factor: U(+-1/sqrt(fan_in)), which the values must fill
    for w, fan_in in [(m.weight_v, 8 * 3), (m.weight_h, 20 * 5), (m.bias, 20 * 5)]:
        bound = 1 / math.sqrt(fan_in)
        assert w.abs().max() <= bound and w.abs().max() > 0.8 * bound
    assert abs(m.weight_v.std().item() - 1 / math.sqrt(3 * 8 * 3)) < 0.02  # uniform: bound/sqrt(3)


def test_spatially_separable_state_dict_round_trip_and_repr():
    torch.manual_seed(0)
    m = cnn.SpatiallySeparableConv2d(4, 6, 3, rank=3, stride=2, padding=1, groups=2)
    assert list(m.state_dict()) == ["weight_v", "weight_h", "bias"]
    fresh = cnn.SpatiallySeparableConv2d(4, 6, 3, rank=3, stride=2, padding=1, groups=2)
    fresh.load_state_dict(m.state_dict())
    x = torch.randn(2, 4, 9, 9)
    assert torch.equal(fresh(x), m(x))
    assert repr(m) == ("SpatiallySeparableConv2d(4, 6, kernel_size=(3, 3), rank=3, stride=(2, 2), padding=(1, 1), "
                       "groups=2)")
    assert "bias=False" in repr(cnn.SpatiallySeparableConv2d(4, 6, 3, bias=False))
    with pytest.raises(RuntimeError, match="size mismatch for weight_v"):
        cnn.SpatiallySeparableConv2d(4, 6, 3, rank=2, stride=2, padding=1, groups=2).load_state_dict(m.state_dict())


@pytest.mark.parametrize("kwargs,regex", [
    (dict(in_channels=5, groups=2), "in_channels must be divisible by groups"),
    (dict(out_channels=5, groups=2), "out_channels must be divisible by groups"),
    (dict(rank=0), r"rank must be a positive int \(or None for the full rank 12\), but got rank=0"),
    (dict(rank=1.5), "rank must be a positive int"),
    (dict(padding="full"), "invalid padding string 'full'"),
    (dict(padding="same", stride=2), "padding='same' is not supported for strided convolutions"),
])
def test_spatially_separable_constructor_errors(kwargs, regex):
    args = dict(in_channels=4, out_channels=4, kernel_size=3)
    args.update(kwargs)
    with pytest.raises(ValueError, match=regex):
        cnn.SpatiallySeparableConv2d(**args)


@pytest.mark.parametrize("conv_type", [nn.Conv2d, cnn.Conv2d])
@pytest.mark.parametrize("kwargs", [dict(padding=1), dict(stride=(2, 1), padding=(2, 1), dilation=(1, 2), groups=2),
                                    dict(padding="same", bias=False), dict(padding="valid", stride=2)])
def test_from_conv2d_full_rank_equals_the_conv(conv_type, kwargs):
    torch.manual_seed(0)
    conv = conv_type(4, 6, (5, 3), **kwargs).double()
    m = cnn.SpatiallySeparableConv2d.from_conv2d(conv)
    assert m.rank == D.full_rank(conv.weight, conv.groups)
    assert m.reconstruction_error < 1e-10
    x = torch.randn(2, 4, 11, 9, dtype=torch.float64)
    out, expected = m(x), conv(x)
    assert ((out - expected).norm() / expected.norm()).item() < 1e-10
    if conv.bias is not None:
        assert torch.equal(m.bias, conv.bias) and m.bias.data_ptr() != conv.bias.data_ptr()
    else:
        assert m.bias is None


def test_from_conv2d_low_rank_keeps_device_dtype_and_reports_error():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, 3, padding=1)
    m = cnn.SpatiallySeparableConv2d.from_conv2d(conv, rank=4)
    assert m.weight_v.dtype == torch.float32 and m.weight_v.device == conv.weight.device
    assert m.rank == 4 and m.weight_v.shape == (4, 8, 3, 1)
    assert m.reconstruction_error == pytest.approx(D.reconstruction_error(conv.weight, 4), rel=1e-9)
    # the output error is of the order of the kernel error (same operator norm argument)
    x = torch.randn(2, 8, 12, 12)
    expected = conv(x) - conv.bias.view(1, -1, 1, 1)
    got = m(x) - m.bias.view(1, -1, 1, 1)
    rel = ((got - expected).norm() / expected.norm()).item()
    assert 0.1 * m.reconstruction_error < rel < 3 * m.reconstruction_error
    assert m.weight_v.requires_grad and m.training == conv.training


def test_from_conv2d_rejects():
    with pytest.raises(ValueError, match="padding_mode='zeros' only, but got padding_mode='reflect'"):
        cnn.SpatiallySeparableConv2d.from_conv2d(nn.Conv2d(3, 3, 3, padding=1, padding_mode="reflect"))
    with pytest.raises(TypeError, match="expects a torch.nn.Conv2d, got Conv1d"):
        cnn.SpatiallySeparableConv2d.from_conv2d(nn.Conv1d(3, 3, 3))
    with pytest.raises(ValueError, match=r"rank must be an int in \[1, 9\]"):
        cnn.SpatiallySeparableConv2d.from_conv2d(nn.Conv2d(3, 3, 3), rank=10)


# ----------------------------------------------------------------------------- DepthwiseSeparableConv2d

def _torch_depthwise_separable(m):
    """The torch module sequence DepthwiseSeparableConv2d stands for, with its parameters."""
    dw = m.depthwise
    ref = nn.Sequential(
        nn.Conv2d(m.in_channels, dw.out_channels, dw.kernel_size, dw.stride, dw.padding, dw.dilation,
                  groups=m.in_channels, bias=False, padding_mode=dw.padding_mode),
        nn.Conv2d(dw.out_channels, m.out_channels, 1, bias=m.pointwise.bias is not None)).double()
    ref.load_state_dict({k.replace("depthwise", "0").replace("pointwise", "1"): v for k, v in m.state_dict().items()})
    return ref


_DWS_KWARGS = [dict(padding=1), dict(stride=2, padding=(2, 1), dilation=(2, 1), depth_multiplier=2),
               dict(padding="same", bias=False, kernel_size=(4, 3))]


@pytest.mark.parametrize("kwargs,padding_mode", [(kw, "zeros") for kw in _DWS_KWARGS] +
                         [(kw, mode) for kw, mode in zip(_DWS_KWARGS, ["reflect", "replicate", "circular"])] +
                         [(_DWS_KWARGS[0], "reflect")])
def test_depthwise_separable_module_matches_torch(kwargs, padding_mode):
    torch.manual_seed(0)
    kwargs = dict(kwargs)
    k = kwargs.pop("kernel_size", 3)
    m = cnn.DepthwiseSeparableConv2d(3, 5, k, padding_mode=padding_mode, **kwargs, dtype=torch.float64)
    ref = _torch_depthwise_separable(m)
    x = make((2, 3, 9, 8), torch.float64, requires_grad=True)
    names, ref_names = [n for n, _ in m.named_parameters()], [n for n, _ in ref.named_parameters()]
    compare_with_reference(_called_with(m, names), _called_with(ref, ref_names), [x] + list(m.parameters()),
                           torch.float64)
    assert_close(m(x[0]), ref(x[:1])[0])  # unbatched


def test_depthwise_separable_state_dict_init_and_repr():
    torch.manual_seed(0)
    m = cnn.DepthwiseSeparableConv2d(4, 8, 3, padding=1, depth_multiplier=2)
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == {
        "depthwise.weight": (8, 1, 3, 3), "pointwise.weight": (8, 8, 1, 1), "pointwise.bias": (8,)}
    assert m.depthwise.weight.abs().max() <= 1 / 3  # torch's init: fan_in = 1*3*3
    fresh = cnn.DepthwiseSeparableConv2d(4, 8, 3, padding=1, depth_multiplier=2)
    fresh.load_state_dict(m.state_dict())
    x = torch.randn(2, 4, 7, 7)
    assert torch.equal(fresh(x), m(x))
    assert repr(m).startswith("DepthwiseSeparableConv2d(\n  4, 8, kernel_size=(3, 3), depth_multiplier=2\n"
                              "  (depthwise): Conv2d(4, 8, kernel_size=(3, 3)")
    assert "pointwise.bias" not in cnn.DepthwiseSeparableConv2d(4, 8, 3, bias=False).state_dict()
    with pytest.raises(ValueError, match="depth_multiplier must be a positive int, but got depth_multiplier=0"):
        cnn.DepthwiseSeparableConv2d(4, 8, 3, depth_multiplier=0)


# ----------------------------------------------------------------------------- convert

class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(8, 8, (5, 3), stride=(2, 1), padding=(2, 1), groups=2),
                                  nn.ReLU(), cnn.Conv2d(8, 16, 3, dilation=2, padding=2, bias=False))
        self.point = nn.Conv2d(16, 8, 1)                        # 1x1: not separable
        self.row = nn.Conv2d(8, 8, (1, 3), padding=(0, 1))       # already 1-D: not separable
        self.reflect = nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect")  # not zeros: twin only
        self.dws = cnn.DepthwiseSeparableConv2d(8, 4, 3, padding=1)

    def forward(self, x):
        x = self.body(self.stem(x))
        return self.dws(self.reflect(self.row(self.point(x))))


def _converted(**kwargs):
    torch.manual_seed(0)
    model = _Net().double()
    reference = _Net().double()
    reference.load_state_dict(model.state_dict())
    return convops.convert(model, **kwargs), reference


def test_convert_default_unchanged():
    model, reference = _converted()
    assert type(model.stem) is cnn.Conv2d and type(model.body[1]) is cnn.Conv2d and type(model.row) is cnn.Conv2d
    assert type(model.dws.depthwise) is cnn.Conv2d
    assert not any(isinstance(m, cnn.SpatiallySeparableConv2d) for m in model.modules())
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    assert_close(model(x), reference(x))


def test_convert_separable_full_rank_is_exact_and_reported():
    report = []
    model, reference = _converted(separable_rank=1.0, report=report)
    sep = {n for n, m in model.named_modules() if isinstance(m, cnn.SpatiallySeparableConv2d)}
    assert sep == {"stem", "body.1", "body.3"}
    assert type(model.point) is cnn.Conv2d and type(model.row) is cnn.Conv2d and type(model.reflect) is cnn.Conv2d
    assert type(model.dws.depthwise) is cnn.Conv2d  # opaque: its children hold the fused op's weights
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    out, expected = model(x), reference(x)
    assert ((out - expected).norm() / expected.norm()).item() < 1e-10
    assert [r["name"] for r in report] == ["stem", "body.1", "body.3"]
    stem = report[0]
    assert stem["rank"] == stem["full_rank"] == min(3 * 3, 8 * 3) == 9
    assert stem["flops_before"] == 2 * 8 * 3 * 9
    assert stem["flops_after"] == 2 * 9 * 3 * 3 + 2 * 8 * 9 * 3
    assert stem["flops_saved"] == pytest.approx(1 - stem["flops_after"] / stem["flops_before"])
    assert all(r["error"] < 1e-10 for r in report)
    grouped = report[1]
    assert grouped["groups"] == 2 and grouped["rank"] == min(4 * 5, 4 * 3) == 12
    assert grouped["kernel_size"] == (5, 3)


def test_convert_separable_low_rank_report():
    report = []
    model, reference = _converted(separable_rank=2, report=report)
    assert [r["rank"] for r in report] == [2, 2, 2]
    for r, (name, shape, groups) in zip(report, [("stem", (8, 3, 3, 3), 1), ("body.1", (8, 4, 5, 3), 2),
                                                 ("body.3", (16, 8, 3, 3), 1)]):
        conv = dict(reference.named_modules())[name]
        assert r["error"] == pytest.approx(D.reconstruction_error(conv.weight, 2, groups), rel=1e-9)
        assert 0 < r["error"] < 1
        assert r["flops_saved"] > 0
        assert dict(model.named_modules())[name].reconstruction_error == r["error"]
    # body.1 has stride 2 in height only: the vertical pass runs on every column (sw = 1)
    assert report[1]["flops_after"] == 2 * 2 * 2 * 4 * 5 + 2 * 8 * 2 * 3
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    assert model(x).shape == reference(x).shape


def test_convert_separable_fraction_rounds_up_and_int_is_capped():
    report = []
    convops.convert(_Net(), separable_rank=0.5, report=report)
    assert [(r["rank"], r["full_rank"]) for r in report] == [(5, 9), (6, 12), (12, 24)]
    report = []
    convops.convert(_Net(), separable_rank=100, report=report)
    assert all(r["rank"] == r["full_rank"] for r in report)


@pytest.mark.parametrize("rank", [0, -2, 1.5, 0.0, True, "4"])
def test_convert_bad_separable_rank(rank):
    with pytest.raises(ValueError, match=rf"separable_rank must be a positive int or a float in \(0, 1\].*"
                                         rf"but got separable_rank={rank!r}"):
        convops.convert(_Net(), separable_rank=rank)


def test_convert_separable_then_compile_and_train_step():
    torch.manual_seed(0)
    model = convops.convert(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3)),
                            separable_rank=0.5)
    x = torch.randn(2, 3, 10, 10)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    assert_close(compiled(x), model(x))
    compiled(x).square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())
