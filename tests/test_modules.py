"""convops.nn.Conv1d / Conv2d against torch.nn's, from_torch, and convops.convert."""
import copy

import pytest
import torch
from torch import nn

import convops
import convops.nn as cnn

from conftest import assert_close, grads_of, make

TWINS_1D_2D = [(cnn.Conv1d, nn.Conv1d), (cnn.Conv2d, nn.Conv2d)]

# (ctor kwargs, input spatial shape) per spatial rank
MODULE_CONFIGS = {
    1: [
        dict(in_channels=4, out_channels=6, kernel_size=3, padding=1),
        dict(in_channels=4, out_channels=6, kernel_size=4, stride=2, padding=2, dilation=1, groups=2, bias=False),
        dict(in_channels=4, out_channels=8, kernel_size=3, padding=2, dilation=2, groups=4),
        dict(in_channels=4, out_channels=6, kernel_size=4, padding="same"),
        dict(in_channels=4, out_channels=6, kernel_size=5, padding="same", dilation=2),
        dict(in_channels=4, out_channels=6, kernel_size=3, padding="valid"),
    ],
    2: [
        dict(in_channels=4, out_channels=6, kernel_size=3, padding=1),
        dict(in_channels=4, out_channels=6, kernel_size=(3, 2), stride=(2, 1), padding=(1, 2), groups=2, bias=False),
        dict(in_channels=4, out_channels=8, kernel_size=3, padding=(2, 1), dilation=(2, 1), groups=4),
        dict(in_channels=4, out_channels=6, kernel_size=(2, 4), padding="same"),
        dict(in_channels=4, out_channels=6, kernel_size=3, padding="same", dilation=(1, 2)),
        dict(in_channels=4, out_channels=6, kernel_size=3, padding="valid"),
        dict(in_channels=4, out_channels=6, kernel_size=1),
    ],
}
INPUT_SHAPES = {1: (2, 4, 11), 2: (2, 4, 9, 8)}
PADDING_MODES = ["zeros", "reflect", "replicate", "circular"]


def _pair(dim, **kw):
    """A torch conv module and its convops twin with the same weights (twin loads torch's state)."""
    ours_cls, torch_cls = TWINS_1D_2D[dim - 1]
    torch.manual_seed(0)
    ref = torch_cls(**kw)
    torch.manual_seed(1)
    ours = ours_cls(**kw)
    ours.load_state_dict(ref.state_dict())
    return ours, ref


def _check_outputs_and_grads(ours, ref, x, dtype=torch.float32):
    xo = x.detach().clone().requires_grad_()
    xr = x.detach().clone().requires_grad_()
    out, expected = ours(xo), ref(xr)
    assert type(out) is torch.Tensor and out.shape == expected.shape
    assert_close(out, expected, dtype)
    go = torch.randn_like(expected)
    p_ours = [xo] + list(ours.parameters())
    p_ref = [xr] + list(ref.parameters())
    for a, b in zip(grads_of(out, p_ours, go), grads_of(expected, p_ref, go)):
        assert a is not None and b is not None
        assert_close(a, b, dtype)
    return out


# ----------------------------------------------------------------------------- construction

@pytest.mark.parametrize("dim", [1, 2])
def test_same_state_dict_keys_shapes_and_init(dim):
    for kw in MODULE_CONFIGS[dim]:
        ours_cls, torch_cls = TWINS_1D_2D[dim - 1]
        torch.manual_seed(123)
        ref = torch_cls(**kw)
        torch.manual_seed(123)
        ours = ours_cls(**kw)
        assert isinstance(ours, torch_cls)
        sd_o, sd_r = ours.state_dict(), ref.state_dict()
        assert list(sd_o) == list(sd_r)
        for k in sd_r:
            assert sd_o[k].shape == sd_r[k].shape
            assert sd_o[k].dtype == sd_r[k].dtype
            # same reset_parameters(): same values from the same seed
            assert torch.equal(sd_o[k], sd_r[k]), k
        assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]


@pytest.mark.parametrize("dim", [1, 2])
def test_load_torch_state_dict(dim):
    kw = MODULE_CONFIGS[dim][1]
    ours, ref = _pair(dim, **kw)
    for (name, a), (_, b) in zip(ours.state_dict().items(), ref.state_dict().items()):
        assert torch.equal(a, b), name
        assert a.data_ptr() != b.data_ptr()  # loaded (copied), not shared
    # strict loading fails on a bad key like torch's does
    bad = dict(ref.state_dict())
    bad["extra"] = torch.zeros(1)
    with pytest.raises(RuntimeError, match="Unexpected key"):
        ours.load_state_dict(bad)
    # and torch's module can load ours back
    ref2 = type(ref)(**kw)
    ref2.load_state_dict(ours.state_dict())
    assert torch.equal(ref2.weight, ref.weight)


