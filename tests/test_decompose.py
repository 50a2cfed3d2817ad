"""convops.decompose: the separable (Jaderberg/Tai scheme 2) SVD factorisation of a conv kernel,
and the seed fact it builds on (a 1x1 conv is a per-pixel matrix product across channels)."""
import pytest
import torch
import torch.nn.functional as F

import convops.functional as cF
from convops import decompose as D

from conftest import assert_close


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


# (weight shape, groups, conv kwargs)
WEIGHTS = {
    "3x3": ((6, 5, 3, 3), 1, dict(padding=1)),
    "5x5_wide_out": ((12, 3, 5, 5), 1, dict(padding=2, stride=2)),
    "3x5_rect": ((4, 6, 3, 5), 1, dict(padding=(1, 2), dilation=(2, 1))),
    "7x2_dilated": ((5, 4, 7, 2), 1, dict(stride=(1, 2), dilation=(1, 3), padding=(3, 0))),
    "groups2": ((8, 3, 3, 3), 2, dict(padding=1)),
    "groups3_rect_strided": ((9, 2, 5, 3), 3, dict(stride=(2, 1), padding=(2, 1), dilation=(1, 2))),
    "depthwise_mult2": ((8, 1, 3, 3), 4, dict(padding=1)),
    "1xk": ((4, 6, 1, 5), 1, dict(padding=(0, 2))),
}


