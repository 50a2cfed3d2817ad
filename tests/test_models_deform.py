"""convops.models with the deformable conv family (convops.nn.DeformConv2dPack /
ModulatedDeformConv2dPack): dcn_resnet50 and conv_type="deformable"/"modulated"."""
import pytest
import torch
import torchvision
from torch import nn

import convops.models as zoo
import convops.nn as cnn
from convops.models.resnet import BasicBlock

from test_models import _randomise_norms


def _block_convs(model):
    """The 3x3 conv of every residual block (conv1/conv2 of a BasicBlock, conv2 of a Bottleneck)."""
    out = {}
    for name, m in model.named_modules():
        if name.count(".") == 1 and name.startswith("layer"):
            for attr in ("conv1", "conv2") if isinstance(m, BasicBlock) else ("conv2",):
                out[f"{name}.{attr}"] = getattr(m, attr)
    return out


def test_dcn_resnet50_equals_resnet50_at_init():
    torch.manual_seed(0)
    reference = torchvision.models.resnet50(num_classes=10)
    _randomise_norms(reference, torch.Generator().manual_seed(1))
    reference.eval()
    model = zoo.dcn_resnet50(num_classes=10).eval()
    missing = zoo.load_torchvision_weights(model, reference.state_dict())
    convs = _block_convs(model)
    deformable = {k for k, m in convs.items() if type(m) is cnn.ModulatedDeformConv2dPack}
    assert deformable == {k for k in convs if k.startswith(("layer3", "layer4"))} and len(deformable) == 9
    assert all(type(m) is cnn.Conv2d for k, m in convs.items() if k not in deformable)
    # Only the offset/mask predictors are new, and they start at zero: a plain conv at init.
    assert missing and all(any(k.startswith(d + ".") for d in deformable) for k in missing)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = reference(x)
        torch.testing.assert_close(model(x), expected, atol=1e-4, rtol=1e-4)


def test_dcn_resnet50_forward_backward_and_stages():
    model = zoo.dcn_resnet50(num_classes=5, dcn_stages=(4,)).train()
    types = [type(m) for m in _block_convs(model).values()]
    assert types.count(cnn.ModulatedDeformConv2dPack) == 3 and types.count(cnn.Conv2d) == 13
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    out = model(x)
    assert out.shape == (2, 5)
    out.square().mean().backward()
    for key, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), key


@pytest.mark.parametrize("conv_type, module", [("deformable", "DeformConv2dPack"),
                                               ("modulated", "ModulatedDeformConv2dPack")])
def test_resnet18_deformable_conv_types(conv_type, module):
    torch.manual_seed(0)
    model = zoo.resnet18(num_classes=4, conv_type=conv_type)
    assert {type(m) for m in _block_convs(model).values()} == {getattr(cnn, module)}
    assert type(model.conv1) is cnn.Conv2d  # the stem stays dense
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    if conv_type == "deformable":  # (the modulated backward is in the dcn_resnet50 test)
        model(x).sum().backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    # The deformable convs keep `.weight`: the dense model's weights load, the offset predictors
    # are extra, and at init the two are the same function.
    dense = zoo.resnet18(num_classes=4).eval()
    missing = zoo.load_torchvision_weights(model, dense.state_dict())
    assert missing and all("conv_offset" in k for k in missing)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), dense(x), atol=1e-4, rtol=1e-4)


def test_torch_twin_refuses_deformable_models():
    with pytest.raises(ValueError, match="has no torch equivalent"):
        zoo.torch_twin(zoo.resnet18(conv_type="modulated"))
