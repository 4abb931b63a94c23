"""Ready problems: a dataset's splits together with the backbone that suits it.

The notebooks run the same experiment on synthetic tasks (an MLP), MultiDigits (a small CNN) and the
lexicon tasks (MiniLM); :func:`load_problem` builds either by name, in any of the data shapes
(:data:`DATA_SHAPES`) the dataset has, and :meth:`Problem.make_model` makes a fresh model of any
registered architecture for any subset of the tasks (single-task baselines, pairs, groups).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
import xarray as xr

from workbench.models import ARCHITECTURES, SCHEMES, Backbone, conv_encoder, make_architecture, make_scheme, minilm_encoder, mlp_encoder, representation_shape
from workbench.tasks import Inputs, MultiTaskModel, MultiTaskSplits, Task

__all__ = ["DATASETS", "DATA_SHAPES", "LABELS_REMOVED", "Problem", "load_problem"]

DATA_SHAPES = {
    "synthetic": ("shared", "missing_labels", "per_task"),
    "multidigits": ("shared", "missing_labels", "image_folder"),
    "lexicon": ("shared", "per_task"),
    "tabular": ("shared", "missing_labels"),
}
"""The data shapes each dataset has, for :func:`load_problem`'s ``data``:

- ``"shared"``: every task labelled on every sample;
- ``"missing_labels"``: the same samples, each task's training labels thinned at random (``labels_removed``);
- ``"per_task"``: one dataset per task (:class:`~workbench.data.TaskDatasets`), each task on samples of its own;
- ``"image_folder"``: the samples read from image files on disk, training streamed from them.
"""
DATASETS = tuple(DATA_SHAPES)
LABELS_REMOVED = 0.5
"""The share of each task's training labels ``data="missing_labels"`` removes unless told otherwise."""
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
        """A fresh model of ``architecture`` for ``tasks``: a registered architecture or parameter-efficient scheme
        (:data:`~workbench.models.SCHEMES`); ``options`` override the problem's own."""
        if architecture not in SCHEMES and architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture or parameter-efficient scheme {architecture!r}; architectures: {sorted(ARCHITECTURES)}; "
                             f"schemes: {sorted(SCHEMES)}")
        make = make_scheme if architecture in SCHEMES else make_architecture
        return make(architecture, tasks, self.backbone, **{**self.architecture_options.get(architecture, {}), **options})


def load_problem(dataset: str, seed: int = 0, data: str = "shared", **options: Any) -> Problem:
    """Build ``dataset`` (one of :data:`DATASETS`) in the data shape ``data`` (one of its :data:`DATA_SHAPES`) with
    its backbone; ``options`` go to the builder.

    - ``"synthetic"``: :func:`~workbench.data.make_synthetic` options plus ``hidden`` (MLP widths),
      ``validation_fraction`` and ``test_fraction``; an MMoE's experts are MLPs on the inputs. With
      ``data="per_task"``, ``n_samples`` is each task's: every task has samples of its own, drawn
      from the same generator (the same weights), split alike;
    - ``"multidigits"``: :func:`~workbench.data.make_multidigits` options plus ``channels`` (CNN widths);
      an MMoE puts MLP experts of 64 units on the CNN. ``data="image_folder"`` takes
      :func:`~workbench.data.multidigits.multidigits_image_folder`'s options (``folder``, ``num_workers``);
    - ``"lexicon"``: :func:`~workbench.data.make_lexicon` options (with ``data="per_task"``,
      :func:`~workbench.data.lexicon.make_lexicon_per_task`'s) plus ``pooling`` and
      ``trainable_layers`` for MiniLM; its layers are the transformer blocks; an MMoE puts MLP experts
      of 128 units on MiniLM. With ``cache_frozen=True`` (the default) the inputs carry the output of
      MiniLM's frozen blocks, computed once (:meth:`~workbench.models.TransformerEncoder.cache_frozen`),
      so that training and probing run the trainable blocks only; tasks sharing their inputs share it;
    - ``"tabular"``: :func:`~workbench.data.make_tabular` options (tasks of planted pairwise cosine and
      polynomial complexity, numerical and one-hot categorical features) plus ``hidden`` (MLP widths),
      ``validation_fraction`` and ``test_fraction``; the truth holds the tasks' weights.

    ``data="missing_labels"`` removes ``labels_removed`` (default :data:`LABELS_REMOVED`) of each task's
    training labels at random, seeded by ``seed``; validation and test keep all. Refused, naming what
    the dataset has: an unknown dataset or shape, and ``labels_removed`` with another shape.
    """
    if dataset not in DATA_SHAPES:
        raise ValueError(f"unknown dataset {dataset!r}; available: {list(DATASETS)}")
    if data not in DATA_SHAPES[dataset]:
        raise ValueError(f"dataset {dataset!r} has no data shape {data!r}; its shapes: {list(DATA_SHAPES[dataset])}")
    if "labels_removed" in options and data != "missing_labels":
        raise ValueError(f"labels_removed applies to data='missing_labels', not data={data!r}")
    labels_removed = options.pop("labels_removed", LABELS_REMOVED) if data == "missing_labels" else 0.0
    builder = {"synthetic": _synthetic, "multidigits": _multidigits, "lexicon": _lexicon, "tabular": _tabular}[dataset]
    return builder(seed, data, labels_removed, options)