@pytest.mark.parametrize("case", list(WEIGHTS))
def test_full_rank_is_exact(case):
    """At full rank the pair reproduces the dense (grouped) conv: float64 rel. error < 1e-10."""
    w_shape, groups, kw = WEIGHTS[case]
    torch.manual_seed(0)
    w = torch.randn(w_shape, dtype=torch.float64)
    x = torch.randn(2, w_shape[1] * groups, 13, 12, dtype=torch.float64)
    b = torch.randn(w_shape[0], dtype=torch.float64)
    d = D.decompose(w, groups=groups)
    cout, cin_g, kh, kwid = w_shape
    assert d.rank == D.full_rank(w, groups) == min(cin_g * kh, cout // groups * kwid)
    assert d.weight_v.shape == (d.rank * groups, cin_g, kh, 1)
    assert d.weight_h.shape == (cout, d.rank, 1, kwid)
    assert d.error < 1e-10
    assert _rel(D.compose(d.weight_v, d.weight_h, groups), w) < 1e-10
    out = cF.spatially_separable_conv2d(x, d.weight_v, d.weight_h, b, groups=groups, **kw)
    assert _rel(out, F.conv2d(x, w, b, groups=groups, **kw)) < 1e-10
    # the 2-tuple API is the same factorisation
    v, h = D.spatially_separable(w, groups=groups)
    assert torch.equal(v, d.weight_v) and torch.equal(h, d.weight_h)


@pytest.mark.parametrize("case", ["3x3", "groups3_rect_strided", "depthwise_mult2"])
def test_error_is_the_actual_error_and_monotone_in_rank(case):
    w_shape, groups, kw = WEIGHTS[case]
    torch.manual_seed(1)
    w = torch.randn(w_shape, dtype=torch.float64)
    full = D.full_rank(w, groups)
    curve = D.reconstruction_errors(w, groups)
    assert curve.shape == (full,)
    errors = []
    for rank in range(1, full + 1):
        d = D.decompose(w, rank, groups)
        actual = _rel(D.compose(d.weight_v, d.weight_h, groups), w)
        assert d.error == pytest.approx(actual, abs=1e-12)
        assert D.reconstruction_error(w, rank, groups) == pytest.approx(actual, abs=1e-12)
        assert curve[rank - 1].item() == pytest.approx(actual, abs=1e-12)
        errors.append(actual)
    assert all(a >= b - 1e-12 for a, b in zip(errors, errors[1:])), errors
    assert errors[0] > 0.1 and errors[-1] < 1e-10


def test_truncation_is_optimal_per_group():
    """Eckart-Young: no rank-r pair is closer than the truncated SVD; compare with random pairs and
    with the SVD of a perturbed weight."""
    torch.manual_seed(2)
    w = torch.randn(8, 3, 3, 3, dtype=torch.float64)
    best = D.reconstruction_error(w, 3, groups=2)
    for _ in range(5):
        other = D.decompose(w + 0.3 * torch.randn_like(w), 3, groups=2)
        assert _rel(D.compose(other.weight_v, other.weight_h, 2), w) >= best - 1e-12


def test_low_rank_kernel_is_recovered_exactly():
    """A kernel built as a rank-r separable pair has error 0 at rank r and is reproduced."""
    torch.manual_seed(3)
    v, h = torch.randn(2 * 2, 3, 5, 1, dtype=torch.float64), torch.randn(6, 2, 1, 3, dtype=torch.float64)
    w = D.compose(v, h, groups=2)
    assert D.full_rank(w, 2) == 9
    d = D.decompose(w, 2, groups=2)
    assert d.error < 1e-7  # sqrt of the rounding left in the dropped singular values
    assert _rel(D.compose(d.weight_v, d.weight_h, 2), w) < 1e-12
    assert D.reconstruction_error(w, 1, groups=2) > 0.05


def test_singular_values_split_symmetrically():
    """weight_v's row m and weight_h's column m both have norm sqrt(s_m)."""
    torch.manual_seed(4)
    w = torch.randn(6, 4, 3, 3, dtype=torch.float64)
    d = D.decompose(w, 5)
    s = torch.linalg.svdvals(w.permute(1, 2, 0, 3).reshape(12, 18))[:5]
    assert_close(d.weight_v.flatten(1).norm(dim=1), s.sqrt())
    assert_close(d.weight_h.transpose(0, 1).flatten(1).norm(dim=1), s.sqrt())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_factors_keep_dtype_and_require_no_grad(dtype):
    torch.manual_seed(5)
    w = torch.randn(4, 3, 3, 3, dtype=dtype, requires_grad=True)
    v, h = D.spatially_separable(w, 2)
    assert v.dtype == h.dtype == dtype and v.device == w.device
    assert not v.requires_grad and not h.requires_grad
    assert D.reconstruction_error(w.detach().double(), 2) == pytest.approx(D.reconstruction_error(w, 2), rel=1e-6)


def test_zero_weight():
    w = torch.zeros(3, 2, 3, 3)
    assert D.reconstruction_error(w, 1) == 0.0
    v, h = D.spatially_separable(w, 1)
    assert torch.equal(D.compose(v, h), w)


@pytest.mark.parametrize("rank", [0, -1, 10, 2.5, True, "3"])
def test_bad_rank(rank):
    w = torch.randn(4, 3, 3, 3)  # full rank min(3*3, 4*3) = 9
    regex = rf"rank must be an int in \[1, 9\] .*weight of size \[4, 3, 3, 3\] with groups=1.*but got rank={rank!r}"
    with pytest.raises(ValueError, match=regex):
        D.spatially_separable(w, rank)
    with pytest.raises(ValueError, match=regex):
        D.reconstruction_error(w, rank)


def test_bad_rank_grouped_full_rank_is_per_group():
    w = torch.randn(6, 2, 3, 3)  # groups=3: full = min(2*3, 2*3) = 6
    assert D.full_rank(w, 3) == 6
    with pytest.raises(ValueError, match=r"rank must be an int in \[1, 6\].*groups=3.*but got rank=7"):
        D.decompose(w, 7, groups=3)


@pytest.mark.parametrize("shape,groups,regex", [
    ((4, 3, 3), 1, r"expected a 4-dimensional conv2d weight"),
    ((5, 3, 3, 3), 2, r"expected groups to be a positive int dividing the weight's dimension 0, but got groups=2"),
    ((4, 3, 3, 3), 0, r"but got groups=0"),
])
def test_bad_weight_or_groups(shape, groups, regex):
    with pytest.raises(ValueError, match=regex):
        D.spatially_separable(torch.randn(shape), groups=groups)


# ----------------------------------------------------------------------------- the seed fact

@pytest.mark.parametrize("groups", [1, 2])
def test_1x1_conv_is_per_pixel_matrix_product(groups):
    """A 1x1 conv multiplies every pixel's channel vector by the (Cout, Cin) matrix (block
    diagonal over groups): what the pointwise half of every separable conv relies on."""
    torch.manual_seed(6)
    x = torch.randn(3, 8, 5, 7, dtype=torch.float64)
    w = torch.randn(6, 8 // groups, 1, 1, dtype=torch.float64)
    blocks = w[:, :, 0, 0].reshape(groups, 6 // groups, 8 // groups)
    xs = x.reshape(3, groups, 8 // groups, 5, 7)
    expected = torch.einsum("goc,ngchw->ngohw", blocks, xs).reshape(3, 6, 5, 7)
    assert_close(cF.conv2d(x, w, groups=groups), expected)
    if groups == 1:  # and as a plain matrix product over the flattened pixels
        pixels = x.permute(0, 2, 3, 1).reshape(-1, 8)
        assert_close(cF.conv2d(x, w).permute(0, 2, 3, 1).reshape(-1, 6), pixels @ w[:, :, 0, 0].T)
