"""FlopCounterMode counts convops ops exactly as it counts the torch convolutions they replace,
in the forward and the backward, per op and for whole (converted torchvision) models."""
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch.utils.flop_counter import FlopCounterMode

import convops
import convops.functional as cF


def _count(fn, inputs, backward):
    """Total FLOPs and per-module totals of fn(*inputs) (and of its backward)."""
    with FlopCounterMode(display=False) as counter:
        out = fn(*inputs)
        if backward:
            out.backward(torch.ones_like(out))
    per_module = {k: sum(v.values()) for k, v in counter.get_flop_counts().items()}
    return counter.get_total_flops(), per_module


def _leaves(shapes, grads):
    return [torch.randn(*s, requires_grad=g) if s is not None else None for s, g in zip(shapes, grads)]


# name: (convops fn, torch fn, shapes (None: absent), kwargs)
CASES = {
    "conv2d": (cF.conv2d, F.conv2d, [(2, 4, 9, 8), (6, 4, 3, 3), (6,)], {}),
    "conv2d_strided_dilated_padded": (cF.conv2d, F.conv2d, [(2, 4, 13, 11), (6, 4, 3, 2), None],
                                      dict(stride=(2, 3), padding=(1, 2), dilation=(2, 1))),
    "conv2d_grouped": (cF.conv2d, F.conv2d, [(2, 6, 9, 8), (9, 2, 3, 3), (9,)], dict(groups=3, padding=1)),
    "conv2d_depthwise": (cF.conv2d, F.conv2d, [(2, 4, 9, 8), (8, 1, 3, 3), None], dict(groups=4, stride=2)),
    "conv2d_same_even": (cF.conv2d, F.conv2d, [(1, 3, 8, 7), (4, 3, 4, 2), None], dict(padding="same")),
    "conv1d": (cF.conv1d, F.conv1d, [(2, 3, 17), (5, 3, 4), (5,)], dict(stride=2, padding=1)),
    "conv_transpose2d": (cF.conv_transpose2d, F.conv_transpose2d, [(2, 4, 5, 6), (4, 3, 3, 3), (3,)],
                         dict(stride=2, padding=1, output_padding=1)),
    "conv_transpose2d_grouped_dilated": (cF.conv_transpose2d, F.conv_transpose2d,
                                         [(2, 4, 5, 6), (4, 3, 3, 2), None],
                                         dict(stride=(1, 2), groups=2, dilation=(2, 1))),
    "conv_transpose1d": (cF.conv_transpose1d, F.conv_transpose1d, [(2, 3, 7), (3, 2, 3), None],
                         dict(stride=3)),
}


