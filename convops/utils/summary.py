"""Per-layer model statistics, like torchinfo, plus receptive fields.

Receptive field arithmetic (per spatial dimension, in input pixels), for a layer with kernel k,
stride s, padding p and dilation d, whose effective kernel is k_eff = d(k - 1) + 1:

    j_n     = j_{n-1} * s                              jump: input pixels between adjacent outputs
    r_n     = r_{n-1} + (k_eff - 1) * j_{n-1}          receptive field (r_0 = 1, j_0 = 1)
    start_n = start_{n-1} + ((k_eff - 1) / 2 - p) * j_{n-1}   centre of the first output's field
                                                       (start_0 = 0.5: the centre of pixel 0)

so r_n = r_{n-1} + (k_n - 1) * prod(strides before n). A transposed conv divides the jump by
its stride and widens the field by the ceil(k_eff / s) - 1 inputs each output reads. Global
pooling (AdaptiveAvgPool to 1x1) and everything after it see the whole input.

In a model with branches (residual blocks) each tensor carries its own field; a tensor made by
a function rather than a module (the residual `+`, `flatten`) gets the widest field among the
tracked tensors of its spatial size, which is what the sum of two branches sees.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["Field", "LayerInfo", "Summary", "summary", "receptive_field", "layer_geometry",
           "conv_params"]

Pair = Tuple[float, float]


def _pair(v) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


@dataclass(frozen=True)
class Field:
    """Receptive field (rf), jump and start per spatial dimension (height, width)."""
    rf: Pair = (1, 1)
    jump: Pair = (1, 1)
    start: Pair = (0.5, 0.5)
    global_: bool = False  # sees the whole input (after global pooling / flatten + linear)

    def through(self, kernel, stride=1, padding=0, dilation=1, transposed=False) -> "Field":
        """The field after one layer with this geometry."""
        if self.global_:
            return self
        rf, jump, start = [], [], []
        for i, (k, s, p, d) in enumerate(zip(_pair(kernel), _pair(stride), _pair(padding), _pair(dilation))):
            k_eff = d * (k - 1) + 1
            r0, j0, s0 = self.rf[i], self.jump[i], self.start[i]
            if transposed:
                rf.append(r0 + (math.ceil(k_eff / s) - 1) * j0)
                jump.append(j0 / s)
                start.append(s0 + (p - (k_eff - 1) / 2) / s * j0)
            else:
                rf.append(r0 + (k_eff - 1) * j0)
                jump.append(j0 * s)
                start.append(s0 + ((k_eff - 1) / 2 - p) * j0)
        return Field(tuple(rf), tuple(jump), tuple(start))

    def whole_input(self) -> "Field":
        return Field(self.rf, self.jump, self.start, global_=True)


def layer_geometry(module: nn.Module) -> Optional[dict]:
    """kernel/stride/padding/dilation/transposed of a spatial layer, or None if the module does
    not change the spatial grid (activations, norms, ...)."""
    if isinstance(module, nn.modules.conv._ConvNd):
        padding = module.padding
        if isinstance(padding, str):  # 'same' keeps the centre; 'valid' is no padding
            padding = tuple(d * (k - 1) / 2 for k, d in zip(module.kernel_size, module.dilation)) \
                if padding == "same" else 0
        return dict(kernel=module.kernel_size, stride=module.stride, padding=padding,
                    dilation=module.dilation, transposed=module.transposed)
    if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d, nn.MaxPool1d, nn.AvgPool1d)):
        return dict(kernel=module.kernel_size, stride=module.stride or module.kernel_size,
                    padding=module.padding, dilation=getattr(module, "dilation", 1))
    # deformable convs (torchvision's and convops') keep the nominal grid of their kernel
    if all(hasattr(module, a) for a in ("kernel_size", "stride", "padding", "dilation")) \
            and hasattr(module, "weight"):
        return dict(kernel=module.kernel_size, stride=module.stride, padding=module.padding,
                    dilation=module.dilation)
    return None


def _is_global(module: nn.Module, output) -> bool:
    if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool1d,
                           nn.AdaptiveMaxPool1d)):
        return isinstance(output, torch.Tensor) and all(s == 1 for s in output.shape[2:])
    return isinstance(module, (nn.Linear, nn.Flatten))


def conv_params(module: nn.Module) -> int:
    """The textbook parameter count: out * in / groups * prod(kernel) (+ out for the bias); for
    other layers the number of elements of their own parameters."""
    if isinstance(module, nn.modules.conv._ConvNd):
        inc, outc = module.in_channels, module.out_channels
        count = outc * inc // module.groups * math.prod(module.kernel_size)
        return count + (outc if module.bias is not None else 0)
    return sum(p.numel() for p in module.parameters(recurse=False))


def receptive_field(layers: Union[nn.Module, Iterable], input_size: Optional[Sequence[int]] = None,
                    ) -> List[Field]:
    """Receptive fields after each layer.

    `layers` is either a model (then `input_size` is required and the fields come from a
    forward pass, one per spatial layer, see `summary`), or an iterable whose items are spatial
    modules (Conv*, *Pool*) or geometry tuples/dicts (kernel, stride=1, padding=0, dilation=1).
    """
    if isinstance(layers, nn.Module) and input_size is not None:
        return [row.field for row in summary(layers, input_size).rows
                if row.geometry is not None or row.field.global_]
    if isinstance(layers, nn.Module):
        layers = list(layers.modules())[1:] if len(list(layers.children())) else [layers]
    out, current = [], Field()
    for layer in layers:
        if isinstance(layer, nn.Module):
            geometry = layer_geometry(layer)
            if geometry is None:
                continue
        elif isinstance(layer, dict):
            geometry = layer
        else:
            geometry = dict(zip(("kernel", "stride", "padding", "dilation"), layer))
        current = current.through(**geometry)
        out.append(current)
    return out


@dataclass
class LayerInfo:
    name: str
    type: str
    output_shape: Optional[tuple]
    params: int
    flops: int
    field: Field
    geometry: Optional[dict] = None


@dataclass
class Summary:
    rows: List[LayerInfo] = field(default_factory=list)
    input_size: tuple = ()
    total_flops: int = 0

    @property
    def total_params(self) -> int:
        """Each module once, however often it is called (torchvision's ResNet reuses its ReLUs)."""
        return sum({r.name: r.params for r in self.rows}.values())

    def __str__(self) -> str:
        header = ("layer", "type", "output shape", "params", "FLOPs", "RF", "jump", "start")
        lines = [header]
        for r in self.rows:
            if r.field.global_:
                rf = jump = start = "global"
            else:
                rf, jump, start = (_fmt_pair(r.field.rf), _fmt_pair(r.field.jump), _fmt_pair(r.field.start))
            lines.append((r.name, r.type, str(list(r.output_shape)) if r.output_shape else "-",
                          f"{r.params:,}", _fmt_flops(r.flops), rf, jump, start))
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        text = ["  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
                for line in lines]
        rule = "-" * len(text[0])
        return "\n".join([text[0], rule] + text[1:] + [rule, f"input {list(self.input_size)}, total params "
                                                         f"{self.total_params:,}, total FLOPs "
                                                         f"{_fmt_flops(self.total_flops)}"])

    __repr__ = __str__


def _fmt_pair(p) -> str:
    def one(v):
        return str(int(v)) if float(v).is_integer() else f"{v:g}"
    return one(p[0]) if p[0] == p[1] else f"{one(p[0])}x{one(p[1])}"


def _fmt_flops(n: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def summary(model: nn.Module, input_size: Sequence[int], dtype=None, device=None) -> Summary:
    """One forward pass of a random input of `input_size` (with the batch dim; dtype and device
    default to the model's); returns the
    per-leaf-module output shape, textbook parameter count, FLOPs (as FlopCounterMode counts
    them: 2 per multiply-add) and receptive field / jump / start. `print()` it for a table."""
    first = next(iter(model.parameters()), None)
    device = device or (first.device if first is not None else torch.device("cpu"))
    dtype = dtype or (first.dtype if first is not None and first.is_floating_point() else torch.float32)
    x = torch.randn(*input_size, dtype=dtype, device=device)
    names = {m: n for n, m in model.named_modules()}
    leaves = [m for m in model.modules() if not list(m.children()) or layer_geometry(m) is not None]
    fields = {}  # id(tensor) -> (tensor, Field); the tensor is kept so ids are not reused
    rows: List[LayerInfo] = []

    def field_of(t: torch.Tensor) -> Field:
        if id(t) in fields:
            return fields[id(t)][1]
        # made by a function: the widest field among tracked tensors of this spatial size
        same = [f for tt, f in fields.values() if tt.shape[2:] == t.shape[2:]]
        if same:
            return max(same, key=lambda f: (f.global_, f.rf))
        return Field(global_=t.dim() <= 2 and bool(fields))

    def hook(module, inputs, output):
        tensor_in = next((t for t in inputs if isinstance(t, torch.Tensor)), None)
        current = field_of(tensor_in) if tensor_in is not None else Field()
        geometry = layer_geometry(module)
        if geometry is not None:
            current = current.through(**geometry)
        if _is_global(module, output):
            current = current.whole_input()
        out = output if isinstance(output, torch.Tensor) else None
        if out is not None:
            fields[id(out)] = (out, current)
        rows.append(LayerInfo(names.get(module, type(module).__name__), type(module).__name__,
                              tuple(out.shape) if out is not None else None, conv_params(module), 0,
                              current, geometry))

    fields[id(x)] = (x, Field())
    handles = [m.register_forward_hook(hook) for m in leaves]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    per_module = counter.get_flop_counts()
    root = type(model).__name__
    seen = set()
    for row in rows:  # a module called twice holds both calls' FLOPs on its first row
        key = f"{root}.{row.name}" if row.name else root
        row.flops = 0 if key in seen else int(sum(per_module.get(key, {}).values()))
        seen.add(key)
    return Summary(rows, tuple(input_size), int(counter.get_total_flops()))
