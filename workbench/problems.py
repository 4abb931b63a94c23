"""Ready problems: a dataset's splits together with the model that suits it.

The notebooks run the same experiment on synthetic tasks (an MLP), MultiDigits (a small CNN) and the
lexicon tasks (MiniLM); :func:`load_problem` builds either by name, and the model builders make a
fresh model for any subset of the tasks (single-task baselines, pairs, groups).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import xarray as xr

from workbench.architectures import mmoe_model
from workbench.encoders import Pooling, conv_encoder, minilm_encoder, representation_shape
from workbench.gradients import Grouping
from workbench.tasks import MultiTaskModel, MultiTaskSplits, Task, mlp_encoder

__all__ = ["ARCHITECTURES", "DATASETS", "Problem", "load_problem", "mlp_model", "multidigits_model", "minilm_model"]

DATASETS = ("synthetic", "multidigits", "lexicon")
ARCHITECTURES = ("hps", "mmoe")
Architecture = Literal["hps", "mmoe"]


def mlp_model(tasks: Sequence[Task], in_features: int, hidden: Sequence[int] = (64, 64), architecture: Architecture = "hps") -> MultiTaskModel:
    """An MLP encoder ``(B, in_features) -> (B, hidden[-1])`` with one linear head per task, or an
    MMoE (``architecture="mmoe"``) of four such MLP experts with a softmax gate per task."""
    if architecture == "mmoe":
        return mmoe_model(tasks, in_features, hidden)
    _check(architecture)
    return MultiTaskModel(mlp_encoder(in_features, hidden), tasks, representation_dim=hidden[-1])


def multidigits_model(
    tasks: Sequence[Task], canvas: Sequence[int] = (12, 16), channels: Sequence[int] = (16, 32, 32), architecture: Architecture = "hps"
) -> MultiTaskModel:
    """:func:`~workbench.encoders.conv_encoder` on ``(B, 1, *canvas)`` images with a linear head per task on the
    flattened ``Z``, or (``"mmoe"``) that CNN as a shared trunk under four MLP experts with a gate per task."""
    import torch

    encoder = conv_encoder(1, channels)
    shape = representation_shape(encoder, torch.zeros(1, 1, *canvas))
    if architecture == "mmoe":
        return mmoe_model(tasks, math.prod(shape), (64,), trunk=encoder)
    _check(architecture)
    return MultiTaskModel(encoder, tasks, representation_dim=shape)


def minilm_model(tasks: Sequence[Task], pooling: Pooling = "mean", trainable_layers: int | None = 2, architecture: Architecture = "hps") -> MultiTaskModel:
    """MiniLM (:func:`~workbench.encoders.minilm_encoder`) with one linear head per task on its 384
    features, or (``"mmoe"``) MiniLM as a shared trunk under four MLP experts with a gate per task."""
    encoder = minilm_encoder(pooling, trainable_layers)
    if architecture == "mmoe":
        return mmoe_model(tasks, 384, (128,), trunk=encoder)
    _check(architecture)
    return MultiTaskModel(encoder, tasks, representation_dim=384)


def _check(architecture: str) -> None:
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; available: {list(ARCHITECTURES)}")


@dataclass
class Problem:
    """A dataset by name: its ``splits``, ``make_model(tasks, architecture="hps")`` for a fresh model
    (hard parameter sharing, or ``"mmoe"``), and the natural ``layers`` grouping of its encoder."""

    name: str
    splits: MultiTaskSplits
    make_model: Callable[[Sequence[Task]], MultiTaskModel]
    layers: Grouping
    truth: dict[str, xr.DataArray] = field(default_factory=dict)
    """Ground truth beyond the reference: ``"weights"`` ``(task, feature)`` of synthetic tasks."""


def load_problem(dataset: str, seed: int = 0, **options: Any) -> Problem:
    """Build ``dataset`` (one of :data:`DATASETS`) with its model; ``options`` go to the builder.

    - ``"synthetic"``: :func:`~workbench.data.make_synthetic` options plus ``hidden`` (MLP widths),
      ``validation_fraction`` and ``test_fraction``;
    - ``"multidigits"``: :func:`~workbench.data.make_multidigits` options plus ``channels`` (CNN widths);
    - ``"lexicon"``: :func:`~workbench.data.make_lexicon` options plus ``pooling`` and
      ``trainable_layers`` for MiniLM; its layers are the transformer blocks. With
      ``cache_frozen=True`` (the default) the inputs carry the output of MiniLM's frozen blocks,
      computed once (:meth:`~workbench.encoders.TransformerEncoder.cache_frozen`), so that training
      and probing run the trainable blocks only.
    """
    from functools import partial

    from workbench import data

    if dataset == "synthetic":
        hidden = options.pop("hidden", (64, 64))
        fractions = {k: options.pop(k) for k in ("validation_fraction", "test_fraction") if k in options}
        synthetic = data.make_synthetic(seed=seed, **options)
        features = synthetic.data.x.shape[1]
        splits = synthetic.splits(seed=seed, **fractions)
        return Problem(dataset, splits, partial(mlp_model, in_features=features, hidden=hidden), "tensor", {"weights": synthetic.weights})
    if dataset == "multidigits":
        channels = options.pop("channels", (16, 32, 32))
        splits = data.make_multidigits(seed=seed, **options)
        return Problem(dataset, splits, partial(multidigits_model, canvas=tuple(splits.attrs["canvas"]), channels=channels), "tensor")
    if dataset == "lexicon":
        model_options = {k: options.pop(k) for k in ("pooling", "trainable_layers") if k in options}
        cache = options.pop("cache_frozen", True)
        splits = data.make_lexicon(seed=seed, **options)
        encoder = minilm_encoder(**model_options)
        if cache and encoder.frozen and 0 < encoder.trainable_layers < len(encoder.blocks):
            splits = splits.map_inputs(encoder.cache_frozen)
        return Problem(dataset, splits, partial(minilm_model, **model_options), "block")
    raise ValueError(f"unknown dataset {dataset!r}; available: {list(DATASETS)}")
