"""What an architecture builds on: a problem's shared encoder, as a recipe.

Every architecture turns a :class:`Backbone` and the tasks into a
:class:`~workbench.tasks.MultiTaskModel`. Hard parameter sharing uses one backbone as the shared
encoder; a mixture of experts uses it as a shared trunk under its experts, or one fresh backbone per
expert.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from workbench.gradients import Grouping

__all__ = ["Backbone"]


@dataclass(frozen=True)
class Backbone:
    """``make()`` builds a fresh encoder (random or pretrained weights) that maps a batch to ``Z``.

    ``shape`` is one sample's representation, ``Z.shape[1:]``: ``(C,)`` for a vector, ``(C, H, W)``
    for a CNN's spatial map. ``inputs`` is one sample's input shape when the inputs are one tensor
    (``(F,)``, ``(1, H, W)``), ``None`` for named inputs (token ids). ``layers`` is the grouping of
    its parameters that per-layer probes use (tensors of an MLP or CNN, blocks of a transformer).
    """

    name: str
    make: Callable[[], nn.Module]
    shape: tuple[int, ...]
    inputs: tuple[int, ...] | None = None
    layers: Grouping = "tensor"