def _synthetic(seed: int, shape: str, labels_removed: float, options: dict[str, Any]) -> Problem:
    """Synthetic tasks with an MLP backbone, in ``shape``."""
    from workbench.data import make_synthetic

    hidden = tuple(options.pop("hidden", (64, 64)))
    fractions = {k: options.pop(k) for k in ("validation_fraction", "test_fraction") if k in options}
    synthetic = make_synthetic(seed=seed, **options)
    if shape == "per_task":
        synthetic, splits = _synthetic_per_task(seed, options, fractions, len(synthetic.data), len(synthetic.data.tasks))
    else:
        splits = synthetic.splits(seed=seed, **fractions)
    if labels_removed:
        splits = MultiTaskSplits(splits.train.without_labels(labels_removed, seed=seed), splits.validation, splits.test, splits.reference)
    features = synthetic.data.x.shape[1]
    backbone = Backbone("MLP", partial(mlp_encoder, features, hidden), (hidden[-1],), inputs=(features,), layers="tensor")
    return Problem("synthetic", splits, backbone, {"mmoe": {"experts": "backbone"}}, {"weights": synthetic.weights})


def _tabular(seed: int, shape: str, labels_removed: float, options: dict[str, Any]) -> Problem:
    """The tabular tasks with an MLP backbone on their inputs (numbers and one-hot categories)."""
    from workbench.data import make_tabular

    hidden = tuple(options.pop("hidden", (64, 64)))
    fractions = {k: options.pop(k) for k in ("validation_fraction", "test_fraction") if k in options}
    tabular = make_tabular(seed=seed, **options)
    splits = tabular.splits(seed=seed, **fractions)
    if labels_removed:
        splits = MultiTaskSplits(splits.train.without_labels(labels_removed, seed=seed), splits.validation, splits.test, splits.reference)
    width = tabular.data.x.shape[1]
    backbone = Backbone("MLP", partial(mlp_encoder, width, hidden), (hidden[-1],), inputs=(width,), layers="tensor")
    return Problem("tabular", splits, backbone, {}, {"weights": tabular.weights})


def _synthetic_per_task(seed: int, options: dict[str, Any], fractions: dict[str, float], n_samples: int, n_tasks: int):
    """``(SyntheticTasks, splits)``: each of the ``n_tasks`` tasks ``n_samples`` samples of its own, split by ``seed``, as one
    dataset per task.

    One draw of ``n_samples · n_tasks`` samples is cut into blocks, task ``t`` labelled on block ``t``
    only (its data's attrs name the block's rows); the generator draws the weights before the samples,
    so they are those of ``n_samples``.
    """
    from workbench.data import make_synthetic
    from workbench.data.per_task import TaskDatasets

    synthetic = make_synthetic(seed=seed, **{**options, "n_samples": n_samples * n_tasks})
    attrs = {**synthetic.data.attrs, "form": "per_task", "samples_per_task": n_samples}
    parts = {}
    for position, name in enumerate(synthetic.data.task_names):
        rows = [position * n_samples, (position + 1) * n_samples]
        block = dataclasses.replace(synthetic.data.rows(torch.arange(*rows)).subset([name]), attrs={"rows_of_the_draw": rows})
        parts[name] = block.splits(seed=seed, **fractions)
    splits = [TaskDatasets({name: getattr(part, split) for name, part in parts.items()}, attrs=attrs) for split in ("train", "validation", "test")]
    return synthetic, MultiTaskSplits(*splits, reference=synthetic.reference)


def _multidigits(seed: int, shape: str, labels_removed: float, options: dict[str, Any]) -> Problem:
    """MultiDigits with a small CNN backbone, in ``shape``."""
    from workbench.data import make_multidigits
    from workbench.data.multidigits import multidigits_image_folder

    channels = tuple(options.pop("channels", (16, 32, 32)))
    if shape == "image_folder":
        splits = multidigits_image_folder(seed=seed, **options)
    else:
        splits = make_multidigits(seed=seed, labels_removed=labels_removed, **options)
    canvas = (1, *splits.attrs["canvas"])
    make = partial(conv_encoder, 1, channels)
    with torch.random.fork_rng():  # the shape of Z from a throwaway CNN, leaving the random state as it was
        shape_of_z = representation_shape(make(), torch.zeros(1, *canvas))
    backbone = Backbone("CNN", make, shape_of_z, inputs=canvas, layers="tensor")
    return Problem("multidigits", splits, backbone, {"mmoe": {"expert_hidden": (64,)}})


def _lexicon(seed: int, shape: str, labels_removed: float, options: dict[str, Any]) -> Problem:
    """The lexicon tasks with MiniLM, in ``shape``; the frozen blocks' output cached in the inputs unless ``cache_frozen=False``."""
    from workbench.data import make_lexicon
    from workbench.data.lexicon import make_lexicon_per_task

    model_options = {k: options.pop(k) for k in ("pooling", "trainable_layers") if k in options}
    cache = options.pop("cache_frozen", True)
    splits = (make_lexicon_per_task if shape == "per_task" else make_lexicon)(seed=seed, **options)
    encoder = minilm_encoder(**model_options)
    if cache and encoder.frozen and 0 < encoder.trainable_layers < len(encoder.blocks):
        splits = splits.map_inputs(_once_per_input(encoder.cache_frozen))
    backbone = Backbone("MiniLM", partial(minilm_encoder, **model_options), (MINILM_WIDTH,), layers="block")
    return Problem("lexicon", splits, backbone, {"mmoe": {"expert_hidden": (128,)}})


def _once_per_input(transform: Callable[[Inputs], Inputs]) -> Callable[[Inputs], Inputs]:
    """``transform`` run once per inputs object: tasks whose data share one (a lexicon source's words) share its result."""
    seen: dict[int, tuple[Inputs, Inputs]] = {}

    def once(x: Inputs) -> Inputs:
        if id(x) not in seen:
            seen[id(x)] = (x, transform(x))  # x kept alive, so that its id names it
        return seen[id(x)][1]

    return once
