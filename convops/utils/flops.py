"""FLOP formulas for the convops operators, registered with torch.utils.flop_counter so that
`FlopCounterMode` counts a convops model exactly as it counts the same model built from torch
convolutions (forward and backward).

torch's conventions, which we follow for comparability:
- a multiply-add is 2 FLOPs; bias additions are not counted;
- a convolution costs 2 * N * C_out * (C_in / groups) * prod(kernel) * prod(output spatial);
  a transposed one the same with the *input* spatial size;
- conv2d's input gradient is a transposed conv and is counted as one; its weight gradient is
  counted by torch as 2 * N * C_in * C_out * prod(kernel) * prod(grad_output spatial), i.e.
  without dividing by groups (torch's `conv_backward_flop` transposes shapes and loses the
  groups). convops' weight-gradient op reproduces that figure so totals stay equal to torch's;
  for grouped convolutions the true multiply count of the weight gradient is that figure / groups.
"""
from __future__ import annotations

import torch
from torch.utils import flop_counter
from torch.utils.flop_counter import conv_flop_count

ops = torch.ops.convops

__all__ = ["FORMULAS", "register"]


def _swap01(shape):
    return [shape[1], shape[0]] + list(shape[2:])


def conv2d_flop(input_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
    """convops::conv2d(input, weight, bias, stride, padding, dilation, groups)."""
    return conv_flop_count(list(input_shape), list(weight_shape), list(out_shape), transposed=False)


def conv_transpose2d_flop(input_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
    """convops::conv_transpose2d(input, weight, bias, ...): every input position scatters a full
    kernel, so the count runs over the input's spatial size (as torch's)."""
    return conv_flop_count(list(input_shape), list(weight_shape), list(out_shape), transposed=True)


def conv2d_weight_grad_flop(grad_output_shape, input_shape, *args, out_shape=None, **kwargs) -> int:
    """convops::conv2d_weight_grad(grad_output, input, kernel_size, ...): a conv of the input with
    grad_output as the kernel (batch and channels swapped), counted as torch counts the weight
    half of aten.convolution_backward. The same op computes conv_transpose2d's weight gradient
    (there its arguments are the transposed conv's input and grad_output), where torch's count
    reduces to the same expression."""
    return conv_flop_count(_swap01(input_shape), _swap01(grad_output_shape), _swap01(out_shape),
                           transposed=False)


# op name -> formula; an op is registered only if the extension defines it.
FORMULAS = {
    "conv2d": conv2d_flop,
    "conv_transpose2d": conv_transpose2d_flop,
    "conv2d_weight_grad": conv2d_weight_grad_flop,
    # [depthwise / grouped]
    # [separable]
    # [deformable]
}


def register() -> list:
    """Registers every formula whose op exists (idempotent); returns the registered op names."""
    registered = []
    for name, formula in FORMULAS.items():
        if not hasattr(ops, name):
            continue
        packet = getattr(ops, name)
        if packet not in flop_counter.flop_registry:
            flop_counter.register_flop_formula(packet)(formula)
        registered.append(name)
    return registered


register()