@pytest.mark.parametrize("grads", ["none", "all", "weight_only", "input_only"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_op_flops_equal_torch(name, grads):
    ours, ref, shapes, kwargs = CASES[name]
    backward = grads != "none"
    needs = {"none": (False, False, False), "all": (True, True, True),
             "weight_only": (False, True, False), "input_only": (True, False, False)}[grads]
    torch.manual_seed(0)
    inputs = _leaves(shapes, needs)
    ours_total, _ = _count(lambda *a: ours(*a, **kwargs), inputs, backward)
    ref_total, _ = _count(lambda *a: ref(*a, **kwargs), inputs, backward)
    assert ours_total > 0
    assert ours_total == ref_total


def test_forward_formula_is_the_textbook_count():
    # 2 FLOPs per multiply-add: 2 * N * Cout * Cin/g * kh * kw * oh * ow
    x, w = torch.randn(3, 6, 10, 9), torch.randn(8, 3, 3, 2)
    total, _ = _count(lambda: cF.conv2d(x, w, groups=2, stride=(2, 1)), [], False)
    oh, ow = (10 - 3) // 2 + 1, 9 - 2 + 1
    assert total == 2 * 3 * 8 * 3 * 3 * 2 * oh * ow


def test_counts_split_by_op():
    x = torch.randn(2, 4, 9, 8, requires_grad=True)
    w = torch.randn(6, 4, 3, 3, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        cF.conv2d(x, w, padding=1).sum().backward()
    by_op = {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}
    forward = 2 * 2 * 6 * 4 * 9 * 9 * 8
    # for this (ungrouped, 'same'-sized) conv each backward half costs what the forward does
    assert by_op == {"convops.conv2d": forward, "convops.conv_transpose2d": forward,
                     "convops.conv2d_weight_grad": forward}


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode", "grad_mode"])
def test_forward_counted_in_every_grad_mode(mode):
    """With grad mode off the functional API calls the op below the autograd key: dispatch
    modes such as FlopCounterMode still see it, and the result is the same."""
    x, w = torch.randn(3, 6, 10, 9), torch.randn(8, 3, 3, 2)
    context = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode,
               "grad_mode": torch.enable_grad}[mode]
    with context():
        total, _ = _count(lambda: cF.conv2d(x, w, groups=2), [], False)
        out = cF.conv2d(x, w, groups=2)
    assert total == 2 * 3 * 8 * 3 * 3 * 2 * 8 * 8
    torch.testing.assert_close(out, F.conv2d(x, w, groups=2))
    assert not out.requires_grad


def test_fused_weight_bias_grad_counts_like_torch():
    """conv2d's backward with a bias runs the fused weight-and-bias gradient op: the same total
    as torch's aten.convolution_backward (the bias's sum is not counted by either)."""
    x = torch.randn(2, 4, 9, 8, requires_grad=True)
    w = torch.randn(6, 2, 3, 3, requires_grad=True)
    b = torch.randn(6, requires_grad=True)
    with FlopCounterMode(display=False) as ours:
        cF.conv2d(x, w, b, padding=1, groups=2).sum().backward()
    with FlopCounterMode(display=False) as ref:
        F.conv2d(x, w, b, padding=1, groups=2).sum().backward()
    assert "convops.conv2d_weight_bias_grad" in {str(k) for k in ours.get_flop_counts()["Global"]}
    assert ours.get_total_flops() == ref.get_total_flops() > 0


def test_weight_grad_op_called_directly():
    g, x = torch.randn(2, 5, 6, 6), torch.randn(2, 3, 8, 8)
    with FlopCounterMode(display=False) as counter:
        torch.ops.convops.conv2d_weight_grad(g, x, [3, 3], [1, 1], [0, 0], [1, 1], 1)
    assert counter.get_total_flops() == 2 * 2 * 5 * 3 * 3 * 3 * 6 * 6


def _pair_of_models(factory):
    torch.manual_seed(0)
    reference = factory()
    ours = convops.convert(factory())
    ours.load_state_dict(reference.state_dict())
    return ours, reference


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])  # dense + strided; depthwise
def test_whole_model_flops_equal_torchvision(arch):
    # forward and backward (the parameters require grad; the input does not, like training)
    ours, reference = _pair_of_models(lambda: getattr(torchvision.models, arch)(num_classes=10))
    ours.eval(), reference.eval()  # batch 1 with batch norm
    x = torch.randn(1, 3, 24, 24)
    ours_total, ours_modules = _count(ours, [x], True)
    ref_total, ref_modules = _count(reference, [x], True)
    assert ours_total == ref_total > 0
    # and module by module (FlopCounterMode's per-module breakdown)
    assert ours_modules == ref_modules


def test_flop_formulas_registered_on_import():
    from torch.utils import flop_counter
    registered = convops.utils.flops.register()
    assert {"conv2d", "conv_transpose2d", "conv2d_weight_grad"} <= set(registered)
    for name in registered:
        assert getattr(torch.ops.convops, name) in flop_counter.flop_registry


# ----------------------------------------------------------------------------- other op families
# (each runs when its op is built in; the formulas are registered only for ops that exist)

def _has(op):
    return hasattr(torch.ops.convops, op)


