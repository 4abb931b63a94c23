"""Hard parameter sharing (Caruana 1997): one shared encoder, one linear head per task.

The plainest multi-task architecture and the workbench's default: :class:`~workbench.tasks.MultiTaskModel`
on the backbone, each head a linear map of the (flattened) representation.
"""

from __future__ import annotations

from collections.abc import Sequence

from workbench.models.backbone import Backbone
from workbench.tasks import MultiTaskModel, Task

__all__ = ["hard_sharing"]


def hard_sharing(tasks: Sequence[Task], backbone: Backbone) -> MultiTaskModel:
    """The backbone as the shared encoder and a linear head per task on its ``backbone.shape`` representation."""
    return MultiTaskModel(backbone.make(), tasks, representation_dim=backbone.shape)
