"""The one call every merge shares: ``merge(base, models, data=None) -> Merged``.

- ``base`` is the pretrained model and names the tensors that are merged: every tensor it holds.
  A state dict, an ``nn.Module`` or a weights file (safetensors, or a weights-only pickle), read
  tensor by tensor.
- ``models`` maps each task to its fine-tuned model, in the same forms. A task model must hold every
  tensor of the base with the same shape and dtype (``strict=False``: a missing one is taken from the
  base); tensors the base lacks are the task's own (its head): they are never merged and stay with
  the task's model.
- ``data`` is what a merge reads beyond the weights, one :class:`MergeData`. Each merge declares its
  need (the entry's ``data`` trait): ``"none"``; ``"unlabelled"`` inputs of each task;
  ``"labelled"`` examples of each task; ``"gradients"``, per-example gradients of each task model on
  its unlabelled inputs. A merge that reads data runs the task models, so they must be given as
  ``nn.Module``s (each a :class:`~workbench.tasks.MultiTaskModel` serving its task).

A merge returns a :class:`Merged`: one set of ``weights`` for every task or, for a method that keeps
a part per task, ``task_weights``, and the ``details`` it learned or chose.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import xarray as xr
from torch import Tensor, nn

from workbench.registry import Entry
from workbench.tasks import Inputs, num_samples
from workbench.weights.state_dicts import Source, Weights, open_weights, plan
from workbench.weights.task_vectors import TaskMasks

__all__ = ["DataNeed", "DATA_NEEDS", "MergeData", "TaskModel", "Merged", "Merge", "task_tensors", "weights_in", "merge_signature"]

DataNeed = Literal["none", "unlabelled", "labelled", "gradients"]
DATA_NEEDS = ("none", "unlabelled", "labelled", "gradients")


@dataclass(frozen=True)
class MergeData:
    """The data a merge reads: ``inputs[task]`` ``(N_t, ...)``, a task's own inputs (a tensor or named tensors),
    and for a labelled need ``targets[task]`` ``(N_t, ...)``, that task's targets of those inputs."""

    inputs: Mapping[str, Inputs]
    targets: Mapping[str, Tensor] | None = None

    def check(self, need: DataNeed, tasks: list[str], merge: str) -> None:
        """Raise ``ValueError`` naming what ``merge`` needs and this data lacks."""
        lacking = [t for t in tasks if t not in self.inputs]
        if lacking:
            raise ValueError(f"merge {merge!r} reads every task's inputs; the data has none for {lacking}")
        if need == "labelled":
            unlabelled = [t for t in tasks if self.targets is None or t not in self.targets]
            if unlabelled:
                raise ValueError(f"merge {merge!r} reads labelled examples; the data has no targets for {unlabelled}")
            short = [t for t in tasks if len(self.targets[t]) != num_samples(self.inputs[t])]
            if short:
                raise ValueError(f"tasks {short}: the targets and the inputs differ in length")


@dataclass(frozen=True)
class TaskModel:
    """One fine-tuned task model as a merge method sees it: ``weights``, its tensors of the base's names, and
    ``module``, the runnable model when it was given as one (merges that read data run it)."""

    weights: Weights
    module: nn.Module | None = None


@dataclass
class Merged:
    """What a merge returns.

    ``weights`` maps the base's tensor names to the merged tensors, which serve every task; a method
    that keeps a part per task (TALL's retrieval) leaves it ``None`` and gives ``task_weights[task]``
    instead. ``details`` is what the method learned or chose (AdaMerging's coefficients, TALL's λ_t),
    or ``None``; ``masks``, for a method that localises each task's coordinates (TALL, Consensus),
    the per-task masks.
    """

    weights: dict[str, Tensor] | None = None
    task_weights: dict[str, dict[str, Tensor]] | None = None
    details: xr.Dataset | None = field(default=None, repr=False)
    masks: TaskMasks | None = field(default=None, repr=False)

    def for_task(self, task: str) -> dict[str, Tensor]:
        """The weights that serve ``task``."""
        if self.task_weights is not None:
            if task not in self.task_weights:
                raise KeyError(f"no weights for task {task!r}; the merge kept parts for {sorted(self.task_weights)}")
            return self.task_weights[task]
        return self.weights


