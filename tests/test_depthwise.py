"""Depthwise convolution (groups == input channels) against F.conv2d(groups=C): through conv2d's
dispatch to the depthwise kernels and through the depthwise_conv2d op; outputs and all
gradients, dtypes, layouts, autograd checks, opcheck, torch.compile, determinism, errors."""
import math

import pytest
import torch
import torch.nn.functional as F

import convops.functional as cF
from convops.ops import DepthwiseConv2dFunction

from conftest import assert_close, compare_with_reference, make, num_threads

ops = torch.ops.convops


def _ref(x, w, b, **kw):
    return F.conv2d(x, w, b, groups=x.shape[-3], **kw)


def _via_conv2d(x, w, b, **kw):
    return cF.conv2d(x, w, b, groups=x.shape[-3], **kw)


PATHS = {"conv2d": _via_conv2d, "depthwise_conv2d": cF.depthwise_conv2d}


def _run(x_shape, m, k, kw, dtype, path, x_layout="contiguous", bias=True, w_layout="contiguous"):
    torch.manual_seed(0)
    channels = x_shape[-3]
    x = make(x_shape, dtype, layout=x_layout, requires_grad=True)
    w = make((channels * m, 1, *k), dtype, layout=w_layout, requires_grad=True)
    b = make((channels * m,), dtype, requires_grad=True) if bias else None
    scale = max(1.0, math.sqrt(math.prod(k) * (x_shape[0] if len(x_shape) == 4 else 1)) / 3)
    return compare_with_reference(lambda x, w, b: PATHS[path](x, w, b, **kw),
                                  lambda x, w, b: _ref(x, w, b, **kw), [x, w, b], dtype, scale)


# (input shape, depth multiplier, kernel, kwargs)
CASES = {
    "k3_pad1": ((2, 5, 9, 11), 1, (3, 3), dict(padding=1)),
    "k1": ((2, 4, 6, 7), 1, (1, 1), {}),
    "k1_mult2_stride2": ((2, 3, 7, 9), 2, (1, 1), dict(stride=2)),
    "k5_pad2": ((1, 3, 11, 19), 1, (5, 5), dict(padding=2)),
    "k3x5_asym": ((2, 4, 10, 13), 1, (3, 5), dict(padding=(1, 2), stride=(1, 2))),
    "stride2_pad1": ((2, 6, 13, 12), 1, (3, 3), dict(stride=2, padding=1)),
    "stride2_pad0_odd": ((2, 3, 9, 15), 1, (3, 3), dict(stride=2)),
    "dilation2_pad2": ((2, 4, 12, 11), 1, (3, 3), dict(dilation=2, padding=2)),
    "dil2_stride2_k3x5": ((1, 3, 14, 17), 2, (3, 5), dict(dilation=2, stride=2, padding=(1, 2))),
    "mult2_pad1": ((2, 3, 8, 8), 2, (3, 3), dict(padding=1)),
    "mult3_stride_rect": ((1, 4, 9, 7), 3, (5, 3), dict(stride=(2, 1), padding=(2, 1))),
    "pad_gt_half_kernel": ((2, 3, 5, 6), 1, (3, 3), dict(padding=2)),
    "same_odd": ((2, 4, 7, 9), 1, (3, 3), dict(padding="same")),
    "same_even_dil": ((1, 3, 8, 9), 2, (2, 4), dict(padding="same", dilation=(2, 1))),
    "valid": ((2, 4, 7, 9), 1, (3, 3), dict(padding="valid")),
    "wide_rows": ((1, 3, 5, 70), 1, (3, 3), dict(padding=1)),
    # Stride 2 on rows of several vectors: the padded copy splits whole vectors into the
    # even and odd columns, the row's ends element by element (pad 1 and 0, odd and even).
    "wide_stride2_pad1": ((2, 3, 5, 75), 1, (3, 3), dict(stride=2, padding=1)),
    "wide_stride2_pad0_mult2": ((1, 2, 6, 68), 2, (3, 3), dict(stride=2)),
    "wide_stride2_pad3_k7": ((1, 2, 8, 41), 1, (7, 7), dict(stride=2, padding=3)),
    # Planes computed as one dense run (stride 1, output width == input width): below one
    # vector, MobileNet's 7x7, rows of exactly one vector, a wide kernel row.
    "tiny_plane_same": ((2, 3, 3, 3), 1, (3, 3), dict(padding=1)),
    "mobilenet_7x7": ((2, 5, 7, 7), 1, (3, 3), dict(padding=1)),
    "rows_of_16": ((1, 3, 4, 32), 1, (3, 3), dict(padding=1)),
    "k1x7_same": ((1, 2, 6, 10), 1, (1, 7), dict(padding=(0, 3))),
    "wide_stride3": ((1, 2, 6, 53), 1, (3, 3), dict(stride=3, padding=1)),
    "single_pixel_out": ((2, 3, 3, 3), 1, (3, 3), {}),
    "one_channel": ((3, 1, 6, 7), 4, (3, 3), dict(padding=1)),
    "many_channels": ((2, 33, 5, 6), 1, (3, 3), dict(padding=1)),
    "batch0": ((0, 4, 5, 5), 1, (3, 3), dict(padding=1)),
    "unbatched": ((4, 7, 8), 2, (3, 3), dict(padding=1, stride=2)),
}


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", list(CASES))
def test_depthwise_parity(case, dtype, path):
    x_shape, m, k, kw = CASES[case]
    out = _run(x_shape, m, k, kw, dtype, path)
    assert out.dim() == len(x_shape)


