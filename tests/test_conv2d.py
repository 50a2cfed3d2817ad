"""convops conv2d / conv1d against torch.nn.functional: outputs, gradients, dtypes, layouts,
autograd checks, opcheck, torch.compile, error behaviour, big (tiled) shapes, determinism."""
import math

import pytest
import torch
import torch.nn.functional as F

import convops
import convops.functional as cF
from convops.ops import Conv2dFunction

from conftest import (HAS_CUDA_KERNELS, assert_close, compare_compiled_with_eager,
                      compare_with_reference, make, requires_cuda)

ops = torch.ops.convops


def _scale(w_shape):
    """Rounding grows with the reduction length C/g*kh*kw (and the batch for the weight grad)."""
    return max(1.0, math.sqrt(math.prod(w_shape[1:])) / 3)


def _run_parity(x_shape, w_shape, kw, bias, dtype, device="cpu", x_layout="contiguous",
                w_layout="contiguous", fn=cF.conv2d, ref=F.conv2d, scale=None):
    torch.manual_seed(0)
    x = make(x_shape, dtype, device, x_layout, requires_grad=True)
    w = make(w_shape, dtype, device, w_layout, requires_grad=True)
    b = make((w_shape[0],), dtype, device, requires_grad=True) if bias else None
    scale = scale or _scale(w_shape)
    return compare_with_reference(lambda x, w, b: fn(x, w, b, **kw),
                                  lambda x, w, b: ref(x, w, b, **kw),
                                  [x, w, b], dtype, scale)


# ----------------------------------------------------------------------------- (a) parity grid

