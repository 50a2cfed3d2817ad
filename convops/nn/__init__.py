"""Drop-in torch.nn modules whose forward runs on convops operators."""
from .conv import Conv1d, Conv2d, ConvTranspose1d, ConvTranspose2d

__all__ = ["Conv1d", "Conv2d", "ConvTranspose1d", "ConvTranspose2d"]
# [separable] modules
from .separable import DepthwiseSeparableConv2d, SpatiallySeparableConv2d  # noqa: E402

__all__ += ["DepthwiseSeparableConv2d", "SpatiallySeparableConv2d"]
# [deformable] modules
from .deform import DeformConv2d, DeformConv2dPack, ModulatedDeformConv2dPack  # noqa: E402

__all__ += ["DeformConv2d", "DeformConv2dPack", "ModulatedDeformConv2dPack"]