@pytest.mark.parametrize("path", list(PATHS))
def test_depthwise_without_bias(path):
    _run((2, 4, 7, 8), 2, (3, 3), dict(padding=1, stride=2), torch.float64, path, bias=False)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("case", ["k3_pad1", "dil2_stride2_k3x5", "mult2_pad1"])
def test_depthwise_low_precision(case, layout, dtype):
    x_shape, m, k, kw = CASES[case]
    out = _run(x_shape, m, k, kw, dtype, "depthwise_conv2d", x_layout=layout)
    assert out.dtype == dtype


# channels_last runs its own kernels (along channels) when m == 1: cover channel counts around
# a vector (16 float32 / 8 float64 lanes), padding, stride, dilation, kernel sizes.
CL_CASES = {
    "c5_k3": ((2, 5, 7, 9), 1, (3, 3), dict(padding=1)),
    "c16_k3_stride2": ((2, 16, 9, 8), 1, (3, 3), dict(stride=2, padding=1)),
    "c19_k5_dil": ((1, 19, 11, 10), 1, (5, 3), dict(dilation=(1, 2), padding=(2, 3))),
    "c40_k3x5_stride": ((2, 40, 8, 11), 1, (3, 5), dict(stride=(2, 3), padding=(0, 2))),
    "c8_k1": ((2, 8, 5, 5), 1, (1, 1), {}),
    "c6_mult2": ((2, 6, 7, 7), 2, (3, 3), dict(padding=1)),
    "c4_same_even": ((1, 4, 6, 7), 1, (2, 4), dict(padding="same")),
    # Wide and tall: blocks of 8 pixels, and the weight gradient's bands of rows (tasks).
    "c20_wide_bands": ((2, 20, 61, 70), 1, (3, 3), dict(padding=1)),
    "c33_stride2_dil2_bands": ((1, 33, 80, 90), 1, (3, 3), dict(stride=2, padding=1, dilation=2)),
    # Many channels: the forward's tasks take blocks of four vectors of channels, the last
    # block ending in a partial vector (float64: a block of the tail alone).
    "c100_channel_blocks": ((2, 100, 9, 30), 1, (3, 3), dict(padding=1)),
    "c70_channel_blocks_k5_s2": ((1, 70, 11, 40), 1, (5, 5), dict(stride=2, padding=2)),
}


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", list(CL_CASES))
def test_depthwise_channels_last(case, dtype, path):
    x_shape, m, k, kw = CL_CASES[case]
    out = _run(x_shape, m, k, kw, dtype, path, x_layout="channels_last")
    assert out.is_contiguous(memory_format=torch.channels_last)


