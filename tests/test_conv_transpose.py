"""convops.functional.conv_transpose1d/2d, the raw convops::conv_transpose2d op and the
ConvTranspose1d/2d modules against torch (the reference), plus higher-order autograd for all
convops convolutions."""
import copy
import re

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck

import convops
from convops import functional as cF
from convops.ops import ConvTranspose2dFunction

from conftest import assert_close, compare_with_reference, grads_of, make

D64 = torch.float64
ops = torch.ops.convops


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _ct_shapes(n, cin, cout, hw, k, groups, unbatched=False):
    """Input and weight shapes of a transposed conv: weight is (Cin, Cout/groups, kh, kw)."""
    x_shape = (cin, *hw) if unbatched else (n, cin, *hw)
    return x_shape, (cin, cout // groups, *_pair(k))


# ----------------------------------------------------------------------------- (a) 2-D parity grid

# (N, Cin, Cout, (H, W), kernel, stride, padding, output_padding, groups, dilation, bias)
GRID_2D = {
    "basic": (2, 3, 4, (5, 5), 3, 1, 0, 0, 1, 1, True),
    "stride2_pad1_op1": (2, 3, 4, (5, 6), 3, 2, 1, 1, 1, 1, True),
    "stride3_op2": (1, 2, 3, (4, 4), 3, 3, 1, 2, 1, 1, False),
    "asym_stride_op": (2, 3, 2, (5, 7), (2, 3), (2, 3), (0, 1), (1, 2), 1, 1, True),
    "asym_padding_nonsquare_k": (1, 4, 4, (6, 5), (3, 5), 1, (1, 2), 0, 1, 1, True),
    "dilation2": (2, 3, 3, (5, 5), 3, 1, 0, 0, 1, 2, True),
    "asym_dilation_stride": (1, 2, 4, (5, 6), (3, 2), (2, 1), (1, 0), (1, 0), 1, (2, 3), False),
    # output_padding >= stride is legal while it is < dilation
    "op_ge_stride_s1_d3_op2": (2, 3, 2, (4, 5), 3, 1, 0, 2, 1, 3, True),
    "op_ge_stride_s2_d3_op2": (1, 2, 3, (4, 4), (2, 3), 2, 1, 2, 1, 3, True),
    "op_ge_stride_asym": (1, 2, 2, (5, 4), 3, (1, 2), (0, 1), (2, 1), 1, (3, 1), True),
    "op_ge_stride_pad": (2, 2, 3, (3, 4), (2, 3), 1, (1, 2), (1, 2), 1, (2, 4), True),
    "groups2": (2, 4, 6, (5, 5), 3, 1, 1, 0, 2, 1, True),
    "groups2_s2_d2_op1": (2, 4, 4, (5, 6), (3, 2), 2, 1, 1, 2, 2, True),
    "depthwise": (1, 4, 4, (6, 6), 3, 2, 1, 1, 4, 1, True),
    "groups3_multiplier2": (2, 3, 6, (4, 5), 2, 2, 0, 1, 3, 1, False),
    "groups2_op_ge_stride": (1, 4, 2, (4, 4), 2, 1, 0, 1, 2, 2, True),
    "groups3_d3_op2": (1, 6, 3, (3, 5), (2, 3), (1, 2), (1, 0), (2, 1), 3, (3, 2), True),
    "kernel1x1": (2, 5, 3, (4, 4), 1, 1, 0, 0, 1, 1, True),
    "kernel1x1_s2_op1": (1, 3, 3, (3, 3), 1, 2, 0, 1, 1, 1, True),
    "kernel_larger_than_input": (1, 2, 3, (2, 2), (5, 4), 1, 0, 0, 1, 1, True),
    "padding_crops": (1, 2, 2, (5, 5), 3, 2, (2, 3), 1, 1, 1, True),
    "input1x1": (2, 3, 4, (1, 1), 3, 2, 0, 0, 1, 1, True),
    "odd_everything": (3, 5, 7, (7, 9), (5, 3), (3, 2), (2, 1), (2, 1), 1, (1, 2), True),
    "row_kernel": (1, 1, 1, (3, 8), (1, 4), (1, 3), 0, (0, 2), 1, 1, False),
    "col_kernel": (2, 2, 1, (7, 2), (4, 1), (2, 1), (1, 0), (1, 0), 1, 1, True),
    "big_stride": (1, 2, 2, (3, 3), 2, 4, 0, 3, 1, 1, True),
    "batch0": (0, 3, 4, (5, 5), 3, 2, 1, 1, 1, 1, True),
    "batch0_groups": (0, 4, 2, (3, 4), 2, 1, 0, 0, 2, 1, False),
}


def _run_grid_case(case, dtype=D64, unbatched=False, layout="contiguous"):
    n, cin, cout, hw, k, stride, padding, op, groups, dilation, has_bias = case
    x_shape, w_shape = _ct_shapes(n, cin, cout, hw, k, groups, unbatched)
    x = make(x_shape, dtype, layout=layout, requires_grad=True)
    w = make(w_shape, dtype, layout=layout, requires_grad=True)
    b = make((cout,), dtype, requires_grad=True) if has_bias else None
    hyper = dict(stride=stride, padding=padding, output_padding=op, groups=groups, dilation=dilation)
    return compare_with_reference(
        lambda x, w, b: cF.conv_transpose2d(x, w, b, **hyper),
        lambda x, w, b: F.conv_transpose2d(x, w, b, **hyper),
        [x, w, b], dtype)


@pytest.mark.parametrize("case", GRID_2D.values(), ids=GRID_2D.keys())
def test_conv_transpose2d_parity_float64(case):
    out = _run_grid_case(case)
    assert out.dim() == 4


@pytest.mark.parametrize("case", [GRID_2D[k] for k in ("basic", "op_ge_stride_s2_d3_op2", "groups2_s2_d2_op1",
                                                       "odd_everything", "batch0")])
def test_conv_transpose2d_parity_float32(case):
    _run_grid_case(case, torch.float32)


@pytest.mark.parametrize("name", ["basic", "stride2_pad1_op1", "op_ge_stride_s1_d3_op2", "groups2_s2_d2_op1",
                                  "asym_stride_op"])
def test_conv_transpose2d_unbatched(name):
    case = (None,) + GRID_2D[name][1:]
    out = _run_grid_case(case, unbatched=True)
    assert out.dim() == 3


def test_conv_transpose2d_unbatched_equals_batched_slice():
    x = make((3, 4, 5), D64)
    w = make((3, 2, 3, 3), D64)
    b = make((2,), D64)
    un = cF.conv_transpose2d(x, w, b, stride=2, output_padding=1)
    ba = cF.conv_transpose2d(x.unsqueeze(0), w, b, stride=2, output_padding=1)
    assert un.shape == ba.shape[1:]
    torch.testing.assert_close(un, ba[0], rtol=0, atol=0)


def test_conv_transpose2d_hyper_as_lists_and_ints_agree():
    x = make((2, 2, 4, 5), D64)
    w = make((2, 3, 3, 2), D64)
    a = cF.conv_transpose2d(x, w, None, 2, 1, 1, 1, 2)
    b = cF.conv_transpose2d(x, w, None, [2, 2], (1, 1), [1, 1], 1, (2, 2))
    c = cF.conv_transpose2d(x, w, None, [2], [1], [1], 1, [2])
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(a, c, rtol=0, atol=0)
    assert_close(a, F.conv_transpose2d(x, w, None, 2, 1, 1, 1, 2))


def test_conv_transpose2d_only_some_inputs_require_grad():
    x = make((2, 3, 4, 4), D64, requires_grad=False)
    w = make((3, 2, 3, 3), D64, requires_grad=True)
    b = make((2,), D64, requires_grad=False)
    hyper = dict(stride=2, padding=1, output_padding=1)
    compare_with_reference(lambda x, w, b: cF.conv_transpose2d(x, w, b, **hyper),
                           lambda x, w, b: F.conv_transpose2d(x, w, b, **hyper), [x, w, b], D64)
    x.requires_grad_(True)
    w.requires_grad_(False)
    compare_with_reference(lambda x, w, b: cF.conv_transpose2d(x, w, b, **hyper),
                           lambda x, w, b: F.conv_transpose2d(x, w, b, **hyper), [x, w, b], D64)


def test_autograd_function_apply_matches_torch():
    x = make((2, 4, 3, 4), D64, requires_grad=True)
    w = make((4, 1, 2, 3), D64, requires_grad=True)
    b = make((2,), D64, requires_grad=True)
    compare_with_reference(
        lambda x, w, b: ConvTranspose2dFunction.apply(x, w, b, [2, 1], [0, 1], [1, 0], 2, [1, 2]),
        lambda x, w, b: F.conv_transpose2d(x, w, b, (2, 1), (0, 1), (1, 0), 2, (1, 2)),
        [x, w, b], D64)


# ----------------------------------------------------------------------------- (b) dtypes

DTYPE_CASES = [GRID_2D[k] for k in ("basic", "stride2_pad1_op1", "groups2_s2_d2_op1", "op_ge_stride_s1_d3_op2")]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", DTYPE_CASES, ids=["basic", "stride2", "groups_dilation", "op_ge_stride"])
def test_conv_transpose2d_dtypes(case, dtype):
    out = _run_grid_case(case, dtype)
    assert out.dtype == dtype


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_conv_transpose2d_low_precision_long_reduction(dtype):
    # Cin * kh * kw = 16 * 9 terms per output; gradients reduce over many more.
    x = make((2, 16, 6, 6), dtype, requires_grad=True)
    w = make((16, 4, 3, 3), dtype, requires_grad=True)
    b = make((4,), dtype, requires_grad=True)
    compare_with_reference(lambda x, w, b: cF.conv_transpose2d(x, w, b, stride=2, padding=1),
                           lambda x, w, b: F.conv_transpose2d(x, w, b, stride=2, padding=1),
                           [x, w, b], dtype, scale=4.0)


def test_conv_transpose2d_mixed_dtypes_rejected_like_torch():
    x = make((1, 2, 3, 3), torch.float32)
    w = make((2, 2, 3, 3), torch.float64)
    with pytest.raises(RuntimeError):
        F.conv_transpose2d(x, w)
    with pytest.raises(RuntimeError, match="should be the same"):
        cF.conv_transpose2d(x, w)


# ----------------------------------------------------------------------------- (c) layouts

LAYOUTS = ["contiguous", "channels_last", "strided"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("w_layout", LAYOUTS)
@pytest.mark.parametrize("x_layout", LAYOUTS)
def test_conv_transpose2d_layouts(x_layout, w_layout, dtype):
    x = make((2, 4, 5, 6), dtype, layout=x_layout, requires_grad=True)
    w = make((4, 3, 3, 2), dtype, layout=w_layout, requires_grad=True)
    b = make((6,), dtype, requires_grad=True)
    hyper = dict(stride=2, padding=1, output_padding=1, groups=2, dilation=1)
    if x_layout == "strided":
        assert not x.is_contiguous()
    if w_layout == "strided":
        assert not w.is_contiguous()
    out = compare_with_reference(lambda x, w, b: cF.conv_transpose2d(x, w, b, **hyper),
                                 lambda x, w, b: F.conv_transpose2d(x, w, b, **hyper), [x, w, b], dtype)
    ref = F.conv_transpose2d(x.detach(), w.detach(), b.detach(), **hyper)
    assert out.is_contiguous(memory_format=torch.channels_last) == \
        ref.is_contiguous(memory_format=torch.channels_last)
    assert out.is_contiguous() == ref.is_contiguous()
    assert out.stride() == ref.stride()


def test_conv_transpose2d_channels_last_output_when_torch_is():
    x = make((2, 4, 5, 6), layout="channels_last")
    w = make((4, 3, 3, 3))
    out = cF.conv_transpose2d(x, w, stride=2)
    assert F.conv_transpose2d(x, w, stride=2).is_contiguous(memory_format=torch.channels_last)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert not out.is_contiguous()
    out2 = cF.conv_transpose2d(x.contiguous(), w, stride=2)
    assert out2.is_contiguous()
    torch.testing.assert_close(out, out2, rtol=1e-6, atol=1e-6)


def test_conv_transpose2d_transposed_view_input():
    # A permuted (H<->W) view: neither contiguous nor channels_last.
    base = make((2, 3, 6, 5), D64)
    x = base.transpose(2, 3).requires_grad_(True)
    assert not x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last)
    w = make((3, 2, 2, 3), D64, requires_grad=True)
    compare_with_reference(lambda x, w: cF.conv_transpose2d(x, w, stride=(1, 2), output_padding=(0, 1)),
                           lambda x, w: F.conv_transpose2d(x, w, stride=(1, 2), output_padding=(0, 1)),
                           [x, w], D64)


@pytest.mark.parametrize("kind", ["channels_last", "expanded", "transposed"])
def test_conv_transpose2d_backward_with_non_contiguous_grad_output(kind):
    x = make((2, 4, 4, 5), D64, requires_grad=True)
    w = make((4, 3, 3, 3), D64, requires_grad=True)
    b = make((6,), D64, requires_grad=True)
    hyper = dict(stride=2, padding=1, output_padding=(1, 0), groups=2)
    out = cF.conv_transpose2d(x, w, b, **hyper)
    ref = F.conv_transpose2d(x, w, b, **hyper)
    if kind == "channels_last":
        g = make(tuple(out.shape), D64, layout="channels_last")
    elif kind == "expanded":
        g = torch.randn(1, out.shape[1], 1, out.shape[3], dtype=D64).expand(out.shape)
    else:
        g = torch.randn(out.shape[0], out.shape[1], out.shape[3], out.shape[2], dtype=D64).transpose(2, 3)
    assert not g.is_contiguous()
    for a, r in zip(grads_of(out, [x, w, b], g), grads_of(ref, [x, w, b], g)):
        assert_close(a, r)


# --- the kernel's tiling paths: several images per GEMM (with a partial last tile), row tiles
# when one image's columns exceed the 32 MiB workspace budget, and the direct 1x1 path

WORKSPACE_BUDGET = 32 << 20


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_conv_transpose2d_partial_image_tile(dtype):
    # 25*40 = 1000 positions per image -> 3 images per GEMM tile, then a tile of 1 (N=4) / 2 (N=5)
    for n in (4, 5):
        x = make((n, 2, 25, 40), dtype, requires_grad=True)
        w = make((2, 3, 3, 3), dtype, requires_grad=True)
        b = make((3,), dtype, requires_grad=True)
        compare_with_reference(lambda x, w, b: cF.conv_transpose2d(x, w, b, stride=(1, 2), output_padding=(0, 1)),
                               lambda x, w, b: F.conv_transpose2d(x, w, b, stride=(1, 2), output_padding=(0, 1)),
                               [x, w, b], dtype, scale=2)


def test_conv_transpose2d_row_tiling_stays_within_workspace_budget():
    # columns of one image: (64*5*5) x (64*64) float64 = 50 MiB > budget -> tiled by output rows
    x = make((1, 2, 64, 64), D64, requires_grad=True)
    w = make((2, 64, 5, 5), D64, requires_grad=True)
    b = make((64,), D64, requires_grad=True)
    assert 64 * 25 * 64 * 64 * 8 > WORKSPACE_BUDGET
    ops._workspace_peak_bytes(True)
    compare_with_reference(lambda x, w, b: cF.conv_transpose2d(x, w, b, padding=2),
                           lambda x, w, b: F.conv_transpose2d(x, w, b, padding=2), [x, w, b], D64, scale=10)
    peak = ops._workspace_peak_bytes(True)
    assert 0 < peak <= WORKSPACE_BUDGET


def test_conv_transpose2d_row_tiling_strided_grouped():
    x = make((2, 4, 66, 40), D64, requires_grad=True)
    w = make((4, 16, 5, 5), D64, requires_grad=True)
    hyper = dict(stride=2, padding=1, output_padding=1, groups=2, dilation=2)
    compare_with_reference(lambda x, w: cF.conv_transpose2d(x, w, **hyper),
                           lambda x, w: F.conv_transpose2d(x, w, **hyper), [x, w], D64, scale=10)


@pytest.mark.parametrize("n,groups", [(1, 1), (1, 2), (3, 1)])
def test_conv_transpose2d_pointwise_large_image(n, groups):
    x = make((n, 4, 50, 50), D64, requires_grad=True)
    w = make((4, 3, 1, 1), D64, requires_grad=True)
    b = make((3 * groups,), D64, requires_grad=True)
    compare_with_reference(lambda x, w, b: cF.conv_transpose2d(x, w, b, groups=groups),
                           lambda x, w, b: F.conv_transpose2d(x, w, b, groups=groups), [x, w, b], D64)


# ----------------------------------------------------------------------------- (d) 1-D parity

# (N, Cin, Cout, L, k, stride, padding, output_padding, groups, dilation, bias)
GRID_1D = {
    "basic": (2, 3, 4, 7, 3, 1, 0, 0, 1, 1, True),
    "stride2_op1": (2, 3, 2, 6, 3, 2, 1, 1, 1, 1, True),
    "stride3_pad2_op2": (1, 2, 3, 5, 4, 3, 2, 2, 1, 1, False),
    "dilation2": (2, 2, 2, 5, 3, 1, 1, 0, 1, 2, True),
    "op_ge_stride_s1_d3_op2": (2, 2, 3, 4, 3, 1, 0, 2, 1, 3, True),
    "op_ge_stride_s2_d4_op3": (1, 3, 2, 4, 2, 2, 1, 3, 1, 4, True),
    "groups2": (2, 4, 6, 5, 3, 2, 1, 1, 2, 1, True),
    "depthwise": (1, 3, 3, 6, 2, 1, 0, 0, 3, 2, False),
    "kernel1": (2, 4, 3, 5, 1, 2, 0, 1, 1, 1, True),
    "length1": (2, 2, 2, 1, 3, 2, 0, 0, 1, 1, True),
    "kernel_larger_than_input": (1, 2, 2, 2, 6, 1, 1, 0, 1, 1, True),
    "batch0": (0, 2, 2, 4, 3, 2, 1, 1, 1, 1, True),
}


def _run_1d_case(case, dtype=D64, unbatched=False, layout="contiguous"):
    n, cin, cout, length, k, stride, padding, op, groups, dilation, has_bias = case
    x_shape = (cin, length) if unbatched else (n, cin, length)
    x = make(x_shape, dtype, layout=layout, requires_grad=True)
    w = make((cin, cout // groups, k), dtype, layout=layout, requires_grad=True)
    b = make((cout,), dtype, requires_grad=True) if has_bias else None
    hyper = dict(stride=stride, padding=padding, output_padding=op, groups=groups, dilation=dilation)
    return compare_with_reference(lambda x, w, b: cF.conv_transpose1d(x, w, b, **hyper),
                                  lambda x, w, b: F.conv_transpose1d(x, w, b, **hyper), [x, w, b], dtype)


@pytest.mark.parametrize("case", GRID_1D.values(), ids=GRID_1D.keys())
def test_conv_transpose1d_parity(case):
    out = _run_1d_case(case)
    assert out.dim() == 3


@pytest.mark.parametrize("name", ["basic", "stride2_op1", "op_ge_stride_s1_d3_op2", "groups2"])
def test_conv_transpose1d_unbatched(name):
    out = _run_1d_case((None,) + GRID_1D[name][1:], unbatched=True)
    assert out.dim() == 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_conv_transpose1d_dtypes(dtype):
    _run_1d_case(GRID_1D["groups2"], dtype)


def test_conv_transpose1d_strided_input():
    _run_1d_case(GRID_1D["stride2_op1"], layout="strided")


def test_conv_transpose1d_bad_input_rank():
    w = make((2, 2, 3))
    for x in (make((2,)), make((1, 2, 3, 4))):
        with pytest.raises(RuntimeError, match=r"Expected 2D \(unbatched\) or 3D \(batched\) input"):
            F.conv_transpose1d(x, w)
        with pytest.raises(RuntimeError, match=r"Expected 2D \(unbatched\) or 3D \(batched\) input"):
            cF.conv_transpose1d(x, w)


# ----------------------------------------------------------------------------- (e) gradcheck / gradgradcheck

def _gradchecks(fn, inputs):
    assert gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)
    assert gradgradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


def _g(shape):
    return make(shape, D64, requires_grad=True)


# conv2d: (x_shape, w_shape, bias, stride, padding, dilation, groups)
CONV2D_GC = [
    ((1, 2, 4, 4), (2, 2, 2, 2), True, 1, 0, 1, 1),
    ((1, 2, 5, 5), (2, 2, 2, 2), False, 2, 1, 1, 1),
    ((1, 2, 5, 4), (2, 2, 2, 2), False, 1, (1, 0), 2, 1),
    ((2, 4, 3, 3), (2, 2, 2, 2), True, 1, 0, 1, 2),
    ((1, 2, 6, 5), (2, 1, 2, 3), False, (2, 1), (0, 1), (2, 1), 2),
    ((1, 1, 5, 5), (2, 1, 3, 2), True, (3, 2), 1, 1, 1),
]


@pytest.mark.parametrize("cfg", CONV2D_GC, ids=[f"cfg{i}" for i in range(len(CONV2D_GC))])
def test_gradcheck_conv2d(cfg):
    xs, ws, has_bias, stride, padding, dilation, groups = cfg
    inputs = (_g(xs), _g(ws), _g((ws[0],)) if has_bias else None)
    _gradchecks(lambda x, w, b: cF.conv2d(x, w, b, stride, padding, dilation, groups), inputs)


# conv_transpose2d: (x_shape, w_shape, bias, stride, padding, output_padding, groups, dilation)
CT2D_GC = [
    ((1, 2, 3, 3), (2, 2, 2, 2), True, 1, 0, 0, 1, 1),
    ((1, 2, 3, 3), (2, 1, 2, 2), False, 2, 0, 1, 1, 1),
    ((1, 2, 3, 3), (2, 2, 2, 2), False, 2, 1, 1, 1, 2),
    ((1, 4, 2, 3), (4, 1, 2, 2), True, 1, 0, 0, 2, 1),
    ((1, 2, 3, 2), (2, 1, 2, 2), False, 1, 0, 2, 1, 3),                # output_padding >= stride
    ((1, 4, 2, 3), (4, 1, 2, 3), True, (2, 1), (1, 0), (1, 1), 2, (1, 2)),
    ((1, 1, 3, 3), (1, 2, 3, 2), True, (3, 2), 1, (2, 0), 1, 1),
]


@pytest.mark.parametrize("cfg", CT2D_GC, ids=[f"cfg{i}" for i in range(len(CT2D_GC))])
def test_gradcheck_conv_transpose2d(cfg):
    xs, ws, has_bias, stride, padding, op, groups, dilation = cfg
    inputs = (_g(xs), _g(ws), _g((ws[1] * groups,)) if has_bias else None)
    _gradchecks(lambda x, w, b: cF.conv_transpose2d(x, w, b, stride, padding, op, groups, dilation), inputs)


# conv1d: (x_shape, w_shape, bias, stride, padding, dilation, groups)
CONV1D_GC = [
    ((2, 2, 5), (3, 2, 2), True, 1, 0, 1, 1),
    ((1, 2, 7), (2, 2, 3), False, 2, 1, 2, 1),
    ((1, 4, 5), (4, 2, 2), True, 3, 1, 1, 2),
]


@pytest.mark.parametrize("cfg", CONV1D_GC, ids=[f"cfg{i}" for i in range(len(CONV1D_GC))])
def test_gradcheck_conv1d(cfg):
    xs, ws, has_bias, stride, padding, dilation, groups = cfg
    inputs = (_g(xs), _g(ws), _g((ws[0],)) if has_bias else None)
    _gradchecks(lambda x, w, b: cF.conv1d(x, w, b, stride, padding, dilation, groups), inputs)


# conv_transpose1d: (x_shape, w_shape, bias, stride, padding, output_padding, groups, dilation)
CT1D_GC = [
    ((2, 2, 3), (2, 2, 2), True, 1, 0, 0, 1, 1),
    ((1, 2, 4), (2, 1, 3), False, 2, 1, 1, 1, 2),
    ((1, 4, 3), (4, 1, 2), True, 1, 0, 2, 2, 3),   # output_padding >= stride
    ((1, 2, 3), (2, 2, 2), True, 3, 1, 2, 1, 1),
]


@pytest.mark.parametrize("cfg", CT1D_GC, ids=[f"cfg{i}" for i in range(len(CT1D_GC))])
def test_gradcheck_conv_transpose1d(cfg):
    xs, ws, has_bias, stride, padding, op, groups, dilation = cfg
    inputs = (_g(xs), _g(ws), _g((ws[1] * groups,)) if has_bias else None)
    _gradchecks(lambda x, w, b: cF.conv_transpose1d(x, w, b, stride, padding, op, groups, dilation), inputs)


def test_gradcheck_raw_op_conv_transpose2d():
    # the autograd registered on torch.ops.convops.conv_transpose2d itself (not the Function)
    inputs = (_g((1, 2, 3, 2)), _g((2, 2, 2, 3)), _g((4,)))
    _gradchecks(lambda x, w, b: ops.conv_transpose2d(x, w, b, [2, 1], [0, 1], [1, 0], 2, [1, 2]), inputs)


# ----------------------------------------------------------------------------- (f) gradient penalty / HVP

def _gradient_penalty(conv, x, w, b, nonlinear):
    out = conv(x, w, b)
    scalar = torch.tanh(out).sum() if nonlinear else out.sum()
    (gx,) = torch.autograd.grad(scalar, x, create_graph=True)
    penalty = (gx ** 2).sum()
    # d(out.sum())/dx = conv^T(ones, w) depends on w only; with tanh it also depends on x and b
    return penalty, torch.autograd.grad(penalty, [w] + ([b, x] if nonlinear else []))


def _check_penalty(ours, ref, x_shape, w_shape, b_size):
    for nonlinear in (False, True):
        x = make(x_shape, D64, requires_grad=True)
        w = make(w_shape, D64, requires_grad=True)
        b = make((b_size,), D64, requires_grad=True)
        p_ours, g_ours = _gradient_penalty(ours, x, w, b, nonlinear)
        p_ref, g_ref = _gradient_penalty(ref, x, w, b, nonlinear)
        assert_close(p_ours, p_ref, scale=10)
        assert len(g_ours) == len(g_ref)
        for a, r in zip(g_ours, g_ref):
            assert a.shape == r.shape
            assert r.abs().max() > 0  # the check is not vacuous
            assert_close(a, r, scale=10)


# (x_shape, w_shape, stride, padding, dilation, groups)
PENALTY_CONV2D = [
    ((2, 3, 6, 6), (4, 3, 3, 3), 1, 1, 1, 1),
    ((2, 4, 7, 6), (4, 2, 3, 2), 2, (1, 0), (1, 2), 2),
]


@pytest.mark.parametrize("cfg", PENALTY_CONV2D, ids=["plain", "strided_grouped_dilated"])
def test_gradient_penalty_conv2d(cfg):
    xs, ws, stride, padding, dilation, groups = cfg
    _check_penalty(lambda x, w, b: cF.conv2d(x, w, b, stride, padding, dilation, groups),
                   lambda x, w, b: F.conv2d(x, w, b, stride, padding, dilation, groups), xs, ws, ws[0])


# (x_shape, w_shape, stride, padding, output_padding, groups, dilation)
PENALTY_CT2D = [
    ((2, 3, 4, 4), (3, 4, 3, 3), 1, 1, 0, 1, 1),
    ((2, 4, 4, 5), (4, 2, 3, 2), 2, (1, 0), 1, 2, (1, 2)),
    ((1, 2, 4, 3), (2, 3, 3, 2), 1, 0, 2, 1, 3),  # output_padding >= stride
]


@pytest.mark.parametrize("cfg", PENALTY_CT2D, ids=["plain", "strided_grouped_dilated", "op_ge_stride"])
def test_gradient_penalty_conv_transpose2d(cfg):
    xs, ws, stride, padding, op, groups, dilation = cfg
    _check_penalty(lambda x, w, b: cF.conv_transpose2d(x, w, b, stride, padding, op, groups, dilation),
                   lambda x, w, b: F.conv_transpose2d(x, w, b, stride, padding, op, groups, dilation),
                   xs, ws, ws[1] * groups)


@pytest.mark.parametrize("which", ["conv2d", "conv_transpose2d"])
def test_hessian_vector_product_matches_torch(which):
    if which == "conv2d":
        x_shape, w_shape = (2, 2, 5, 5), (3, 2, 3, 3)
        ours = lambda x, w: cF.conv2d(x, w, None, 2, 1)  # noqa: E731
        ref = lambda x, w: F.conv2d(x, w, None, 2, 1)  # noqa: E731
    else:
        x_shape, w_shape = (2, 2, 3, 4), (2, 3, 3, 3)
        ours = lambda x, w: cF.conv_transpose2d(x, w, None, 2, 1, 1)  # noqa: E731
        ref = lambda x, w: F.conv_transpose2d(x, w, None, 2, 1, 1)  # noqa: E731
    x = make(x_shape, D64)
    w = make(w_shape, D64)
    v = make(w_shape, D64)

    def loss_fn(conv):
        return lambda w_: (torch.sin(conv(x, w_)) ** 2).sum()

    _, hvp_ours = torch.autograd.functional.hvp(loss_fn(ours), w, v)
    _, hvp_ref = torch.autograd.functional.hvp(loss_fn(ref), w, v)
    assert hvp_ref.abs().max() > 0
    assert_close(hvp_ours, hvp_ref, scale=10)


# ----------------------------------------------------------------------------- (g) opcheck

def _opcheck_samples():
    def t(shape, rg=False, layout="contiguous"):
        return make(shape, torch.float32, layout=layout, requires_grad=rg)
    return {
        "plain": (t((2, 3, 4, 4)), t((3, 2, 3, 3)), t((2,)), [1, 1], [0, 0], [0, 0], 1, [1, 1]),
        "grad_strided_grouped": (t((2, 4, 3, 5), True), t((4, 2, 2, 3), True), t((4,), True),
                                 [2, 1], [1, 0], [1, 0], 2, [1, 2]),
        "grad_op_ge_stride_no_bias": (t((1, 2, 3, 4), True), t((2, 3, 3, 2), True), None,
                                      [1, 2], [0, 1], [2, 1], 1, [3, 1]),
        "channels_last": (t((2, 3, 4, 5), True, "channels_last"), t((3, 2, 2, 2), True), None,
                          [2, 2], [0, 0], [1, 1], 1, [1, 1]),
        "float64": (make((1, 2, 3, 3), D64, requires_grad=True), make((2, 2, 2, 2), D64), None,
                    [2, 2], [1, 1], [0, 1], 1, [1, 1]),
    }


@pytest.mark.parametrize("name", list(_opcheck_samples().keys()))
def test_opcheck_conv_transpose2d(name):
    args = _opcheck_samples()[name]
    results = torch.library.opcheck(ops.conv_transpose2d.default, args)
    assert results and all(v == "SUCCESS" for v in results.values()), results


# ----------------------------------------------------------------------------- (h) torch.compile

def _compile_case(dynamic):
    torch._dynamo.reset()

    def fn(x, w, b):
        return cF.conv_transpose2d(x, w, b, stride=2, padding=1, output_padding=1, groups=2, dilation=(1, 2))

    compiled = torch.compile(fn, fullgraph=True, dynamic=dynamic)
    shapes = [(2, 4, 5, 6)] + ([(3, 4, 7, 4)] if dynamic else [])
    for xs in shapes:
        x = make(xs, requires_grad=True)
        w = make((4, 3, 3, 2), requires_grad=True)
        b = make((6,), requires_grad=True)
        out_c = compiled(x, w, b)
        out_e = fn(x, w, b)
        assert out_c.shape == out_e.shape
        assert_close(out_c, out_e)
        g = torch.randn_like(out_e)
        for a, r in zip(grads_of(out_c, [x, w, b], g), grads_of(out_e, [x, w, b], g)):
            assert_close(a, r, scale=2)
        # and against torch itself
        assert_close(out_e, F.conv_transpose2d(x, w, b, 2, 1, 1, 2, (1, 2)))


def test_compile_fullgraph_static():
    _compile_case(dynamic=False)


def test_compile_fullgraph_dynamic():
    _compile_case(dynamic=True)


# ----------------------------------------------------------------------------- (i) adjoint identity

# (x_shape, w_shape (conv2d layout O, C/g, kh, kw), stride, padding, dilation, groups)
ADJOINT = [
    ((2, 3, 7, 6), (4, 3, 3, 3), 1, 0, 1, 1),
    ((2, 3, 8, 9), (2, 3, 3, 2), 2, 1, 1, 1),
    ((1, 4, 9, 10), (6, 2, 3, 3), (3, 2), (1, 2), (2, 1), 2),
    ((2, 2, 10, 7), (2, 1, 2, 3), (2, 3), 0, (3, 2), 2),
]


@pytest.mark.parametrize("cfg", ADJOINT, ids=[f"cfg{i}" for i in range(len(ADJOINT))])
def test_adjoint_identity(cfg):
    xs, ws, stride, padding, dilation, groups = cfg
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    x = make(xs, D64)
    w = make(ws, D64)
    y_full = cF.conv2d(x, w, None, stride, padding, dilation, groups)
    y = make(tuple(y_full.shape), D64)
    op = []
    for i in range(2):
        base = (y.shape[2 + i] - 1) * stride[i] - 2 * padding[i] + dilation[i] * (ws[2 + i] - 1) + 1
        op.append(xs[2 + i] - base)
    assert all(0 <= p < max(s, d) for p, s, d in zip(op, stride, dilation))
    xt = cF.conv_transpose2d(y, w, None, stride, padding, op, groups, dilation)
    assert xt.shape == x.shape
    lhs = (y_full * y).sum()
    rhs = (x * xt).sum()
    torch.testing.assert_close(lhs, rhs, rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------- (j) textbook example

def test_textbook_example():
    x = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])
    k = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])
    expected = torch.tensor([[[[0.0, 0.0, 1.0], [0.0, 4.0, 6.0], [4.0, 12.0, 9.0]]]])
    torch.testing.assert_close(cF.conv_transpose2d(x, k, stride=1), expected, rtol=0, atol=0)
    torch.testing.assert_close(cF.conv_transpose2d(x.double(), k.double()), expected.double(), rtol=0, atol=0)
    torch.testing.assert_close(cF.conv_transpose2d(x[0], k), expected[0], rtol=0, atol=0)


