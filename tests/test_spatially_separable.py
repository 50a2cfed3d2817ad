"""spatially_separable_conv2d against torch's two F.conv2d calls: outputs and every gradient over a
grid of shapes, dtypes and layouts, gradcheck/gradgradcheck, opcheck, torch.compile, errors."""
import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

import convops.functional as cF
from convops.ops import SpatiallySeparableConv2dFunction

from conftest import assert_close, compare_with_reference, make

ops = torch.ops.convops


def torch_separable(x, weight_v, weight_h, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """The oracle (DESIGN.md): a kh x 1 conv with the height hyper-parameters, then a 1 x kw conv
    with the width ones."""
    two = lambda v: (v, v) if isinstance(v, int) else tuple(v)  # noqa: E731
    (sh, sw), (ph, pw), (dh, dw) = two(stride), two(padding), two(dilation)
    mid = F.conv2d(x, weight_v, None, (sh, 1), (ph, 0), (dh, 1), groups)
    return F.conv2d(mid, weight_h, bias, (1, sw), (0, pw), (1, dw), groups)


def _shapes(cin, cmid, cout, kh, kw, groups):
    return (cmid, cin // groups, kh, 1), (cout, cmid // groups, 1, kw)


# name: (input shape, Cmid, Cout, kh, kw, kwargs)
CASES = {
    "3x3": ((2, 3, 7, 9), 4, 5, 3, 3, {}),
    "3x3_pad": ((2, 3, 7, 8), 6, 4, 3, 3, dict(padding=1)),
    "5x5_pad2": ((1, 2, 9, 10), 3, 4, 5, 5, dict(padding=2)),
    "3x5_asym": ((2, 3, 8, 11), 4, 3, 3, 5, dict(padding=(1, 2))),
    "5x3_stride": ((2, 3, 11, 9), 5, 4, 5, 3, dict(stride=2, padding=(2, 1))),
    "stride_asym": ((2, 3, 10, 13), 4, 4, 3, 3, dict(stride=(1, 3), padding=(0, 1))),
    "stride_gt_kernel": ((1, 2, 12, 11), 3, 3, 2, 2, dict(stride=3)),
    "dilation2": ((2, 2, 11, 12), 3, 4, 3, 3, dict(dilation=2, padding=2)),
    "dilation_asym": ((1, 3, 12, 13), 4, 2, 3, 2, dict(stride=(2, 1), padding=(1, 3), dilation=(2, 3))),
    "groups2": ((2, 4, 7, 8), 6, 4, 3, 3, dict(groups=2, padding=1)),
    "groups2_stride_dil": ((2, 4, 11, 10), 4, 6, 3, 5, dict(groups=2, stride=2, dilation=(1, 2), padding=(1, 3))),
    "groups4_depthwise_like": ((2, 4, 6, 7), 4, 8, 3, 3, dict(groups=4, padding=1)),
    "kh1": ((2, 3, 5, 9), 4, 4, 1, 5, dict(padding=(0, 2))),
    "kw1": ((2, 3, 9, 5), 4, 4, 5, 1, dict(padding=(2, 0))),
    "kernel_eq_input": ((2, 3, 5, 6), 2, 3, 5, 6, {}),
    "kernel_eq_padded_input": ((1, 2, 3, 3), 2, 2, 5, 5, dict(padding=1)),
    "pad_gt_half_kernel": ((1, 2, 4, 5), 3, 3, 3, 3, dict(padding=3)),
    "one_mid_channel": ((2, 3, 6, 6), 1, 4, 3, 3, dict(padding=1)),
    "odd_sizes_big_mid": ((3, 5, 13, 7), 15, 6, 3, 3, dict(padding=1)),
    "many_images": ((9, 2, 4, 4), 3, 3, 3, 3, dict(padding=1)),
    "batch0": ((0, 3, 5, 5), 4, 4, 3, 3, dict(padding=1)),
    "unbatched": ((3, 7, 8), 4, 5, 3, 3, dict(padding=1)),
    "unbatched_groups_stride": ((4, 9, 8), 4, 6, 3, 3, dict(groups=2, stride=(2, 3))),
}


def _run(case, dtype=torch.float64, bias=True, layouts=("contiguous",) * 3, scale=1.0, device="cpu"):
    x_shape, cmid, cout, kh, kw, kwargs = CASES[case]
    cin = x_shape[-3]
    v_shape, h_shape = _shapes(cin, cmid, cout, kh, kw, kwargs.get("groups", 1))
    torch.manual_seed(0)
    x = make(x_shape, dtype, device, layouts[0], requires_grad=True)
    v = make(v_shape, dtype, device, layouts[1], requires_grad=True)
    h = make(h_shape, dtype, device, layouts[2], requires_grad=True)
    b = make((cout,), dtype, device, requires_grad=True) if bias else None
    ref = torch_separable if len(x_shape) == 4 else \
        lambda x, v, h, b, **kw: torch_separable(x.unsqueeze(0), v, h, b, **kw).squeeze(0)
    return compare_with_reference(lambda x, v, h, b: cF.spatially_separable_conv2d(x, v, h, b, **kwargs),
                                  lambda x, v, h, b: ref(x, v, h, b, **kwargs), [x, v, h, b], dtype, scale)


@pytest.mark.parametrize("case", list(CASES))
def test_parity_f64(case, device):
    out = _run(case, torch.float64, device=device)
    assert out.dim() == len(CASES[case][0])


@pytest.mark.parametrize("case", ["3x3_pad", "5x3_stride", "dilation_asym", "groups2_stride_dil", "kh1",
                                  "odd_sizes_big_mid", "batch0", "unbatched"])
def test_parity_f32(case):
    _run(case, torch.float32)


@pytest.mark.parametrize("case", ["3x3_pad", "groups2_stride_dil", "unbatched"])
def test_parity_without_bias(case):
    _run(case, bias=False)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("case", ["3x3_pad", "groups2_stride_dil", "dilation_asym"])
def test_low_precision(case, dtype, device):
    # Checked against a float64 oracle; the intermediate stays in fp32 (never rounded to 16 bits).
    _run(case, dtype, device=device)


@pytest.mark.parametrize("layouts", [("channels_last", "contiguous", "contiguous"),
                                     ("channels_last", "channels_last", "channels_last"),
                                     ("contiguous", "contiguous", "channels_last"),
                                     ("strided", "strided", "strided")], ids=["x_cl", "all_cl", "wh_cl", "strided"])
@pytest.mark.parametrize("case", ["3x3_pad", "groups2_stride_dil"])
def test_layouts(case, layouts):
    x_shape, cmid, cout, kh, kw, kwargs = CASES[case]
    out = _run(case, torch.float64, layouts=layouts)
    v_shape, h_shape = _shapes(x_shape[1], cmid, cout, kh, kw, kwargs.get("groups", 1))
    expected = torch_separable(make(x_shape, layout=layouts[0]), make(v_shape, layout=layouts[1]),
                               make(h_shape, layout=layouts[2]), **kwargs)
    # the output keeps the memory format torch's composition gives
    assert out.is_contiguous(memory_format=torch.channels_last) == \
        expected.is_contiguous(memory_format=torch.channels_last)
    assert out.is_contiguous() == expected.is_contiguous()


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")  # torch's oracle
@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("kernel,dilation", [((3, 3), 1), ((4, 2), 1), ((3, 4), (2, 1))])
def test_padding_strings(padding, kernel, dilation):
    """'same'/'valid' mean what they mean for the dense conv2d of the same kernel size."""
    torch.manual_seed(0)
    kh, kw = kernel
    x = make((2, 3, 9, 8), torch.float64)
    v, h = make((4, 3, kh, 1), torch.float64), make((5, 4, 1, kw), torch.float64)
    dense = torch.einsum("mcp,omq->ocpq", v[..., 0], h[:, :, 0])  # the pair as one dense kernel
    out = cF.spatially_separable_conv2d(x, v, h, padding=padding, dilation=dilation)
    assert_close(out, F.conv2d(x, dense, padding=padding, dilation=dilation))


def test_raw_op_and_function_match_functional():
    torch.manual_seed(0)
    x, v, h, b = torch.randn(2, 4, 9, 8), torch.randn(6, 2, 3, 1), torch.randn(4, 3, 1, 3), torch.randn(4)
    args = ([2, 1], [1, 2], [1, 2], 2)
    ref = torch_separable(x, v, h, b, *args)
    assert_close(ops.spatially_separable_conv2d(x, v, h, b, *args), ref)
    assert_close(SpatiallySeparableConv2dFunction.apply(x, v, h, b, *args), ref)
    assert_close(ops.spatially_separable_conv2d(x, v, h, None, *args), torch_separable(x, v, h, None, *args))


def test_only_some_inputs_require_grad():
    """Each gradient branch on its own (the backward recomputes the intermediate only for weight_h)."""
    torch.manual_seed(0)
    for wanted in range(4):
        tensors = [make(s, torch.float64) for s in [(2, 4, 7, 6), (6, 2, 3, 1), (4, 3, 1, 3), (4,)]]
        tensors[wanted].requires_grad_(True)
        compare_with_reference(lambda x, v, h, b: cF.spatially_separable_conv2d(x, v, h, b, 1, 1, 1, 2),
                               lambda x, v, h, b: torch_separable(x, v, h, b, 1, 1, 1, 2), tensors, torch.float64)


def test_batch0_gradients():
    x = torch.randn(0, 3, 5, 5, requires_grad=True)
    v, h, b = (torch.randn(4, 3, 3, 1, requires_grad=True), torch.randn(2, 4, 1, 3, requires_grad=True),
               torch.randn(2, requires_grad=True))
    out = cF.spatially_separable_conv2d(x, v, h, b, padding=1)
    assert out.shape == (0, 2, 5, 5)
    gx, gv, gh, gb = torch.autograd.grad(out.sum(), (x, v, h, b))
    assert gx.shape == x.shape
    assert torch.equal(gv, torch.zeros_like(v)) and torch.equal(gh, torch.zeros_like(h))
    assert torch.equal(gb, torch.zeros_like(b))


# ----------------------------------------------------------------------------- autograd checks

@pytest.mark.parametrize("case", ["groups2_stride_dil", "dilation_asym"])
def test_gradcheck_and_gradgradcheck(case):
    x_shape, cmid, cout, kh, kw, kwargs = CASES[case]
    v_shape, h_shape = _shapes(x_shape[1], cmid, cout, kh, kw, kwargs.get("groups", 1))
    torch.manual_seed(0)
    inputs = [make(s, torch.float64, requires_grad=True) for s in [x_shape, v_shape, h_shape, (cout,)]]
    fn = lambda x, v, h, b: cF.spatially_separable_conv2d(x, v, h, b, **kwargs)  # noqa: E731
    assert torch.autograd.gradcheck(fn, inputs, fast_mode=True)
    assert torch.autograd.gradgradcheck(fn, inputs, fast_mode=True)


def test_double_backward_matches_torch():
    """A gradient penalty: d/dparams of ||d out / d x||^2, against torch's composition."""
    torch.manual_seed(0)
    inputs = [make(s, torch.float64, requires_grad=True) for s in [(2, 4, 7, 8), (6, 2, 3, 1), (4, 3, 1, 3), (4,)]]
    results = []
    for fn in (cF.spatially_separable_conv2d, torch_separable):
        out = fn(*inputs, (2, 1), (1, 1), (1, 2), 2)
        (gx,) = torch.autograd.grad(out.square().sum(), inputs[0], create_graph=True)
        results.append(torch.autograd.grad(gx.square().sum(), inputs[:3]))
    for a, b in zip(*results):
        assert_close(a, b)


# ----------------------------------------------------------------------------- opcheck / compile

def _opcheck_samples():
    torch.manual_seed(0)
    return [
        (torch.randn(2, 3, 7, 8), torch.randn(4, 3, 3, 1), torch.randn(5, 4, 1, 3), torch.randn(5),
         [1, 1], [1, 1], [1, 1], 1),
        (torch.randn(2, 4, 9, 11, dtype=torch.float64).contiguous(memory_format=torch.channels_last),
         torch.randn(6, 2, 3, 1, dtype=torch.float64), torch.randn(4, 3, 1, 5, dtype=torch.float64), None,
         [2, 3], [1, 2], [1, 2], 2),
    ]


@pytest.mark.parametrize("idx", range(2))
def test_opcheck(idx):
    args = tuple(a.requires_grad_() if isinstance(a, torch.Tensor) else a for a in _opcheck_samples()[idx])
    result = torch.library.opcheck(ops.spatially_separable_conv2d, args)
    assert all(v == "SUCCESS" for v in result.values()), result


def _compile_sample():
    torch.manual_seed(0)

    def fn(x, v, h, b):
        return torch.relu(cF.spatially_separable_conv2d(x, v, h, b, stride=(1, 2), padding=1, groups=2))

    return fn, [make(s, requires_grad=True) for s in [(2, 4, 7, 9), (6, 2, 3, 1), (4, 3, 1, 3), (4,)]]


def test_compile_fullgraph_inductor():
    fn, inputs = _compile_sample()
    compiled = torch.compile(fn, fullgraph=True, backend="inductor")
    with torch.no_grad():
        assert_close(compiled(*inputs), fn(*inputs))


def test_compile_fullgraph_backward():
    """The traced graph differentiates through the registered autograd (aot_eager keeps the
    test fast; inductor codegen is covered above)."""
    fn, inputs = _compile_sample()
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    expected, got = fn(*inputs), compiled(*inputs)
    assert_close(got, expected)
    go = torch.randn_like(expected)
    for a, b in zip(torch.autograd.grad(got, inputs, go), torch.autograd.grad(expected, inputs, go)):
        assert_close(a, b)


# ----------------------------------------------------------------------------- errors

X = (2, 4, 7, 7)
# name: (input, weight_v, weight_h, bias, kwargs, regex). Ours raises RuntimeError, as torch's
# composition does where it raises at all (a kw != 1 weight_v would just be another conv there).
ERROR_CASES = {
    "chain_mismatch": (X, (6, 4, 3, 1), (5, 4, 1, 3), None, {},
                       r"Given groups=1, weight_h of size \[5, 4, 1, 3\], expected weight_v to have 4 output "
                       r"channels \(weight_h.size\(1\) \* groups\), but got weight_v of size \[6, 4, 3, 1\]"),
    "chain_mismatch_groups": (X, (6, 2, 3, 1), (4, 6, 1, 3), None, dict(groups=2),
                              r"expected weight_v to have 12 output channels"),
    "weight_v_width": (X, (6, 4, 3, 3), (5, 6, 1, 3), None, {},
                       r"expected weight_v of size \(Cmid, Cin/groups, kh, 1\) with kernel width 1, but got "
                       r"weight_v of size \[6, 4, 3, 3\]"),
    "weight_h_height": (X, (6, 4, 3, 1), (5, 6, 3, 3), None, {},
                        r"expected weight_h of size \(Cout, Cmid/groups, 1, kw\) with kernel height 1"),
    "weight_v_not_divisible": (X, (5, 2, 3, 1), (4, 2, 1, 3), None, dict(groups=2),
                               r"Given groups=2, expected weight to be divisible by 2 at dimension 0, but got "
                               r"weight of size \[5, 2, 3, 1\]"),
    "weight_h_not_divisible": (X, (6, 2, 3, 1), (5, 3, 1, 3), None, dict(groups=2),
                               r"Given groups=2, expected weight to be divisible by 2 at dimension 0, but got "
                               r"weight of size \[5, 3, 1, 3\]"),
    "groups_gt_channels": (X, (2, 1, 3, 1), (4, 1, 1, 3), None, dict(groups=4),
                           r"expected weight to be at least 4 at dimension 0"),
    "input_channels": ((2, 5, 7, 7), (6, 4, 3, 1), (5, 6, 1, 3), None, {},
                       r"to have 4 channels, but got 5 channels"),
    "input_channels_groups": (X, (6, 4, 3, 1), (4, 3, 1, 3), None, dict(groups=2),
                              r"to have 8 channels, but got 4 channels"),
    "weight_v_rank3": (X, (6, 4, 3), (5, 6, 1, 3), None, {}, r"expected 4-dimensional weight_v and weight_h"),
    "kernel_height_gt_input": ((2, 4, 2, 7), (6, 4, 3, 1), (5, 6, 1, 3), None, {},
                               r"Kernel size can't be greater than actual input size"),
    "kernel_width_gt_input": ((2, 4, 7, 2), (6, 4, 3, 1), (5, 6, 1, 3), None, {},
                              r"Kernel size can't be greater than actual input size"),
    "bias_size": (X, (6, 4, 3, 1), (5, 6, 1, 3), (4,), {}, r"expected bias to be 1-dimensional with 5 elements"),
    "stride0": (X, (6, 4, 3, 1), (5, 6, 1, 3), None, dict(stride=(1, 0)), r"non-positive stride is not supported"),
    "padding_neg": (X, (6, 4, 3, 1), (5, 6, 1, 3), None, dict(padding=(-1, 0)),
                    r"negative padding is not supported"),
    "dilation0": (X, (6, 4, 3, 1), (5, 6, 1, 3), None, dict(dilation=0), r"non-positive dilation is not supported"),
    "groups0": (X, (6, 4, 3, 1), (5, 6, 1, 3), None, dict(groups=0), r"non-positive groups is not supported"),
    "weight_h_dtype": (X, (6, 4, 3, 1), (5, 6, 1, 3), None, dict(_h_dtype=torch.float64),
                       r"Input type \(.*(Float|float32)\) and weight_h type \(.*(Double|float64)\) should be the same"),
}

# Cases where torch's composition itself raises: the exception type must match.
TORCH_ALSO_RAISES = {"chain_mismatch", "chain_mismatch_groups", "weight_v_not_divisible", "weight_h_not_divisible",
                     "groups_gt_channels", "input_channels", "input_channels_groups", "kernel_height_gt_input",
                     "kernel_width_gt_input", "bias_size", "stride0", "padding_neg", "dilation0", "groups0",
                     "weight_h_dtype"}


def _error_args(case):
    x_shape, v_shape, h_shape, b_shape, kwargs, regex = ERROR_CASES[case]
    kwargs = dict(kwargs)
    h_dtype = kwargs.pop("_h_dtype", torch.float32)
    torch.manual_seed(0)
    args = (torch.randn(x_shape), torch.randn(v_shape), torch.randn(h_shape, dtype=h_dtype),
            None if b_shape is None else torch.randn(b_shape))
    return args, kwargs, regex


def _full(kwargs):
    two = lambda v: [v, v] if isinstance(v, int) else list(v)  # noqa: E731
    return (two(kwargs.get("stride", 1)), two(kwargs.get("padding", 0)), two(kwargs.get("dilation", 1)),
            kwargs.get("groups", 1))


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_errors(case):
    args, kwargs, regex = _error_args(case)
    if case in TORCH_ALSO_RAISES:
        with pytest.raises(RuntimeError):
            torch_separable(*args, **kwargs)
    # the functional checks ranks first, like F.conv2d ("3-dimensional weight ...")
    with pytest.raises(RuntimeError, match="dimensional" if case == "weight_v_rank3" else regex):
        cF.spatially_separable_conv2d(*args, **kwargs)
    with pytest.raises(RuntimeError, match=regex):  # the raw op checks in C++
        ops.spatially_separable_conv2d(*args, *_full(kwargs))


@pytest.mark.parametrize("case", [c for c in ERROR_CASES if c != "weight_v_rank3"])
def test_fake_kernel_raises_the_same(case):
    """The fake kernel mirrors the C++ checks, so compiled code fails like eager code."""
    args, kwargs, regex = _error_args(case)
    with FakeTensorMode() as mode:
        fake = [None if a is None else mode.from_tensor(a) for a in args]
        with pytest.raises(RuntimeError, match=regex):
            ops.spatially_separable_conv2d(*fake, *_full(kwargs))


def test_input_rank_error():
    v, h = torch.randn(4, 3, 3, 1), torch.randn(2, 4, 1, 3)
    with pytest.raises(RuntimeError, match=r"Expected 3D \(unbatched\) or 4D \(batched\) input"):
        cF.spatially_separable_conv2d(torch.randn(5, 5), v, h)
