"""Merged encoders back into models: every task's own head on one merged encoder, scored against the individual models.

Checkpoints from :mod:`workbench.studies.fine_tuned` hold ``encoder.…`` tensors (what merging
combines) and ``heads.TASK.…`` tensors (each task keeps its own head). :func:`merged_model` puts a
merged encoder and the tasks' heads into a fresh model of the problem; :func:`normalised_scores`
scores it per task against each individual fine-tuned model, the usual way merges are reported:
``merged / individual`` for a metric where higher is better (accuracy), ``individual / merged`` for
one where lower is better (MSE), so that 1 means "as good as the task's own model" either way.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import xarray as xr
from torch import Tensor

from workbench.tasks import EVALUATION_BATCH

__all__ = ["ENCODER", "encoder_part", "merged_model", "individual_model", "normalised_scores"]

ENCODER = "encoder."


def encoder_part(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The ``encoder.…`` tensors of a checkpoint: what a merge combines."""
    return {k: v for k, v in state.items() if k.startswith(ENCODER)}


def _load(model, tensors: Mapping[str, Tensor]):
    unexpected = sorted(set(tensors) - set(model.state_dict()))
    if unexpected:
        raise ValueError(f"the checkpoint holds tensors the model lacks: {unexpected[:5]}{' …' if len(unexpected) > 5 else ''}")
    model.load_state_dict(dict(tensors), strict=False)
    return model


def merged_model(problem, encoder: Mapping[str, Tensor], heads: Mapping[str, Mapping[str, Tensor]]):
    """A model of ``problem`` with the merged ``encoder`` tensors and, for each task, the ``heads.TASK.…``
    tensors of ``heads[task]`` (a task checkpoint); tensors not given (frozen blocks) stay as built."""
    tasks = [t for t in problem.splits.tasks if t.name in heads]
    model = problem.make_model(tasks)
    own = {k: v for task, state in heads.items() for k, v in state.items() if k.startswith(f"heads.{task}.")}
    return _load(model, {**encoder, **own}).eval()


def individual_model(problem, task: str, state: Mapping[str, Tensor]):
    """The fine-tuned model of one task from its checkpoint."""
    return _load(problem.make_model([t for t in problem.splits.tasks if t.name == task]), state).eval()


def normalised_scores(problem, models: Mapping[str, object], individual: Mapping[str, object], split: str = "test") -> xr.Dataset:
    """Each model's metric per task on ``split``, and normalised by the task's ``individual`` model.

    ``models`` maps a label (a method) to a model serving every task, or to ``{task: model}`` when each
    task has a model of its own (TALL's per-task retrieval); returns ``metric`` and ``normalised`` over
    ``(model, task)`` and ``individual`` over ``task``.
    """
    part = getattr(problem.splits, split)
    tasks = problem.splits.task_names

    def scores(model) -> list[float]:
        if isinstance(model, Mapping):
            return [model[t].evaluate_batches(part.batches(EVALUATION_BATCH))[t][1] for t in tasks]
        measured = model.evaluate_batches(part.batches(EVALUATION_BATCH))
        return [measured[t][1] for t in tasks]

    own = np.array(scores(individual))
    metric = np.array([scores(model) for model in models.values()])
    higher = np.array([problem.splits.tasks[i].higher_is_better for i in range(len(tasks))])
    normalised = np.where(higher, metric / own, own / metric)
    return xr.Dataset(
        {"metric": (("model", "task"), metric), "normalised": (("model", "task"), normalised), "individual": ("task", own)},
        coords={"model": list(models), "task": tasks},
        attrs={"split": split},
    )