@pytest.mark.parametrize("dim", [1, 2])
def test_repr_equal_modulo_class_name(dim):
    ours_cls, torch_cls = TWINS_1D_2D[dim - 1]
    for kw in MODULE_CONFIGS[dim] + [dict(in_channels=4, out_channels=4, kernel_size=3, padding=1,
                                          padding_mode="reflect")]:
        ours, ref = ours_cls(**kw), torch_cls(**kw)
        r_o, r_r = repr(ours), repr(ref)
        assert r_o.replace(type(ours).__name__, "X", 1) == r_r.replace(type(ref).__name__, "X", 1)
        assert r_o.split("(", 1)[1] == r_r.split("(", 1)[1]
        assert ours.extra_repr() == ref.extra_repr()


# ----------------------------------------------------------------------------- forward / backward

@pytest.mark.parametrize("padding_mode", PADDING_MODES)
@pytest.mark.parametrize("dim", [1, 2])
def test_outputs_and_grads_match_torch_per_padding_mode(dim, padding_mode):
    torch.manual_seed(0)
    x = make(INPUT_SHAPES[dim])
    for kw in MODULE_CONFIGS[dim]:
        ours, ref = _pair(dim, padding_mode=padding_mode, **kw)
        _check_outputs_and_grads(ours, ref, x)


@pytest.mark.parametrize("padding_mode", PADDING_MODES)
@pytest.mark.parametrize("dim", [1, 2])
def test_padding_mode_same_even_kernel_unbatched(dim, padding_mode):
    """padding='same' with an even kernel pads asymmetrically in every padding mode."""
    ours, ref = _pair(dim, in_channels=3, out_channels=5, kernel_size=4, padding="same", dilation=1,
                      padding_mode=padding_mode)
    torch.manual_seed(0)
    x = make(INPUT_SHAPES[dim][1:])[:3]  # unbatched
    out = _check_outputs_and_grads(ours, ref, x)
    assert out.shape[1:] == x.shape[1:]


@pytest.mark.parametrize("padding_mode", PADDING_MODES)
def test_padding_modes_differ_from_each_other(padding_mode):
    """The padding mode really is honoured (a zeros-only implementation would fail here)."""
    torch.manual_seed(0)
    x = torch.rand(1, 2, 6, 6) + 1
    ours, _ = _pair(2, in_channels=2, out_channels=2, kernel_size=3, padding=1, padding_mode=padding_mode)
    zeros, _ = _pair(2, in_channels=2, out_channels=2, kernel_size=3, padding=1)
    out, out_zeros = ours(x), zeros(x)
    interior = (slice(None), slice(None), slice(1, -1), slice(1, -1))
    assert_close(out[interior], out_zeros[interior])
    if padding_mode == "zeros":
        assert torch.equal(out, out_zeros)
    else:
        assert not torch.allclose(out[..., 0, :], out_zeros[..., 0, :])


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=["f64", "bf16"])
def test_module_dtype_and_channels_last(dtype):
    ours, ref = _pair(2, in_channels=4, out_channels=6, kernel_size=3, padding=1, groups=2)
    ours, ref = ours.to(dtype), ref.to(dtype)
    torch.manual_seed(0)
    x = make((2, 4, 7, 6), dtype, layout="channels_last")
    out = ours(x)
    expected = ref(x)
    assert out.dtype == dtype
    assert out.is_contiguous(memory_format=torch.channels_last) == \
        expected.is_contiguous(memory_format=torch.channels_last)
    # bf16: compare with an fp64 oracle on the same (bf16-rounded) values
    oracle = copy.deepcopy(ref).double()(x.double()).to(dtype)
    assert_close(out, oracle, dtype)


def test_module_under_no_grad_and_eval():
    ours, ref = _pair(2, in_channels=3, out_channels=4, kernel_size=3, stride=2)
    ours.eval()
    torch.manual_seed(0)
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        out = ours(x)
    assert not out.requires_grad
    assert_close(out, ref(x).detach())