def test_textbook_example_stride2():
    # each input pixel stamps a scaled copy of the kernel onto a 2x-spaced grid
    x = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])
    k = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])
    expected = torch.tensor([[[[0.0, 0.0, 0.0, 1.0],
                               [0.0, 0.0, 2.0, 3.0],
                               [0.0, 2.0, 0.0, 3.0],
                               [4.0, 6.0, 6.0, 9.0]]]])
    torch.testing.assert_close(cF.conv_transpose2d(x, k, stride=2), expected, rtol=0, atol=0)


def test_conv_transpose1d_textbook():
    x = torch.tensor([[[1.0, 2.0, 3.0]]])
    k = torch.tensor([[[1.0, 10.0]]])
    expected = torch.tensor([[[1.0, 12.0, 23.0, 30.0]]])
    torch.testing.assert_close(cF.conv_transpose1d(x, k), expected, rtol=0, atol=0)


# ----------------------------------------------------------------------------- (k) modules

MODULE_CFGS_2D = [
    dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1, output_padding=1, groups=2,
         bias=True, dilation=1),
    dict(in_channels=3, out_channels=2, kernel_size=(2, 3), stride=(1, 2), padding=(0, 1),
         output_padding=(2, 1), groups=1, bias=False, dilation=(3, 1)),
]
MODULE_CFGS_1D = [
    dict(in_channels=4, out_channels=2, kernel_size=3, stride=2, padding=1, output_padding=1, groups=2,
         bias=True, dilation=1),
    dict(in_channels=2, out_channels=3, kernel_size=2, stride=1, padding=0, output_padding=1, groups=1,
         bias=False, dilation=2),
]