class Merge:
    """A registered merge with its options: call it as ``merge(base, models, data=None)`` (see the module docstring)."""

    def __init__(self, entry: Entry, options: Mapping[str, Any]) -> None:
        self.entry, self.options = entry, dict(options)

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def data_need(self) -> DataNeed:
        """The entry's ``data`` trait: a need, or a function of the options giving one (TALL reads no data once λ_t are given)."""
        need = self.entry.traits.get("data", "none")
        return need(self.options) if callable(need) else need

    def __repr__(self) -> str:
        return f"Merge({self.name!r}, {self.options})"

    def __call__(
        self, base: Source, models: Mapping[str, Source], data: MergeData | None = None, *, strict: bool = True, progress: bool = False
    ) -> Merged:
        if not isinstance(models, Mapping) or not models:
            raise ValueError(f"merge {self.name!r} takes the task models as a non-empty mapping from task name to model")
        base_weights = open_weights(base, "base")
        tasks = {
            task: TaskModel(open_weights(model, task).select(base_weights.keys()), model if isinstance(model, nn.Module) else None)
            for task, model in models.items()
        }
        if self.data_need != "none":
            if data is None:
                raise ValueError(f"merge {self.name!r} reads {self.data_need} data of every task; pass data=MergeData(...)")
            data.check(self.data_need, list(tasks), self.name)
            modules = [task for task, model in tasks.items() if model.module is None]
            if modules:
                raise ValueError(f"merge {self.name!r} runs the task models on their data: give {modules} as nn.Modules")
            bad = _non_finite(tasks)
            if bad:
                raise ValueError(f"merge {self.name!r} runs the task models, and some hold NaN or infinite values: {bad}")
        merged = self.entry.target()(base_weights, tasks, data, strict=strict, progress=progress, **self.options)
        self._check(merged, base_weights, tasks)
        return merged

    def _check(self, merged: Merged, base: Weights, tasks: Mapping[str, TaskModel]) -> None:
        """Refuse a result without every base tensor in its shape and dtype, or with non-finite values (naming the inputs that hold them)."""
        parts = {"": merged.weights} if merged.task_weights is None else {f" for task {task!r}": w for task, w in merged.task_weights.items()}
        for served, weights in parts.items():
            if weights is None or list(weights) != base.keys():
                raise ValueError(f"merge {self.name!r} returned{served} other tensors than the base's")
            for name, tensor in weights.items():
                if (tuple(tensor.shape), tensor.dtype) != base.spec(name):
                    raise ValueError(f"merge {self.name!r} returned tensor {name!r}{served} as {list(tensor.shape)} {tensor.dtype}, the base's is {base.spec(name)}")
                if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                    bad = _non_finite(tasks)
                    where = f"NaN or infinite values in the task models: {bad}" if bad else "every input is finite, so the merge itself overflowed"
                    raise ValueError(f"merge {self.name!r} gave non-finite values in tensor {name!r}{served}; {where}")


def _non_finite(tasks: Mapping[str, TaskModel]) -> dict[str, list[str]]:
    """``{task: [tensor names]}`` of the task models' tensors (of the base's names) that hold NaN or infinite values."""
    found = {}
    for task, model in tasks.items():
        names = [name for name in model.weights.keys() if model.weights.spec(name)[1].is_floating_point and not bool(torch.isfinite(model.weights[name]).all())]
        if names:
            found[task] = names
    return found


def task_tensors(base: Weights, tasks: Mapping[str, TaskModel], strict: bool) -> dict[str, dict[str, Tensor]]:
    """Each task's tensors of every base name, checked against the base (:func:`~workbench.weights.state_dicts.plan`);
    with ``strict=False`` a tensor a task lacks is the base's."""
    plan([model.weights for model in tasks.values()], base, strict)
    return {task: {name: model.weights[name] if name in model.weights else base[name] for name in base.keys()} for task, model in tasks.items()}


@contextlib.contextmanager
def weights_in(module: nn.Module, weights: Mapping[str, Tensor]) -> Iterator[nn.Module]:
    """``module`` with ``weights`` (names in its state dict → tensors) in place of its own, restored on exit."""
    state = module.state_dict()
    unknown = sorted(set(weights) - set(state))
    if unknown:
        raise ValueError(f"the module has no tensors {unknown[:5]}")
    saved = {name: state[name].detach().clone() for name in weights}
    module.load_state_dict(dict(weights), strict=False)
    try:
        yield module
    finally:
        module.load_state_dict(saved, strict=False)


def merge_signature(options: Iterable[inspect.Parameter]) -> inspect.Signature:
    """The signature of a registered merge function: the fixed ``base, tasks, data, *, strict, progress``, then ``options``
    as keyword-only parameters (what the registry reads as the merge's options and defaults)."""
    keyword = inspect.Parameter.KEYWORD_ONLY
    fixed = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name in ("base", "tasks", "data")]
    fixed += [inspect.Parameter(name, keyword) for name in ("strict", "progress")]
    return inspect.Signature(fixed + [p.replace(kind=keyword) for p in options])
