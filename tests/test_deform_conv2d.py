"""convops deform_conv2d against torchvision.ops.deform_conv2d (and a second, F.grid_sample
based oracle): outputs and gradients of input, offset, mask, weight and bias; dtypes, layouts,
batch 0/33, autograd checks, opcheck, torch.compile, determinism, modules, convert, errors."""
import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torchvision.ops import deform_conv2d as tv_deform_conv2d

import convops
import convops.functional as cF

from conftest import assert_close, compare_compiled_with_eager, grads_of, make, num_threads

ops = torch.ops.convops


def _out_size(size, k, s, p, d):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def _offsets(shape, dtype, layout="contiguous", spread=2):
    """Offsets whose sampling points never land on integers (bilinear kinks): an integer part in
    [-spread, spread] plus a fraction in [0.1, 0.9]; with integer-spaced taps the sampling
    coordinates keep that fraction. Some points fall outside the image."""
    whole = torch.randint(-spread, spread + 1, shape, dtype=torch.float64)
    frac = torch.empty(shape, dtype=torch.float64).uniform_(0.1, 0.9)
    t = (whole + frac).to(dtype)
    if layout == "strided":
        big = torch.zeros(*shape[:-1], shape[-1] * 2, dtype=dtype)
        big[..., ::2] = t
        t = big[..., ::2]
    return t


# (N, C_in, H, W), (C_out, C_in/groups, kh, kw), offset_groups, stride, padding, dilation
CASES = {
    "basic_3x3": ((2, 4, 7, 8), (6, 4, 3, 3), 1, (1, 1), (1, 1), (1, 1)),
    "awkward": ((2, 6, 5, 4), (2, 3, 3, 2), 3, (2, 1), (1, 0), (2, 1)),
    "offset_groups2_stride2": ((2, 4, 9, 7), (3, 4, 3, 3), 2, (2, 2), (1, 1), (1, 1)),
    "groups2_no_pad": ((1, 4, 6, 6), (4, 2, 2, 3), 1, (1, 1), (0, 0), (1, 1)),
}


def _inputs(case, dtype, with_mask, layout="contiguous", batch=None, bias=True):
    x_shape, w_shape, og, stride, padding, dilation = CASES[case]
    if batch is not None:
        x_shape = (batch,) + tuple(x_shape[1:])
    n, _, h, w = x_shape
    _, _, kh, kw = w_shape
    oh, ow = _out_size(h, kh, stride[0], padding[0], dilation[0]), _out_size(w, kw, stride[1], padding[1], dilation[1])
    x = make(x_shape, dtype, layout=layout, requires_grad=True)
    weight = make(w_shape, dtype, layout=layout, requires_grad=True)
    offset = _offsets((n, 2 * og * kh * kw, oh, ow), dtype, layout).requires_grad_()
    mask = None
    if with_mask:
        mask = torch.rand(n, og * kh * kw, oh, ow, dtype=torch.float64).to(dtype)
        if layout == "strided":
            mask = mask.transpose(2, 3).contiguous().transpose(2, 3)
        mask.requires_grad_()
    b = make((w_shape[0],), dtype, requires_grad=True) if bias else None
    kwargs = dict(stride=stride, padding=padding, dilation=dilation)
    return [x, offset, weight, b, mask], kwargs


def _call(fn, kwargs):
    return lambda x, off, w, b, m: fn(x, off, w, b, mask=m, **kwargs)


def _compare(inputs, kwargs, dtype, ref_dtype=None, tol=None):
    """Our output and every gradient against torchvision's (computed in ref_dtype)."""
    ref_dtype = ref_dtype or dtype
    ours = cF.deform_conv2d(*inputs[:4], mask=inputs[4], **kwargs)
    ref_inputs = [None if t is None else t.detach().to(ref_dtype).requires_grad_() for t in inputs]
    ref = tv_deform_conv2d(*ref_inputs[:4], mask=ref_inputs[4], **kwargs)
    tol = tol or {}
    assert ours.dtype == dtype and ours.shape == ref.shape
    assert_close(ours, ref.to(dtype), dtype, **tol)
    go = torch.randn(ours.shape, dtype=torch.float64)
    g_ours = grads_of(ours, inputs, go.to(dtype))
    g_ref = grads_of(ref, ref_inputs, go.to(dtype).to(ref_dtype))
    for name, a, b in zip(["input", "offset", "weight", "bias", "mask"], g_ours, g_ref):
        if b is None:
            assert a is None
            continue
        assert a.dtype == dtype and a.shape == b.shape, name
        assert_close(a, b.to(dtype), dtype, **tol, msg=lambda m: f"grad of {name}: {m}")
    return ours


