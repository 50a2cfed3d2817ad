"""Grouped convolution with few channels per group (csrc/cpu/grouped_conv2d.cpp) against
torch.nn.functional: outputs and every gradient over a grid that the grouped kernel claims,
dtypes, layouts, autograd checks, opcheck, torch.compile, determinism, errors.

That the grouped kernel (and not the im2col+GEMM path) computed a result is checked with
torch.ops.convops._grouped_kernel_calls, a counter the kernel bumps each time it claims a
call (forward, input gradient, weight gradient)."""
import math
import os
import re

import pytest
import torch
import torch.nn.functional as F

import convops.functional as cF

from conftest import assert_close, compare_with_reference, make, num_threads

ops = torch.ops.convops


def _calls(reset=False):
    return ops._grouped_kernel_calls(reset)


def _scale(w_shape, batch=1):
    return max(1.0, math.sqrt(math.prod(w_shape[1:]) * max(batch, 1)) / 3)


# (groups, in per group, out per group, input (N, H, W), kernel (kh, kw), kwargs). One input
# channel per group means groups == in_channels: depthwise, not this kernel's.
GRID = {
    "g3_c2to1_k3": (3, 2, 1, (2, 7, 9), (3, 3), dict(padding=1)),
    "g2_c3to5_s2": (2, 3, 5, (3, 9, 8), (3, 3), dict(stride=2, padding=1)),
    "g4_c4to8_k3x2": (4, 4, 8, (1, 7, 9), (3, 2), dict(padding=(1, 0))),
    "g4_c2_k5_d2_p2": (4, 2, 2, (2, 11, 10), (5, 5), dict(dilation=2, padding=2)),
    "g8_c4_k1": (8, 4, 4, (3, 5, 7), (1, 1), {}),
    "g8_c2to1_k1_s2_p1": (8, 2, 1, (2, 7, 6), (1, 1), dict(stride=2, padding=1)),
    "g32_c4_resnext": (32, 4, 4, (2, 9, 9), (3, 3), dict(padding=1)),
    "g32_c8_s2": (32, 8, 8, (1, 8, 9), (3, 3), dict(stride=2, padding=1)),
    "g2_c8to3_d2_s2": (2, 8, 3, (3, 13, 11), (3, 3), dict(stride=2, dilation=2, padding=2)),
    "g3_c6to7_asym": (3, 6, 7, (2, 10, 12), (3, 5), dict(stride=(2, 1), padding=(0, 2), dilation=(1, 2))),
    "g4_c5to6_pad0_k2": (4, 5, 6, (1, 6, 17), (2, 2), {}),
    "g2_c16_k3_wide": (2, 16, 16, (1, 5, 40), (3, 3), dict(padding=1)),
    "g2_c7to9_s3_odd": (2, 7, 9, (2, 11, 9), (3, 3), dict(stride=3, padding=2)),
    "g4_c3_kernel_eq_input": (4, 3, 3, (2, 5, 6), (5, 6), {}),
    "g2_c2_pad_gt_kernel": (2, 2, 2, (1, 4, 5), (1, 3), dict(padding=2)),
    "g4_c2_height1": (4, 2, 2, (2, 1, 13), (1, 3), dict(stride=(1, 2))),
    # Tall images: several bands of output rows per (image, group), the last one shorter.
    "g2_c4_tall_bands": (2, 4, 4, (1, 300, 20), (3, 3), dict(padding=1)),
    "g2_c6to4_s2_tall_bands": (2, 6, 4, (1, 401, 17), (3, 3), dict(stride=2, padding=1)),
    # Wide stride-2 rows: the column phases are split a vector pair at a time.
    "g4_c2to3_s2_wide": (4, 2, 3, (1, 5, 70), (3, 3), dict(stride=2, padding=1)),
    "g2_c3_s1x2_wide_pad2": (2, 3, 3, (2, 4, 83), (2, 5), dict(stride=(1, 2), padding=(0, 2))),
    # Results stored from registers straight into the output rows (masked stores): a padded row
    # of exactly one float32 vector (14 + 2), vectors straddling two rows, a partial output
    # block (3 of 4 channels), several bands; and a stride-(2, 1) input gradient phase.
    "g2_c5to3_pitch_one_vector": (2, 5, 3, (2, 300, 14), (3, 3), dict(padding=1)),
    "g3_c2to5_s2x1_rows": (3, 2, 5, (2, 9, 23), (3, 3), dict(stride=(2, 1), padding=1)),
}