def test_module_errors_like_torch():
    for ours_cls, torch_cls, x in [(cnn.Conv2d, nn.Conv2d, torch.randn(2, 5, 6, 6)),
                                   (cnn.Conv1d, nn.Conv1d, torch.randn(2, 5, 6))]:
        ours, ref = ours_cls(4, 4, 3), torch_cls(4, 4, 3)
        for m in (ref, ours):
            with pytest.raises(RuntimeError, match="to have 4 channels, but got 5 channels"):
                m(x)
        for cls in (ours_cls, torch_cls):
            with pytest.raises(ValueError, match="padding_mode"):
                cls(4, 4, 3, padding_mode="mirror")
            with pytest.raises(ValueError, match="padding='same' is not supported for strided"):
                cls(4, 4, 3, padding="same", stride=2)
            with pytest.raises(ValueError, match="groups"):
                cls(4, 4, 3, groups=3)


# ----------------------------------------------------------------------------- from_torch

@pytest.mark.parametrize("padding_mode", ["zeros", "circular"])
@pytest.mark.parametrize("dim", [1, 2])
def test_from_torch_shares_parameters(dim, padding_mode):
    ours_cls, torch_cls = TWINS_1D_2D[dim - 1]
    torch.manual_seed(0)
    ref = torch_cls(4, 6, 3, stride=2, padding=1, groups=2, padding_mode=padding_mode)
    twin = ours_cls.from_torch(ref)
    assert type(twin) is ours_cls and isinstance(twin, torch_cls)
    assert twin.weight is ref.weight and twin.bias is ref.bias
    assert twin.padding_mode == padding_mode
    assert repr(twin).split("(", 1)[1] == repr(ref).split("(", 1)[1]
    x = make(INPUT_SHAPES[dim])
    assert_close(twin(x), ref(x))
    # mutate through the torch module: the twin sees it
    with torch.no_grad():
        ref.weight.mul_(2)
        ref.bias.add_(1)
    assert_close(twin(x), ref(x))
    # and the other way round
    with torch.no_grad():
        twin.weight.zero_()
    assert torch.count_nonzero(ref.weight) == 0
    # gradients land on the same Parameter
    with torch.no_grad():
        twin.weight.normal_()
    twin(x).sum().backward()
    assert ref.weight.grad is not None and ref.weight.grad is twin.weight.grad
    g = ref.weight.grad.clone()
    ref.weight.grad = None
    ref(x).sum().backward()
    assert_close(ref.weight.grad, g)


def test_from_torch_containers_are_copies_and_hooks_kept():
    ref = nn.Conv2d(3, 4, 3)
    calls = []
    ref.register_forward_hook(lambda m, i, o: calls.append(type(m)))
    twin = cnn.Conv2d.from_torch(ref)
    twin(torch.randn(1, 3, 5, 5))
    assert calls == [cnn.Conv2d]
    # a parameter added to the twin does not appear on the torch module
    twin.register_parameter("extra", nn.Parameter(torch.zeros(1)))
    assert "extra" not in dict(ref.named_parameters())
    assert "extra" in dict(twin.named_parameters())


def test_from_torch_rejects_wrong_type():
    with pytest.raises(TypeError):
        cnn.Conv2d.from_torch(nn.Conv1d(3, 4, 3))
    with pytest.raises(TypeError):
        cnn.Conv1d.from_torch(nn.Linear(3, 4))


# ----------------------------------------------------------------------------- convert

def _torch_convs(model):
    torch_types = (nn.Conv1d, nn.Conv2d, nn.ConvTranspose1d, nn.ConvTranspose2d)
    ours_types = (cnn.Conv1d, cnn.Conv2d, cnn.ConvTranspose1d, cnn.ConvTranspose2d)
    return [n for n, m in model.named_modules(remove_duplicate=False)
            if isinstance(m, torch_types) and not isinstance(m, ours_types)]


def test_convert_resnet18():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    reference = copy.deepcopy(model)
    before = {n: (m.weight.data_ptr(), m.weight) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert len(before) == 20
    converted = convops.convert(model)
    assert converted is model
    assert _torch_convs(converted) == []
    after = {n: m for n, m in converted.named_modules() if isinstance(m, nn.Conv2d)}
    assert set(after) == set(before)
    for n, m in after.items():
        assert type(m) is cnn.Conv2d, n
        assert m.weight.data_ptr() == before[n][0]
        assert m.weight is before[n][1]
    # every parameter is still the same storage as before conversion
    assert [p.data_ptr() for p in converted.parameters()] == [p.data_ptr() for p in model.parameters()]
    assert list(converted.state_dict()) == list(reference.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out, expected = converted(x), reference(x)
    assert out.shape == (2, 1000)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect")
        self.inner = nn.Sequential(nn.ReLU(), nn.Conv2d(4, 4, 1))
        self.convs = nn.ModuleList([nn.Conv2d(4, 4, 3, padding="same"), nn.Conv2d(4, 4, 3, padding=1, groups=2)])
        self.down = nn.ModuleDict({"a": nn.Conv1d(4, 4, 3, padding=1)})

    def forward(self, x):
        x = self.inner(self.conv(x))
        for c in self.convs:
            x = c(x)
        n, c, h, w = x.shape
        y = self.down["a"](x.reshape(n, c, h * w)).reshape(n, c, h, w)
        return x + y


def _nested_model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        _Block(),
        nn.Sequential(nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1, output_padding=1), nn.Tanh()),
        nn.Conv2d(3, 2, 1),
    )


