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


def convert(model: torch.nn.Module) -> torch.nn.Module:
    """Returns `model` with every torch Conv1d/Conv2d/ConvTranspose1d/ConvTranspose2d (at any
    depth) replaced in place by the convops module sharing its parameters; outputs unchanged.
    A module registered in several places gets one twin, used in all of them."""
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