def _shapes(case):
    groups, cin, cout, (n, h, w), (kh, kw), kwargs = GRID[case]
    return (n, groups * cin, h, w), (groups * cout, cin, kh, kw), dict(groups=groups, **kwargs)


def _parity(x_shape, w_shape, kwargs, dtype, bias=True, x_layout="contiguous",
            w_layout="contiguous", scale=None):
    torch.manual_seed(0)
    x = make(x_shape, dtype, layout=x_layout, requires_grad=True)
    w = make(w_shape, dtype, layout=w_layout, requires_grad=True)
    b = make((w_shape[0],), dtype, requires_grad=True) if bias else None
    return compare_with_reference(lambda x, w, b: cF.conv2d(x, w, b, **kwargs),
                                  lambda x, w, b: F.conv2d(x, w, b, **kwargs),
                                  [x, w, b], dtype, scale or _scale(w_shape, x_shape[0]))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", list(GRID))
def test_grouped_parity_uses_grouped_kernel(case, dtype):
    x_shape, w_shape, kwargs = _shapes(case)
    _calls(reset=True)
    _parity(x_shape, w_shape, kwargs, dtype, bias=list(GRID).index(case) % 2 == 0)
    # forward, input gradient and weight gradient all ran in the grouped kernel
    assert _calls() == 3


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("case", ["g32_c4_resnext", "g2_c3to5_s2", "g4_c4to8_k3x2"])
def test_grouped_low_precision(case, dtype):
    x_shape, w_shape, kwargs = _shapes(case)
    _calls(reset=True)
    out = _parity(x_shape, w_shape, kwargs, dtype)
    assert out.dtype == dtype
    assert _calls() == 3


@pytest.mark.parametrize("batch", [0, 1, 3])
def test_grouped_batch_sizes(batch):
    x_shape, w_shape, kwargs = (batch, 8, 7, 9), (12, 2, 3, 3), dict(groups=4, padding=1)
    out = _parity(x_shape, w_shape, kwargs, torch.float64)
    assert out.shape == (batch, 12, 7, 9)


def test_grouped_batch0_gradients():
    x = torch.randn(0, 8, 5, 5, requires_grad=True)
    w = torch.randn(8, 2, 3, 3, requires_grad=True)
    out = cF.conv2d(x, w, None, padding=1, groups=4)
    assert out.shape == (0, 8, 5, 5)
    gx, gw = torch.autograd.grad(out.sum(), (x, w))
    assert gx.shape == x.shape
    assert torch.equal(gw, torch.zeros_like(w))


@pytest.mark.parametrize("x_layout,w_layout", [("channels_last", "contiguous"),
                                               ("contiguous", "channels_last"),
                                               ("channels_last", "channels_last"),
                                               ("strided", "contiguous"),
                                               ("contiguous", "strided")])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_grouped_layouts(x_layout, w_layout, dtype):
    x_shape, w_shape, kwargs = (2, 16, 9, 7), (16, 4, 3, 3), dict(groups=4, padding=1, stride=(1, 2))
    _calls(reset=True)
    out = _parity(x_shape, w_shape, kwargs, dtype, x_layout=x_layout, w_layout=w_layout)
    ref = F.conv2d(make(x_shape, dtype, layout=x_layout), make(w_shape, dtype, layout=w_layout),
                   groups=4, padding=1, stride=(1, 2))
    # the output keeps torch's memory format
    assert out.is_contiguous(memory_format=torch.channels_last) == \
        ref.is_contiguous(memory_format=torch.channels_last)
    assert out.is_contiguous() == ref.is_contiguous()
    assert _calls() == 3


