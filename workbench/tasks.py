"""The contract every probe, trainer and merge relies on.

A :class:`Task` names a loss, a metric and whether the metric is better when higher. A
:class:`MultiTaskModel` is a shared encoder plus one head per task: ``forward(x)`` returns
``{task: output}``, :meth:`MultiTaskModel.represent` returns the shared representation ``Z`` and
:meth:`MultiTaskModel.shared_parameters` the parameters of the encoder. An MLP, a CNN or a
transformers encoder all fit: the encoder is any module mapping a batch to ``Z``.
A :class:`MultiTaskData` holds inputs and one target tensor per task; :class:`MultiTaskSplits` a
problem's train, validation and test data with the reference relationship between its tasks.

Inputs are a tensor ``(N, ...)`` or a mapping of named tensors that share the first dim (token ids
and their attention mask, as a tokenizer returns them); :func:`num_samples`, :func:`take_rows` and
:func:`to_device` handle both.

Where the tasks are not labelled on the same samples, a batch's inputs are a :class:`TaskInputs`:
one or more input batches (one per task's dataset, or one mixed batch) and, for each task, the
samples it is labelled on; its targets then hold those samples' targets only. A batch with missing
labels is such a batch with one input group. A task with no labelled sample in a batch has targets
of zero rows: it has no loss there, and contributes no gradient.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Union

import numpy as np
import torch
import xarray as xr
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = [
    "EVALUATION_BATCH",
    "Inputs",
    "TaskInputs",
    "num_samples",
    "labelled_tasks",
    "label_mask",
    "take_rows",
    "to_device",
    "check_finite",
    "epoch_batch_index",
    "in_batches",
    "masked_batch",
    "steps_per_epoch",
    "Task",
    "MultiTaskModel",
    "MultiTaskData",
    "MultiTaskSplits",
    "regression_task",
    "classification_task",
]

TaskKind = Literal["regression", "classification"]
Inputs = Union[Tensor, Mapping[str, Tensor]]
"""A batch of inputs: one tensor ``(B, ...)`` or named tensors that share the first dim ``B``."""

_LABEL_REMOVAL = 0x1ABE1  # the random stream of without_labels, apart from every other seeded draw

EVALUATION_BATCH = 1024
"""Samples per forward pass when a set is evaluated, unless told otherwise."""


@dataclass(frozen=True)
class TaskInputs:
    """A batch whose tasks are labelled on different samples.

    ``groups`` holds input batches ``(B_g, ...)`` (each a tensor or named tensors): one per task's
    dataset, or one batch whose samples are labelled for some tasks only. ``rows[task]`` is
    ``(g, index)``: the task is labelled on the samples ``index`` (a 1-d long tensor ``(n_t,)``,
    possibly empty) of group ``g``, or on all of them when ``index`` is ``None``; its targets have
    ``n_t`` rows in that order. The model's encoder runs once per group. Indices are checked against
    their group where they are made, on the CPU (not again on a device, where it would wait for it).
    """

    groups: tuple[Inputs, ...]
    rows: Mapping[str, tuple[int, Tensor | None]]

    def __post_init__(self) -> None:
        if not self.groups:
            raise ValueError("TaskInputs needs at least one input group")
        sizes = [num_samples(group) for group in self.groups]
        for task, (group, index) in self.rows.items():
            if not 0 <= group < len(self.groups):
                raise ValueError(f"task {task!r} is routed to input group {group}; there are {len(self.groups)}")
            if index is not None:
                if index.dim() != 1 or index.dtype != torch.long:
                    raise ValueError(f"task {task!r}: its sample index must be a 1-d long tensor, got {index.dtype} {tuple(index.shape)}")
                if index.device.type == "cpu" and len(index) and not (0 <= int(index.min()) and int(index.max()) < sizes[group]):
                    outside = index[(index < 0) | (index >= sizes[group])].tolist()
                    raise ValueError(f"task {task!r}: sample indices {outside[:5]} out of range for input group {group} of {sizes[group]} samples")

    def labelled(self, task: str) -> int:
        """How many samples ``task`` is labelled on in this batch (0 when it is not routed)."""
        if task not in self.rows:
            return 0
        group, index = self.rows[task]
        return num_samples(self.groups[group]) if index is None else len(index)


def num_samples(x: Inputs | TaskInputs) -> int:
    """The number of samples ``B`` in ``x`` (of all its groups, for a :class:`TaskInputs`); raises when named
    tensors disagree on it (naming them)."""
    if isinstance(x, Tensor):
        return x.shape[0]
    if isinstance(x, TaskInputs):
        return sum(num_samples(group) for group in x.groups)
    if not x:
        raise ValueError("inputs are an empty mapping; give at least one named tensor")
    sizes = {name: tensor.shape[0] for name, tensor in x.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"named inputs must share their first dim, got {sizes}")
    return next(iter(sizes.values()))


def take_rows(x: Inputs, index: Tensor) -> Inputs:
    """The samples of ``x`` at ``index`` (a 1-d index tensor), of every named tensor alike."""
    if isinstance(x, Tensor):
        return x[index]
    if isinstance(x, TaskInputs):
        raise TypeError("the samples of a TaskInputs batch are routed per task; take rows of its groups instead")
    return {name: tensor[index] for name, tensor in x.items()}


def to_device(x: Inputs | TaskInputs, device: torch.device | str | None) -> Inputs | TaskInputs:
    """``x`` on ``device`` (unchanged when ``device`` is ``None`` or already holds it)."""
    if device is None:
        return x
    if isinstance(x, Tensor):
        return x.to(device)
    if isinstance(x, TaskInputs):
        rows = {task: (group, None if index is None else index.to(device)) for task, (group, index) in x.rows.items()}
        return TaskInputs(tuple(to_device(group, device) for group in x.groups), rows)
    return {name: tensor.to(device) for name, tensor in x.items()}


def label_mask(x: Inputs | TaskInputs, tasks: Sequence[str]) -> Tensor:
    """``(T, B)`` bool: whether each sample of the batch (the groups' samples concatenated, for a
    :class:`TaskInputs`) is labelled for each of ``tasks``; all true for a plain batch."""
    if not isinstance(x, TaskInputs):
        return torch.ones(len(tasks), num_samples(x), dtype=torch.bool)
    sizes = [num_samples(group) for group in x.groups]
    offsets = np.cumsum([0, *sizes])
    mask = torch.zeros(len(tasks), offsets[-1], dtype=torch.bool)
    for row, task in enumerate(tasks):
        if task in x.rows:
            group, index = x.rows[task]
            start = int(offsets[group])
            if index is None:
                mask[row, start : start + sizes[group]] = True
            else:
                mask[row, start + index.cpu()] = True
    return mask


def labelled_tasks(targets: Mapping[str, Tensor]) -> list[str]:
    """The tasks of ``targets`` labelled on at least one sample of the batch (a task's targets have zero rows where it is not)."""
    return [task for task, target in targets.items() if target.shape[0] > 0]


def _mse(output: Tensor, target: Tensor) -> Tensor:
    return F.mse_loss(output.reshape(target.shape), target.to(output.dtype))


def _binary_logit_loss(output: Tensor, target: Tensor) -> Tensor:
    return F.binary_cross_entropy_with_logits(output.reshape(target.shape), target.to(output.dtype))


def _cross_entropy(output: Tensor, target: Tensor) -> Tensor:
    return F.cross_entropy(output, target.long())


def _accuracy(output: Tensor, target: Tensor) -> Tensor:
    """The share of correct predictions: one logit per sample or per position (``> 0``), or classes along dim 1
    (``(B, C)`` per sample, ``(B, C, H, W)`` per pixel)."""
    if output.dim() == target.dim() or output.numel() == target.numel():
        predicted = (output.reshape(target.shape) > 0).to(target.dtype)
    else:
        predicted = output.argmax(dim=1).to(target.dtype)
    return (predicted == target).float().mean()


def check_finite(losses: Mapping[str, Tensor]) -> None:
    """Raise ``FloatingPointError`` naming every task whose loss is NaN or infinite (one check for all)."""
    values = torch.stack([loss.detach().reshape(()) for loss in losses.values()])
    if not torch.isfinite(values).all():
        bad = {name: v for name, v in zip(losses, values.tolist()) if not math.isfinite(v)}
        raise FloatingPointError(f"non-finite loss for tasks {bad}: check their targets and the learning rate")


@dataclass(frozen=True)
class Task:
    """One task of a multi-task problem.

    ``loss(output, target)`` and ``metric(output, target)`` map a head's output ``(B, out_features)``
    and the targets ``(B,)`` to a scalar tensor. Targets may be dense, one map per sample: a head's
    output ``(B, out_features, H, W)`` against a class per pixel ``(B, H, W)`` (semantic segmentation:
    :func:`classification_task`'s cross-entropy and accuracy average over the pixels), or a map to
    regress, ``(B, 1, H, W)`` against ``(B, H, W)`` (depth: :func:`regression_task`'s squared error
    averages over the pixels). ``higher_is_better`` gives the metric's direction (it sets the sign in Δm%).
    """

    name: str
    kind: TaskKind
    loss: Callable[[Tensor, Tensor], Tensor]
    metric: Callable[[Tensor, Tensor], Tensor]
    metric_name: str
    higher_is_better: bool
    out_features: int = 1

    def __post_init__(self) -> None:
        if not self.name or not self.name.isidentifier():
            raise ValueError(f"task name {self.name!r} must be a non-empty identifier")
        if self.kind not in ("regression", "classification"):
            raise ValueError(f"task {self.name!r}: kind must be 'regression' or 'classification', not {self.kind!r}")


def regression_task(name: str) -> Task:
    """A scalar regression task: mean squared error as loss and as metric (lower is better)."""
    return Task(name, "regression", _mse, _mse, "mse", higher_is_better=False)


def classification_task(name: str, n_classes: int = 2) -> Task:
    """A classification task scored by accuracy; binary tasks use one logit, others ``n_classes``."""
    if n_classes < 2:
        raise ValueError(f"task {name!r}: a classification task needs n_classes >= 2, got {n_classes}")
    if n_classes == 2:
        return Task(name, "classification", _binary_logit_loss, _accuracy, "accuracy", True, 1)
    return Task(name, "classification", _cross_entropy, _accuracy, "accuracy", True, n_classes)


def _linear_head(representation_shape: Sequence[int], out_features: int) -> nn.Module:
    """A linear map of the representation to a head's output; a representation with more than one dim is flattened first."""
    if len(representation_shape) == 1:
        return nn.Linear(representation_shape[0], out_features)
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(representation_shape), out_features))


