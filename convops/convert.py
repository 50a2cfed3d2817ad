"""convert(model): swap every torch conv module for its convops twin, sharing weights; opt-in
conversions (low-rank spatially separable convs) replace modules by approximations.

Each conversion is a *rule*: a callable (qualified name, module) -> replacement module or None.
convert tries the opt-in rules first, then the default twin rule; a new opt-in is one more rule
class and one keyword argument."""
from __future__ import annotations

import math
from typing import Callable, List, Optional, Union

import torch

from . import decompose as _decompose
from . import nn as cnn

# Exact torch type -> convops twin. Exact types only: a user's own subclass of nn.Conv2d may
# override forward, and silently replacing it would change the model.
_TWINS = {
    torch.nn.Conv1d: cnn.Conv1d,
    torch.nn.Conv2d: cnn.Conv2d,
    torch.nn.ConvTranspose1d: cnn.ConvTranspose1d,
    torch.nn.ConvTranspose2d: cnn.ConvTranspose2d,
}

# convops modules whose children only hold parameters for a fused forward: never walked into
# (replacing a child would break the parent's forward).
_OPAQUE = (cnn.DepthwiseSeparableConv2d, cnn.SpatiallySeparableConv2d)

Rule = Callable[[str, torch.nn.Module], Optional[torch.nn.Module]]


def _twin_rule(name: str, module: torch.nn.Module) -> Optional[torch.nn.Module]:
    twin_type = _TWINS.get(type(module))
    return twin_type.from_torch(module) if twin_type is not None else None


class _SeparableRule:
    """Dense Conv2d (torch's or convops', exact type) with a kernel of at least 2 x 2 and
    padding_mode 'zeros' -> SpatiallySeparableConv2d.from_conv2d(conv, rank). `rank`: an int
    (capped at each layer's full rank) or a float in (0, 1], the fraction of each layer's full
    rank (rounded up, at least 1)."""

    def __init__(self, rank: Union[int, float], report: Optional[list]):
        if isinstance(rank, bool) or not isinstance(rank, (int, float)) or rank <= 0 or \
                (isinstance(rank, float) and rank > 1):
            raise ValueError(f"separable_rank must be a positive int or a float in (0, 1] (a fraction of each "
                             f"layer's full rank), but got separable_rank={rank!r}")
        self.rank, self.report = rank, report

    def layer_rank(self, full: int) -> int:
        if isinstance(self.rank, float):
            return max(1, min(full, math.ceil(self.rank * full - 1e-9)))
        return min(self.rank, full)

    def __call__(self, name: str, module: torch.nn.Module) -> Optional[torch.nn.Module]:
        if type(module) not in (torch.nn.Conv2d, cnn.Conv2d) or module.padding_mode != "zeros" \
                or min(module.kernel_size) < 2:
            return None
        rank = self.layer_rank(_decompose.full_rank(module.weight, module.groups))
        separable = cnn.SpatiallySeparableConv2d.from_conv2d(module, rank)
        if self.report is not None:
            self.report.append(separable_layer_report(name, module, separable))
        return separable


def separable_layer_report(name: str, conv: torch.nn.Conv2d, separable) -> dict:
    """FLOPs per output pixel (one image, multiply-add = 2 FLOPs, borders ignored): the dense
    conv's 2*Cin/g*kh*kw per output channel against the vertical pass (which runs on every input
    column, i.e. stride_w times as many positions) plus the horizontal one."""
    cout, cin_g, kh, kw = conv.weight.shape
    g, rank, sw = conv.groups, separable.rank, conv.stride[1]
    before = 2 * cout * cin_g * kh * kw
    after = 2 * rank * g * cin_g * kh * sw + 2 * cout * rank * kw
    return {"name": name, "kernel_size": tuple(conv.kernel_size), "in_channels": conv.in_channels,
            "out_channels": conv.out_channels, "groups": g, "rank": rank, "full_rank": separable.full_rank,
            "flops_before": before, "flops_after": after, "flops_saved": 1 - after / before,
            "error": separable.reconstruction_error}


def convert(model: torch.nn.Module, *, separable_rank: Union[int, float, None] = None,
            report: Optional[List[dict]] = None, deformable=None) -> torch.nn.Module:
    """Returns `model` with every torch Conv1d/Conv2d/ConvTranspose1d/ConvTranspose2d (at any
    depth) replaced in place by the convops module sharing its parameters; outputs unchanged.
    A module registered in several places gets one twin, used in all of them.

    separable_rank (opt-in, approximate): every Conv2d (torch's or convops', exact type) with a
    kernel of at least 2 in both dims and padding_mode 'zeros' (any stride, dilation, groups)
    becomes `nn.SpatiallySeparableConv2d.from_conv2d(conv, rank)`: an int rank (intermediate
    channels per group, capped at the layer's full rank) or a float in (0, 1], a fraction of each
    layer's full rank min(Cin/g*kh, Cout/g*kw), rounded up. The new parameters are copies.

    report: a list to which one dict per converted separable layer is appended: name, kernel_size,
    in/out_channels, groups, rank, full_rank, flops_before / flops_after (per output pixel of one
    image), flops_saved (fraction; negative when the pair costs more) and error (relative
    Frobenius reconstruction error of the kernel).

    deformable (opt-in): which 3x3 Conv2d layers (torch or convops, zeros padding) become
    deformable; each is replaced by a DeformConv2dPack ("v1") or ModulatedDeformConv2dPack ("v2")
    sharing its weight and bias, whose offset predictor starts at zero, so outputs are unchanged
    until it is trained. "v1" / "v2": every such layer; a dict {qualified name: "v1" | "v2"}:
    those layers (a name that is not an eligible layer raises ValueError); a callable
    (qualified name, module) -> "v1" | "v2" | None: the layers it picks."""
    if deformable is not None:
        _make_deformable(model, deformable)
    rules: List[Rule] = []
    if separable_rank is not None:
        rules.append(_SeparableRule(separable_rank, report))
    rules.append(_twin_rule)
    return _convert(model, "", rules, {})


def _convert(module: torch.nn.Module, name: str, rules: List[Rule], done: dict) -> torch.nn.Module:
    if id(module) in done:
        return done[id(module)]
    for rule in rules:
        replacement = rule(name, module)
        if replacement is not None:
            done[id(module)] = replacement
            return replacement
    done[id(module)] = module  # visited: shared containers are walked once
    if isinstance(module, _OPAQUE):
        return module
    # _modules, not named_children(): the latter skips a child seen under another name.
    for child_name, child in list(module._modules.items()):
        if child is not None:
            converted = _convert(child, f"{name}.{child_name}" if name else child_name, rules, done)
            if converted is not child:
                setattr(module, child_name, converted)
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