# F(2x2, 3x3) Winograd (float32 3x3 stride-1 correlations on AVX2 / AVX-512: the forward and
# the stride-1 input gradient), forced on with CONVOPS_GROUPED_WINOGRAD=1 (groups, in per
# group, out per group, input (N, H, W), kwargs): odd sizes (partial tiles in both directions),
# two blocks of tiles per row, output channels padded to 12 and 16 (two chunks of accumulators
# on AVX2), the input gradient with padding 0 and -1, bands of tile rows, a 1x1 image.
WINOGRAD = {
    "g32_c8_odd": (32, 8, 8, (2, 9, 11), dict(padding=1)),
    "g2_c16_two_blocks": (2, 16, 16, (1, 5, 40), dict(padding=1)),
    "g4_c5to6_pad0": (4, 5, 6, (2, 13, 7), {}),
    "g2_c8to12_pad2": (2, 8, 12, (1, 10, 17), dict(padding=2)),
    "g3_c3to16_pad3": (3, 3, 16, (1, 6, 9), dict(padding=3)),
    "g2_c8_tall_bands": (2, 8, 8, (1, 150, 14), dict(padding=1)),
    "g2_c4_one_pixel": (2, 4, 4, (1, 1, 1), dict(padding=1)),
}


def _winograd_isa():
    """The vector ISA the grouped kernel runs with ('avx512f', 'avx2'), None for the baseline
    variant (no Winograd): the CPU's, capped by CONVOPS_GROUPED_ISA."""
    isa = re.search(r"cpu_selected_isa=(\w+)", ops._build_info()).group(1)
    cap = os.environ.get("CONVOPS_GROUPED_ISA")
    if cap == "default" or isa not in ("avx512f", "avx2"):
        return None
    return "avx2" if cap == "avx2" else isa


@pytest.mark.parametrize("rows", ["0", "1"], ids=["f2x2", "rows"])
@pytest.mark.parametrize("layout", ["contiguous", "strided"])
@pytest.mark.parametrize("case", list(WINOGRAD))
def test_grouped_winograd(case, layout, rows, monkeypatch):
    """Winograd forced on, with the AVX-512 row kernels (1-D F(2, 3)) forced off or on
    (CONVOPS_GROUPED_WINOGRAD_ROWS; they read the source in place, so a forward over the
    'strided' input, whose rows are not contiguous, keeps F(2x2, 3x3))."""
    groups, cin, cout, (n, h, w), kwargs = WINOGRAD[case]
    x_shape, w_shape = (n, groups * cin, h, w), (groups * cout, cin, 3, 3)
    kwargs = dict(groups=groups, **kwargs)
    bias = list(WINOGRAD).index(case) % 2 == 0
    monkeypatch.setenv("CONVOPS_GROUPED_WINOGRAD", "1")
    monkeypatch.setenv("CONVOPS_GROUPED_WINOGRAD_ROWS", rows)
    _calls(reset=True)
    out = _parity(x_shape, w_shape, kwargs, torch.float32, bias=bias, x_layout=layout)
    assert _calls() == 3
    if case != "g2_c4_one_pixel" and _winograd_isa():
        # the direct kernel rounds differently: the forward did go through Winograd
        monkeypatch.setenv("CONVOPS_GROUPED_WINOGRAD", "0")
        direct = _parity(x_shape, w_shape, kwargs, torch.float32, bias=bias, x_layout=layout)
        assert not torch.equal(out, direct)
    if rows == "1" and layout == "contiguous" and case != "g2_c4_one_pixel" and _winograd_isa() == "avx512f":
        # and F(2x2, 3x3) rounds differently from the row kernels: those ran
        monkeypatch.setenv("CONVOPS_GROUPED_WINOGRAD", "1")
        monkeypatch.setenv("CONVOPS_GROUPED_WINOGRAD_ROWS", "0")
        tiles = _parity(x_shape, w_shape, kwargs, torch.float32, bias=bias, x_layout=layout)
        assert not torch.equal(out, tiles)