class MultiTaskModel(nn.Module):
    """A shared encoder and one head per task.

    ``encoder`` maps a batch ``x`` (see :data:`Inputs`) to the shared representation ``Z`` of shape
    ``(B, C)`` (or ``(B, C, H, W)`` for a CNN); each head maps ``Z`` to that task's output. When
    ``heads`` is omitted, every task gets a linear head on ``representation_dim`` features: an int
    ``C``, or the shape ``(C, H, W)`` of one sample's representation, which the head flattens.
    A module of the model may define ``after_optimizer_step()``, which the training loop calls after
    every optimizer step (state that moves once per step, as SMoRA's balancing bias).
    """

    def __init__(
        self,
        encoder: nn.Module,
        tasks: Sequence[Task],
        heads: Mapping[str, nn.Module] | None = None,
        representation_dim: int | Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        names = [t.name for t in tasks]
        if len(set(names)) != len(names) or not names:
            raise ValueError(f"tasks must be a non-empty list of distinct names, got {names}")
        if heads is None:
            if representation_dim is None:
                raise ValueError("give either heads or representation_dim for linear heads")
            shape = (representation_dim,) if isinstance(representation_dim, int) else tuple(representation_dim)
            heads = {t.name: _linear_head(shape, t.out_features) for t in tasks}
        missing = set(names) - set(heads)
        extra = set(heads) - set(names)
        if missing or extra:
            raise ValueError(f"heads must match tasks: missing heads {sorted(missing)}, heads without task {sorted(extra)}")
        self.encoder = encoder
        self.heads = nn.ModuleDict({name: heads[name] for name in names})
        self.tasks: dict[str, Task] = {t.name: t for t in tasks}

    @property
    def task_names(self) -> list[str]:
        return list(self.tasks)

    @property
    def device(self) -> torch.device:
        """The device of the model's first parameter (where inputs must go)."""
        return next(self.parameters()).device

    def represent_groups(self, x: Inputs | TaskInputs) -> list[Tensor]:
        """The shared representation of each input group: ``[encoder(x)]``, or one ``Z_g`` per group of a :class:`TaskInputs`.

        Cost: one encoder forward per group, so a batch per task costs T forwards of ``B_t`` samples
        (the encoder's work grows with the samples, its fixed per-call cost with the groups).
        """
        if isinstance(x, TaskInputs):
            return [self.encoder(group) for group in x.groups]
        return [self.encoder(x)]

    def represent(self, x: Inputs | TaskInputs) -> Tensor:
        """The shared representation ``Z = encoder(x)``; of a :class:`TaskInputs`, its groups' ``Z_g`` concatenated along the samples."""
        representations = self.represent_groups(x)
        return representations[0] if len(representations) == 1 else torch.cat(representations)

    def heads_forward(self, z: Tensor) -> dict[str, Tensor]:
        """Every head applied to the shared representation ``z``."""
        return {name: head(z) for name, head in self.heads.items()}

    def routed_outputs(self, representations: Sequence[Tensor], x: Inputs | TaskInputs, tasks: Sequence[str] | None = None) -> dict[str, Tensor]:
        """Each task's head on the representation of the samples it is labelled on (see :class:`TaskInputs`).

        ``representations`` are :meth:`represent_groups`'s; a plain batch gives every task its head on all of ``Z``.
        Tasks with no labelled sample in the batch are left out; ``tasks`` restricts the heads run.
        """
        wanted = self.task_names if tasks is None else list(tasks)
        if not isinstance(x, TaskInputs):
            return {name: self.heads[name](representations[0]) for name in wanted}
        outputs = {}
        for name in wanted:
            if x.labelled(name):
                group, index = x.rows[name]
                z = representations[group]
                outputs[name] = self.heads[name](z if index is None else z[index])
        return outputs

    def forward(self, x: Inputs | TaskInputs) -> dict[str, Tensor]:
        """``{task: output}``; for a :class:`TaskInputs`, each task's output on its labelled samples only."""
        if isinstance(x, TaskInputs):
            return self.routed_outputs(self.represent_groups(x), x)
        return self.heads_forward(self.represent(x))

    def restricted(self, tasks: Sequence[str]) -> MultiTaskModel:
        """A view of the model with only ``tasks`` (their heads and the same encoder, sharing every parameter).

        Its shared parameters are the full model's: what the encoder holds for the other tasks (their
        MMoE gates) stays theirs. The training loop trains a batch labelled for some tasks only through it.
        """
        unknown = set(tasks) - set(self.tasks)
        if unknown or not tasks:
            raise KeyError(f"unknown tasks {sorted(unknown)}; known: {self.task_names}" if unknown else "a view needs at least one task")
        return MultiTaskModel(self.encoder, [self.tasks[t] for t in self.task_names if t in tasks], {t: self.heads[t] for t in tasks})

    def summary(self) -> dict:
        """What the model is, for the attrs of the results it produces."""
        return {
            "encoder": type(self.encoder).__name__,
            "shared_parameters": sum(p.numel() for _, p in self.shared_parameters()),
            "parameters": sum(p.numel() for p in self.parameters()),
            "tasks": self.task_names,
        }

    def shared_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """``(name, parameter)`` of the encoder's trainable parameters, in module order, named as in the encoder.

        Frozen parameters are not shared, nor those the encoder holds for one task alone (see
        :meth:`encoder_task_parameters`).
        """
        declared = getattr(self.encoder, "task_parameters", None)
        own = {id(p) for params in (declared() if declared else {}).values() for _, p in params}
        return [(name, p) for name, p in self.encoder.named_parameters() if p.requires_grad and id(p) not in own]

    def encoder_task_parameters(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """Trainable parameters inside the encoder that serve one task only (MMoE's gates), named as in the model.

        Of the model's tasks only (a :meth:`restricted` view has its own tasks'). An encoder declares them with a ``task_parameters()`` method returning ``{task: [(name, parameter)]}``
        (names relative to the encoder); most encoders have none.
        """
        declared = getattr(self.encoder, "task_parameters", None)
        if declared is None:
            return {}
        return {task: [(f"encoder.{name}", p) for name, p in params if p.requires_grad] for task, params in declared().items() if task in self.tasks}

    def task_parameters(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """Each task's own trainable parameters, named as in the model: its head and what the encoder holds for it."""
        resident = self.encoder_task_parameters()
        return {
            task: [(f"heads.{task}.{name}", p) for name, p in self.heads[task].named_parameters() if p.requires_grad] + resident.get(task, [])
            for task in self.tasks
        }

    def losses_from_outputs(self, outputs: Mapping[str, Tensor], targets: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``{task: scalar loss}`` for the given outputs, of every task labelled in the batch (targets of zero rows: none).

        A task's loss averages over the samples it is labelled on. Raises on a missing or unknown target,
        a labelled task without an output, or a non-finite loss.
        """
        missing = [name for name in self.tasks if name not in targets]
        if missing:
            raise KeyError(f"no targets for tasks {missing}; targets hold {sorted(targets)}")
        unknown = sorted(set(targets) - set(self.tasks))
        if unknown:
            raise KeyError(f"the batch names tasks {unknown} the model does not have; its tasks: {self.task_names}")
        losses = {}
        for name in self.tasks:
            if targets[name].shape[0] == 0:
                continue
            if name not in outputs:
                raise ValueError(f"task {name!r} is labelled on {targets[name].shape[0]} samples of the batch but has no output")
            losses[name] = self._loss(name, outputs[name], targets[name])
        if losses:
            check_finite(losses)
        return losses

    def _loss(self, name: str, output: Tensor, target: Tensor) -> Tensor:
        """Task ``name``'s loss; a loss that fails on these shapes is reported naming the task and both shapes."""
        try:
            return self.tasks[name].loss(output, target)
        except (RuntimeError, ValueError) as error:
            raise ValueError(f"task {name!r}: its loss failed on output {tuple(output.shape)} and targets {tuple(target.shape)}: {error}") from error

    def losses(self, x: Inputs | TaskInputs, targets: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """One forward pass: ``{task: scalar loss}`` on the batch ``(x, targets)``, of the tasks labelled in it."""
        return self.losses_from_outputs(self(x), targets)

    def task_loss(self, x: Inputs | TaskInputs, targets: Mapping[str, Tensor], task: str) -> Tensor:
        """``task``'s loss on the batch, with one encoder forward of the input group it is labelled on."""
        if isinstance(x, TaskInputs):
            group, index = x.rows[task]
            z = self.encoder(x.groups[group])
            z = z if index is None else z[index]
        else:
            z = self.encoder(x)
        loss = self._loss(task, self.heads[task](z), targets[task])
        check_finite({task: loss})
        return loss

    def loss_vector(self, x: Inputs | TaskInputs, targets: Mapping[str, Tensor]) -> Tensor:
        """Every task's loss ``(T,)`` in task order, NaN for a task with no labelled sample in the batch."""
        losses = self.losses(x, targets)
        reference = next(iter(losses.values()), None)
        if reference is None:
            raise ValueError("no task is labelled on any sample of the batch")
        nan = torch.full((), torch.nan, dtype=reference.dtype, device=reference.device)
        return torch.stack([losses.get(name, nan) for name in self.tasks])

    def evaluate(self, x: Inputs, targets: Mapping[str, Tensor], batch_size: int = EVALUATION_BATCH) -> dict[str, tuple[float, float]]:
        """``{task: (loss, metric)}`` on ``(x, targets)``, ``batch_size`` samples at a time (see :meth:`evaluate_batches`)."""
        return self.evaluate_batches(in_batches(x, targets, batch_size))

    @torch.no_grad()
    def evaluate_batches(self, batches: Iterable[tuple[Inputs, Mapping[str, Tensor]]]) -> dict[str, tuple[float, float]]:
        """``{task: (loss, metric)}`` over every batch ``(x (B, ...), {task: (B, ...)})``, without gradients (eval mode, restored after).

        Each batch is moved to the model's device and forwarded; the heads' outputs and the targets are
        kept (the inputs are not), and loss and metric are computed once on all of them, so they equal a
        single pass over the whole set for any metric, and a streamed set scores as the same set in memory.
        A task is scored on the samples it is labelled on (batches with :class:`TaskInputs`); one labelled
        nowhere is refused, naming it.
        """
        was_training = self.training
        self.eval()
        try:
            device = self.device
            outputs = {name: _Gathered() for name in self.tasks}
            kept = {name: _Gathered() for name in self.tasks}
            evaluated = False
            for x, targets in batches:
                evaluated = True
                batch = self(to_device(x, device))
                for name in self.tasks:
                    if name in targets and targets[name].shape[0]:
                        outputs[name].add(batch[name])
                        kept[name].add(targets[name].to(device))
            if not evaluated:
                raise ValueError("nothing to evaluate: no batches")
            unlabelled = [name for name in self.tasks if not kept[name]]
            if unlabelled:
                raise ValueError(f"tasks {unlabelled} have no labelled sample in the evaluation data")
            outputs = {name: gathered.tensor() for name, gathered in outputs.items()}
            targets = {name: gathered.tensor() for name, gathered in kept.items() if gathered}
            losses = self.losses_from_outputs(outputs, targets)
            return {n: (losses[n].item(), t.metric(outputs[n], targets[n]).item()) for n, t in self.tasks.items()}
        finally:
            self.train(was_training)


class _Gathered:
    """Batches ``(B, ...)`` concatenated along the first dim, joined every 32 batches: many small tensors kept
    apart would leave the allocator's freed blocks fragmented around them (measured: 15× their size in RSS)."""

    _JOIN_EVERY = 32

    def __init__(self) -> None:
        self._joined: list[Tensor] = []
        self._pending: list[Tensor] = []

    def __bool__(self) -> bool:
        return bool(self._joined or self._pending)

    def add(self, batch: Tensor) -> None:
        self._pending.append(batch)
        if len(self._pending) == self._JOIN_EVERY:
            self._joined.append(torch.cat(self._pending))
            self._pending = []

    def tensor(self) -> Tensor:
        """Every batch added, in order, as one tensor."""
        return torch.cat(self._joined + self._pending)


def masked_batch(x: Inputs, targets: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> tuple[Inputs | TaskInputs, dict[str, Tensor]]:
    """A batch with missing labels: ``masks[task]`` ``(B,)`` (bool) marks the samples labelled for a task (a task
    without a mask is labelled on all). Without masks, ``(x, targets)`` unchanged; with them, a
    :class:`TaskInputs` of one group, each masked task routed to its labelled samples and its targets cut to them."""
    if not masks:
        return x, dict(targets)
    rows, kept = {}, {}
    for name, y in targets.items():
        if name in masks:
            index = torch.nonzero(masks[name], as_tuple=True)[0]
            rows[name], kept[name] = (0, index), y[index]
        else:
            rows[name], kept[name] = (0, None), y
    return TaskInputs((x,), rows), kept


def in_batches(
    x: Inputs, targets: Mapping[str, Tensor], batch_size: int, masks: Mapping[str, Tensor] | None = None
) -> Iterator[tuple[Inputs | TaskInputs, dict[str, Tensor]]]:
    """The samples of ``(x, targets)`` in order, ``batch_size`` at a time (the last batch may be smaller); with
    ``masks`` (``{task: (N,) bool}``), each batch as :func:`masked_batch` gives it."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    n = num_samples(x)
    masks = masks or {}
    for start in range(0, n, batch_size):
        index = torch.arange(start, min(start + batch_size, n))
        yield masked_batch(take_rows(x, index), {name: y[index] for name, y in targets.items()}, {name: m[index] for name, m in masks.items()})


def epoch_batch_index(n: int, step: int, batch_size: int, seed: int = 0) -> Tensor:
    """The sample indices ``(B,)`` of training step ``step``'s batch over ``n`` samples.

    Each epoch shuffles the samples anew, seeded by ``seed`` and the epoch, and cuts them into full
    batches (all samples when fewer than one batch). The batch depends on the step alone, so a run
    resumed at any step sees the same batches as an unbroken one, whatever holds the samples.
    """
    per_epoch = steps_per_epoch(n, batch_size)
    epoch, position = divmod(step, per_epoch)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return order[position * batch_size : (position + 1) * batch_size]


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Full batches per pass over ``n`` samples (one when there are fewer samples than a batch)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    return max(n // batch_size, 1)


@dataclass
class MultiTaskData:
    """Inputs ``x`` (``(N, ...)`` or named tensors ``(N, ...)``) and ``targets[task]`` for every task: ``(N,)``, or
    dense ``(N, H, W)`` (a segmentation or depth map per sample; see :class:`Task`).

    ``meta`` holds per-sample labels that are not model inputs, as arrays of length ``N`` (the word
    of a lexicon sample, the source images of a composed digit); they follow the samples through
    :meth:`rows` and :meth:`split`.

    ``masks`` marks missing labels: ``masks[task]`` ``(N,)`` (bool) is true where the sample is labelled
    for ``task`` (a task without a mask is labelled everywhere; the targets of unlabelled samples are
    never read). Batches then carry each task's labelled samples only (:func:`masked_batch`): a task's
    loss averages over them, and a task with none in a batch contributes no gradient there. A part of
    the data may hold no label of a task (a small split, a probe batch); training refuses data where a
    task has none, evaluation a set where one has none.
    """

    x: Inputs
    targets: dict[str, Tensor]
    tasks: list[Task]
    attrs: dict = field(default_factory=dict)
    meta: dict[str, np.ndarray] = field(default_factory=dict)
    masks: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = num_samples(self.x)
        names = [task.name for task in self.tasks]
        for task in self.tasks:
            if task.name not in self.targets:
                raise ValueError(f"no targets for task {task.name!r}")
            if self.targets[task.name].shape[0] != n:
                raise ValueError(f"targets of task {task.name!r} have {self.targets[task.name].shape[0]} rows, x has {n}")
        for name, values in self.meta.items():
            if len(values) != n:
                raise ValueError(f"meta {name!r} has {len(values)} rows, x has {n}")
        unknown = sorted(set(self.masks) - set(names))
        if unknown:
            raise ValueError(f"masks name tasks {unknown} that the data does not have; its tasks: {names}")
        for name, mask in self.masks.items():
            if not isinstance(mask, Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != (n,):
                described = f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, Tensor) else type(mask).__name__
                raise ValueError(f"the mask of task {name!r} must be a bool tensor ({n},), one entry per sample; got {described}")

    def __len__(self) -> int:
        return num_samples(self.x)

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def subset(self, tasks: Sequence[str]) -> MultiTaskData:
        """The same samples with only the named tasks."""
        unknown = set(tasks) - set(self.task_names)
        if unknown:
            raise KeyError(f"unknown tasks {sorted(unknown)}; known: {self.task_names}")
        kept = [t for t in self.tasks if t.name in tasks]
        masks = {t.name: self.masks[t.name] for t in kept if t.name in self.masks}
        return MultiTaskData(self.x, {t.name: self.targets[t.name] for t in kept}, kept, self.attrs, self.meta, masks)

    def rows(self, index: Tensor) -> MultiTaskData:
        """The samples at ``index`` (a 1-d index tensor)."""
        picked = index.cpu().numpy()
        return MultiTaskData(
            take_rows(self.x, index), {n: y[index] for n, y in self.targets.items()}, self.tasks, self.attrs,
            {name: values[picked] for name, values in self.meta.items()}, {name: mask[index] for name, mask in self.masks.items()},
        )

    def labelled(self, task: str) -> int:
        """How many samples are labelled for ``task``."""
        return int(self.masks[task].sum()) if task in self.masks else len(self)

    def without_labels(self, fraction: float, seed: int = 0, tasks: Sequence[str] | None = None) -> MultiTaskData:
        """The same samples with ``fraction`` of each task's labels removed at random (independently per task, seeded).

        ``tasks`` limits it to some tasks (default: all). Each task keeps at least one label; labels
        already missing stay missing. The draw is seeded by ``seed`` and the task's name: a task loses the
        same labels in any set of tasks, and the removal is unrelated to the order training draws batches in.
        """
        if not 0 <= fraction < 1:
            raise ValueError(f"the fraction of labels to remove must lie in [0, 1), got {fraction}")
        chosen = self.task_names if tasks is None else list(tasks)
        unknown = sorted(set(chosen) - set(self.task_names))
        if unknown:
            raise KeyError(f"unknown tasks {unknown}; known: {self.task_names}")
        masks = dict(self.masks)
        for name in self.task_names:
            if name not in chosen:
                continue
            labelled = torch.nonzero(masks.get(name, torch.ones(len(self), dtype=torch.bool)), as_tuple=True)[0]
            # a stream of its own, keyed by the task's name: unrelated to the batches' order and to the task's place in the set
            order = torch.from_numpy(np.random.default_rng([seed, zlib.crc32(name.encode()), _LABEL_REMOVAL]).permutation(len(labelled)))
            keep = max(1, len(labelled) - int(round(fraction * len(labelled))))
            mask = torch.zeros(len(self), dtype=torch.bool)
            mask[labelled[order[:keep]]] = True
            masks[name] = mask
        return MultiTaskData(self.x, self.targets, self.tasks, {**self.attrs, "labels_removed": fraction}, self.meta, masks)

    def with_inputs(self, x: Inputs) -> MultiTaskData:
        """The same samples and targets with other inputs (of the same length), e.g. cached features."""
        return MultiTaskData(x, self.targets, self.tasks, self.attrs, self.meta, self.masks)

    def head(self, n: int) -> MultiTaskData:
        """The first ``n`` samples (all when fewer)."""
        return self.rows(torch.arange(min(n, len(self))))

    def probe_batch(self, n: int) -> tuple[Inputs | TaskInputs, dict[str, Tensor]]:
        """A fixed batch of the first ``n`` samples for probes (with missing labels, as :func:`masked_batch` gives it)."""
        first = self.head(n)
        return masked_batch(first.x, first.targets, first.masks)

    def split(self, test_fraction: float = 0.2, seed: int = 0) -> tuple[MultiTaskData, MultiTaskData]:
        """A seeded random ``(train, test)`` split."""
        if not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        n_test = max(1, int(round(test_fraction * len(self))))
        return self.rows(order[n_test:]), self.rows(order[:n_test])

    def splits(
        self, validation_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0, reference: xr.DataArray | None = None
    ) -> MultiTaskSplits:
        """A seeded random train / validation / test split of the samples, with ``reference`` attached."""
        if not (0 < validation_fraction and 0 < test_fraction and validation_fraction + test_fraction < 1):
            raise ValueError(f"fractions must be positive and sum below 1, got validation {validation_fraction}, test {test_fraction}")
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        n_test = max(1, int(round(test_fraction * len(self))))
        n_validation = max(1, int(round(validation_fraction * len(self))))
        test, validation, train = order[:n_test], order[n_test : n_test + n_validation], order[n_test + n_validation :]
        return MultiTaskSplits(self.rows(train), self.rows(validation), self.rows(test), reference)

    def steps_per_epoch(self, batch_size: int) -> int:
        """Full batches per pass over the data (one when there are fewer samples than a batch)."""
        return steps_per_epoch(len(self), batch_size)

    def batch(self, step: int, batch_size: int, seed: int = 0) -> tuple[Inputs | TaskInputs, dict[str, Tensor]]:
        """The batch ``(x (B, ...), {task: (B,)})`` that training step ``step`` uses (see :func:`epoch_batch_index`);
        with missing labels, as :func:`masked_batch` gives it."""
        index = epoch_batch_index(len(self), step, batch_size, seed)
        return masked_batch(take_rows(self.x, index), {n: y[index] for n, y in self.targets.items()}, {n: m[index] for n, m in self.masks.items()})

    def stream(self, start: int, batch_size: int, seed: int = 0) -> Iterator[tuple[Inputs, dict[str, Tensor]]]:
        """The batches of steps ``start``, ``start + 1``, ... (endless), as :meth:`batch` gives them."""
        step = start
        while True:
            yield self.batch(step, batch_size, seed)
            step += 1

    def batches(self, batch_size: int) -> Iterator[tuple[Inputs, dict[str, Tensor]]]:
        """The samples in order, ``batch_size`` at a time (the last batch may be smaller): for evaluation."""
        return in_batches(self.x, self.targets, batch_size, self.masks)


@dataclass
class MultiTaskSplits:
    """A problem's ``train``, ``validation`` and ``test`` data and, where one exists, its ``reference``.

    ``reference`` is a ``(task, other_task)`` DataArray relating the tasks independently of any
    model (the planted similarity of synthetic tasks, the correlation of lexicon ratings), or ``None``.
    ``attrs`` is the provenance the builder recorded (sources and versions, sizes, split seed); every
    split carries it too. A split is data in memory, a :class:`~workbench.data.StreamedData` or one
    dataset per task (a :class:`~workbench.data.TaskDatasets`): each has ``tasks``, ``attrs``,
    ``labelled(task)`` and ``subset(tasks)``, which :meth:`describe` and :meth:`subset` use.
    """

    train: MultiTaskData
    validation: MultiTaskData
    test: MultiTaskData
    reference: xr.DataArray | None = None

    @property
    def tasks(self) -> list[Task]:
        return self.train.tasks

    @property
    def task_names(self) -> list[str]:
        return self.train.task_names

    @property
    def attrs(self) -> dict:
        return self.train.attrs

    def describe(self):
        """A table (pandas DataFrame) of the tasks: kind, metric, outputs, and the samples labelled for each per split."""
        import pandas as pd

        parts = {"train": self.train, "validation": self.validation, "test": self.test}
        rows = [
            {"task": t.name, "kind": t.kind, "metric": t.metric_name, "outputs": t.out_features, **{k: part.labelled(t.name) for k, part in parts.items()}}
            for t in self.tasks
        ]
        return pd.DataFrame(rows).set_index("task")

    def map_inputs(self, transform: Callable[[Inputs], Inputs]) -> MultiTaskSplits:
        """Every split with its inputs replaced by ``transform(x)`` (of each task's data, in a :class:`~workbench.data.TaskDatasets`)."""
        return MultiTaskSplits(*(self._mapped(part, transform) for part in (self.train, self.validation, self.test)), self.reference)

    @staticmethod
    def _mapped(part, transform: Callable[[Inputs], Inputs]):
        """One split with its inputs replaced by ``transform(x)``; refused for a split streamed from a dataset."""
        if isinstance(part, MultiTaskData):
            return part.with_inputs(transform(part.x))
        if hasattr(part, "map_inputs"):
            return part.map_inputs(transform)
        raise TypeError(f"map_inputs transforms inputs in memory; a {type(part).__name__} reads them from its dataset: transform them there")

    def subset(self, tasks: Sequence[str]) -> MultiTaskSplits:
        """The same splits with only the named tasks (and their part of the reference)."""
        reference = None if self.reference is None else self.reference.sel(task=list(tasks), other_task=list(tasks))
        return MultiTaskSplits(self.train.subset(tasks), self.validation.subset(tasks), self.test.subset(tasks), reference)