# (input shape, weight shape, kwargs)
CONV2D_CASES = {
    "basic_odd": ((2, 3, 7, 9), (4, 3, 3, 3), {}),
    "batch1": ((1, 3, 7, 9), (4, 3, 3, 3), dict(padding=1)),
    "stride2": ((2, 3, 9, 8), (5, 3, 3, 3), dict(stride=2)),
    "stride3_gt_kernel": ((2, 2, 11, 10), (3, 2, 2, 2), dict(stride=3)),
    "pad1": ((2, 3, 5, 6), (4, 3, 3, 3), dict(padding=1)),
    "pad_gt_half_kernel": ((1, 2, 4, 5), (3, 2, 3, 3), dict(padding=3)),
    "asym_stride_pad": ((1, 3, 10, 11), (4, 3, 3, 5), dict(stride=(1, 2), padding=(2, 1))),
    "asym_stride_pad2": ((2, 2, 9, 13), (3, 2, 4, 2), dict(stride=(3, 1), padding=(0, 3))),
    "dilation2": ((2, 2, 11, 9), (3, 2, 3, 3), dict(dilation=2, padding=2)),
    "dilation_asym": ((1, 3, 12, 13), (2, 3, 3, 2), dict(stride=(2, 1), padding=(1, 3), dilation=(2, 3))),
    "groups2": ((2, 4, 6, 7), (6, 2, 3, 3), dict(groups=2)),
    "groups3_stride_dil": ((2, 6, 11, 10), (9, 2, 3, 3), dict(groups=3, stride=2, dilation=2, padding=1)),
    "depthwise": ((2, 6, 7, 7), (6, 1, 3, 3), dict(groups=6, padding=1)),
    "depthwise_mult2": ((2, 3, 8, 8), (6, 1, 3, 3), dict(groups=3, padding=1)),
    "depthwise_mult3_stride": ((1, 4, 9, 7), (12, 1, 5, 3), dict(groups=4, stride=2, padding=(2, 1))),
    "same_odd": ((2, 3, 7, 6), (4, 3, 3, 3), dict(padding="same")),
    "same_even": ((2, 3, 7, 6), (4, 3, 4, 4), dict(padding="same")),
    "same_even_rect": ((1, 2, 6, 9), (3, 2, 2, 4), dict(padding="same")),
    "same_odd_dil2": ((2, 3, 9, 8), (4, 3, 3, 3), dict(padding="same", dilation=2)),
    "same_even_dil_asym": ((1, 2, 10, 11), (3, 2, 2, 4), dict(padding="same", dilation=(1, 3))),
    "same_even_dil2_sym": ((1, 2, 10, 11), (3, 2, 4, 4), dict(padding="same", dilation=2)),
    "same_groups": ((2, 4, 7, 7), (4, 2, 4, 3), dict(padding="same", groups=2)),
    "valid": ((2, 3, 7, 6), (4, 3, 3, 2), dict(padding="valid")),
    "valid_stride": ((2, 3, 7, 6), (4, 3, 3, 2), dict(padding="valid", stride=2)),
    "kernel_1x5": ((2, 3, 6, 9), (4, 3, 1, 5), dict(padding=(0, 2))),
    "kernel_5x1": ((2, 3, 9, 6), (4, 3, 5, 1), dict(stride=(2, 1))),
    "kernel_2x3": ((2, 3, 8, 7), (4, 3, 2, 3), {}),
    "height1": ((2, 3, 1, 13), (4, 3, 1, 3), dict(stride=(1, 2))),
    "pointwise": ((2, 8, 5, 7), (4, 8, 1, 1), {}),
    "pointwise_batch1": ((1, 8, 5, 7), (4, 8, 1, 1), {}),
    "pointwise_groups": ((2, 8, 5, 7), (6, 4, 1, 1), dict(groups=2)),
    "pointwise_stride2": ((2, 8, 7, 6), (4, 8, 1, 1), dict(stride=2)),
    "pointwise_stride2_batch1": ((1, 8, 7, 6), (4, 8, 1, 1), dict(stride=2)),
    "pointwise_pad1": ((2, 4, 5, 5), (3, 4, 1, 1), dict(padding=1)),
    "kernel_eq_input": ((2, 3, 5, 6), (4, 3, 5, 6), {}),
    "kernel_eq_padded_input": ((1, 2, 3, 3), (2, 2, 5, 5), dict(padding=1)),
    "kernel_eq_input_dilated": ((2, 2, 5, 7), (3, 2, 3, 4), dict(dilation=2)),
    "stride_gt_input": ((2, 2, 4, 4), (3, 2, 2, 2), dict(stride=5)),
    "single_channel": ((3, 1, 6, 6), (1, 1, 3, 3), dict(padding=1)),
    "batch0": ((0, 3, 5, 5), (4, 3, 3, 3), dict(padding=1)),
    "batch0_groups": ((0, 4, 6, 5), (4, 2, 3, 2), dict(groups=2, stride=2)),
    "unbatched": ((3, 7, 7), (4, 3, 3, 3), dict(padding=1)),
    "unbatched_same_even": ((3, 6, 7), (4, 3, 2, 2), dict(padding="same")),
    "unbatched_groups_stride": ((4, 8, 9), (6, 2, 3, 3), dict(groups=2, stride=(2, 3))),
    "padding_list_len1": ((2, 3, 5, 5), (4, 3, 3, 3), dict(padding=[1], stride=[2], dilation=[1])),
    "many_images_one_tile": ((5, 3, 4, 4), (4, 3, 3, 3), dict(padding=1)),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("case", list(CONV2D_CASES))
def test_conv2d_parity(case, bias, dtype):
    x_shape, w_shape, kw = CONV2D_CASES[case]
    out = _run_parity(x_shape, w_shape, kw, bias, dtype)
    assert out.dim() == len(x_shape)


def test_conv2d_batch0_gradients_are_zero_shaped():
    x = torch.randn(0, 3, 5, 5, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    b = torch.randn(4, requires_grad=True)
    out = cF.conv2d(x, w, b, padding=1)
    assert out.shape == (0, 4, 5, 5)
    gx, gw, gb = torch.autograd.grad(out.sum(), (x, w, b))
    assert gx.shape == x.shape
    assert torch.equal(gw, torch.zeros_like(w))
    assert torch.equal(gb, torch.zeros_like(b))


def test_conv2d_only_some_inputs_require_grad():
    torch.manual_seed(0)
    x = make((2, 3, 6, 6), torch.float64)
    w = make((4, 3, 3, 3), torch.float64, requires_grad=True)
    b = make((4,), torch.float64)
    compare_with_reference(lambda x, w, b: cF.conv2d(x, w, b, padding=1),
                           lambda x, w, b: F.conv2d(x, w, b, padding=1), [x, w, b], torch.float64)
    x.requires_grad_(True)
    w.requires_grad_(False)
    compare_with_reference(lambda x, w, b: cF.conv2d(x, w, b, stride=2),
                           lambda x, w, b: F.conv2d(x, w, b, stride=2), [x, w, b], torch.float64)


def test_conv2d_function_apply_matches_raw_op_and_torch():
    torch.manual_seed(0)
    x, w, b = torch.randn(2, 4, 7, 6), torch.randn(6, 2, 3, 3), torch.randn(6)
    args = ([2, 1], [1, 2], [1, 2], 2)
    ref = F.conv2d(x, w, b, *args)
    assert_close(Conv2dFunction.apply(x, w, b, *args), ref)
    assert_close(ops.conv2d(x, w, b, *args), ref)
    assert_close(ops.conv2d(x, w, None, *args), F.conv2d(x, w, None, *args))


def test_conv2d_weight_grad_op_matches_torch():
    torch.manual_seed(0)
    x = torch.randn(3, 4, 9, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 2, 3, 2, dtype=torch.float64, requires_grad=True)
    stride, padding, dilation, groups = [2, 1], [1, 0], [1, 2], 2
    out = F.conv2d(x, w, None, stride, padding, dilation, groups)
    go = torch.randn_like(out)
    (gw_ref,) = torch.autograd.grad(out, (w,), go)
    gw = ops.conv2d_weight_grad(go, x.detach(), [3, 2], stride, padding, dilation, groups)
    assert gw.shape == w.shape
    assert_close(gw, gw_ref)


@pytest.mark.parametrize("dtype,groups", [(torch.float64, 2), (torch.float32, 1), (torch.float32, 4),
                                          (torch.float64, 12)])
def test_conv2d_weight_bias_grad_op_matches_torch(dtype, groups):
    """The fused weight and bias gradient equals torch's (the bias's: grad_output summed), on
    the GEMM path (groups 1), the grouped kernel (2, 4) and the depthwise kernel (12)."""
    torch.manual_seed(0)
    x = torch.randn(3, 12, 9, 8, dtype=dtype, requires_grad=True)
    w = torch.randn(24 if groups == 12 else 12, 12 // groups, 3, 2, dtype=dtype, requires_grad=True)
    b = torch.randn(w.shape[0], dtype=dtype, requires_grad=True)
    stride, padding, dilation = [2, 1], [1, 0], [1, 2]
    out = F.conv2d(x, w, b, stride, padding, dilation, groups)
    go = torch.randn_like(out)
    gw_ref, gb_ref = torch.autograd.grad(out, (w, b), go)
    gw, gb = ops.conv2d_weight_bias_grad(go, x.detach(), [3, 2], stride, padding, dilation, groups)
    assert gw.shape == w.shape and gb.shape == b.shape and gb.dtype == dtype
    assert_close(gw, gw_ref, scale=10)
    assert_close(gb, gb_ref, scale=10)
    # batch 0: zeros, like torch
    gw0, gb0 = ops.conv2d_weight_bias_grad(go[:0], x.detach()[:0], [3, 2], stride, padding, dilation, groups)
    assert torch.equal(gw0, torch.zeros_like(w)) and torch.equal(gb0, torch.zeros_like(b))


def test_conv2d_nan_inf_propagate_like_torch():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 6)
    x[0, 1, 2, 3] = float("nan")
    x[1, 0, 0, 0] = float("inf")
    w = torch.randn(4, 3, 3, 3)
    w[0, 0, 1, 1] = 0.0  # inf * 0 -> nan
    for kw in [dict(padding=1), dict(stride=2), dict(padding="same", dilation=2)]:
        ref = F.conv2d(x, w, **kw)
        out = cF.conv2d(x, w, **kw)
        assert ref.isnan().any() and ref.isinf().any()
        assert torch.equal(out.isnan(), ref.isnan())
        assert torch.equal(out.isinf(), ref.isinf())
        torch.testing.assert_close(out, ref, equal_nan=True, rtol=1e-4, atol=1e-4)


def test_conv2d_under_no_grad_and_inference_mode():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    ref = F.conv2d(x, w, padding=1)
    with torch.no_grad():
        out = cF.conv2d(x, w, padding=1)
    assert not out.requires_grad
    assert_close(out, ref.detach())
    with torch.inference_mode():
        out = cF.conv2d(x.detach(), w.detach(), padding=1)
    assert out.is_inference()
    assert_close(out, ref.detach())


# ----------------------------------------------------------------------------- (b) dtypes

DTYPE_CASES = {
    "basic": ((2, 3, 7, 8), (4, 3, 3, 3), dict(padding=1)),
    "groups_stride_dil": ((2, 4, 9, 8), (6, 2, 3, 3), dict(groups=2, stride=2, dilation=(1, 2), padding=(1, 2))),
    "depthwise_same_even": ((1, 4, 6, 7), (8, 1, 2, 4), dict(groups=4, padding="same")),
    "pointwise": ((2, 8, 5, 5), (4, 8, 1, 1), {}),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16],
                         ids=["f64", "f32", "bf16", "f16"])
@pytest.mark.parametrize("case", list(DTYPE_CASES))
def test_conv2d_dtypes(case, dtype):
    x_shape, w_shape, kw = DTYPE_CASES[case]
    out = _run_parity(x_shape, w_shape, kw, True, dtype)
    assert out.dtype == dtype


def test_low_precision_accumulates_in_fp32():
    """A long reduction of bf16 products: fp32 accumulation keeps it within one bf16 rounding
    of the exact result, which the fp64 oracle checks with a tight relative tolerance."""
    torch.manual_seed(0)
    x = torch.rand(1, 256, 4, 4).to(torch.bfloat16)
    w = torch.rand(2, 256, 3, 3).to(torch.bfloat16)
    out = cF.conv2d(x, w)
    exact = F.conv2d(x.double(), w.double())
    torch.testing.assert_close(out.double(), exact, rtol=2 ** -8, atol=0)


# ----------------------------------------------------------------------------- (c) layouts

LAYOUTS = ["contiguous", "channels_last", "strided"]


@pytest.mark.parametrize("w_layout", LAYOUTS)
@pytest.mark.parametrize("x_layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_conv2d_layouts(x_layout, w_layout, dtype):
    kw = dict(stride=(2, 1), padding=1, groups=2)
    torch.manual_seed(0)
    x = make((2, 4, 7, 9), dtype, layout=x_layout, requires_grad=True)
    w = make((6, 2, 3, 3), dtype, layout=w_layout, requires_grad=True)
    b = make((6,), dtype, requires_grad=True)
    out = compare_with_reference(lambda x, w, b: cF.conv2d(x, w, b, **kw),
                                 lambda x, w, b: F.conv2d(x, w, b, **kw), [x, w, b], dtype)
    ref = F.conv2d(x.detach(), w.detach(), b.detach(), **kw)
    cl = torch.channels_last
    assert out.is_contiguous(memory_format=cl) == ref.is_contiguous(memory_format=cl)
    assert out.is_contiguous() == ref.is_contiguous()
    if "channels_last" in (x_layout, w_layout):
        assert out.is_contiguous(memory_format=cl)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
def test_conv2d_channels_last_low_precision(dtype):
    out = _run_parity((2, 4, 6, 6), (4, 4, 3, 3), dict(padding=1), True, dtype, x_layout="channels_last")
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_conv2d_non_contiguous_views():
    """Transposed / sliced / expanded views, not just every-other-column strides."""
    torch.manual_seed(0)
    base = torch.randn(2, 9, 8, 3, dtype=torch.float64)
    x = base.permute(0, 3, 1, 2).requires_grad_()  # (2, 3, 9, 8), channels innermost
    w = torch.randn(3, 4, 3, 3, dtype=torch.float64).transpose(0, 1).requires_grad_()  # (4, 3, 3, 3)
    b = torch.randn(8, dtype=torch.float64)[::2].requires_grad_()
    compare_with_reference(lambda x, w, b: cF.conv2d(x, w, b, padding=1),
                           lambda x, w, b: F.conv2d(x, w, b, padding=1), [x, w, b], torch.float64)
    xe = torch.randn(1, 3, 6, 6, dtype=torch.float64).expand(3, 3, 6, 6)
    assert_close(cF.conv2d(xe, w.detach()), F.conv2d(xe, w.detach()))


# ----------------------------------------------------------------------------- (d) gradcheck

GRADCHECK_CASES = {
    "basic": ((2, 2, 5, 6), (3, 2, 3, 3), dict(padding=1)),
    "stride_dil_asym": ((1, 2, 7, 8), (2, 2, 2, 3), dict(stride=(2, 1), padding=(0, 2), dilation=(2, 1))),
    "groups": ((2, 4, 5, 5), (6, 2, 3, 2), dict(groups=2, stride=2)),
    "same_even": ((1, 2, 5, 6), (2, 2, 2, 4), dict(padding="same", dilation=(2, 1))),
    "pointwise": ((2, 4, 3, 4), (3, 4, 1, 1), {}),
}


@pytest.mark.parametrize("case", list(GRADCHECK_CASES))
def test_conv2d_gradcheck(case):
    x_shape, w_shape, kw = GRADCHECK_CASES[case]
    torch.manual_seed(0)
    x = make(x_shape, torch.float64, requires_grad=True)
    w = make(w_shape, torch.float64, requires_grad=True)
    b = make((w_shape[0],), torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: cF.conv2d(x, w, b, **kw), (x, w, b), fast_mode=True)


def test_conv2d_gradgradcheck():
    torch.manual_seed(0)
    x = make((1, 2, 5, 5), torch.float64, requires_grad=True)
    w = make((4, 1, 3, 2), torch.float64, requires_grad=True)
    b = make((4,), torch.float64, requires_grad=True)
    fn = lambda x, w, b: cF.conv2d(x, w, b, stride=(2, 1), padding=1, dilation=(1, 2), groups=2)  # noqa: E731
    assert torch.autograd.gradgradcheck(fn, (x, w, b), fast_mode=True)


def test_conv2d_gradgradcheck_dropped_rows():
    """Stride 2 on 6 rows with a 3-row kernel: the last input row is read by no window."""
    torch.manual_seed(0)
    x = make((2, 2, 6, 5), torch.float64, requires_grad=True)
    w = make((3, 2, 3, 2), torch.float64, requires_grad=True)
    fn = lambda x, w: cF.conv2d(x, w, None, stride=(2, 2), dilation=(1, 2))  # noqa: E731
    assert fn(x, w).shape == (2, 3, 2, 2)
    assert torch.autograd.gradgradcheck(fn, (x, w), fast_mode=True)


def test_conv2d_double_backward_matches_torch():
    torch.manual_seed(0)
    kw = dict(stride=2, padding=1, groups=2)
    x = make((2, 4, 7, 6), torch.float64, requires_grad=True)
    w = make((4, 2, 3, 3), torch.float64, requires_grad=True)

    def second(fn):
        out = fn(x, w, None, **kw)
        gx, gw = torch.autograd.grad(out.square().sum(), (x, w), create_graph=True)
        return torch.autograd.grad(gx.sin().sum() + gw.cos().sum(), (x, w))

    for a, b in zip(second(cF.conv2d), second(F.conv2d)):
        assert_close(a, b)


# ----------------------------------------------------------------------------- (e) opcheck

def _opcheck_conv2d_samples():
    torch.manual_seed(0)
    d = torch.float64
    r = dict(requires_grad=True)
    return [
        (torch.randn(2, 3, 6, 5, dtype=d), torch.randn(4, 3, 3, 3, dtype=d), torch.randn(4, dtype=d),
         [1, 1], [1, 1], [1, 1], 1),
        (torch.randn(2, 4, 6, 5, dtype=d, **r), torch.randn(6, 2, 3, 2, dtype=d, **r),
         torch.randn(6, dtype=d, **r), [2, 1], [1, 0], [1, 2], 2),
        (torch.randn(1, 4, 5, 5, **r), torch.randn(4, 4, 1, 1, **r), None, [1, 1], [0, 0], [1, 1], 1),
        (torch.randn(2, 3, 7, 7, dtype=d).contiguous(memory_format=torch.channels_last).requires_grad_(),
         torch.randn(3, 1, 3, 3, dtype=d, **r), None, [2, 2], [1, 1], [1, 1], 3),
    ]


@pytest.mark.parametrize("idx", range(4))
def test_opcheck_conv2d(idx):
    args = _opcheck_conv2d_samples()[idx]
    result = torch.library.opcheck(ops.conv2d, args)
    assert all(v == "SUCCESS" for v in result.values()), result


def _opcheck_weight_grad_samples():
    torch.manual_seed(0)
    d = torch.float64
    r = dict(requires_grad=True)
    return [
        (torch.randn(2, 6, 3, 3, dtype=d), torch.randn(2, 4, 6, 5, dtype=d), [3, 2], [2, 1], [1, 0],
         [1, 2], 2),
        (torch.randn(2, 6, 3, 3, dtype=d, **r), torch.randn(2, 4, 6, 5, dtype=d, **r), [3, 2], [2, 1],
         [1, 0], [1, 2], 2),
        (torch.randn(1, 3, 5, 5, **r), torch.randn(1, 4, 5, 5, **r), [1, 1], [1, 1], [0, 0], [1, 1], 1),
    ]


@pytest.mark.parametrize("op", ["conv2d_weight_grad", "conv2d_weight_bias_grad"])
@pytest.mark.parametrize("idx", range(3))
def test_opcheck_conv2d_weight_grad(idx, op):
    args = _opcheck_weight_grad_samples()[idx]
    result = torch.library.opcheck(getattr(ops, op), args)
    assert all(v == "SUCCESS" for v in result.values()), result


def test_conv2d_weight_bias_grad_double_backward():
    """gradgradcheck through the fused op itself (its autograd: conv2d with the bias's
    gradient as the bias, and the transposed conv)."""
    torch.manual_seed(0)
    go = torch.randn(2, 4, 3, 4, dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64, requires_grad=True)
    fn = lambda go, x: ops.conv2d_weight_bias_grad(go, x, [3, 2], [2, 1], [1, 0], [1, 1], 2)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (go, x))
    assert torch.autograd.gradgradcheck(fn, (go, x))


# ----------------------------------------------------------------------------- (f) torch.compile

class _SmallNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = convops.nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = convops.nn.Conv2d(8, 8, 3, stride=2, groups=4, padding="valid")
        self.c3 = convops.nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.c3(torch.relu(self.c2(torch.relu(self.c1(x)))))




def test_compile_function_fullgraph():
    torch._dynamo.reset()
    torch.manual_seed(0)

    def fn(x, w, b):
        y = cF.conv2d(x, w, b, stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2)
        return torch.relu(y) * 2 + cF.conv2d(x, w, None, padding="same", groups=2)[:, :, ::2]

    compiled = torch.compile(fn, fullgraph=True, backend="inductor")
    x = torch.randn(2, 4, 8, 7, requires_grad=True)
    w = torch.randn(6, 2, 3, 3, requires_grad=True)
    b = torch.randn(6, requires_grad=True)
    compare_compiled_with_eager(fn, compiled, [x, w, b])
    ref = torch.relu(F.conv2d(x, w, b, (2, 1), (1, 2), (1, 2), 2)) * 2 + F.conv2d(x, w, None, 1, "same", 1, 2)[:, :, ::2]
    assert_close(compiled(x, w, b), ref)


def test_compile_module_dynamic():
    torch._dynamo.reset()
    torch.manual_seed(0)
    net = _SmallNet()
    compiled = torch.compile(net, fullgraph=True, dynamic=True, backend="inductor")
    for shape in [(2, 3, 9, 10), (3, 3, 12, 7)]:
        x = torch.randn(*shape, requires_grad=True)
        compare_compiled_with_eager(net, compiled, [x])
        # the parameters' gradients too
        net.zero_grad()
        compiled(x).square().sum().backward()
        g_c = [p.grad.clone() for p in net.parameters()]
        net.zero_grad()
        net(x).square().sum().backward()
        for a, p in zip(g_c, net.parameters()):
            assert_close(a, p.grad)


def test_compile_conv1d_and_unbatched_fullgraph():
    torch._dynamo.reset()
    torch.manual_seed(0)

    def fn(x1, w1, x2, w2):
        return cF.conv1d(x1, w1, padding="same").sum() + cF.conv2d(x2, w2, stride=2).sum()

    compiled = torch.compile(fn, fullgraph=True, backend="inductor")
    inputs = [torch.randn(2, 3, 11, requires_grad=True), torch.randn(4, 3, 4, requires_grad=True),
              torch.randn(3, 7, 8, requires_grad=True), torch.randn(2, 3, 3, 3, requires_grad=True)]
    compare_compiled_with_eager(fn, compiled, inputs)


# ----------------------------------------------------------------------------- (g) bad inputs

X = (2, 4, 5, 5)
W = (6, 4, 3, 3)

# name: (input shape, weight shape, bias shape or None, kwargs, exception, regex). The regex is
# the phrase torch's own message holds; ours must raise the same type with the same phrase.
ERROR_CASES = {
    "weight_rank3": (X, (6, 4, 3), None, {}, RuntimeError, None),
    "weight_rank5": (X, (6, 4, 3, 3, 1), None, {}, RuntimeError, None),
    "input_rank2": ((4, 5), W, None, {}, RuntimeError, r"Expected 3D \(unbatched\) or 4D \(batched\) input"),
    "input_rank5": ((1, 2, 4, 5, 5), W, None, {}, RuntimeError, r"Expected 3D \(unbatched\) or 4D \(batched\) input"),
    "in_channels_mismatch": ((2, 5, 5, 5), W, None, {}, RuntimeError, r"to have 4 channels, but got 5 channels"),
    "in_channels_not_divisible_by_groups": ((2, 5, 5, 5), (6, 2, 3, 3), None, dict(groups=2), RuntimeError,
                                            r"to have 4 channels, but got 5 channels"),
    "in_channels_mismatch_groups": (X, (6, 4, 3, 3), None, dict(groups=2), RuntimeError,
                                    r"to have 8 channels, but got 4 channels"),
    "out_channels_not_divisible": (X, (5, 2, 3, 3), None, dict(groups=2), RuntimeError,
                                   r"expected weight to be divisible by 2 at dimension 0"),
    "groups_gt_out_channels": (X, (1, 4, 3, 3), None, dict(groups=4), RuntimeError,
                               r"expected weight to be at least 4 at dimension 0"),
    "kernel_gt_input": ((1, 4, 2, 2), W, None, {}, RuntimeError, r"Kernel size can't be greater than actual input size"),
    "kernel_gt_input_one_dim": ((1, 4, 6, 2), W, None, dict(padding=(1, 0)), RuntimeError,
                                r"Kernel size can't be greater than actual input size"),
    "kernel_gt_input_dilated": ((1, 4, 4, 4), W, None, dict(dilation=2), RuntimeError,
                                r"Kernel size can't be greater than actual input size"),
    "stride0": (X, W, None, dict(stride=0), RuntimeError, r"non-positive stride is not supported"),
    "stride_neg": (X, W, None, dict(stride=(1, -1)), RuntimeError, r"non-positive stride is not supported"),
    "dilation0": (X, W, None, dict(dilation=0), RuntimeError, r"non-positive dilation is not supported"),
    # torch words a negative dilation differently from a zero one; either phrase is fine
    "dilation_neg": (X, W, None, dict(dilation=(-1, 1)), RuntimeError,
                     r"non-positive dilation is not supported|dilation should be greater than zero"),
    "padding_neg": (X, W, None, dict(padding=-1), RuntimeError, r"negative padding is not supported"),
    "padding_neg_one_dim": (X, W, None, dict(padding=(0, -2)), RuntimeError, r"negative padding is not supported"),
    "groups0": (X, W, None, dict(groups=0), RuntimeError, r"non-positive groups is not supported"),
    "same_strided": (X, W, None, dict(padding="same", stride=2), RuntimeError,
                     r"padding='same' is not supported for strided convolutions"),
    "same_strided_one_dim": (X, W, None, dict(padding="same", stride=(1, 2)), RuntimeError,
                             r"padding='same' is not supported for strided convolutions"),
    "stride_len3": (X, W, None, dict(stride=(1, 1, 1)), RuntimeError, r"expected stride to be a single integer"),
    "padding_len3": (X, W, None, dict(padding=(1, 1, 1)), RuntimeError, r"expected padding to be a single integer"),
    "zero_height_input": ((2, 4, 0, 5), W, None, {}, RuntimeError, r"Kernel size can't be greater"),
    "bias_wrong_size": (X, W, (5,), {}, RuntimeError, r"expected bias to be 1-dimensional with 6 elements"),
    "bias_2d": (X, W, (6, 1), {}, RuntimeError, r"expected bias to be 1-dimensional with 6 elements"),
}


def _error_args(x_shape, w_shape, b_shape):
    torch.manual_seed(0)
    return (torch.randn(*x_shape), torch.randn(*w_shape),
            None if b_shape is None else torch.randn(*b_shape))


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_conv2d_errors_match_torch(case):
    x_shape, w_shape, b_shape, kw, exc, regex = ERROR_CASES[case]
    x, w, b = _error_args(x_shape, w_shape, b_shape)
    with pytest.raises(exc, match=regex) as ref_info:
        F.conv2d(x, w, b, **kw)
    if regex is None:
        # torch's wording for a weight of the wrong rank is incidental (it trips on the stride
        # length first); ours names the rank problem.
        assert "dimensional" in str(ref_info.value) or "expected stride" in str(ref_info.value)
        regex = rf"{len(w_shape)}-dimensional weight"
    with pytest.raises(exc, match=regex):
        cF.conv2d(x, w, b, **kw)


@pytest.mark.parametrize("padding", ["full", "SAME", "", "same "])
def test_bad_padding_string_is_value_and_runtime_error(padding):
    x, w, _ = _error_args(X, W, None)
    with pytest.raises(RuntimeError, match="Invalid padding string"):
        F.conv2d(x, w, padding=padding)
    with pytest.raises(ValueError, match="Invalid padding string"):
        cF.conv2d(x, w, padding=padding)
    with pytest.raises(RuntimeError, match="Invalid padding string"):
        cF.conv2d(x, w, padding=padding)
    with pytest.raises(ValueError, match="Invalid padding string"):
        cF.conv1d(x[0], w[:, :, 0], padding=padding)
    with pytest.raises(RuntimeError, match="Invalid padding string"):
        cF.conv1d(x[0], w[:, :, 0], padding=padding)


@pytest.mark.parametrize("which", ["weight", "bias"])
def test_dtype_mismatch(which):
    x, w, b = _error_args(X, W, (6,))
    if which == "weight":
        w = w.double()
        regex = r"Input type .*Float.* and weight type .*Double.* should be the same"
    else:
        b = b.double()
        regex = r"Input type .* and bias type .* should be the same"
    with pytest.raises(RuntimeError, match=regex):
        F.conv2d(x, w, b)
    with pytest.raises(RuntimeError, match=regex):
        cF.conv2d(x, w, b)


def test_dtype_mismatch_half_input_float_weight():
    x, w, _ = _error_args(X, W, None)
    # torch: "expected scalar type Half but found Float"; ours names both types
    with pytest.raises(RuntimeError, match="should be the same|expected scalar type Half but found Float"):
        F.conv2d(x.half(), w)
    with pytest.raises(RuntimeError, match=r"Input type \(Half\) and weight type \(Float\) should be the same"):
        cF.conv2d(x.half(), w)


@pytest.mark.parametrize("fn,ref,x_shape,w_shape", [
    (cF.conv2d, F.conv2d, (2, 3, 0, 5), (4, 3, 1, 1)),
    (cF.conv2d, F.conv2d, (2, 3, 4, 0), (4, 3, 3, 1)),
    (cF.conv1d, F.conv1d, (2, 3, 0), (4, 3, 1)),
], ids=["conv2d_h0", "conv2d_w0", "conv1d_l0"])
def test_zero_spatial_input_with_padding_errors_like_torch(fn, ref, x_shape, w_shape):
    """torch rejects an empty spatial dim even when padding would make the kernel fit."""
    x, w = torch.randn(*x_shape), torch.randn(*w_shape)
    regex = r"Only zero batch or zero channel inputs are supported"
    with pytest.raises(RuntimeError, match=regex):
        ref(x, w, padding=1)
    with pytest.raises(RuntimeError, match=regex):
        fn(x, w, padding=1)


def test_conv2d_errors_do_not_depend_on_requires_grad():
    x, w, b = _error_args(X, (6, 3, 3, 3), None)
    x.requires_grad_()
    w.requires_grad_()
    with pytest.raises(RuntimeError, match="to have 3 channels, but got 4 channels"):
        cF.conv2d(x, w)
    with pytest.raises(RuntimeError, match="to have 3 channels, but got 4 channels"):
        Conv2dFunction.apply(x, w, None, [1, 1], [0, 0], [1, 1], 1)


_x, _w = torch.randn(*X), torch.randn(*W)
RAW_OP_ERRORS = {
    "input_3d": (lambda: ops.conv2d(_x[0], _w, None, [1, 1], [0, 0], [1, 1], 1), r"4-dimensional input"),
    "weight_3d": (lambda: ops.conv2d(_x, _w[0], None, [1, 1], [0, 0], [1, 1], 1), r"4-dimensional weight"),
    "stride_len3": (lambda: ops.conv2d(_x, _w, None, [1, 1, 1], [0, 0], [1, 1], 1), r"stride"),
    "padding_len1_list": (lambda: ops.conv2d(_x, _w, None, [1, 1], [0, 0, 0], [1, 1], 1), r"padding"),
    "stride0": (lambda: ops.conv2d(_x, _w, None, [0, 1], [0, 0], [1, 1], 1), r"non-positive stride"),
    "padding_neg": (lambda: ops.conv2d(_x, _w, None, [1, 1], [0, -1], [1, 1], 1), r"negative padding"),
    "dilation0": (lambda: ops.conv2d(_x, _w, None, [1, 1], [0, 0], [1, 0], 1), r"non-positive dilation"),
    "groups0": (lambda: ops.conv2d(_x, _w, None, [1, 1], [0, 0], [1, 1], 0), r"non-positive groups"),
    "groups_neg": (lambda: ops.conv2d(_x, _w, None, [1, 1], [0, 0], [1, 1], -2), r"non-positive groups"),
    "channels": (lambda: ops.conv2d(_x, _w, None, [1, 1], [0, 0], [1, 1], 2), r"channels"),
    "out_channels_groups": (lambda: ops.conv2d(torch.randn(1, 4, 5, 5), torch.randn(6, 1, 3, 3), None,
                                               [1, 1], [0, 0], [1, 1], 4), r"divisible by 4"),
    "zero_out_channels": (lambda: ops.conv2d(_x, torch.randn(0, 4, 3, 3), None, [1, 1], [0, 0], [1, 1], 1),
                          r"at least 1 at dimension 0"),
    "bias_size": (lambda: ops.conv2d(_x, _w, torch.randn(7), [1, 1], [0, 0], [1, 1], 1), r"bias"),
    "kernel_too_big": (lambda: ops.conv2d(_x, torch.randn(6, 4, 7, 7), None, [1, 1], [0, 0], [1, 1], 1),
                       r"Kernel size can't be greater"),
    "dtype_weight": (lambda: ops.conv2d(_x, _w.double(), None, [1, 1], [0, 0], [1, 1], 1), r"weight type"),
    "dtype_bias": (lambda: ops.conv2d(_x, _w, torch.randn(6).half(), [1, 1], [0, 0], [1, 1], 1), r"bias type"),
    "integer_dtype": (lambda: ops.conv2d(_x.int(), _w.int(), None, [1, 1], [0, 0], [1, 1], 1), r"floating type"),
    "complex_dtype": (lambda: ops.conv2d(_x.cfloat(), _w.cfloat(), None, [1, 1], [0, 0], [1, 1], 1),
                      r"floating type"),
    "device_mismatch": (lambda: ops.conv2d(_x, _w.to("meta"), None, [1, 1], [0, 0], [1, 1], 1), r"same device"),
    "wg_grad_output_shape": (lambda: ops.conv2d_weight_grad(torch.randn(2, 6, 4, 4), _x, [3, 3], [1, 1], [0, 0],
                                                            [1, 1], 1), r"expected grad_output of size"),
    "wg_batch_mismatch": (lambda: ops.conv2d_weight_grad(torch.randn(3, 6, 3, 3), _x, [3, 3], [1, 1], [0, 0],
                                                         [1, 1], 1), r"expected grad_output of size"),
    "wg_kernel_size0": (lambda: ops.conv2d_weight_grad(torch.randn(2, 6, 3, 3), _x, [0, 3], [1, 1], [0, 0],
                                                       [1, 1], 1), r"kernel_size"),
    "wg_groups": (lambda: ops.conv2d_weight_grad(torch.randn(2, 6, 3, 3), _x, [3, 3], [1, 1], [0, 0], [1, 1], 3),
                  r"divisible by groups=3"),
    "wg_dtype": (lambda: ops.conv2d_weight_grad(torch.randn(2, 6, 3, 3).double(), _x, [3, 3], [1, 1], [0, 0],
                                                [1, 1], 1), r"same device and dtype"),
    "wg_rank": (lambda: ops.conv2d_weight_grad(torch.randn(6, 3, 3), _x, [3, 3], [1, 1], [0, 0], [1, 1], 1),
                r"4-dimensional"),
    "wg_kernel_too_big": (lambda: ops.conv2d_weight_grad(torch.randn(2, 6, 1, 1), _x, [7, 7], [1, 1], [0, 0],
                                                         [1, 1], 1), r"Kernel size can't be greater"),
    "wg_stride0": (lambda: ops.conv2d_weight_grad(torch.randn(2, 6, 3, 3), _x, [3, 3], [1, 0], [0, 0],
                                                  [1, 1], 1), r"non-positive stride"),
    "wbg_grad_output_shape": (lambda: ops.conv2d_weight_bias_grad(torch.randn(2, 6, 4, 4), _x, [3, 3], [1, 1],
                                                                  [0, 0], [1, 1], 1), r"expected grad_output of size"),
    "wbg_groups": (lambda: ops.conv2d_weight_bias_grad(torch.randn(2, 6, 3, 3), _x, [3, 3], [1, 1], [0, 0],
                                                       [1, 1], 3), r"divisible by groups=3"),
}


@pytest.mark.parametrize("case", list(RAW_OP_ERRORS))
def test_raw_op_bad_args_raise_runtime_error(case):
    fn, regex = RAW_OP_ERRORS[case]
    with pytest.raises(RuntimeError, match=regex):
        fn()


@pytest.mark.parametrize("case", ["stride0", "in_channels_mismatch", "kernel_gt_input", "bias_wrong_size"])
def test_errors_under_compile(case):
    x_shape, w_shape, b_shape, kw, exc, regex = ERROR_CASES[case]
    x, w, b = _error_args(x_shape, w_shape, b_shape)
    torch._dynamo.reset()
    ours = torch.compile(lambda x, w, b: cF.conv2d(x, w, b, **kw), fullgraph=True, backend="inductor")
    theirs = torch.compile(lambda x, w, b: F.conv2d(x, w, b, **kw), fullgraph=True, backend="inductor")
    with pytest.raises(exc, match=regex):
        theirs(x, w, b)
    with pytest.raises(exc, match=regex):
        ours(x, w, b)


def test_python_level_errors_under_compile():
    """Errors raised in Python (padding strings) graph-break and surface unchanged."""
    x, w, _ = _error_args(X, W, None)
    torch._dynamo.reset()
    bad = torch.compile(lambda x, w: cF.conv2d(x, w, padding="full"), backend="inductor")
    with pytest.raises(ValueError, match="Invalid padding string"):
        bad(x, w)
    with pytest.raises(RuntimeError, match="Invalid padding string"):
        bad(x, w)
    strided_same = torch.compile(lambda x, w: cF.conv2d(x, w, padding="same", stride=2), backend="inductor")
    with pytest.raises(RuntimeError, match="padding='same' is not supported for strided"):
        strided_same(x, w)


# ----------------------------------------------------------------------------- (h) textbook example

IMAGE = [[1, 1, 1, 0, 0],
         [0, 1, 1, 1, 0],
         [0, 0, 1, 1, 1],
         [0, 0, 1, 1, 0],
         [0, 1, 1, 0, 0]]
KERNEL = [[1, 0, 1],
          [0, 1, 0],
          [1, 0, 1]]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16],
                         ids=["f64", "f32", "bf16", "f16"])
