"""The fused depthwise-separable op against the two torch calls
F.conv2d(F.conv2d(x, dw, db, stride, padding, dilation, groups=C), pw, pb): outputs and all five
gradients, dtypes, layouts, autograd checks, opcheck, torch.compile, determinism, errors."""
import math

import pytest
import torch
import torch.nn.functional as F

import convops.functional as cF
from convops.ops import DepthwiseSeparableConv2dFunction

from conftest import assert_close, compare_with_reference, make

ops = torch.ops.convops


def _ref(x, dw, pw, db, pb, **kw):
    return F.conv2d(F.conv2d(x, dw, db, groups=x.shape[-3], **kw), pw, pb)


def _ours(x, dw, pw, db, pb, **kw):
    return cF.depthwise_separable_conv2d(x, dw, pw, db, pb, **kw)


def _tensors(x_shape, m, k, out_channels, dtype, layout="contiguous", bias=True):
    torch.manual_seed(0)
    mid = x_shape[-3] * m
    x = make(x_shape, dtype, layout=layout, requires_grad=True)
    dw = make((mid, 1, *k), dtype, requires_grad=True)
    pw = make((out_channels, mid, 1, 1), dtype, requires_grad=True)
    db = make((mid,), dtype, requires_grad=True) if bias else None
    pb = make((out_channels,), dtype, requires_grad=True) if bias else None
    return [x, dw, pw, db, pb]


def _run(x_shape, m, k, out_channels, kw, dtype, layout="contiguous", bias=True):
    inputs = _tensors(x_shape, m, k, out_channels, dtype, layout, bias)
    scale = max(1.0, math.sqrt(math.prod(k) * x_shape[-3] * m * (x_shape[0] if len(x_shape) == 4 else 1)) / 3)
    if dtype in (torch.float16, torch.bfloat16):
        scale *= 4  # the depthwise output and its gradient are rounded to 16 bits between the two convs
    return compare_with_reference(lambda *t: _ours(*t, **kw), lambda *t: _ref(*t, **kw), inputs, dtype, scale)