def _module_pair(kind, cfg, seed=123):
    torch_cls = getattr(torch.nn, kind)
    ours_cls = getattr(convops.nn, kind)
    torch.manual_seed(seed)
    ref = torch_cls(**cfg)
    torch.manual_seed(seed)
    ours = ours_cls(**cfg)
    return ours, ref


@pytest.mark.parametrize("kind,cfg", [("ConvTranspose2d", c) for c in MODULE_CFGS_2D]
                         + [("ConvTranspose1d", c) for c in MODULE_CFGS_1D])
def test_module_init_state_dict_and_parity(kind, cfg):
    ours, ref = _module_pair(kind, cfg)
    assert isinstance(ours, getattr(torch.nn, kind))
    sd_o, sd_r = ours.state_dict(), ref.state_dict()
    assert list(sd_o.keys()) == list(sd_r.keys())
    for k in sd_r:
        assert sd_o[k].shape == sd_r[k].shape
        torch.testing.assert_close(sd_o[k], sd_r[k], rtol=0, atol=0)
    assert repr(ours).split("(", 1)[1] == repr(ref).split("(", 1)[1]

    # loading each other's state dict works and gives identical parameters
    ref2 = copy.deepcopy(ref)
    with torch.no_grad():
        for p in ref2.parameters():
            p.normal_()
    ours.load_state_dict(ref2.state_dict())
    ref.load_state_dict(ref2.state_dict())

    spatial = 2 if kind.endswith("2d") else 1
    x = make((2, cfg["in_channels"]) + (5, 4)[:spatial], requires_grad=True)
    out_o = ours(x)
    out_r = ref(x)
    assert_close(out_o, out_r)
    g = torch.randn_like(out_r)
    params_o = [x] + list(ours.parameters())
    params_r = [x] + list(ref.parameters())
    for a, r in zip(grads_of(out_o, params_o, g), grads_of(out_r, params_r, g)):
        assert_close(a, r)
    # unbatched
    assert_close(ours(x[0]), ref(x[0]))