def test_convert_nested_sequential_with_conv_transpose():
    model = _nested_model()
    reference = copy.deepcopy(model)
    n_convs = len(_torch_convs(model))
    assert n_convs == 8
    param_ptrs = [p.data_ptr() for p in model.parameters()]
    converted = convops.convert(model)
    assert converted is model
    assert _torch_convs(converted) == []
    assert type(converted[0]) is cnn.Conv2d
    assert type(converted[1].conv) is cnn.Conv2d and converted[1].conv.padding_mode == "reflect"
    assert type(converted[1].inner[1]) is cnn.Conv2d
    assert all(type(c) is cnn.Conv2d for c in converted[1].convs)
    assert type(converted[1].down["a"]) is cnn.Conv1d
    assert type(converted[2][0]) is cnn.ConvTranspose2d
    assert type(converted[2][1]) is nn.Tanh
    assert [p.data_ptr() for p in converted.parameters()] == param_ptrs
    torch.manual_seed(1)
    x = torch.randn(2, 3, 6, 5, requires_grad=True)
    xr = x.detach().clone().requires_grad_()
    out, expected = converted(x), reference(xr)
    assert out.shape == (2, 2, 12, 10)
    assert_close(out, expected)
    go = torch.randn_like(out)
    out.backward(go)
    expected.backward(go)
    assert_close(x.grad, xr.grad)
    for (n, p), (_, q) in zip(converted.named_parameters(), reference.named_parameters()):
        assert_close(p.grad, q.grad, msg=n)


@pytest.mark.parametrize("module,twin", [
    (nn.Conv1d(3, 4, 3), cnn.Conv1d),
    (nn.Conv2d(3, 4, 3, stride=2), cnn.Conv2d),
    (nn.ConvTranspose1d(3, 4, 3), cnn.ConvTranspose1d),
    (nn.ConvTranspose2d(3, 4, 3, stride=2), cnn.ConvTranspose2d),
])
def test_convert_bare_module_returns_twin(module, twin):
    out = convops.convert(module)
    assert type(out) is twin
    assert out is not module
    assert out.weight is module.weight and out.bias is module.bias
    torch.manual_seed(0)
    x = torch.randn(2, 3, 7) if "1d" in type(module).__name__ else torch.randn(2, 3, 7, 6)
    assert_close(out(x), module(x))


def test_convert_leaves_other_modules_alone_and_is_idempotent():
    class MyConv(nn.Conv2d):  # a user subclass may override forward: not replaced
        def forward(self, x):
            return super().forward(x) * 2

    model = nn.Sequential(MyConv(3, 3, 3), nn.Conv3d(3, 3, 1), nn.Linear(3, 3), nn.BatchNorm2d(3))
    converted = convops.convert(model)
    assert type(converted[0]) is MyConv
    assert type(converted[1]) is nn.Conv3d
    assert type(converted[2]) is nn.Linear
    model2 = nn.Sequential(nn.Conv2d(3, 3, 3))
    once = convops.convert(model2)
    first = once[0]
    twice = convops.convert(once)
    assert twice[0] is first  # already converted: untouched


def test_convert_module_registered_twice():
    """The same conv object in two slots (weight tying): both slots must be converted."""
    conv = nn.Conv2d(3, 3, 3, padding=1)
    model = nn.Sequential(conv, nn.ReLU(), conv)
    reference = copy.deepcopy(model)
    converted = convops.convert(model)
    assert _torch_convs(converted) == [], [type(m).__module__ for m in converted]
    assert converted[0].weight is converted[2].weight is conv.weight
    torch.manual_seed(0)
    x = torch.randn(1, 3, 6, 6)
    assert_close(converted(x), reference(x))


def test_convert_then_compile():
    torch._dynamo.reset()
    model = _nested_model().eval()
    reference = copy.deepcopy(model)
    compiled = torch.compile(convops.convert(model), fullgraph=True, backend="inductor")
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 5)
    with torch.no_grad():
        assert_close(compiled(x), reference(x))