def _same_counts(ours, ref, shapes, recomputed=None):
    """Forward and backward counts equal torch's; a fused op that does not keep its intermediate
    recomputes it in the backward, and those FLOPs (`recomputed(*inputs)`) are counted on top."""
    for backward in (False, True):
        torch.manual_seed(0)
        inputs = _leaves(shapes, [True] * len(shapes))
        ours_total, _ = _count(ours, inputs, backward)
        ref_total, _ = _count(ref, inputs, backward)
        extra = _count(recomputed, [t.detach() for t in inputs], False)[0] if backward and recomputed else 0
        assert ours_total == ref_total + extra and ref_total > 0


@pytest.mark.skipif(not _has("depthwise_conv2d"), reason="depthwise_conv2d op not built")
def test_depthwise_flops_equal_grouped_torch_conv():
    _same_counts(lambda x, w, b: cF.depthwise_conv2d(x, w, b, stride=2, padding=1),
                 lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1, groups=x.shape[1]),
                 [(2, 4, 9, 8), (8, 1, 3, 3), (8,)])


@pytest.mark.skipif(not _has("depthwise_separable_conv2d"), reason="depthwise_separable_conv2d op not built")
def test_depthwise_separable_flops_equal_two_torch_convs():
    _same_counts(lambda x, dw, pw: cF.depthwise_separable_conv2d(x, dw, pw, padding=1),
                 lambda x, dw, pw: F.conv2d(F.conv2d(x, dw, None, 1, 1, 1, x.shape[1]), pw),
                 [(2, 4, 9, 8), (4, 1, 3, 3), (6, 4, 1, 1)],
                 recomputed=lambda x, dw, pw: F.conv2d(x, dw, None, 1, 1, 1, x.shape[1]))


@pytest.mark.skipif(not _has("spatially_separable_conv2d"), reason="spatially_separable_conv2d op not built")
def test_spatially_separable_flops_equal_two_torch_convs():
    def ref(x, wv, wh):
        mid = F.conv2d(x, wv, None, (2, 1), (1, 0), (1, 1), 2)
        return F.conv2d(mid, wh, None, (1, 1), (0, 2), (1, 2), 2)
    _same_counts(lambda x, wv, wh: cF.spatially_separable_conv2d(x, wv, wh, None, stride=(2, 1), padding=(1, 2),
                                                                 dilation=(1, 2), groups=2),
                 ref, [(2, 4, 9, 10), (6, 2, 3, 1), (8, 3, 1, 3)],
                 recomputed=lambda x, wv, wh: F.conv2d(x, wv, None, (2, 1), (1, 0), (1, 1), 2))


@pytest.mark.skipif(not _has("deform_conv2d"), reason="deform_conv2d op not built")
@pytest.mark.parametrize("modulated", [False, True], ids=["v1", "v2"])
def test_deform_flops_are_gemm_plus_bilinear_sampling(modulated):
    from convops.utils.flops import BILINEAR_FLOPS
    n, cin, cout, h, w, k = 2, 4, 6, 7, 6, 3
    x = torch.randn(n, cin, h, w, requires_grad=True)
    weight = torch.randn(cout, cin // 2, k, k, requires_grad=True)
    oh, ow = h - k + 1, w - k + 1
    offset = torch.randn(n, 2 * k * k, oh, ow, requires_grad=True)
    mask = torch.rand(n, k * k, oh, ow, requires_grad=True) if modulated else None
    gemm, _ = _count(lambda: F.conv2d(x.detach(), weight.detach(), groups=2), [], False)
    samples = n * cin * k * k * oh * ow
    with FlopCounterMode(display=False) as counter:
        out = cF.deform_conv2d(x, offset, weight, mask=mask)
    assert counter.get_total_flops() == gemm + samples * (BILINEAR_FLOPS + modulated)
    with FlopCounterMode(display=False) as counter:
        out.backward(torch.ones_like(out))
    backward_sampling = (BILINEAR_FLOPS + modulated) + 2 * BILINEAR_FLOPS + (BILINEAR_FLOPS + 2) * modulated
    assert counter.get_total_flops() == 2 * gemm + samples * backward_sampling