@pytest.mark.parametrize("spatial_size_only", [True, False])
def test_module_output_size_2d(spatial_size_only):
    cfg = dict(in_channels=2, out_channels=4, kernel_size=3, stride=(3, 2), padding=1, groups=2)
    ours, ref = _module_pair("ConvTranspose2d", cfg)
    x = make((2, 2, 4, 5))
    base = ref(x).shape[2:]  # smallest valid size: (10, 9)
    for extra in [(0, 0), (1, 0), (2, 1), (0, 1)]:
        size = [base[0] + extra[0], base[1] + extra[1]]
        if not spatial_size_only:
            size = [2, 4] + size
        out_o = ours(x, output_size=size)
        out_r = ref(x, output_size=size)
        assert list(out_o.shape[2:]) == list(size[-2:])
        assert_close(out_o, out_r)
    # dilation > stride allows output_size beyond base + stride - 1
    cfg_d = dict(in_channels=2, out_channels=2, kernel_size=3, stride=1, dilation=3)
    ours_d, ref_d = _module_pair("ConvTranspose2d", cfg_d)
    xd = make((1, 2, 3, 3))
    # torch's module accepts output sizes up to min + stride - 1 only (here exactly 9 x 9)
    assert_close(ours_d(xd, output_size=[9, 9]), ref_d(xd, output_size=[9, 9]))
    for size in ([10, 9], [9, 11]):
        with pytest.raises(ValueError) as e_ref:
            ref_d(xd, output_size=size)
        with pytest.raises(ValueError, match=re.escape(str(e_ref.value))):
            ours_d(xd, output_size=size)


