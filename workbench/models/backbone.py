"""What an architecture builds on: a problem's shared encoder, as a recipe.

Every architecture turns a :class:`Backbone` and the tasks into a
:class:`~workbench.tasks.MultiTaskModel`. Hard parameter sharing uses one backbone as the shared
encoder; a mixture of experts uses it as a shared trunk under its experts, or one fresh backbone per
expert.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from workbench.gradients import Grouping

__all__ = ["Backbone", "sequential_stages", "stage_shapes"]


@dataclass(frozen=True)
class Backbone:
    """``make()`` builds a fresh encoder (random or pretrained weights) that maps a batch to ``Z``.

    ``shape`` is one sample's representation, ``Z.shape[1:]``: ``(C,)`` for a vector, ``(C, H, W)``
    for a CNN's spatial map. ``inputs`` is one sample's input shape when the inputs are one tensor
    (``(F,)``, ``(1, H, W)``), ``None`` for named inputs (token ids). ``layers`` is the grouping of
    its parameters that per-layer probes use (tensors of an MLP or CNN, blocks of a transformer).
    ``stages(encoder)`` cuts a built encoder into consecutive stages whose composition is the encoder,
    for the architectures that act between stages (Cross-stitch, PLE); :func:`sequential_stages` by default.
    """

    name: str
    make: Callable[[], nn.Module]
    shape: tuple[int, ...]
    inputs: tuple[int, ...] | None = None
    layers: Grouping = "tensor"
    stages: Callable[[nn.Module], list[nn.Module]] | None = None

    def make_stages(self, architecture: str) -> list[nn.Module]:
        """A fresh encoder cut into its stages; errors name ``architecture``."""
        encoder = self.make()
        if self.stages is not None:
            return self.stages(encoder)
        if not isinstance(encoder, nn.Sequential):
            raise ValueError(f"{architecture} acts between the stages of the {self.name} backbone, which cannot be cut: only an nn.Sequential "
                             f"is cut by default, not a {type(encoder).__name__}; give the Backbone a stages function")
        return sequential_stages(encoder)


def sequential_stages(encoder: nn.Module) -> list[nn.Module]:
    """An ``nn.Sequential`` cut into stages: each layer with parameters and the parameter-free layers after it
    (an MLP's Linear and its activation; a CNN's convolution, ReLU and pooling). Their composition is ``encoder``."""
    if not isinstance(encoder, nn.Sequential):
        raise TypeError(f"only an nn.Sequential is cut by default, not a {type(encoder).__name__}")
    stages: list[list[nn.Module]] = []
    for layer in encoder:
        if any(True for _ in layer.parameters()) or not stages:
            stages.append([])
        stages[-1].append(layer)
    return [nn.Sequential(*layers) for layers in stages]


@torch.no_grad()
def stage_shapes(stages: Sequence[nn.Module], inputs: tuple[int, ...]) -> list[tuple[int, ...]]:
    """One sample's shape at the input of every stage and at the last one's output (``len(stages) + 1`` shapes),
    from a forward pass of zeros ``(1, *inputs)`` in eval mode; the modules' training modes are restored."""
    modes = [(module, module.training) for stage in stages for module in stage.modules()]
    for stage in stages:
        stage.eval()
    try:
        x, shapes = torch.zeros(1, *inputs), [tuple(inputs)]
        for stage in stages:
            x = stage(x)
            shapes.append(tuple(x.shape[1:]))
    finally:
        for module, training in modes:
            module.training = training
    return shapes