def test_textbook_example(dtype):
    x = torch.tensor(IMAGE, dtype=dtype).view(1, 1, 5, 5)
    w = torch.tensor(KERNEL, dtype=dtype).view(1, 1, 3, 3)
    expected = torch.tensor([[4, 3, 4], [2, 4, 3], [2, 3, 4]], dtype=dtype).view(1, 1, 3, 3)
    assert torch.equal(cF.conv2d(x, w), expected)
    assert torch.equal(ops.conv2d(x, w, None, [1, 1], [0, 0], [1, 1], 1), expected)
    expected_s2 = torch.tensor([[4, 4], [2, 4]], dtype=dtype).view(1, 1, 2, 2)
    assert torch.equal(cF.conv2d(x, w, stride=2), expected_s2)
    # unbatched, with a bias
    assert torch.equal(cF.conv2d(x[0], w, torch.tensor([1], dtype=dtype), stride=2), expected_s2[0] + 1)


def test_textbook_example_is_cross_correlation_not_convolution():
    x = torch.tensor(IMAGE, dtype=torch.float64).view(1, 1, 5, 5)
    w = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64).view(1, 1, 2, 2)
    out = cF.conv2d(x, w)
    # top-left window [[1,1],[0,1]] . [[1,2],[3,4]] = 1 + 2 + 0 + 4
    assert out[0, 0, 0, 0].item() == 7.0
    # window at (3, 0): [[0,0],[0,1]] -> 4
    assert out[0, 0, 3, 0].item() == 4.0


