"""Small encoders that fit the model contract: an MLP for vectors and a CNN for images.

Each maps a batch to the shared representation ``Z`` that a :class:`~workbench.tasks.MultiTaskModel`
hands to its heads. The transformers encoder (MiniLM first) is in :mod:`workbench.models.transformers`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from workbench.tasks import Inputs

__all__ = ["mlp_encoder", "conv_encoder", "representation_shape"]


def mlp_encoder(in_features: int, hidden: Sequence[int] = (64, 64), activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """A ready MLP encoder ``(B, in_features) -> (B, hidden[-1])``: Linear and activation per width."""
    if not hidden:
        raise ValueError("an MLP encoder needs at least one hidden width")
    layers: list[nn.Module] = []
    width = in_features
    for out in hidden:
        layers += [nn.Linear(width, out), activation()]
        width = out
    return nn.Sequential(*layers)


def conv_encoder(in_channels: int = 1, channels: Sequence[int] = (16, 32, 32), kernel_size: int = 3) -> nn.Sequential:
    """A small CNN ``(B, in_channels, H, W) -> (B, channels[-1], H / 2^k, W / 2^k)`` with ``k = len(channels) - 1``.

    Each width is a same-padded convolution and a ReLU; a 2 × 2 max-pooling follows every one but the
    last. The representation stays spatial (channel × height × width) so that saliency can be read
    per position; on MultiDigits' 12 × 16 canvas the default gives ``Z`` of shape ``(B, 32, 3, 4)``.
    """
    if not channels:
        raise ValueError("a convolutional encoder needs at least one channel width")
    layers: list[nn.Module] = []
    width = in_channels
    for i, out in enumerate(channels):
        layers += [nn.Conv2d(width, out, kernel_size, padding=kernel_size // 2), nn.ReLU()]
        if i < len(channels) - 1:
            layers.append(nn.MaxPool2d(2))
        width = out
    return nn.Sequential(*layers)


@torch.no_grad()
def representation_shape(encoder: nn.Module, example: Inputs) -> tuple[int, ...]:
    """The shape of one sample's representation (``Z.shape[1:]``), from a forward pass on ``example``."""
    return tuple(encoder(example).shape[1:])
