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
    depth) replaced in place by the convops module sharing its parameters; outputs unchanged."""
    twin = _TWINS.get(type(model))
    if twin is not None:
        return twin.from_torch(model)
    for name, child in model.named_children():
        converted = convert(child)
        if converted is not child:
            setattr(model, name, converted)
    return model