# ----------------------------------------------------------------------------- (i) conv1d

CONV1D_CASES = {
    "basic": ((2, 3, 11), (4, 3, 3), {}),
    "stride2": ((2, 3, 12), (5, 3, 3), dict(stride=2)),
    "pad": ((2, 3, 7), (4, 3, 4), dict(padding=2)),
    "dilation": ((2, 2, 13), (3, 2, 3), dict(dilation=3, padding=1)),
    "stride_pad_dil": ((1, 3, 17), (2, 3, 4), dict(stride=3, padding=4, dilation=2)),
    "same_odd": ((2, 3, 9), (4, 3, 5), dict(padding="same")),
    "same_even": ((2, 3, 9), (4, 3, 4), dict(padding="same")),
    "same_even_dil": ((2, 3, 10), (4, 3, 2), dict(padding="same", dilation=3)),
    "valid": ((2, 3, 9), (4, 3, 4), dict(padding="valid")),
    "groups": ((2, 4, 9), (6, 2, 3), dict(groups=2, padding=1)),
    "depthwise": ((2, 4, 9), (8, 1, 3), dict(groups=4)),
    "pointwise": ((2, 6, 7), (3, 6, 1), {}),
    "kernel_eq_input": ((2, 3, 5), (2, 3, 5), {}),
    "unbatched": ((3, 10), (4, 3, 3), dict(padding=1)),
    "unbatched_same_even": ((3, 8), (4, 3, 2), dict(padding="same")),
    "batch0": ((0, 3, 9), (4, 3, 3), dict(stride=2)),
    "tuple_args": ((2, 3, 12), (4, 3, 3), dict(stride=(2,), padding=(1,), dilation=(2,))),
}


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("case", list(CONV1D_CASES))
def test_conv1d_parity(case, bias):
    x_shape, w_shape, kw = CONV1D_CASES[case]
    out = _run_parity(x_shape, w_shape, kw, bias, torch.float64, fn=cF.conv1d, ref=F.conv1d)
    assert out.dim() == len(x_shape)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_conv1d_dtypes(dtype):
    _run_parity((2, 4, 15), (6, 2, 3), dict(groups=2, stride=2, padding=1), True, dtype,
                fn=cF.conv1d, ref=F.conv1d)


