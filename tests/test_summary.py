"""convops.utils.summary / receptive_field: the receptive-field recurrence (checked against the
textbook AlexNet values and against the support of an actual input gradient), textbook
parameter counts and per-layer FLOPs."""
import math

import pytest
import torch
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import convops
from convops.utils import Field, receptive_field, summary


def _alexnet_head():
    # AlexNet's first layers as torchvision builds them: conv1 11x11 s4 p2, ReLU, pool 3 s2, conv2 5x5 p2
    return convops.convert(torchvision.models.alexnet().features[:4])


def test_alexnet_receptive_fields_from_geometry():
    fields = receptive_field([(11, 4, 2), (3, 2, 0), (5, 1, 2)])
    assert [f.rf for f in fields] == [(11, 11), (19, 19), (51, 51)]
    assert [f.jump for f in fields] == [(4, 4), (8, 8), (8, 8)]


def test_alexnet_receptive_fields_from_modules_and_model():
    head = _alexnet_head()
    from_modules = receptive_field(head)  # spatial layers only: conv1, pool1, conv2
    from_model = receptive_field(head, (1, 3, 67, 67))
    assert [f.rf[0] for f in from_modules] == [11, 19, 51]
    assert from_model == from_modules
    rows = {r.name: r for r in summary(head, (1, 3, 67, 67)).rows}
    assert [rows[n].field.rf for n in ("0", "1", "2", "3")] == [(11, 11), (11, 11), (19, 19), (51, 51)]


def test_dilation_uses_the_effective_kernel():
    # effective kernel d(k-1)+1: a 3x3 conv with dilation 2 sees 5 pixels, stacking 1, 2, 4 gives 15
    fields = receptive_field([dict(kernel=3, dilation=1), dict(kernel=3, dilation=2), dict(kernel=3, dilation=4)])
    assert [f.rf[0] for f in fields] == [3, 7, 15]
    one = receptive_field([nn.Conv2d(1, 1, (3, 5), dilation=(2, 3))])[0]
    assert one.rf == (5, 13)


def test_recurrence_matches_product_of_strides():
    # r_n = r_{n-1} + (k_n - 1) * prod(strides of the layers before n)
    layers = [(3, 2), (5, 1), (2, 2), (3, 3), (7, 1)]
    expected, r, jump = [], 1, 1
    for k, s in layers:
        r += (k - 1) * jump
        jump *= s
        expected.append(r)
    assert [f.rf[0] for f in receptive_field(layers)] == expected


# ----------------------------------------------------------------------------- against autograd

def _gradient_support(model, input_size, out_index):
    """Rows/cols of the input whose gradient w.r.t. one output unit is non-zero: the unit's
    real receptive field. Positive weights and average pooling keep every path non-zero."""
    x = torch.rand(*input_size, dtype=torch.float64, requires_grad=True)
    y = model(x)
    y[(0, 0) + out_index].backward()
    nonzero = x.grad[0].abs().sum(0) > 0
    rows = nonzero.any(1).nonzero().flatten()
    cols = nonzero.any(0).nonzero().flatten()
    return (rows.min().item(), rows.max().item()), (cols.min().item(), cols.max().item())


STACKS = {
    "alexnet_like": lambda: [nn.Conv2d(2, 3, 11, stride=4, padding=2), nn.AvgPool2d(3, 2),
                             nn.Conv2d(3, 3, 5, padding=2)],
    "dilated_strided": lambda: [nn.Conv2d(2, 3, 3, stride=2, dilation=2, padding=1),
                                nn.Conv2d(3, 3, (3, 5), stride=(1, 2), dilation=(3, 1))],
    "transposed": lambda: [nn.Conv2d(2, 3, 3, stride=2), nn.ConvTranspose2d(3, 3, 4, stride=2, padding=1),
                           nn.Conv2d(3, 3, 3)],
}