@pytest.mark.parametrize("channels,groups,size,rows", [(256, 32, 28, True), (128, 16, 56, True),
                                                       (256, 16, 28, False)])
def test_grouped_winograd_rows_default_choice(channels, groups, size, rows, monkeypatch):
    """Where Winograd runs, the row kernels are the default with AVX-512 and at most 8 channels
    per group (256 -> 256 g32 @28, 128 -> 128 g16 @56), F(2x2, 3x3) with 16 (256 g16 @28) and
    on AVX2 (no row kernels: forcing them changes nothing)."""
    isa = _winograd_isa()
    if isa is None:
        pytest.skip("Winograd needs the AVX2 or AVX-512 variant")
    monkeypatch.delenv("CONVOPS_GROUPED_WINOGRAD", raising=False)
    torch.manual_seed(0)
    x = torch.randn(1, channels, size, size)
    w = torch.randn(channels, channels // groups, 3, 3)

    def run(mode):
        if mode is None:
            monkeypatch.delenv("CONVOPS_GROUPED_WINOGRAD_ROWS", raising=False)
        else:
            monkeypatch.setenv("CONVOPS_GROUPED_WINOGRAD_ROWS", mode)
        return ops.conv2d(x, w, None, [1, 1], [1, 1], [1, 1], groups)

    default, tiles, forced = run(None), run("0"), run("1")
    if isa == "avx512f":
        assert not torch.equal(forced, tiles)
        assert torch.equal(default, forced if rows else tiles)
    else:
        assert torch.equal(forced, tiles) and torch.equal(default, tiles)
    torch.testing.assert_close(forced, tiles, rtol=1e-4, atol=1e-4)


def _default_direct_forced(fn, monkeypatch):
    """fn() with Winograd left to its default choice, turned off and forced; asserts that the
    forced result differs from the direct kernel's (it did take the Winograd path)."""
    monkeypatch.delenv("CONVOPS_GROUPED_WINOGRAD", raising=False)
    default = fn()
    monkeypatch.setenv("CONVOPS_GROUPED_WINOGRAD", "0")
    direct = fn()
    monkeypatch.setenv("CONVOPS_GROUPED_WINOGRAD", "1")
    forced = fn()
    assert not torch.equal(forced, direct)
    return default, direct, forced


@pytest.mark.parametrize("channels,size,on_avx512,on_avx2", [(256, 28, True, True),
                                                               (128, 56, False, True),
                                                               (512, 14, False, True)])
def test_grouped_winograd_default_choice(channels, size, on_avx512, on_avx2, monkeypatch):
    """Where Winograd is used by default: tile rows that fill most of the vector lanes and, with
    AVX-512, 8+ channels per group (256 -> 256 g32 @28); on AVX-512 not with 4 channels per
    group (128 @56) nor with 7 tiles of 16 lanes (512 @14); on AVX2 (8 lanes) all three."""
    isa = _winograd_isa()
    if isa is None:
        pytest.skip("Winograd needs the AVX2 or AVX-512 variant")
    picked = on_avx512 if isa == "avx512f" else on_avx2
    torch.manual_seed(0)
    x = torch.randn(1, channels, size, size)
    w = torch.randn(channels, channels // 32, 3, 3)
    default, direct, forced = _default_direct_forced(
        lambda: ops.conv2d(x, w, None, [1, 1], [1, 1], [1, 1], 32), monkeypatch)
    assert torch.equal(default, forced if picked else direct)
    torch.testing.assert_close(forced, direct, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", ["g32_c8_odd", "g2_c16_two_blocks", "g4_c5to6_pad0", "g2_c8_tall_bands"])
def test_grouped_winograd_weight_bias_grad(case, monkeypatch):
    """The F(2x2, 3x3) weight gradient (forced) and the bias gradient it sums on the way, against
    torch in float64 and against the direct kernel, which rounds differently."""
    groups, cin, cout, (n, h, w), kwargs = WINOGRAD[case]
    torch.manual_seed(0)
    x = torch.randn(n, groups * cin, h, w, dtype=torch.float64)
    weight = torch.randn(groups * cout, cin, 3, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(groups * cout, dtype=torch.float64, requires_grad=True)
    out = F.conv2d(x, weight, bias, groups=groups, **kwargs)
    gy = torch.randn_like(out)
    gw_ref, gb_ref = torch.autograd.grad(out, (weight, bias), gy)
    pad = kwargs.get("padding", 0)
    args = (gy.float(), x.float(), [3, 3], [1, 1], [pad, pad], [1, 1], groups)
    monkeypatch.setenv("CONVOPS_GROUPED_WINOGRAD", "1")
    gw, gb = ops.conv2d_weight_bias_grad(*args)
    assert torch.equal(ops.conv2d_weight_grad(*args), gw)
    scale = _scale(weight.shape, n * h * w / 9)
    assert_close(gw, gw_ref.float(), scale=scale)
    assert_close(gb, gb_ref.float(), scale=scale)
    monkeypatch.setenv("CONVOPS_GROUPED_WINOGRAD", "0")
    gw_direct, gb_direct = ops.conv2d_weight_bias_grad(*args)
    assert_close(gw_direct, gw_ref.float(), scale=scale)
    if _winograd_isa():
        assert not torch.equal(gw, gw_direct)


@pytest.mark.parametrize("winograd,rows", [("0", "0"), ("1", "0"), ("1", "1")],
                         ids=["direct", "f2x2", "rows"])
@pytest.mark.parametrize("case", ["g32_c8_odd", "g2_c16_two_blocks", "g2_c8_tall_bands", "g4_c5to6_pad0"])
def test_grouped_ignores_stale_scratch(case, winograd, rows, monkeypatch):
    """Every scratch buffer filled with NaN before use (CONVOPS_POISON_SCRATCH=1): outputs and
    gradients stay finite and equal to torch's, so no kernel reads a word it did not write (the
    Winograd weight gradient once met the vector past its last packed row this way)."""
    groups, cin, cout, (n, h, w), kwargs = WINOGRAD[case]
    monkeypatch.setenv("CONVOPS_POISON_SCRATCH", "1")
    monkeypatch.setenv("CONVOPS_GROUPED_WINOGRAD", winograd)
    monkeypatch.setenv("CONVOPS_GROUPED_WINOGRAD_ROWS", rows)
    _calls(reset=True)
    out = _parity((n, groups * cin, h, w), (groups * cout, cin, 3, 3), dict(groups=groups, **kwargs),
                  torch.float32, bias=True)
    assert _calls() == 3 and torch.isfinite(out).all()


@pytest.mark.parametrize("channels,groups,size,picked", [(256, 32, 28, True), (128, 32, 56, False),
                                                         (256, 16, 28, False), (256, 32, 56, False)])
def test_grouped_winograd_weight_grad_default_choice(channels, groups, size, picked, monkeypatch):
    """The Winograd weight gradient by default only with 8 channels per group on both sides
    and the whole image in one band of tile rows (256 -> 256 g32 @28); not with 4 or 16
    channels per group, nor at 56x56 (several bands)."""
    if _winograd_isa() is None:
        pytest.skip("Winograd needs the AVX2 or AVX-512 variant")
    torch.manual_seed(0)
    x = torch.randn(1, channels, size, size)
    gy = torch.randn(1, channels, size, size)
    default, direct, forced = _default_direct_forced(
        lambda: ops.conv2d_weight_grad(gy, x, [3, 3], [1, 1], [1, 1], [1, 1], groups), monkeypatch)
    assert torch.equal(default, forced if picked else direct)
    torch.testing.assert_close(forced, direct, rtol=1e-4, atol=1e-3)


def test_grouped_unbatched():
    torch.manual_seed(0)
    x = torch.randn(8, 9, 7, dtype=torch.float64, requires_grad=True)
    w = torch.randn(12, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    _calls(reset=True)
    out = compare_with_reference(lambda x, w: cF.conv2d(x, w, groups=4, stride=(2, 1), padding=1),
                                 lambda x, w: F.conv2d(x, w, groups=4, stride=(2, 1), padding=1),
                                 [x, w], torch.float64)
    assert out.dim() == 3
    assert _calls() == 3


@pytest.mark.parametrize("kwargs", [dict(stride=2, padding=1, output_padding=1),
                                    dict(stride=(1, 2), padding=(0, 2), dilation=(2, 1)),
                                    dict(stride=1, padding=0),
                                    dict(stride=3, padding=1, output_padding=(2, 0), dilation=2)])
def test_grouped_conv_transpose2d(kwargs):
    """conv_transpose2d's forward is the grouped kernel's input gradient (and its backward the
    grouped forward and weight gradient)."""
    torch.manual_seed(0)
    x = make((2, 12, 5, 6), torch.float64, requires_grad=True)
    w = make((12, 2, 3, 3), torch.float64, requires_grad=True)  # 4 groups: 3 -> 2 per group
    b = make((8,), torch.float64, requires_grad=True)
    _calls(reset=True)
    compare_with_reference(lambda x, w, b: cF.conv_transpose2d(x, w, b, groups=4, **kwargs),
                           lambda x, w, b: F.conv_transpose2d(x, w, b, groups=4, **kwargs),
                           [x, w, b], torch.float64)
    assert _calls() == 3


def test_grouped_gradcheck_and_gradgradcheck():
    torch.manual_seed(0)
    x = torch.randn(1, 4, 4, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 2, 3, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    fn = lambda x, w, b: cF.conv2d(x, w, b, stride=(2, 1), padding=1, dilation=(1, 2), groups=2)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w, b))
    assert torch.autograd.gradgradcheck(fn, (x, w, b))


def test_grouped_opcheck():
    x = torch.randn(2, 8, 6, 7)
    w = torch.randn(8, 2, 3, 3, requires_grad=True)
    b = torch.randn(8, requires_grad=True)
    torch.library.opcheck(ops.conv2d, (x.requires_grad_(), w, b, [1, 2], [1, 1], [1, 1], 4))


def test_grouped_torch_compile_fullgraph():
    torch.manual_seed(0)
    x = torch.randn(2, 16, 9, 9, requires_grad=True)
    w = torch.randn(16, 4, 3, 3, requires_grad=True)

    def f(x, w):
        return torch.relu(cF.conv2d(x, w, None, padding=1, groups=4)).sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    got = compiled(x, w)
    gx, gw = torch.autograd.grad(got, (x, w))
    ref = torch.relu(F.conv2d(x, w, None, padding=1, groups=4)).sum()
    rx, rw = torch.autograd.grad(ref, (x, w))
    assert_close(got, ref, scale=10)
    assert_close(gx, rx)
    assert_close(gw, rw, scale=3)


@pytest.mark.parametrize("winograd", ["0", "1"])
def test_grouped_deterministic(monkeypatch, winograd):
    """Bitwise equal outputs and gradients on reruns and whatever the thread count: the
    threads take the work items in whatever order their speeds give (parallel_chunks), and
    the weight gradient's partial sums are per fixed slice of the items, added in slice
    order."""
    monkeypatch.setenv("CONVOPS_GROUPED_WINOGRAD", winograd)
    torch.manual_seed(0)
    x = torch.randn(8, 64, 20, 20, requires_grad=True)
    w = torch.randn(64, 8, 3, 3, requires_grad=True)
    gy = torch.randn(8, 64, 20, 20)

    def run(threads):
        with num_threads(threads):
            out = cF.conv2d(x, w, None, padding=1, groups=8)
            return (out,) + torch.autograd.grad(out, (x, w), gy)

    first = run(2)
    for threads in (2, 2, 1):
        for a, b in zip(first, run(threads)):
            assert torch.equal(a, b)


@pytest.mark.parametrize("name,x_shape,w_shape,groups,claimed", [
    ("resnext", (1, 16, 6, 6), (16, 4, 3, 3), 4, True),
    ("unequal_per_group", (1, 8, 6, 6), (16, 4, 3, 3), 2, True),
    ("dense", (1, 8, 6, 6), (8, 8, 3, 3), 1, False),
    ("depthwise", (1, 8, 6, 6), (8, 1, 3, 3), 8, False),
    ("many_per_group", (1, 64, 6, 6), (64, 32, 3, 3), 2, False),
])
def test_grouped_kernel_claims(name, x_shape, w_shape, groups, claimed):
    """The grouped kernel takes groups > 1 with up to 16 channels per group; dense and
    depthwise convolutions (and wide groups) go elsewhere."""
    x, w = torch.randn(x_shape), torch.randn(w_shape)
    _calls(reset=True)
    assert_close(cF.conv2d(x, w, groups=groups, padding=1), F.conv2d(x, w, groups=groups, padding=1))
    assert _calls() == (1 if claimed else 0)


def _torch_message(fn):
    with pytest.raises(RuntimeError) as info:
        fn()
    # torch prints this one size as [[5, 2, 3, 3]] (a list inside its message); ours [5, 2, 3, 3]
    return re.sub(r"\[\[([^\]]*)\]\]", r"[\1]", str(info.value).splitlines()[0])


@pytest.mark.parametrize("x_shape,w_shape,groups", [
    ((2, 5, 5, 5), (6, 2, 3, 3), 2),   # input channels not divisible by groups
    ((2, 4, 5, 5), (5, 2, 3, 3), 2),   # output channels not divisible by groups
    ((2, 4, 5, 5), (2, 1, 3, 3), 4),   # fewer output channels than groups
    ((2, 8, 5, 5), (8, 4, 3, 3), 4),   # weight's in-channels x groups != input channels
])
def test_grouped_errors_match_torch(x_shape, w_shape, groups):
    x, w = torch.randn(x_shape), torch.randn(w_shape)
    expected = _torch_message(lambda: F.conv2d(x, w, groups=groups))
    assert _torch_message(lambda: cF.conv2d(x, w, groups=groups)) == expected
    assert _torch_message(lambda: ops.conv2d(x, w, None, [1, 1], [0, 0], [1, 1], groups)) == expected


_OTHER_ISA_SCRIPT = r"""
import os
import torch, torch.nn.functional as F
import convops.functional as cF
torch.manual_seed(0)
ops = torch.ops.convops
os.environ["CONVOPS_GROUPED_WINOGRAD"] = "1"  # float32 3x3 stride 1: Winograd where the ISA has it
for dtype in (torch.float64, torch.float32):
    for (groups, cin, cout, kw) in [(4, 4, 4, dict(padding=1)), (2, 3, 5, dict(stride=2, dilation=2, padding=2)),
                                    (2, 8, 12, dict(padding=1)), (2, 4, 16, dict(padding=0))]:
        x = torch.randn(2, groups * cin, 9, 11, dtype=dtype, requires_grad=True)
        w = torch.randn(groups * cout, cin, 3, 3, dtype=dtype, requires_grad=True)
        ops._grouped_kernel_calls(True)
        y, r = cF.conv2d(x, w, groups=groups, **kw), F.conv2d(x, w, groups=groups, **kw)
        gy = torch.randn_like(r)
        mine, ref = torch.autograd.grad(y, (x, w), gy), torch.autograd.grad(r, (x, w), gy)
        assert ops._grouped_kernel_calls() == 3
        tol = 1e-10 if dtype == torch.float64 else 1e-4
        for a, b in zip((y,) + mine, (r,) + ref):
            torch.testing.assert_close(a, b, rtol=tol, atol=tol)
print("ok")
"""


@pytest.mark.parametrize("isa", ["avx2", "default"])
def test_grouped_other_isa_variants(isa):
    """The AVX2 and baseline variants, forced on this machine with CONVOPS_GROUPED_ISA (the
    kernel picks its variant once per process, hence the subprocess)."""
    import os
    import subprocess
    import sys
    env = dict(os.environ, CONVOPS_GROUPED_ISA=isa)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run([sys.executable, "-c", _OTHER_ISA_SCRIPT], env=env, cwd=root,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("ok")