def test_conv1d_gradcheck():
    torch.manual_seed(0)
    x = make((2, 4, 9), torch.float64, requires_grad=True)
    w = make((4, 2, 3), torch.float64, requires_grad=True)
    b = make((4,), torch.float64, requires_grad=True)
    fn = lambda x, w, b: cF.conv1d(x, w, b, stride=2, padding=2, dilation=2, groups=2)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w, b), fast_mode=True)
    fn_same = lambda x, w, b: cF.conv1d(x, w, b, padding="same", groups=2)  # noqa: E731
    w2 = make((4, 2, 4), torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fn_same, (x, w2, b), fast_mode=True)


@pytest.mark.parametrize("case", ["weight_rank", "input_rank", "channels", "same_strided", "stride0",
                                  "padding_len2"])
def test_conv1d_errors_match_torch(case):
    x, w = torch.randn(2, 4, 9), torch.randn(6, 4, 3)
    kw = {}
    regex = None
    if case == "weight_rank":
        w = torch.randn(6, 4, 3, 3)
    elif case == "input_rank":
        x, regex = torch.randn(2, 4, 9, 9), r"Expected 2D \(unbatched\) or 3D \(batched\) input to conv1d"
    elif case == "channels":
        x, regex = torch.randn(2, 5, 9), r"to have 4 channels, but got 5 channels"
    elif case == "same_strided":
        kw, regex = dict(padding="same", stride=2), r"padding='same' is not supported for strided"
    elif case == "padding_len2":
        kw, regex = dict(padding=(1, 1)), r"expected padding to be a single integer value or a list of 1"
    else:
        kw, regex = dict(stride=0), r"non-positive stride is not supported"
    with pytest.raises(RuntimeError, match=regex):
        F.conv1d(x, w, **kw)
    with pytest.raises(RuntimeError, match=regex):
        cF.conv1d(x, w, **kw)