# ----------------------------------------------------------------------------- parity with torchvision

@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("with_mask", [False, True], ids=["v1", "v2"])
@pytest.mark.parametrize("layout", ["contiguous", "strided"])
def test_parity_float64(case, with_mask, layout):
    torch.manual_seed(0)
    inputs, kwargs = _inputs(case, torch.float64, with_mask, layout)
    if layout == "strided":
        assert not inputs[0].is_contiguous() and not inputs[1].is_contiguous()
    _compare(inputs, kwargs, torch.float64)


@pytest.mark.parametrize("case", ["basic_3x3", "awkward"])
@pytest.mark.parametrize("with_mask", [False, True], ids=["v1", "v2"])
def test_parity_float32(case, with_mask):
    torch.manual_seed(1)
    inputs, kwargs = _inputs(case, torch.float32, with_mask)
    _compare(inputs, kwargs, torch.float32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("with_mask", [False, True], ids=["v1", "v2"])
def test_low_precision_against_float64(dtype, with_mask):
    # fp32 accumulation inside; compared with torchvision in float64 on the same rounded values.
    torch.manual_seed(2)
    inputs, kwargs = _inputs("basic_3x3", dtype, with_mask)
    tol = dict(rtol=3e-2, atol=3e-2) if dtype == torch.bfloat16 else dict(rtol=5e-3, atol=5e-3)
    _compare(inputs, kwargs, dtype, ref_dtype=torch.float64, tol=tol)


@pytest.mark.parametrize("batch", [0, 33])
@pytest.mark.parametrize("with_mask", [False, True], ids=["v1", "v2"])
def test_batch_0_and_33(batch, with_mask):
    torch.manual_seed(3)
    inputs, kwargs = _inputs("awkward", torch.float64, with_mask, batch=batch)
    out = _compare(inputs, kwargs, torch.float64)
    assert out.shape[0] == batch


def test_without_bias_and_large_offsets():
    # Offsets that throw most points far outside the image: exercises the zero region.
    torch.manual_seed(4)
    inputs, kwargs = _inputs("basic_3x3", torch.float64, True, bias=False)
    with torch.no_grad():
        inputs[1].mul_(4)
    _compare(inputs, kwargs, torch.float64)


@pytest.mark.parametrize("with_mask", [False, True], ids=["v1", "v2"])
@pytest.mark.parametrize("groups", [1, 2])
def test_zero_offsets_equal_conv2d(with_mask, groups):
    torch.manual_seed(5)
    x = torch.randn(2, 4, 9, 8, dtype=torch.float64)
    w = torch.randn(6, 4 // groups, 3, 3, dtype=torch.float64)
    b = torch.randn(6, dtype=torch.float64)
    offset = torch.zeros(2, 2 * 9, 5, 8, dtype=torch.float64)
    mask = torch.ones(2, 9, 5, 8, dtype=torch.float64) if with_mask else None
    out = cF.deform_conv2d(x, offset, w, b, stride=(2, 1), padding=(1, 1), dilation=(1, 1), mask=mask)
    assert_close(out, F.conv2d(x, w, b, (2, 1), (1, 1), 1, groups))


# ----------------------------------------------------------------------------- second oracle

def _grid_sample_deform_conv2d(x, offset, weight, bias, stride, padding, dilation, mask):
    """Deformable conv from F.grid_sample: for every (offset group, tap) the sampling grid in
    pixel coordinates, normalised for align_corners=True (pixel i <-> -1 + 2i/(size-1)), zero
    padding (a corner outside the image reads 0, which is torchvision's boundary rule)."""
    n, c, h, w = x.shape
    o, cpg, kh, kw = weight.shape
    groups = c // cpg
    oh, ow = offset.shape[2:]
    og = offset.shape[1] // (2 * kh * kw)
    base_y = (torch.arange(oh, dtype=x.dtype) * stride[0] - padding[0]).view(oh, 1)
    base_x = (torch.arange(ow, dtype=x.dtype) * stride[1] - padding[1]).view(1, ow)
    cols = []  # per tap: (N, C, Ho, Wo)
    for i in range(kh):
        for j in range(kw):
            tap = i * kw + j
            per_group = []
            for gi in range(og):
                dy = offset[:, 2 * (gi * kh * kw + tap)]
                dx = offset[:, 2 * (gi * kh * kw + tap) + 1]
                y = base_y + i * dilation[0] + dy
                xx = base_x + j * dilation[1] + dx
                grid = torch.stack([2 * xx / (w - 1) - 1, 2 * y / (h - 1) - 1], dim=-1)
                xs = x[:, gi * (c // og):(gi + 1) * (c // og)]
                s = F.grid_sample(xs, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
                if mask is not None:
                    s = s * mask[:, gi * kh * kw + tap].unsqueeze(1)
                per_group.append(s)
            cols.append(torch.cat(per_group, dim=1))
    col = torch.stack(cols, dim=2)  # (N, C, K, Ho, Wo)
    col = col.view(n, groups, cpg * kh * kw, oh, ow)
    wg = weight.view(groups, o // groups, cpg * kh * kw)
    out = torch.einsum("gok,ngkhw->ngohw", wg, col).reshape(n, o, oh, ow)
    return out if bias is None else out + bias.view(1, o, 1, 1)


@pytest.mark.parametrize("case", ["basic_3x3", "awkward", "offset_groups2_stride2"])
@pytest.mark.parametrize("with_mask", [False, True], ids=["v1", "v2"])
def test_grid_sample_oracle(case, with_mask):
    torch.manual_seed(6)
    inputs, kwargs = _inputs(case, torch.float64, with_mask)
    ours = cF.deform_conv2d(*inputs[:4], mask=inputs[4], **kwargs)
    ref_inputs = [None if t is None else t.detach().clone().requires_grad_() for t in inputs]
    ref = _grid_sample_deform_conv2d(*ref_inputs[:4], kwargs["stride"], kwargs["padding"], kwargs["dilation"],
                                     ref_inputs[4])
    assert_close(ours, ref, torch.float64)
    go = torch.randn_like(ours)
    for a, b in zip(grads_of(ours, inputs, go), grads_of(ref, ref_inputs, go)):
        if b is not None:
            assert_close(a, b, torch.float64)


# ----------------------------------------------------------------------------- autograd checks

@pytest.mark.parametrize("with_mask", [False, True], ids=["v1", "v2"])
def test_gradcheck(with_mask):
    torch.manual_seed(7)
    inputs, kwargs = _inputs("awkward", torch.float64, with_mask, batch=1)
    fn = _call(cF.deform_conv2d, kwargs)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6)


def test_double_backward_raises_clearly():
    inputs, kwargs = _inputs("basic_3x3", torch.float64, True)
    out = cF.deform_conv2d(*inputs[:4], mask=inputs[4], **kwargs)
    (gx,) = torch.autograd.grad(out.sum(), inputs[0], create_graph=True)
    with pytest.raises(RuntimeError, match="double backward of deform_conv2d is not supported"):
        gx.sum().backward()


# ----------------------------------------------------------------------------- determinism

def _run_all(inputs, kwargs):
    xs = [None if t is None else t.detach().clone().requires_grad_() for t in inputs]
    out = cF.deform_conv2d(*xs[:4], mask=xs[4], **kwargs)
    go = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view(out.shape)
    return [out] + grads_of(out, xs, go)


@pytest.mark.parametrize("with_mask", [False, True], ids=["v1", "v2"])
def test_deterministic_runs_and_thread_counts(with_mask):
    """Bitwise equal results run to run, and with 1 and 2 threads (no reduction order depends on
    the thread count: see csrc/cpu/deform_conv2d.cpp)."""
    torch.manual_seed(8)
    x_shape, w_shape = (5, 8, 13, 11), (8, 8, 3, 3)
    x = torch.randn(x_shape, requires_grad=True)
    w = torch.randn(w_shape, requires_grad=True)
    b = torch.randn(8, requires_grad=True)
    off = _offsets((5, 36, 13, 11), torch.float32).requires_grad_()
    m = torch.rand(5, 18, 13, 11).requires_grad_() if with_mask else None
    inputs, kwargs = [x, off, w, b, m], dict(padding=(1, 1))
    with num_threads(2):
        first, second = _run_all(inputs, kwargs), _run_all(inputs, kwargs)
    with num_threads(1):
        single = _run_all(inputs, kwargs)
    for a, b2, c in zip(first, second, single):
        if a is None:
            continue
        assert torch.equal(a, b2)
        assert torch.equal(a, c)


# ----------------------------------------------------------------------------- opcheck / compile

def _op_args(with_mask, requires_grad, bias=True):
    inputs, kwargs = _inputs("awkward", torch.float64, with_mask, bias=bias)
    x, off, w, b, m = [None if t is None else t.detach().requires_grad_(requires_grad) for t in inputs]
    return (x, w, off, m, b, list(kwargs["stride"]), list(kwargs["padding"]), list(kwargs["dilation"]), 2, 3)


@pytest.mark.parametrize("with_mask", [False, True], ids=["v1", "v2"])
@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(with_mask, requires_grad):
    torch.manual_seed(9)
    result = torch.library.opcheck(ops.deform_conv2d, _op_args(with_mask, requires_grad, bias=with_mask))
    assert all(v == "SUCCESS" for v in result.values()), result


@pytest.mark.parametrize("with_mask", [False, True], ids=["v1", "v2"])
def test_opcheck_backward_op(with_mask):
    torch.manual_seed(10)
    x, w, off, m, b, *rest = _op_args(with_mask, False)
    go = torch.randn(x.shape[0], w.shape[0], off.shape[2], off.shape[3], dtype=torch.float64)
    result = torch.library.opcheck(ops.deform_conv2d_backward, (go, x, w, off, m, *rest),
                                   test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))
    assert all(v == "SUCCESS" for v in result.values()), result


def test_compile_fullgraph():
    torch._dynamo.reset()
    torch.manual_seed(11)
    inputs, kwargs = _inputs("awkward", torch.float32, True)

    def fn(x, off, w, b, m):
        return torch.relu(cF.deform_conv2d(x, off, w, b, mask=m, **kwargs)) * 2

    compiled = torch.compile(fn, fullgraph=True, backend="inductor")
    compare_compiled_with_eager(fn, compiled, inputs)


def test_compile_rejects_bad_offset_shape():
    # The fake kernel validates the offset's spatial size (torchvision's trusts it).
    torch._dynamo.reset()
    inputs, kwargs = _inputs("basic_3x3", torch.float32, False)
    bad = inputs[1].detach()[:, :, :-1]
    compiled = torch.compile(lambda x, off, w: cF.deform_conv2d(x, off, w, padding=(1, 1)), fullgraph=True)
    with pytest.raises(Exception, match="the shape of the offset is not valid"):
        compiled(inputs[0].detach(), bad, inputs[2].detach())


# ----------------------------------------------------------------------------- modules

def test_deform_conv2d_module_loads_torchvision_state_dict():
    torch.manual_seed(12)
    tv = torchvision.ops.DeformConv2d(6, 4, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(2, 1), groups=2)
    ours = convops.nn.DeformConv2d(6, 4, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(2, 1), groups=2)
    assert list(ours.state_dict()) == list(tv.state_dict())
    ours.load_state_dict(tv.state_dict(), strict=True)
    tv.load_state_dict(ours.state_dict(), strict=True)
    assert repr(ours) == repr(tv)
    x = torch.randn(2, 6, 5, 4)
    off = _offsets((2, 2 * 3 * 6, 2, 3), torch.float32)
    mask = torch.rand(2, 3 * 6, 2, 3)
    assert_close(ours(x, off, mask), tv(x, off, mask))
    assert_close(ours(x, off), tv(x, off))
    nb = convops.nn.DeformConv2d(4, 4, 3, bias=False)
    assert nb.bias is None and list(nb.state_dict()) == ["weight"]
    with pytest.raises(ValueError, match="divisible by groups"):
        convops.nn.DeformConv2d(5, 4, 3, groups=2)


def test_deform_conv2d_module_init_matches_torchvision():
    torch.manual_seed(13)
    tv = torchvision.ops.DeformConv2d(8, 16, 3, padding=1)
    torch.manual_seed(13)
    ours = convops.nn.DeformConv2d(8, 16, 3, padding=1)
    assert torch.equal(ours.weight, tv.weight) and torch.equal(ours.bias, tv.bias)


@pytest.mark.parametrize("cls", ["DeformConv2dPack", "ModulatedDeformConv2dPack"])
@pytest.mark.parametrize("deform_groups,groups,stride", [(1, 1, 1), (2, 2, 2)])
def test_pack_modules_equal_conv_at_init(cls, deform_groups, groups, stride):
    torch.manual_seed(14)
    layer = getattr(convops.nn, cls)(4, 6, 3, stride=stride, padding=1, dilation=1, groups=groups,
                                     deform_groups=deform_groups, bias=True)
    x = torch.randn(2, 4, 9, 8, requires_grad=True)
    out = layer(x)
    ref = F.conv2d(x, layer.weight, layer.bias, stride, 1, 1, groups)
    assert_close(out, ref)
    # the offset predictor is trainable: it gets a gradient
    out.square().sum().backward()
    assert layer.conv_offset.weight.grad is not None and layer.conv_offset.weight.grad.abs().sum() > 0
    maps = 2 if cls == "DeformConv2dPack" else 3
    assert layer.conv_offset.out_channels == deform_groups * maps * 9


def _toy_net():
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, stride=2, padding=1), torch.nn.ReLU()),
        torch.nn.Conv2d(8, 8, 1), convops.nn.Conv2d(8, 4, 3, padding=1, groups=2))


@pytest.mark.parametrize("deformable", ["v1", "v2", {"2.0": "v2"}, lambda name, m: "v1" if name == "0" else None])
def test_convert_deformable_opt_in(deformable):
    torch.manual_seed(15)
    net = _toy_net().eval()
    x = torch.randn(2, 3, 10, 9)
    ref = net(x)
    weights = {name: p for name, p in net.named_parameters()}
    out_net = convops.convert(net, deformable=deformable)
    packs = {name: type(m).__name__ for name, m in out_net.named_modules()
             if isinstance(m, (convops.nn.DeformConv2dPack, convops.nn.ModulatedDeformConv2dPack))}
    expected = {"v1": {"0": "DeformConv2dPack", "2.0": "DeformConv2dPack", "4": "DeformConv2dPack"},
                "v2": {"0": "ModulatedDeformConv2dPack", "2.0": "ModulatedDeformConv2dPack",
                       "4": "ModulatedDeformConv2dPack"}}
    if isinstance(deformable, str):
        assert packs == expected[deformable]
    elif isinstance(deformable, dict):
        assert packs == {"2.0": "ModulatedDeformConv2dPack"}
    else:
        assert packs == {"0": "DeformConv2dPack"}
    # weights shared, outputs unchanged at init, the 1x1 conv untouched (but converted to convops)
    assert out_net[0].weight is weights["0.weight"]
    assert type(out_net[3]) is convops.nn.Conv2d
    assert_close(out_net(x), ref)


def test_convert_without_deformable_changes_nothing_deformable():
    net = convops.convert(_toy_net())
    assert not any(isinstance(m, convops.nn.DeformConv2d) for m in net.modules())


def test_convert_deformable_bad_arguments():
    with pytest.raises(ValueError, match="not 3x3 Conv2d"):
        convops.convert(_toy_net(), deformable={"3": "v1"})
    with pytest.raises(ValueError, match="deformable must be"):
        convops.convert(_toy_net(), deformable="v3")


# ----------------------------------------------------------------------------- bad input

def _good():
    x = torch.randn(2, 6, 5, 4)
    w = torch.randn(4, 3, 3, 3)  # groups 2
    off = torch.randn(2, 2 * 3 * 9, 5, 4)  # offset groups 3
    m = torch.rand(2, 3 * 9, 5, 4)
    return dict(input=x, offset=off, weight=w, bias=torch.randn(4), stride=1, padding=1, dilation=1, mask=m)


def _bad(**changes):
    args = _good()
    args.update(changes)
    return args


ERROR_CASES = {
    "offset_channels_not_multiple": (dict(offset=torch.randn(2, 17, 5, 4)), "the shape of the offset"),
    "offset_channels_too_few": (dict(offset=torch.randn(2, 8, 5, 4)), "the shape of the offset"),
    "offset_spatial": (dict(offset=torch.randn(2, 54, 5, 3)), "the shape of the offset is not valid"),
    "offset_batch": (dict(offset=torch.randn(1, 54, 5, 4)), "the shape of the offset is not valid"),
    "mask_channels": (dict(mask=torch.rand(2, 9, 5, 4)), r"mask.shape\[1\] is not valid"),
    "mask_spatial": (dict(mask=torch.rand(2, 27, 4, 4)), "the shape of the mask is not valid"),
    "in_channels_vs_weight_groups": (dict(weight=torch.randn(4, 4, 3, 3)), "divisible by weight.size"),
    "in_channels_vs_offset_groups": (dict(weight=torch.randn(4, 6, 3, 3), offset=torch.randn(2, 4 * 18, 5, 4),
                                          mask=None), "divisible by offset_groups=4"),
    "out_channels_vs_groups": (dict(weight=torch.randn(5, 3, 3, 3), bias=None), "divisible by 2"),
    "input_rank": (dict(input=torch.randn(6, 5, 4)), "4-dimensional"),
    "offset_rank": (dict(offset=torch.randn(2, 54, 20)), "4-dimensional"),
    "mask_rank": (dict(mask=torch.rand(2, 27, 20)), "4-dimensional mask"),
    "weight_rank": (dict(weight=torch.randn(4, 3, 9)), "4-dimensional"),
    "offset_dtype": (dict(offset=torch.randn(2, 54, 5, 4, dtype=torch.float64)), "offset to have the input's dtype"),
    "mask_dtype": (dict(mask=torch.rand(2, 27, 5, 4, dtype=torch.float64)), "mask to have the input's dtype"),
    "weight_dtype": (dict(weight=torch.randn(4, 3, 3, 3, dtype=torch.float64)), "should be the same"),
    "offset_device": (dict(offset=torch.randn(2, 54, 5, 4, device="meta")), "same device"),
    "bias_size": (dict(bias=torch.randn(3)), "expected bias to be 1-dimensional with 4 elements"),
    "negative_padding": (dict(padding=-1), "negative padding"),
    "zero_stride": (dict(stride=0), "non-positive stride"),
}


@pytest.mark.parametrize("name", list(ERROR_CASES))
def test_bad_input_raises(name):
    changes, match = ERROR_CASES[name]
    with pytest.raises(RuntimeError, match=match):
        cF.deform_conv2d(**_bad(**changes))


@pytest.mark.parametrize("name", ["offset_channels_not_multiple", "offset_spatial", "mask_channels", "mask_spatial",
                                  "in_channels_vs_offset_groups", "offset_dtype", "mask_rank"])
def test_bad_input_raises_in_op_and_fake(name):
    """The C++ op (called directly) and the fake kernel raise the same errors."""
    changes, match = ERROR_CASES[name]
    a = _bad(**changes)
    og = 4 if name == "in_channels_vs_offset_groups" else 3
    args = (a["input"], a["weight"], a["offset"], a["mask"], a["bias"], [1, 1], [1, 1], [1, 1],
            a["input"].shape[-3] // a["weight"].shape[1], og)
    with pytest.raises(RuntimeError, match=match):
        ops.deform_conv2d(*args)
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode() as mode:
        fake = [mode.from_tensor(t) if isinstance(t, torch.Tensor) else t for t in args]
        with pytest.raises(RuntimeError, match=match):
            ops.deform_conv2d(*fake)


def test_backward_op_checks_grad_output():
    a = _good()
    args = (a["input"], a["weight"], a["offset"], a["mask"], [1, 1], [1, 1], [1, 1], 2, 3)
    with pytest.raises(RuntimeError, match="expected grad_output of size"):
        ops.deform_conv2d_backward(torch.randn(2, 4, 5, 3), *args)
