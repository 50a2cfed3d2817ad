"""convops: convolution operators for PyTorch, written from scratch in C++ and CUDA."""
import torch  # noqa: F401  (loads libtorch before the extension)

from . import _C  # noqa: F401  (registers the torch.ops.convops operators)
from . import ops  # noqa: F401  (fake kernels and autograd)
from . import functional, nn, utils
from .convert import convert
from . import models

__version__ = "0.1.0"
__all__ = ["functional", "nn", "utils", "convert", "models", "__version__"]