# ----------------------------------------------------------------------------- (j) determinism

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_determinism(dtype):
    torch.manual_seed(0)
    # many images per tile, overlapping windows (stride < kernel) so col2im accumulates
    x = make((6, 8, 21, 19), dtype, requires_grad=True)
    w = make((8, 4, 5, 3), dtype, requires_grad=True)
    b = make((8,), dtype, requires_grad=True)
    go = make((6, 8, 11, 19), dtype)

    def run():
        out = cF.conv2d(x, w, b, stride=(2, 1), padding=(2, 1), dilation=(1, 1), groups=2)
        return [out] + list(torch.autograd.grad(out, (x, w, b), go))

    first, second = run(), run()
    for a, b_ in zip(first, second):
        assert torch.equal(a, b_)
    assert first[0].shape == go.shape


# ----------------------------------------------------------------------------- (k) tiled shapes

def test_rows_tiled_large_image():
    """64*3*3 column rows * 300 cols * 4 bytes = 675 KiB per output row, 198 MiB per image:
    far over the 32 MiB column budget, so the image is processed in tiles of output rows.
    float64: the weight gradient sums 90000 positions, where float32 rounding depends on the
    tile order; tiling itself must be exact."""
    torch.manual_seed(0)
    x = make((1, 64, 300, 300), torch.float64, requires_grad=True)
    w = (make((64, 64, 3, 3), torch.float64) * 0.05).requires_grad_()
    b = make((64,), torch.float64, requires_grad=True)
    compare_with_reference(lambda x, w, b: cF.conv2d(x, w, b, padding=1),
                           lambda x, w, b: F.conv2d(x, w, b, padding=1), [x, w, b], torch.float64)


