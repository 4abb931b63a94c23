"""SLERP (Shoemake 1985, as mergekit merges two models): the base and one model interpolated along the great circle.

For the base's tensor ``v0`` and the model's ``v1``, flattened, and ``t`` the share of the model::

    cos Ω = ⟨v0 / |v0|, v1 / |v1|⟩   (a norm below 1e-8 counts as 1)
    θ = [sin((1 − t) Ω) v0 + sin(t Ω) v1] / sin Ω,   or (1 − t) v0 + t v1 where |cos Ω| > 0.9995

on the tensors themselves, not their unit directions, as mergekit computes it. ``t = 0`` gives the base, ``t = 1``
the model; parallel tensors interpolate linearly.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from workbench.merge.tensor_wise import as_tensor_merge

__all__ = ["slerp", "slerp_merge", "spherical_interpolation"]

DOT_THRESHOLD = 0.9995


CHUNK = 1 << 20


def _gram64(a: Tensor, b: Tensor) -> tuple[float, float, float]:
    """``⟨a, a⟩, ⟨a, b⟩, ⟨b, b⟩`` of two flat tensors in one pass, accumulated in float64 a chunk at a time (float32 over
    millions of entries loses the digits that ``acos`` near 1 amplifies)."""
    gram = torch.zeros(2, 2, dtype=torch.float64)
    for i in range(0, a.numel(), CHUNK):
        both = torch.stack([a[i:i + CHUNK], b[i:i + CHUNK]]).double()
        gram += both @ both.T
    return float(gram[0, 0]), float(gram[0, 1]), float(gram[1, 1])


def spherical_interpolation(v0: Tensor, v1: Tensor, t: float, threshold: float = DOT_THRESHOLD, eps: float = 1e-8) -> Tensor:
    """``v0`` and ``v1`` (the same shape) interpolated at ``t`` along the great circle through their directions (see the
    module docstring), linearly where ``|cos Ω| > threshold``; the norms and the angle in float64."""
    a, b = v0.reshape(-1), v1.reshape(-1)
    squares_a, product, squares_b = _gram64(a, b)
    norm_a, norm_b = math.sqrt(squares_a), math.sqrt(squares_b)
    dot = min(max(product / ((norm_a if norm_a > eps else 1.0) * (norm_b if norm_b > eps else 1.0)), -1.0), 1.0)
    if abs(dot) > threshold:
        return (1 - t) * v0 + t * v1
    omega = math.acos(dot)
    return (math.sin((1 - t) * omega) * v0 + math.sin(t * omega) * v1) / math.sin(omega)


def slerp(base: Tensor, tensors: Tensor, t: float = 0.5) -> Tensor:
    """The base's tensor ``(*shape)`` and the one model's ``tensors[0]`` (``tensors``: ``(1, *shape)``) interpolated at ``t``."""
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
        raise ValueError(f"t must be a finite number (0: the base, 1: the model), got {t!r}")
    return spherical_interpolation(base, tensors[0], float(t))


slerp.models = (1, 1)
slerp_merge = as_tensor_merge(slerp)
