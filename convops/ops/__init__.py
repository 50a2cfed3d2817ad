"""Fake kernels and autograd for every torch.ops.convops operator, one module per op family
(mirroring csrc/cpu/*.cpp): importing this package registers them all."""
from . import conv  # noqa: F401
from .conv import Conv2dFunction, ConvTranspose2dFunction, build_info
# op families register below, one import each
# [depthwise / grouped]
from . import depthwise  # noqa: F401
from .depthwise import DepthwiseConv2dFunction, DepthwiseSeparableConv2dFunction
# [separable]
from .separable import SpatiallySeparableConv2dFunction
# [deformable]
from . import deform  # noqa: F401
from .deform import DeformConv2dFunction

__all__ = ["Conv2dFunction", "ConvTranspose2dFunction", "DepthwiseConv2dFunction",
           "DepthwiseSeparableConv2dFunction", "build_info"]
__all__ += ["SpatiallySeparableConv2dFunction"]
__all__ += ["DeformConv2dFunction"]
