"""convops.models: torchvision parity (strict state_dict, same outputs), shapes, fwd+bwd,
conv_type families, list_models/get_model. Small inputs (batch 2, 64x64) keep it quick."""
import functools

import pytest
import torch
import torchvision
from torch import nn

import convops.models as zoo
import convops.nn as cnn
from convops.models._convs import conv_module

TORCHVISION_TWINS = ["resnet18", "resnet34", "resnet50", "resnext50_32x4d", "mobilenet_v2"]


def _randomise_norms(model: nn.Module, generator: torch.Generator) -> None:
    """Distinct BatchNorm statistics and affine parameters in every layer, so that eval-mode
    outputs depend on each norm landing in the right place (at init they are all identical)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(0.1 * torch.randn(c, generator=generator))
            m.running_var.copy_(0.5 + torch.rand(c, generator=generator))
            with torch.no_grad():
                m.weight.copy_(0.5 + torch.rand(c, generator=generator))
                m.bias.copy_(0.1 * torch.randn(c, generator=generator))


@functools.lru_cache(maxsize=None)
def _torchvision_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(num_classes=10)
    _randomise_norms(model, torch.Generator().manual_seed(1))
    return model.eval()


def _conv_modules(model):
    return [m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)]


@pytest.mark.parametrize("name", TORCHVISION_TWINS)
def test_torchvision_state_dict_loads_strictly_and_outputs_match(name):
    reference = _torchvision_model(name)
    ours = zoo.get_model(name, num_classes=10).eval()
    assert list(ours.state_dict()) == list(reference.state_dict())  # same names, same order
    # Same init scheme (kaiming fan_out convs): per-kernel spreads agree to sampling noise.
    theirs = reference.state_dict()
    for key, p in ours.state_dict().items():
        if p.dim() == 4 and p.numel() >= 4096:
            assert p.std().item() == pytest.approx(theirs[key].std().item(), rel=0.1), key
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected, actual = reference(x), ours(x)
    assert expected.abs().max() > 1e-2  # a real signal, not a vanished one
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", TORCHVISION_TWINS + ["lenet5"])
def test_built_only_from_convops_convs(name):
    model = zoo.get_model(name)
    convs = _conv_modules(model)
    assert convs and all(type(m) is cnn.Conv2d for m in convs)


@pytest.mark.parametrize("name, input_shape", [
    ("lenet5", (2, 1, 32, 32)),
    ("resnet18", (2, 3, 64, 64)),
    ("resnet34", (2, 3, 48, 48)),
    ("resnet50", (2, 3, 64, 64)),
    ("resnext50_32x4d", (2, 3, 48, 48)),
    ("mobilenet_v2", (2, 3, 64, 64)),
])
def test_forward_backward_shapes(name, input_shape):
    model = zoo.get_model(name, num_classes=7).train()
    x = torch.randn(*input_shape, requires_grad=True)
    out = model(x)
    assert out.shape == (input_shape[0], 7)
    out.square().mean().backward()
    assert x.grad is not None and x.grad.shape == x.shape and torch.isfinite(x.grad).all()
    for key, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), key
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


def test_lenet5_input_sizes():
    torch.manual_seed(0)
    classic = zoo.lenet5()
    padded = zoo.lenet5(input_size=28)
    padded.load_state_dict(classic.state_dict())  # same parameters for both sizes
    assert classic(torch.randn(3, 1, 32, 32)).shape == (3, 10)
    assert padded(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    # Padding a 28x28 image by 2 is what the 28x28 variant does inside its first conv.
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(padded(x), classic(nn.functional.pad(x, (2, 2, 2, 2))))
    assert zoo.lenet5(num_classes=5, in_channels=3)(torch.randn(1, 3, 32, 32)).shape == (1, 5)
    with pytest.raises(ValueError, match="input_size 32 .* or 28"):
        zoo.lenet5(input_size=64)
    with pytest.raises(RuntimeError):  # the classic variant does not take 28x28 images
        classic(torch.randn(1, 1, 28, 28))


def test_list_models_and_get_model():
    names = zoo.list_models()
    assert names == sorted(names)
    assert set(names) == {"lenet5", "resnet18", "resnet34", "resnet50", "resnext50_32x4d", "mobilenet_v2",
                          "dcn_resnet50"}
    model = zoo.get_model("resnet18", num_classes=3, in_channels=1)
    assert isinstance(model, zoo.ResNet) and model.fc.out_features == 3 and model.conv1.in_channels == 1
    assert zoo.get_model("lenet5") is not zoo.get_model("lenet5")  # a new model each call
    with pytest.raises(ValueError, match="unknown model 'resnet19'; available: dcn_resnet50, lenet5"):
        zoo.get_model("resnet19")
    with pytest.raises(TypeError):
        zoo.get_model("lenet5", not_an_argument=1)


def test_resnext_convs_are_grouped_and_mobilenet_depthwise():
    resnext = zoo.resnext50_32x4d()
    assert {m.groups for m in _conv_modules(resnext) if m.kernel_size == (3, 3)} == {32}
    mobilenet = zoo.mobilenet_v2()
    depthwise = [m for m in _conv_modules(mobilenet) if m.groups > 1]
    assert len(depthwise) == 17 and all(m.groups == m.in_channels == m.out_channels for m in depthwise)


def test_conv_type_errors():
    with pytest.raises(ValueError, match="unknown conv_type 'sparse'; expected one of dense, separable"):
        zoo.resnet18(conv_type="sparse")
    with pytest.raises(ValueError, match="one family name or 4"):
        zoo.resnet18(conv_type=["dense", "dense"])
    with pytest.raises(ValueError, match="dcn_stages"):
        zoo.dcn_resnet50(dcn_stages=(5,))
    with pytest.raises(TypeError, match="dcn_stages / deform_type"):
        zoo.dcn_resnet50(conv_type="dense")


def test_per_stage_conv_types():
    model = zoo.resnet18(conv_type=["dense", "dense", "dense", "dense"])
    assert model.conv_types == ("dense",) * 4


def test_torch_twin_matches_and_uses_torch_convs():
    torch.manual_seed(0)
    model = zoo.resnet18(num_classes=4).eval()
    twin = zoo.torch_twin(model).eval()
    assert all(type(m) is nn.Conv2d for m in _conv_modules(twin))
    assert all(type(m) is cnn.Conv2d for m in _conv_modules(model))  # the original is untouched
    assert all(a is not b for a, b in zip(model.parameters(), twin.parameters()))  # a copy
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(twin(x), model(x), atol=1e-5, rtol=1e-5)


def test_load_torchvision_weights_reports_nothing_missing_for_dense():
    reference = _torchvision_model("resnet18")
    model = zoo.resnet18(num_classes=10)
    assert zoo.load_torchvision_weights(model, reference.state_dict()) == []
    with pytest.raises(RuntimeError, match="keys not in the model"):
        zoo.load_torchvision_weights(zoo.resnet18(num_classes=10), {**reference.state_dict(), "extra": torch.ones(1)})