def test_module_output_size_1d():
    cfg = dict(in_channels=2, out_channels=3, kernel_size=3, stride=3, padding=1)
    ours, ref = _module_pair("ConvTranspose1d", cfg)
    x = make((2, 2, 5))
    for size in ([13], [14], [15], [2, 3, 14]):
        out_o = ours(x, output_size=size)
        assert out_o.shape[-1] == size[-1]
        assert_close(out_o, ref(x, output_size=size))
    with pytest.raises(ValueError) as e_ref:
        ref(x, output_size=[16])
    with pytest.raises(ValueError, match=re.escape(str(e_ref.value))):
        ours(x, output_size=[16])


@pytest.mark.parametrize("bad_size", [[9, 9], [13, 9], [10, 12], [2, 4, 100, 100]])
def test_module_impossible_output_size_raises_like_torch(bad_size):
    cfg = dict(in_channels=2, out_channels=4, kernel_size=3, stride=(3, 2), padding=1, groups=2)
    ours, ref = _module_pair("ConvTranspose2d", cfg)
    x = make((2, 2, 4, 5))
    with pytest.raises(Exception) as e_ref:
        ref(x, output_size=bad_size)
    assert type(e_ref.value) is ValueError
    with pytest.raises(ValueError) as e_ours:
        ours(x, output_size=bad_size)
    assert type(e_ours.value) is type(e_ref.value)
    assert str(e_ours.value) == str(e_ref.value)


