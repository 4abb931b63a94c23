"""Passthrough (as mergekit 0.1.5 merges one model): the one model's tensors, each times ``scale`` when one is given.

mergekit's passthrough mostly stacks layer ranges of several models (``slices``) into a deeper model; that layer
surgery changes the architecture and is not a merge of aligned tensors, so it is not read here: a configuration
with ``slices`` is refused.
"""

from __future__ import annotations

import math

from torch import Tensor

from workbench.merge.tensor_wise import as_tensor_merge

__all__ = ["passthrough", "passthrough_merge"]


def passthrough(base: None, tensors: Tensor, scale: float | None = None) -> Tensor:
    """The one model's tensor ``tensors[0]`` of ``tensors`` ``(1, *shape)``, times ``scale`` unless it is ``None``."""
    if scale is not None and not (isinstance(scale, (int, float)) and math.isfinite(scale)):
        raise ValueError(f"scale must be a finite number or None, got {scale!r}")
    return tensors[0] if scale is None else tensors[0] * scale


passthrough.models = (1, 1)
passthrough_merge = as_tensor_merge(passthrough, uses_base=False)