@pytest.mark.parametrize("name", sorted(STACKS))
def test_receptive_field_equals_gradient_support(name):
    layers = STACKS[name]()
    for layer in layers:
        with torch.no_grad():
            for p in layer.parameters():
                p.uniform_(0.1, 1.0)
    model = convops.convert(nn.Sequential(*layers)).double()
    input_size = (1, 2, 71, 67)
    field = receptive_field(model, input_size)[-1]
    out_h, out_w = model(torch.zeros(input_size, dtype=torch.float64)).shape[2:]
    oi, oj = out_h // 2, out_w // 2  # an interior unit, whose field is not clipped by the padding
    (r0, r1), (c0, c1) = _gradient_support(model, input_size, (oi, oj))
    if name == "transposed":
        # a transposed conv's output units read ceil(k/s) or floor(k/s) inputs by phase: the
        # recurrence gives the wider, which some unit next to the centre attains
        sizes = set()
        for di in (0, 1):
            (a, b), (c, d) = _gradient_support(model, input_size, (oi + di, oj + di))
            sizes.add((b - a + 1, d - c + 1))
        assert field.rf in sizes
        return
    assert (r1 - r0 + 1, c1 - c0 + 1) == field.rf
    # the field's centre in pixel coordinates (pixel p spans [p, p+1)) is start + index * jump
    assert (r0 + r1 + 1) / 2 == field.start[0] + oi * field.jump[0]
    assert (c0 + c1 + 1) / 2 == field.start[1] + oj * field.jump[1]


# ----------------------------------------------------------------------------- summary

def test_textbook_parameter_counts():
    model = nn.Sequential(convops.nn.Conv2d(8, 16, 3, groups=4), nn.BatchNorm2d(16),
                          convops.nn.Conv2d(16, 4, (1, 3), bias=False), nn.Flatten(), nn.LazyLinear(5))
    s = summary(model, (2, 8, 9, 9))
    params = [r.params for r in s.rows]
    assert params[0] == 16 * (8 // 4) * 3 * 3 + 16
    assert params[2] == 4 * 16 * 1 * 3
    assert s.total_params == sum(p.numel() for p in model.parameters())


def test_summary_resnet18_matches_torch_counts():
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(num_classes=10)
    model = convops.convert(torchvision.models.resnet18(num_classes=10))
    size = (1, 3, 64, 64)
    ours, theirs = summary(model, size), summary(reference, size)
    with FlopCounterMode(display=False) as counter:
        reference.eval()(torch.randn(size))
    assert ours.total_flops == theirs.total_flops == counter.get_total_flops()
    assert ours.total_params == sum(p.numel() for p in reference.parameters())
    rows = {r.name: r for r in ours.rows}
    # output shapes and per-layer FLOPs of the torch model, layer by layer
    for r in theirs.rows:
        assert rows[r.name].output_shape == r.output_shape and rows[r.name].flops == r.flops
    conv1 = rows["conv1"]
    assert conv1.flops == 2 * 64 * 3 * 7 * 7 * 32 * 32
    # ResNet-18's theoretical receptive field is 435 pixels; the global pool sees everything
    assert rows["layer4.1.bn2"].field.rf == (435, 435) and rows["layer4.1.bn2"].field.jump == (32, 32)
    assert rows["avgpool"].field.global_ and rows["fc"].field.global_
    text = str(ours)
    assert "layer4.1.conv2" in text and "RF" in text and "435" in text


def test_summary_residual_takes_the_wider_branch():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(convops.nn.Conv2d(2, 2, 3, padding=1), convops.nn.Conv2d(2, 2, 3, padding=1))
            self.after = nn.ReLU()

        def forward(self, x):
            return self.after(self.body(x) + x)

    rows = {r.name: r for r in summary(Block(), (1, 2, 12, 12)).rows}
    assert rows["body.1"].field.rf == (5, 5)
    assert rows["after"].field.rf == (5, 5)  # the sum sees the body's field, not the identity's


def test_field_through_is_pure():
    f = Field()
    g = f.through(3, 2, 1)
    assert f == Field() and g.rf == (3, 3) and g.jump == (2, 2) and g.start == (0.5, 0.5)
    assert math.isclose(g.through(3).start[0], 2.5)