def test_rows_tiled_strided_dilated_grouped():
    """16*5*5 rows * 410 cols * 4 B = 641 KiB per output row, 104 rows: 51-row tiles, the last
    one ragged (2 rows), with stride/padding/dilation differing per dim and two groups.
    In float64 the tiles are 25 rows."""
    for dtype, scale in [(torch.float32, 10.0), (torch.float64, 1.0)]:
        torch.manual_seed(0)
        x = make((2, 16, 210, 410), dtype, requires_grad=True)
        w = make((8, 8, 5, 5), dtype, requires_grad=True)
        b = make((8,), dtype, requires_grad=True)
        kw = dict(stride=(2, 1), padding=(3, 2), dilation=(2, 1), groups=2)
        out = compare_with_reference(lambda x, w, b: cF.conv2d(x, w, b, **kw),
                                     lambda x, w, b: F.conv2d(x, w, b, **kw), [x, w, b], dtype, scale)
        assert out.shape == (2, 8, 104, 410)


@pytest.mark.parametrize("shape,kw", [
    # 8x8 outputs: tiles of ceil(2048 / 64) = 32 images -> 32 + 8
    ((40, 8, 10, 10), {}),
    # 7x7 outputs: tiles of 42 images -> 42 + 28
    ((70, 8, 7, 7), dict(padding=1)),
    # pointwise with image tiles: 5x5 outputs -> tiles of 82 images -> 82 + 8
    ((90, 8, 5, 5), dict(kernel=1)),
])
def test_batch_tiled_over_images(shape, kw):
    torch.manual_seed(0)
    kw = dict(kw)
    k = kw.pop("kernel", 3)
    x = make(shape, requires_grad=True)
    w = make((8, 8, k, k), requires_grad=True)
    b = make((8,), requires_grad=True)
    compare_with_reference(lambda x, w, b: cF.conv2d(x, w, b, **kw),
                           lambda x, w, b: F.conv2d(x, w, b, **kw), [x, w, b], torch.float32, scale=10.0)