# A large channels_last forward output (a third of the last-level cache) is written with
# streaming stores when its channels are whole vectors; CONVOPS_DW_STREAMING_BYTES=0 forces
# that on these small shapes: the same numbers as the regular stores, and as torch's.
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("x_shape, kw", [
    ((2, 32, 9, 30), dict(padding=1)),                 # whole vectors either dtype, 8-pixel blocks
    ((2, 16, 9, 8), dict(stride=2, padding=1)),
    ((1, 40, 7, 21), dict(padding=(0, 2), dilation=(1, 2))),  # whole float64 vectors only
    ((2, 20, 6, 19), dict(padding=1)),                 # a partial vector: regular stores
], ids=["c32", "c16_stride2", "c40_dil", "c20_tail"])
def test_depthwise_channels_last_streaming(x_shape, kw, dtype, monkeypatch):
    c = x_shape[1]
    x = make(x_shape, dtype, layout="channels_last")
    w = make((c, 1, 3, 3), dtype)
    b = make((c,), dtype)
    monkeypatch.setenv("CONVOPS_DW_STREAMING_BYTES", str(1 << 60))
    regular = cF.conv2d(x, w, b, groups=c, **kw)
    monkeypatch.setenv("CONVOPS_DW_STREAMING_BYTES", "0")
    streamed = cF.conv2d(x, w, b, groups=c, **kw)
    assert streamed.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(streamed, regular)
    assert_close(streamed, F.conv2d(x, w, b, groups=c, **kw), dtype)


@pytest.mark.parametrize("w_layout", ["contiguous", "strided"])
@pytest.mark.parametrize("x_layout", ["strided", "channels_last"])
def test_depthwise_strided_inputs(x_layout, w_layout):
    out = _run((2, 6, 7, 9), 1, (3, 3), dict(padding=1, stride=(1, 2)), torch.float64, "conv2d",
               x_layout=x_layout, w_layout=w_layout)
    ref = F.conv2d(make((2, 6, 7, 9), layout=x_layout), make((6, 1, 3, 3)), None, (1, 2), 1, 1, 6)
    assert out.is_contiguous(memory_format=torch.channels_last) == \
        ref.is_contiguous(memory_format=torch.channels_last)


def test_depthwise_permuted_view():
    torch.manual_seed(0)
    x = torch.randn(2, 9, 3, 8, dtype=torch.float64).permute(0, 2, 1, 3).requires_grad_()  # (2, 3, 9, 8)
    w = torch.randn(6, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    compare_with_reference(lambda x, w: cF.depthwise_conv2d(x, w, padding=1),
                           lambda x, w: F.conv2d(x, w, padding=1, groups=3), [x, w], torch.float64)


def test_depthwise_transposed_conv_parity():
    """conv_transpose2d with groups = channels and one output channel per group is the
    depthwise kernels' input gradient, with conv_transpose2d's own bias and output_padding."""
    torch.manual_seed(0)
    for kw in [dict(stride=2, padding=1, output_padding=1), dict(stride=1, padding=2, dilation=2),
               dict(stride=(2, 3), padding=(0, 1), output_padding=(1, 2), dilation=(1, 3))]:
        for m in (1, 2):
            x = make((2, 3 * m, 5, 6), torch.float64, requires_grad=True)
            w = make((3 * m, 1, 3, 3), torch.float64, requires_grad=True)
            b = make((3,), torch.float64, requires_grad=True)
            compare_with_reference(lambda x, w, b: cF.conv_transpose2d(x, w, b, groups=3, **kw),
                                   lambda x, w, b: F.conv_transpose2d(x, w, b, groups=3, **kw),
                                   [x, w, b], torch.float64)


def test_depthwise_nan_inf_propagate_like_torch():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 19)
    x[0, 1, 2, 3] = float("nan")
    x[1, 0, 0, 0] = float("inf")
    w = torch.randn(3, 1, 3, 3)
    for layout in ["contiguous", "channels_last"]:
        xl = x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x
        for kw in [dict(padding=1), dict(stride=2)]:
            ref = F.conv2d(xl, w, groups=3, **kw)
            out = cF.depthwise_conv2d(xl, w, **kw)
            assert torch.equal(out.isnan(), ref.isnan()) and torch.equal(out.isinf(), ref.isinf())
            torch.testing.assert_close(out, ref, equal_nan=True, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_depthwise_weight_grad_inf_at_row_ends_like_torch(layout):
    # Infinite inputs at the first and last columns: taps that would read them through the
    # padding must not turn 0 * inf into NaN in the weight gradient.
    torch.manual_seed(0)
    x = torch.randn(2, 3, 7, 7)
    x[0, 1, 3, 0] = float("inf")
    x[1, 2, 4, 6] = -float("inf")
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(3, 1, 3, 3)
    grad = torch.randn(2, 3, 7, 7)
    wr, wc = w.clone().requires_grad_(), w.clone().requires_grad_()
    F.conv2d(x, wr, padding=1, groups=3).backward(grad)
    cF.depthwise_conv2d(x, wc, padding=1).backward(grad)
    assert torch.equal(wc.grad.isnan(), wr.grad.isnan()) and torch.equal(wc.grad.isinf(), wr.grad.isinf())
    torch.testing.assert_close(wc.grad, wr.grad, equal_nan=True, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- autograd checks

GRADCHECK_CASES = {
    "k3_pad1": ((2, 3, 5, 6), 1, (3, 3), dict(padding=1)),
    "mult2_stride_dil": ((1, 2, 7, 8), 2, (2, 3), dict(stride=(2, 1), padding=(0, 2), dilation=(2, 1))),
    "same_even": ((1, 2, 5, 6), 1, (2, 4), dict(padding="same")),
}


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("case", list(GRADCHECK_CASES))
def test_depthwise_gradcheck_and_gradgradcheck(case, layout):
    x_shape, m, k, kw = GRADCHECK_CASES[case]
    torch.manual_seed(0)
    x = make(x_shape, torch.float64, layout=layout, requires_grad=True)
    w = make((x_shape[1] * m, 1, *k), torch.float64, requires_grad=True)
    b = make((x_shape[1] * m,), torch.float64, requires_grad=True)
    fn = lambda x, w, b: cF.depthwise_conv2d(x, w, b, **kw)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w, b), fast_mode=True)
    assert torch.autograd.gradgradcheck(fn, (x, w, b), fast_mode=True)


