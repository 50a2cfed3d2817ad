"""LeNet-5 (LeCun et al., 1998) on convops convolutions."""
from __future__ import annotations

import torch
from torch import nn

from ._convs import conv_factory


class LeNet5(nn.Module):
    """conv 5x5 (6) -> pool -> conv 5x5 (16) -> pool -> fc 120 -> fc 84 -> fc num_classes.

    The classic layout on 1x32x32 images. `input_size=28` takes MNIST-sized 28x28 images by
    padding the first conv by 2 (the same 28x28 feature map the 32x32 input gives), so the rest
    of the network, including the 16*5*5 flatten, is unchanged. ReLU and max pooling replace the
    original's scaled tanh and trainable subsampling (they train faster; same shapes)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, input_size: int = 32,
                 conv_type: str = "dense"):
        super().__init__()
        if input_size not in (28, 32):
            raise ValueError(f"LeNet5 takes input_size 32 (classic) or 28 (padded), got {input_size}")
        self.input_size = input_size
        conv = conv_factory(conv_type)
        self.features = nn.Sequential(
            conv(in_channels, 6, 5, padding=(32 - input_size) // 2, bias=True),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            conv(6, 16, 5, bias=True),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(16 * 5 * 5, 120),
            nn.ReLU(inplace=True),
            nn.Linear(120, 84),
            nn.ReLU(inplace=True),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def lenet5(num_classes: int = 10, in_channels: int = 1, input_size: int = 32,
           conv_type: str = "dense") -> LeNet5:
    """LeNet-5 for in_channels x input_size x input_size images (input_size 32, or 28 padded)."""
    return LeNet5(num_classes=num_classes, in_channels=in_channels, input_size=input_size,
                  conv_type=conv_type)