def test_pointwise_rows_tiled():
    """A 1x1 conv whose image (64 ch * 360 * 380 * 4 B = 33.4 MiB) exceeds the budget: the
    pointwise fast path cannot read the image as its columns and goes through row tiles."""
    torch.manual_seed(0)
    x = make((1, 64, 360, 380), requires_grad=True)
    w = make((16, 64, 1, 1), requires_grad=True)
    b = make((16,), requires_grad=True)
    compare_with_reference(lambda x, w, b: cF.conv2d(x, w, b), lambda x, w, b: F.conv2d(x, w, b),
                           [x, w, b], torch.float32, scale=30.0)


def test_single_row_tiles_very_wide_image():
    """8*3*3 rows * 120000 cols * 4 B = 33 MiB for ONE output row: tiles of a single row."""
    torch.manual_seed(0)
    x = make((1, 8, 4, 120000), requires_grad=True)
    w = make((4, 8, 3, 3), requires_grad=True)
    b = make((4,), requires_grad=True)
    out = compare_with_reference(lambda x, w, b: cF.conv2d(x, w, b, padding=(1, 0), stride=(1, 1)),
                                 lambda x, w, b: F.conv2d(x, w, b, padding=(1, 0), stride=(1, 1)),
                                 [x, w, b], torch.float32, scale=30.0)
    assert out.shape == (1, 4, 4, 119998)


def test_batch_tiled_over_images_40x8x7x7():
    torch.manual_seed(0)
    x = make((40, 8, 7, 7), requires_grad=True)
    w = make((16, 4, 3, 3), requires_grad=True)
    b = make((16,), requires_grad=True)
    compare_with_reference(lambda x, w, b: cF.conv2d(x, w, b, stride=2, padding=1, groups=2),
                           lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1, groups=2), [x, w, b],
                           torch.float32, scale=10.0)


# ----------------------------------------------------------------------------- (l) devices

@pytest.mark.parametrize("case", ["basic_odd", "groups3_stride_dil", "same_even_dil_asym", "pointwise"])
def test_conv2d_parity_on_device(device, case):
    x_shape, w_shape, kw = CONV2D_CASES[case]
    out = _run_parity(x_shape, w_shape, kw, True, torch.float32, device=device)
    assert out.device.type == device


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["f32", "f16"])
def test_conv2d_channels_last_on_device(device, dtype):
    out = _run_parity((2, 4, 6, 7), (6, 2, 3, 3), dict(padding=1, groups=2), True, dtype,
                      device=device, x_layout="channels_last")
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_conv1d_parity_on_device(device):
    out = _run_parity((2, 4, 13), (6, 2, 4), dict(padding="same", groups=2), True, torch.float32,
                      device=device, fn=cF.conv1d, ref=F.conv1d)
    assert out.device.type == device


@requires_cuda
def test_raw_op_on_cuda():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 9, 8, device="cuda")
    w = torch.randn(6, 2, 3, 3, device="cuda")
    b = torch.randn(6, device="cuda")
    args = ([2, 1], [1, 1], [1, 2], 2)
    if not HAS_CUDA_KERNELS:
        with pytest.raises((NotImplementedError, RuntimeError)):
            ops.conv2d(x, w, b, *args)
        return
    out = ops.conv2d(x, w, b, *args)
    assert out.device == x.device
    assert_close(out, F.conv2d(x, w, b, *args))
    go = torch.randn_like(out)
    gw = ops.conv2d_weight_grad(go, x, [3, 3], *args)
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    (gw_ref,) = torch.autograd.grad(F.conv2d(xr, wr, b, *args), (wr,), go)
    assert_close(gw, gw_ref, scale=3)
    with pytest.raises(RuntimeError, match="same device"):
        ops.conv2d(x, w.cpu(), None, *args)