def test_depthwise_double_backward_matches_torch():
    torch.manual_seed(0)
    kw = dict(stride=2, padding=1)
    x = make((2, 4, 7, 6), torch.float64, requires_grad=True)
    w = make((8, 1, 3, 3), torch.float64, requires_grad=True)

    def second(fn):
        out = fn(x, w, None, **kw)
        gx, gw = torch.autograd.grad(out.square().sum(), (x, w), create_graph=True)
        return torch.autograd.grad(gx.sin().sum() + gw.cos().sum(), (x, w))

    for a, b in zip(second(cF.depthwise_conv2d), second(_ref)):
        assert_close(a, b)


def test_depthwise_function_apply_matches_op():
    torch.manual_seed(0)
    x, w, b = torch.randn(2, 4, 7, 6), torch.randn(8, 1, 3, 3), torch.randn(8)
    args = ([2, 1], [1, 2], [1, 2])
    ref = F.conv2d(x, w, b, *args, 4)
    assert_close(DepthwiseConv2dFunction.apply(x, w, b, *args), ref)
    assert_close(ops.depthwise_conv2d(x, w, b, *args), ref)


def _opcheck_samples():
    torch.manual_seed(0)
    d = torch.float64
    r = dict(requires_grad=True)
    return [
        (torch.randn(2, 3, 6, 5, dtype=d), torch.randn(3, 1, 3, 3, dtype=d), torch.randn(3, dtype=d),
         [1, 1], [1, 1], [1, 1]),
        (torch.randn(2, 3, 7, 6, dtype=d, **r), torch.randn(6, 1, 3, 2, dtype=d, **r),
         torch.randn(6, dtype=d, **r), [2, 1], [1, 0], [1, 2]),
        (torch.randn(2, 4, 7, 7).contiguous(memory_format=torch.channels_last).requires_grad_(),
         torch.randn(4, 1, 3, 3, **r), None, [2, 2], [1, 1], [1, 1]),
    ]


@pytest.mark.parametrize("idx", range(3))
def test_opcheck_depthwise_conv2d(idx):
    result = torch.library.opcheck(ops.depthwise_conv2d, _opcheck_samples()[idx])
    assert all(v == "SUCCESS" for v in result.values()), result


