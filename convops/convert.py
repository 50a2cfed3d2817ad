"""convert(model): swap every torch conv module for its convops twin, sharing weights."""
from __future__ import annotations

import torch

from . import nn as cnn

# Exact torch type -> convops twin. Exact types only: a user's own subclass of nn.Conv2d may
# override forward, and silently replacing it would change the model.
_TWINS = {
    torch.nn.Conv1d: cnn.Conv1d,
    torch.nn.Conv2d: cnn.Conv2d,
    torch.nn.ConvTranspose1d: cnn.ConvTranspose1d,
    torch.nn.ConvTranspose2d: cnn.ConvTranspose2d,
}


def convert(model: torch.nn.Module, *, deformable=None) -> torch.nn.Module:
    """Returns `model` with every torch Conv1d/Conv2d/ConvTranspose1d/ConvTranspose2d (at any
    depth) replaced in place by the convops module sharing its parameters; outputs unchanged.
    A module registered in several places gets one twin, used in all of them.

    deformable (opt-in): which 3x3 Conv2d layers (torch or convops, zeros padding) become
    deformable; each is replaced by a DeformConv2dPack ("v1") or ModulatedDeformConv2dPack ("v2")
    sharing its weight and bias, whose offset predictor starts at zero, so outputs are unchanged
    until it is trained. "v1" / "v2": every such layer; a dict {qualified name: "v1" | "v2"}:
    those layers (a name that is not an eligible layer raises ValueError); a callable
    (qualified name, module) -> "v1" | "v2" | None: the layers it picks."""
    if deformable is not None:
        _make_deformable(model, deformable)
    return _convert(model, {})


def _convert(module: torch.nn.Module, twins: dict) -> torch.nn.Module:
    if id(module) in twins:
        return twins[id(module)]
    twin_type = _TWINS.get(type(module))
    if twin_type is not None:
        twins[id(module)] = twin_type.from_torch(module)
        return twins[id(module)]
    twins[id(module)] = module  # visited: shared containers are walked once
    # _modules, not named_children(): the latter skips a child seen under another name.
    for name, child in list(module._modules.items()):
        if child is not None:
            converted = _convert(child, twins)
            if converted is not child:
                setattr(module, name, converted)
    return module


# ----------------------------------------------------------------------------- [deformable]

def _deformable_eligible(module: torch.nn.Module) -> bool:
    return (type(module) in (torch.nn.Conv2d, cnn.Conv2d) and tuple(module.kernel_size) == (3, 3)
            and module.padding_mode == "zeros" and not isinstance(module.padding, str))


def _make_deformable(model: torch.nn.Module, deformable) -> None:
    if isinstance(deformable, str):
        if deformable not in ("v1", "v2"):
            raise ValueError(f"deformable must be 'v1', 'v2', a dict or a callable, but got {deformable!r}")
        choose = lambda name, m: deformable  # noqa: E731
    elif isinstance(deformable, dict):
        bad = {v for v in deformable.values() if v not in ("v1", "v2")}
        if bad:
            raise ValueError(f"deformable: expected 'v1' or 'v2' per layer, but got {sorted(bad)}")
        eligible = {name for name, m in model.named_modules() if _deformable_eligible(m)}
        missing = sorted(set(deformable) - eligible)
        if missing:
            raise ValueError(f"deformable: {missing} are not 3x3 Conv2d layers with zeros padding of this model")
        choose = lambda name, m: deformable.get(name)  # noqa: E731
    elif callable(deformable):
        choose = deformable
    else:
        raise TypeError(f"deformable must be 'v1', 'v2', a dict or a callable, but got {type(deformable).__name__}")
    replaced = {}
    for name, module in list(model.named_modules()):
        if id(module) in replaced or not _deformable_eligible(module):
            continue
        kind = choose(name, module)
        if kind is None:
            continue
        if kind not in ("v1", "v2"):
            raise ValueError(f"deformable: expected 'v1', 'v2' or None for {name!r}, but got {kind!r}")
        replaced[id(module)] = _deformable_twin(module, kind)
    _replace(model, replaced, set())


def _deformable_twin(conv: torch.nn.Conv2d, kind: str) -> torch.nn.Module:
    cls = cnn.DeformConv2dPack if kind == "v1" else cnn.ModulatedDeformConv2dPack
    w = conv.weight
    with torch.device("meta"):
        twin = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                   conv.dilation, conv.groups, deform_groups=1, bias=conv.bias is not None)
    twin.weight, twin.bias = conv.weight, conv.bias  # shared Parameters
    twin.conv_offset = twin.conv_offset.to_empty(device=w.device).to(w.dtype)
    twin.init_offset()
    twin.train(conv.training)
    return twin


def _replace(module: torch.nn.Module, replaced: dict, seen: set) -> None:
    if id(module) in seen:
        return
    seen.add(id(module))
    for name, child in list(module._modules.items()):
        if child is None:
            continue
        if id(child) in replaced:
            setattr(module, name, replaced[id(child)])
        else:
            _replace(child, replaced, seen)