def test_module_wrong_output_size_length_raises_like_torch():
    ours, ref = _module_pair("ConvTranspose2d", dict(in_channels=2, out_channels=2, kernel_size=3))
    x = make((1, 2, 4, 4))
    with pytest.raises(Exception) as e_ref:
        ref(x, output_size=[6])
    with pytest.raises(type(e_ref.value)) as e_ours:
        ours(x, output_size=[6])
    assert str(e_ours.value) == str(e_ref.value)


def test_module_non_zeros_padding_mode_rejected_like_torch():
    with pytest.raises(ValueError) as e_ref:
        torch.nn.ConvTranspose2d(2, 2, 3, padding_mode="reflect")
    with pytest.raises(ValueError) as e_ours:
        convops.nn.ConvTranspose2d(2, 2, 3, padding_mode="reflect")
    assert str(e_ours.value) == str(e_ref.value)


def test_convert_sequential_with_conv_transpose():
    torch.manual_seed(7)
    model = torch.nn.Sequential(
        torch.nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1, output_padding=1),
        torch.nn.ReLU(),
        torch.nn.Sequential(torch.nn.ConvTranspose2d(4, 2, (2, 3), groups=2, dilation=(2, 1))),
    )
    reference = copy.deepcopy(model)
    weights_before = [p for p in model.parameters()]
    converted = convops.convert(model)
    assert type(converted[0]) is convops.nn.ConvTranspose2d
    assert type(converted[2][0]) is convops.nn.ConvTranspose2d
    assert isinstance(converted[1], torch.nn.ReLU)
    assert all(a is b for a, b in zip(converted.parameters(), weights_before))
    assert converted.state_dict().keys() == reference.state_dict().keys()
    x = make((2, 3, 4, 5), requires_grad=True)
    out_c = converted(x)
    out_r = reference(x)
    assert_close(out_c, out_r)
    g = torch.randn_like(out_r)
    for a, r in zip(grads_of(out_c, [x] + list(converted.parameters()), g),
                    grads_of(out_r, [x] + list(reference.parameters()), g)):
        assert_close(a, r)


