"""Subclasses of torch's conv modules: same constructor, init, parameters, state_dict, repr
and padding modes; only the convolution itself is ours."""
from __future__ import annotations

import copy
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import functional as cF


class _FromTorch:
    """`Twin.from_torch(m)`: a convops module sharing m's parameters, buffers and hooks."""

    _torch_base: type

    @classmethod
    def from_torch(cls, module: torch.nn.Module):
        if not isinstance(module, cls._torch_base):
            raise TypeError(f"{cls.__name__}.from_torch expects a {cls._torch_base.__name__}, "
                            f"got {type(module).__name__}")
        twin = cls.__new__(cls)
        # Copy the containers (so adding a parameter to one does not touch the other) but
        # keep the very same Parameter and buffer objects.
        twin.__dict__.update({k: copy.copy(v) if isinstance(v, dict) else v
                              for k, v in module.__dict__.items()})
        return twin


class _ConvTwin(_FromTorch):
    """forward of torch's Conv1d/Conv2d (padding modes included) on a convops function."""

    @staticmethod
    def _functional(*args):
        raise NotImplementedError

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Optional[Tensor]):
        if self.padding_mode != "zeros":
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return self._functional(input, weight, bias, self.stride, 0, self.dilation, self.groups)
        return self._functional(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)


class _ConvTransposeTwin(_FromTorch):
    """forward(input, output_size=None) of torch's ConvTranspose1d/2d on a convops function."""

    _spatial_dims: int

    @staticmethod
    def _functional(*args):
        raise NotImplementedError

    def forward(self, input: Tensor, output_size: Optional[List[int]] = None) -> Tensor:
        if self.padding_mode != "zeros":
            raise ValueError(f"Only `zeros` padding mode is supported for {type(self).__name__}")
        output_padding = self._output_padding(input, output_size, self.stride, self.padding,
                                              self.kernel_size, self._spatial_dims, self.dilation)
        return self._functional(input, self.weight, self.bias, self.stride, self.padding,
                                output_padding, self.groups, self.dilation)


class Conv1d(_ConvTwin, torch.nn.Conv1d):
    _torch_base = torch.nn.Conv1d
    _functional = staticmethod(cF.conv1d)


class Conv2d(_ConvTwin, torch.nn.Conv2d):
    _torch_base = torch.nn.Conv2d
    _functional = staticmethod(cF.conv2d)


class ConvTranspose1d(_ConvTransposeTwin, torch.nn.ConvTranspose1d):
    _torch_base = torch.nn.ConvTranspose1d
    _functional = staticmethod(cF.conv_transpose1d)
    _spatial_dims = 1


class ConvTranspose2d(_ConvTransposeTwin, torch.nn.ConvTranspose2d):
    _torch_base = torch.nn.ConvTranspose2d
    _functional = staticmethod(cF.conv_transpose2d)
    _spatial_dims = 2
