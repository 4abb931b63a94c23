"""Ready problems: a dataset's splits together with the backbone that suits it.

The notebooks run the same experiment on synthetic tasks (an MLP), MultiDigits (a small CNN) and the
lexicon tasks (MiniLM); :func:`load_problem` builds either by name, and :meth:`Problem.make_model`
makes a fresh model of any registered architecture for any subset of the tasks (single-task
baselines, pairs, groups).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
import xarray as xr

from workbench.models import Backbone, conv_encoder, make_architecture, minilm_encoder, mlp_encoder, representation_shape
from workbench.tasks import MultiTaskModel, MultiTaskSplits, Task

__all__ = ["DATASETS", "Problem", "load_problem"]

DATASETS = ("synthetic", "multidigits", "lexicon")
MINILM_WIDTH = 384


@dataclass
class Problem:
    """A dataset by name: its ``splits``, the ``backbone`` its models share and, per architecture, the
    options that suit the backbone (``architecture_options``: an MMoE's expert widths)."""

    name: str
    splits: MultiTaskSplits
    backbone: Backbone
    architecture_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    truth: dict[str, xr.DataArray] = field(default_factory=dict)
    """Ground truth beyond the reference: ``"weights"`` ``(task, feature)`` of synthetic tasks."""

    @property
    def layers(self):
        """The natural grouping of the backbone's parameters for per-layer probes."""
        return self.backbone.layers

    def make_model(self, tasks: Sequence[Task], architecture: str = "hps", **options: Any) -> MultiTaskModel:
        """A fresh model of ``architecture`` (a registered name) for ``tasks``; ``options`` override the problem's own."""
        return make_architecture(architecture, tasks, self.backbone, **{**self.architecture_options.get(architecture, {}), **options})


def load_problem(dataset: str, seed: int = 0, **options: Any) -> Problem:
    """Build ``dataset`` (one of :data:`DATASETS`) with its backbone; ``options`` go to the builder.

    - ``"synthetic"``: :func:`~workbench.data.make_synthetic` options plus ``hidden`` (MLP widths),
      ``validation_fraction`` and ``test_fraction``; an MMoE's experts are MLPs on the inputs;
    - ``"multidigits"``: :func:`~workbench.data.make_multidigits` options plus ``channels`` (CNN widths);
      an MMoE puts MLP experts of 64 units on the CNN;
    - ``"lexicon"``: :func:`~workbench.data.make_lexicon` options plus ``pooling`` and
      ``trainable_layers`` for MiniLM; its layers are the transformer blocks; an MMoE puts MLP experts
      of 128 units on MiniLM. With ``cache_frozen=True`` (the default) the inputs carry the output of
      MiniLM's frozen blocks, computed once (:meth:`~workbench.models.TransformerEncoder.cache_frozen`),
      so that training and probing run the trainable blocks only.
    """
    from workbench import data

    if dataset == "synthetic":
        hidden = tuple(options.pop("hidden", (64, 64)))
        fractions = {k: options.pop(k) for k in ("validation_fraction", "test_fraction") if k in options}
        synthetic = data.make_synthetic(seed=seed, **options)
        features = synthetic.data.x.shape[1]
        backbone = Backbone("MLP", partial(mlp_encoder, features, hidden), (hidden[-1],), inputs=(features,), layers="tensor")
        splits = synthetic.splits(seed=seed, **fractions)
        return Problem(dataset, splits, backbone, {"mmoe": {"experts": "backbone"}}, {"weights": synthetic.weights})
    if dataset == "multidigits":
        channels = tuple(options.pop("channels", (16, 32, 32)))
        splits = data.make_multidigits(seed=seed, **options)
        canvas = (1, *splits.attrs["canvas"])
        make = partial(conv_encoder, 1, channels)
        with torch.random.fork_rng():  # the shape of Z from a throwaway CNN, leaving the random state as it was
            shape = representation_shape(make(), torch.zeros(1, *canvas))
        backbone = Backbone("CNN", make, shape, inputs=canvas, layers="tensor")
        return Problem(dataset, splits, backbone, {"mmoe": {"expert_hidden": (64,)}})
    if dataset == "lexicon":
        model_options = {k: options.pop(k) for k in ("pooling", "trainable_layers") if k in options}
        cache = options.pop("cache_frozen", True)
        splits = data.make_lexicon(seed=seed, **options)
        encoder = minilm_encoder(**model_options)
        if cache and encoder.frozen and 0 < encoder.trainable_layers < len(encoder.blocks):
            splits = splits.map_inputs(encoder.cache_frozen)
        backbone = Backbone("MiniLM", partial(minilm_encoder, **model_options), (MINILM_WIDTH,), layers="block")
        return Problem(dataset, splits, backbone, {"mmoe": {"expert_hidden": (128,)}})
    raise ValueError(f"unknown dataset {dataset!r}; available: {list(DATASETS)}")