def test_convert_single_conv_transpose1d():
    ref = torch.nn.ConvTranspose1d(2, 3, 3, stride=2)
    conv = convops.convert(ref)
    assert type(conv) is convops.nn.ConvTranspose1d
    assert conv.weight is ref.weight and conv.bias is ref.bias
    x = make((2, 2, 5))
    assert_close(conv(x), F.conv_transpose1d(x, ref.weight, ref.bias, stride=2))


# ----------------------------------------------------------------------------- (l) bad input

def _x(shape=(2, 4, 5, 5)):
    return make(shape)


def _w(shape=(4, 3, 3, 3)):
    return make(shape)


BAD_CASES = {
    "output_padding_ge_stride_and_dilation": ((_x(), _w()), dict(stride=2, output_padding=2),
                                              r"output padding must be smaller than either stride or dilation"),
    "output_padding_eq_stride_one_dim": ((_x(), _w()), dict(stride=(2, 3), output_padding=(1, 3)),
                                         r"output padding must be smaller than either stride or dilation"),
    "output_padding_eq_dilation": ((_x(), _w()), dict(stride=1, dilation=2, output_padding=2),
                                   r"output padding must be smaller than either stride or dilation"),
    "negative_output_padding": ((_x(), _w()), dict(stride=2, output_padding=-1),
                                r"negative output_padding is not supported"),
    "weight_not_divisible_by_groups": ((_x((2, 5, 5, 5)), _w((5, 3, 3, 3))), dict(groups=2),
                                       r"expected weight to be divisible by 2 at dimension 0"),
    "input_channels_mismatch": ((_x((2, 3, 5, 5)), _w()), {},
                                r"expected input\[2, 3, 5, 5\] to have 4 channels, but got 3 channels"),
    "input_channels_mismatch_groups": ((_x((2, 2, 5, 5)), _w()), dict(groups=2),
                                       r"to have 4 channels, but got 2 channels"),
    "zero_stride": ((_x(), _w()), dict(stride=0), r"non-positive stride is not supported"),
    "negative_stride": ((_x(), _w()), dict(stride=(1, -2)), r"non-positive stride is not supported"),
    "negative_padding": ((_x(), _w()), dict(padding=(0, -1)), r"negative padding is not supported"),
    "zero_groups": ((_x(), _w()), dict(groups=0), r"non-positive groups is not supported"),
    "output_too_small": ((_x((1, 4, 1, 1)), _w()), dict(padding=3), r"Output size is too small"),
    "output_too_small_one_dim": ((_x((1, 4, 2, 6)), _w()), dict(padding=(2, 0)), r"Output size is too small"),
    "bias_wrong_size": ((_x(), _w(), make((4,))), {}, r"expected bias to be 1-dimensional with 3 elements"),
    "bias_wrong_size_groups": ((_x(), _w((4, 3, 3, 3)), make((3,))), dict(groups=2),
                               r"expected bias to be 1-dimensional with 6 elements"),
    "bias_2d": ((_x(), _w(), make((3, 1))), {}, r"expected bias to be 1-dimensional"),
    "input_rank_5": ((_x((1, 2, 4, 5, 5)), _w()), {},
                     r"Expected 3D \(unbatched\) or 4D \(batched\) input to conv_transpose2d"),
    "input_rank_2": ((_x((4, 5)), _w()), {},
                     r"Expected 3D \(unbatched\) or 4D \(batched\) input to conv_transpose2d"),
    "stride_wrong_length": ((_x(), _w()), dict(stride=(1, 2, 3)),
                            r"expected stride to be a single integer value or a list of 2 values"),
}