# (input shape, depth multiplier, depthwise kernel, out channels, kwargs)
CASES = {
    "k3_pad1": ((2, 5, 9, 11), 1, (3, 3), 7, dict(padding=1)),
    "k1": ((2, 4, 6, 7), 1, (1, 1), 3, {}),
    "k5_stride2": ((1, 3, 11, 13), 1, (5, 5), 4, dict(stride=2, padding=2)),
    "k3x5_dil2_mult2": ((2, 3, 12, 13), 2, (3, 5), 5, dict(dilation=2, padding=(2, 4))),
    "stride2_no_pad": ((2, 4, 9, 8), 1, (3, 3), 6, dict(stride=2)),
    "same_even": ((1, 3, 8, 9), 2, (2, 4), 4, dict(padding="same")),
    "valid": ((2, 4, 7, 9), 1, (3, 3), 2, dict(padding="valid")),
    "tall_many_bands": ((1, 64, 70, 9), 1, (3, 3), 8, dict(padding=1)),
    # Wide rows of many channels: bands of one to a few rows, so the backward's tiles and
    # their halos (input-gradient rows split between bands) are exercised at every band edge.
    "wide_bands_stride2": ((1, 256, 9, 200), 1, (3, 3), 3, dict(stride=2, padding=1)),
    "wide_bands_mult2": ((2, 128, 11, 100), 2, (3, 3), 3, dict(padding=1)),
    "wide_bands_dilated": ((1, 150, 17, 140), 1, (3, 3), 3, dict(padding=2, dilation=3)),
    "wide_bands_unread_rows": ((1, 200, 12, 130), 1, (3, 3), 2, dict(stride=(2, 3))),
    "batch0": ((0, 4, 5, 5), 1, (3, 3), 3, dict(padding=1)),
    "unbatched": ((4, 7, 8), 2, (3, 3), 3, dict(padding=1, stride=2)),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", list(CASES))
def test_separable_parity(case, dtype):
    x_shape, m, k, out_channels, kw = CASES[case]
    out = _run(x_shape, m, k, out_channels, kw, dtype)
    assert out.dim() == len(x_shape)


def test_separable_without_biases():
    _run((2, 4, 7, 8), 2, (3, 3), 5, dict(padding=1, stride=2), torch.float64, bias=False)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("case", ["k3_pad1", "k3x5_dil2_mult2"])
def test_separable_low_precision(case, dtype):
    x_shape, m, k, out_channels, kw = CASES[case]
    out = _run(x_shape, m, k, out_channels, kw, dtype)
    assert out.dtype == dtype


@pytest.mark.parametrize("layout", ["channels_last", "strided"])
def test_separable_layouts(layout):
    out = _run((2, 6, 7, 9), 1, (3, 3), 5, dict(padding=1, stride=(1, 2)), torch.float64, layout=layout)
    assert out.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")


def test_separable_gradcheck_and_gradgradcheck():
    inputs = _tensors((1, 2, 5, 6), 2, (3, 2), 3, torch.float64)
    fn = lambda *t: _ours(*t, stride=(2, 1), padding=(1, 0), dilation=(1, 2))  # noqa: E731
    assert torch.autograd.gradcheck(fn, inputs, fast_mode=True)
    assert torch.autograd.gradgradcheck(fn, inputs, fast_mode=True)


def test_separable_function_apply_matches_op():
    x, dw, pw, db, pb = [t.detach() for t in _tensors((2, 4, 7, 6), 2, (3, 3), 5, torch.float32)]
    args = ([2, 1], [1, 2], [1, 2])
    ref = F.conv2d(F.conv2d(x, dw, db, *args, 4), pw, pb)
    assert_close(DepthwiseSeparableConv2dFunction.apply(x, dw, pw, db, pb, *args), ref)
    assert_close(ops.depthwise_separable_conv2d(x, dw, pw, db, pb, *args), ref)


MASKS = [[True, True, True, True], [True, False, False, False], [False, True, False, False],
         [False, False, True, False], [False, False, False, True], [False, True, True, False]]


@pytest.mark.parametrize("mask", MASKS, ids=lambda m: "".join("1" if b else "0" for b in m))
def test_backward_op_computes_only_what_is_asked(mask):
    # depthwise_separable_conv2d_backward (the CPU backward when no graph is recorded) against
    # autograd through the torch composition, gradient by gradient.
    x, dw, pw, db, pb = _tensors((2, 96, 13, 60), 1, (3, 3), 5, torch.float64)
    kw = dict(stride=1, padding=1)
    ref = _ref(x, dw, pw, db, pb, **kw)
    grad = torch.randn_like(ref)
    expected = torch.autograd.grad(ref, [x, dw, db, pw], grad)
    got = ops.depthwise_separable_conv2d_backward(grad, x.detach(), dw.detach(), pw.detach(), db.detach(),
                                                  [1, 1], [1, 1], [1, 1], mask)
    for wanted, g, e in zip(mask, got, expected):
        if wanted:
            assert_close(g, e, rtol=1e-10, atol=1e-10)
        else:
            assert g is None


def test_double_backward_takes_the_composition():
    # The fused backward op has no derivative of its own: with create_graph the backward is the
    # composition of differentiable convops ops, and its gradients match torch's.
    x, dw, pw, db, pb = _tensors((1, 3, 6, 7), 1, (3, 3), 2, torch.float64)
    ours = _ours(x, dw, pw, db, pb, padding=1)
    ref = _ref(x, dw, pw, db, pb, padding=1)
    g_ours = torch.autograd.grad(ours.square().sum(), [x, dw, pw], create_graph=True)
    g_ref = torch.autograd.grad(ref.square().sum(), [x, dw, pw], create_graph=True)
    second_ours = torch.autograd.grad(sum(g.sum() for g in g_ours), [x, dw, pw, db])
    second_ref = torch.autograd.grad(sum(g.sum() for g in g_ref), [x, dw, pw, db])
    for a, e in zip(second_ours, second_ref):
        assert_close(a, e, rtol=1e-9, atol=1e-9)


def test_backward_op_errors():
    x, dw, pw = torch.randn(1, 4, 6, 6), torch.randn(4, 1, 3, 3), torch.randn(5, 4, 1, 1)
    with pytest.raises(RuntimeError, match="expected grad_output of size"):
        ops.depthwise_separable_conv2d_backward(torch.randn(1, 5, 5, 6), x, dw, pw, None, [1, 1], [1, 1],
                                                [1, 1], [True] * 4)
    with pytest.raises(RuntimeError, match="expected grad_output on cpu of type Float"):
        ops.depthwise_separable_conv2d_backward(torch.randn(1, 5, 6, 6, dtype=torch.float64), x, dw, pw,
                                                None, [1, 1], [1, 1], [1, 1], [True] * 4)


def _opcheck_samples():
    plain = [t.detach() for t in _tensors((2, 3, 6, 5), 1, (3, 3), 4, torch.float64)]
    grads = _tensors((2, 3, 7, 6), 2, (3, 2), 4, torch.float64)
    cl = _tensors((1, 4, 6, 6), 1, (3, 3), 2, torch.float32, layout="channels_last", bias=False)
    return [(*plain, [1, 1], [1, 1], [1, 1]), (*grads, [2, 1], [1, 0], [1, 2]), (*cl, [2, 2], [1, 1], [1, 1])]


@pytest.mark.parametrize("idx", range(3))
def test_opcheck_depthwise_separable_conv2d(idx):
    result = torch.library.opcheck(ops.depthwise_separable_conv2d, _opcheck_samples()[idx])
    assert all(v == "SUCCESS" for v in result.values()), result


@pytest.mark.parametrize("idx", range(3))
def test_opcheck_depthwise_separable_conv2d_backward(idx):
    x, dw, pw, db, pb, stride, padding, dilation = _opcheck_samples()[idx]
    x, dw, pw = x.detach(), dw.detach(), pw.detach()
    db = db.detach() if db is not None else None
    out = ops.depthwise_separable_conv2d(x, dw, pw, db, None, stride, padding, dilation)
    mask = [True, True, db is not None, idx != 1]
    args = (torch.randn_like(out), x, dw, pw, db, stride, padding, dilation, mask)
    result = torch.library.opcheck(ops.depthwise_separable_conv2d_backward, args)
    assert all(v == "SUCCESS" for v in result.values()), result


def test_compile_separable_fullgraph():
    torch._dynamo.reset()
    inputs = _tensors((2, 4, 8, 7), 1, (3, 3), 6, torch.float32)

    def fn(*t):
        return torch.relu(_ours(*t, stride=2, padding=1)).square().sum()

    out = torch.compile(fn, fullgraph=True, backend="inductor")(*inputs)
    ref = torch.relu(_ref(*inputs, stride=2, padding=1)).square().sum()
    assert_close(out, ref, rtol=1e-4, atol=1e-3)
    for a, e in zip(torch.autograd.grad(out, inputs), torch.autograd.grad(ref, inputs)):
        assert_close(a, e, rtol=1e-4, atol=1e-3)


def test_separable_deterministic():
    inputs = _tensors((3, 32, 30, 17), 1, (3, 3), 16, torch.float32)

    def run():
        out = _ours(*inputs, padding=1)
        return [out] + list(torch.autograd.grad(out, inputs, torch.ones_like(out)))

    for a, b in zip(run(), run()):
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------- errors

def _error_pair(x, dw, pw, db=None, pb=None, **kw):
    with pytest.raises(Exception) as ref:
        _ref(x, dw, pw, db, pb, **kw)
    with pytest.raises(type(ref.value)) as ours:
        _ours(x, dw, pw, db, pb, **kw)
    return str(ours.value)


def test_error_pointwise_channels_do_not_chain():
    msg = _error_pair(torch.randn(2, 4, 5, 5), torch.randn(8, 1, 3, 3), torch.randn(3, 4, 1, 1))
    assert msg.startswith("Given groups=1, weight of size [3, 4, 1, 1], expected input[2, 8, 3, 3] to have "
                          "4 channels, but got 8 channels instead")


def test_error_depthwise_weight_dim1_not_one():
    msg = _error_pair(torch.randn(2, 4, 5, 5), torch.randn(4, 2, 3, 3), torch.randn(3, 4, 1, 1))
    assert "1 channel per group at dimension 1" in msg


def test_error_depthwise_out_channels_not_multiple():
    msg = _error_pair(torch.randn(2, 4, 5, 5), torch.randn(6, 1, 3, 3), torch.randn(3, 6, 1, 1))
    assert "expected weight to be divisible by 4 at dimension 0" in msg


def test_error_biases():
    x, dw, pw = torch.randn(2, 4, 5, 5), torch.randn(4, 1, 3, 3), torch.randn(3, 4, 1, 1)
    _error_pair(x, dw, pw, db=torch.randn(3))
    msg = _error_pair(x, dw, pw, pb=torch.randn(4))
    assert "expected bias to be 1-dimensional with 3 elements" in msg


def test_error_pointwise_not_1x1():
    with pytest.raises(RuntimeError, match=r"Expected pointwise_weight of size \[out_channels, 4, 1, 1\]"):
        cF.depthwise_separable_conv2d(torch.randn(2, 4, 5, 5), torch.randn(4, 1, 3, 3), torch.randn(3, 4, 3, 3))