def test_compile_depthwise_fullgraph():
    torch._dynamo.reset()
    torch.manual_seed(0)

    def fn(x, w, b):
        return torch.relu(cF.depthwise_conv2d(x, w, b, stride=2, padding=1)).sum() + \
            cF.conv2d(x, w, None, padding="same", groups=4).square().sum()

    compiled = torch.compile(fn, fullgraph=True, backend="inductor")
    x = torch.randn(2, 4, 8, 7, requires_grad=True)
    w = torch.randn(8, 1, 3, 3, requires_grad=True)
    b = torch.randn(8, requires_grad=True)
    ref = torch.relu(F.conv2d(x, w, b, 2, 1, 1, 4)).sum() + F.conv2d(x, w, None, 1, "same", 1, 4).square().sum()
    out = compiled(x, w, b)
    assert_close(out, ref, rtol=1e-4, atol=1e-3)
    got = torch.autograd.grad(out, (x, w, b))
    want = torch.autograd.grad(ref, (x, w, b))
    for a, e in zip(got, want):
        assert_close(a, e, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_depthwise_deterministic(layout):
    torch.manual_seed(0)
    x = make((4, 24, 20, 21), layout=layout, requires_grad=True)
    w = make((24, 1, 3, 3), requires_grad=True)

    def run(threads):
        with num_threads(threads):
            out = cF.conv2d(x, w, None, 1, 1, 1, 24)
            return [out] + list(torch.autograd.grad(out, (x, w), torch.ones_like(out)))

    # Bitwise the same on a rerun and whatever the thread count: the weight gradient's partial
    # sums (per image / band of rows) are reduced in a fixed order.
    first = run(2)
    for threads in (2, 1):
        for a, b in zip(first, run(threads)):
            assert torch.equal(a, b)


# ----------------------------------------------------------------------------- errors

def _error_pair(x, w, b=None, **kw):
    """Our error and torch's for the same depthwise call: same type, both raised."""
    with pytest.raises(Exception) as ref:
        F.conv2d(x, w, b, groups=x.shape[-3], **kw)
    with pytest.raises(type(ref.value)) as ours:
        cF.depthwise_conv2d(x, w, b, **kw)
    return str(ours.value)


def test_error_weight_dim1_not_one():
    msg = _error_pair(torch.randn(2, 4, 5, 5), torch.randn(4, 2, 3, 3))
    assert "expected weight to have 1 channel per group at dimension 1" in msg and "[4, 2, 3, 3]" in msg
    with pytest.raises(RuntimeError, match="1 channel per group"):
        ops.depthwise_conv2d(torch.randn(2, 4, 5, 5), torch.randn(4, 2, 3, 3), None, [1, 1], [0, 0], [1, 1])


def test_error_out_channels_not_multiple_of_channels():
    msg = _error_pair(torch.randn(2, 4, 5, 5), torch.randn(6, 1, 3, 3))
    assert msg.startswith("Given groups=4, expected weight to be divisible by 4 at dimension 0, but got "
                          "weight of size [6, 1, 3, 3] instead")
    with pytest.raises(RuntimeError, match="at least 4 at dimension 0"):
        cF.depthwise_conv2d(torch.randn(2, 4, 5, 5), torch.randn(2, 1, 3, 3))


@pytest.mark.parametrize("bad", ["bias", "rank", "kernel_too_big", "stride", "dtype"])
def test_error_other_arguments(bad):
    x, w, b, kw = torch.randn(2, 4, 5, 5), torch.randn(4, 1, 3, 3), None, {}
    if bad == "bias":
        b = torch.randn(3)
    elif bad == "rank":
        x = torch.randn(2, 4, 5, 5, 1)
    elif bad == "kernel_too_big":
        w = torch.randn(4, 1, 7, 3)
    elif bad == "stride":
        kw = dict(stride=0)
    elif bad == "dtype":
        w = w.double()
    _error_pair(x, w, b, **kw)


def test_error_fake_mirrors_eager():
    """The fake kernel raises the same errors under torch.compile."""
    torch._dynamo.reset()
    fn = torch.compile(lambda x, w: ops.depthwise_conv2d(x, w, None, [1, 1], [0, 0], [1, 1]), fullgraph=True,
                       backend="eager")
    with pytest.raises(Exception, match="divisible by 4"):
        fn(torch.randn(2, 4, 5, 5), torch.randn(6, 1, 3, 3))