@pytest.mark.parametrize("name", list(BAD_CASES.keys()))
def test_bad_input_raises_like_torch(name):
    args, kwargs, pattern = BAD_CASES[name]
    with pytest.raises(Exception) as e_ref:
        F.conv_transpose2d(*args, **kwargs)
    assert re.search(pattern, str(e_ref.value)), f"torch's message changed: {e_ref.value}"
    expected_type = type(e_ref.value)
    with pytest.raises(Exception) as e_ours:
        cF.conv_transpose2d(*args, **kwargs)
    assert isinstance(e_ours.value, expected_type), (type(e_ours.value), expected_type)
    assert re.search(pattern, str(e_ours.value)), str(e_ours.value)


@pytest.mark.parametrize("dilation", [0, (1, 0), (-1, 1)])
def test_non_positive_dilation_raises(dilation):
    x, w = _x(), _w()
    with pytest.raises(RuntimeError):
        F.conv_transpose2d(x, w, dilation=dilation)
    with pytest.raises(RuntimeError, match="dilation"):
        cF.conv_transpose2d(x, w, dilation=dilation)


def test_bad_input_1d_raises_like_torch():
    x, w = make((2, 4, 5)), make((4, 2, 3))
    for kwargs, pattern in [(dict(stride=2, output_padding=2), "output padding must be smaller"),
                            (dict(stride=0), "non-positive stride"),
                            (dict(padding=-1), "negative padding"),
                            (dict(padding=4), "Output size is too small")]:
        with pytest.raises(RuntimeError):  # torch's 1-D "too small" message comes from oneDNN
            F.conv_transpose1d(x, w, **kwargs)
        with pytest.raises(RuntimeError, match=pattern):
            cF.conv_transpose1d(x, w, **kwargs)
    with pytest.raises(RuntimeError, match="to have 4 channels, but got 3 channels"):
        F.conv_transpose1d(make((2, 3, 5)), w)
    with pytest.raises(RuntimeError, match="to have 4 channels, but got 3 channels"):
        cF.conv_transpose1d(make((2, 3, 5)), w)


RAW_OK = dict(stride=[1, 1], padding=[0, 0], output_padding=[0, 0], groups=1, dilation=[1, 1])
RAW_BAD = {
    "input_3d": dict(input=make((4, 5, 5))),
    "weight_3d": dict(weight=make((4, 3, 3))),
    "stride_len1": dict(stride=[1]),
    "padding_len3": dict(padding=[0, 0, 0]),
    "output_padding_len1": dict(output_padding=[0]),
    "zero_stride": dict(stride=[0, 1]),
    "negative_padding": dict(padding=[-1, 0]),
    "zero_dilation": dict(dilation=[1, 0]),
    "output_padding_too_large": dict(output_padding=[1, 0]),
    "zero_groups": dict(groups=0),
    "groups_not_dividing": dict(groups=3),
    "channel_mismatch": dict(input=make((2, 3, 5, 5))),
    "bias_wrong_size": dict(bias=make((5,))),
    "integer_dtype": dict(input=torch.ones(2, 4, 5, 5, dtype=torch.int64),
                          weight=torch.ones(4, 3, 3, 3, dtype=torch.int64)),
    "dtype_mismatch": dict(weight=make((4, 3, 3, 3), D64)),
    "output_too_small": dict(input=make((1, 4, 1, 1)), padding=[3, 3]),
}


def test_raw_op_good_args_match_torch():
    x, w, b = make((2, 4, 5, 5)), make((4, 3, 3, 3)), make((3,))
    out = ops.conv_transpose2d(x, w, b, [2, 1], [1, 0], [1, 0], 1, [1, 2])
    assert_close(out, F.conv_transpose2d(x, w, b, (2, 1), (1, 0), (1, 0), 1, (1, 2)))


@pytest.mark.parametrize("name", list(RAW_BAD.keys()))
def test_raw_op_bad_args_raise_runtime_error(name):
    args = dict(input=make((2, 4, 5, 5)), weight=make((4, 3, 3, 3)), bias=None, **RAW_OK)
    args.update(RAW_BAD[name])
    with pytest.raises(RuntimeError):
        ops.conv_transpose2d(args["input"], args["weight"], args["bias"], args["stride"], args["padding"],
                             args["output_padding"], args["groups"], args["dilation"])


# ----------------------------------------------------------------------------- (m) device parity

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_device_parity_conv_transpose2d(device, dtype):
    x = make((2, 4, 5, 6), dtype, device=device, requires_grad=True)
    w = make((4, 3, 3, 2), dtype, device=device, requires_grad=True)
    b = make((6,), dtype, device=device, requires_grad=True)
    hyper = dict(stride=2, padding=1, output_padding=1, groups=2, dilation=(1, 2))
    out = compare_with_reference(lambda x, w, b: cF.conv_transpose2d(x, w, b, **hyper),
                                 lambda x, w, b: F.conv_transpose2d(x, w, b, **hyper), [x, w, b], dtype)
    assert out.device.type == device


def test_device_parity_conv_transpose2d_op_ge_stride(device):
    x = make((1, 2, 4, 3), D64, device=device, requires_grad=True)
    w = make((2, 3, 3, 2), D64, device=device, requires_grad=True)
    hyper = dict(stride=1, padding=0, output_padding=2, dilation=3)
    compare_with_reference(lambda x, w: cF.conv_transpose2d(x, w, **hyper),
                           lambda x, w: F.conv_transpose2d(x, w, **hyper), [x, w], D64)


def test_device_parity_conv_transpose1d(device):
    x = make((2, 4, 7), device=device, requires_grad=True)
    w = make((4, 2, 3), device=device, requires_grad=True)
    b = make((4,), device=device, requires_grad=True)
    hyper = dict(stride=3, padding=1, output_padding=2, groups=2)
    compare_with_reference(lambda x, w, b: cF.conv_transpose1d(x, w, b, **hyper),
                           lambda x, w, b: F.conv_transpose1d(x, w, b, **hyper), [x, w, b], torch.float32)


# ----------------------------------------------------------------------------- (n) determinism

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_determinism(dtype):
    x = make((4, 16, 12, 12), dtype)
    w = make((16, 8, 3, 3), dtype)
    b = make((16,), dtype)
    g = None
    results = []
    for _ in range(3):
        xr, wr, br = (t.detach().clone().requires_grad_(True) for t in (x, w, b))
        out = cF.conv_transpose2d(xr, wr, br, stride=2, padding=1, output_padding=1, groups=2)
        if g is None:
            g = torch.randn_like(out)
        grads = grads_of(out, [xr, wr, br], g)
        results.append([out.detach()] + grads)
    for other in results[1:]:
        for a, r in zip(results[0], other):
            assert torch.equal(a, r)
