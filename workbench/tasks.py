"""The contract every probe, trainer and merge relies on.

A :class:`Task` names a loss, a metric and whether the metric is better when higher. A
:class:`MultiTaskModel` is a shared encoder plus one head per task: ``forward(x)`` returns
``{task: output}``, :meth:`MultiTaskModel.represent` returns the shared representation ``Z`` and
:meth:`MultiTaskModel.shared_parameters` the parameters of the encoder. An MLP, a CNN or a
transformers encoder all fit: the encoder is any module mapping a batch to ``Z``.
A :class:`MultiTaskData` holds inputs and one target tensor per task.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["check_finite", "Task", "MultiTaskModel", "MultiTaskData", "mlp_encoder", "regression_task", "classification_task"]

TaskKind = Literal["regression", "classification"]


def _mse(output: Tensor, target: Tensor) -> Tensor:
    return F.mse_loss(output.reshape(target.shape), target)


def _binary_logit_loss(output: Tensor, target: Tensor) -> Tensor:
    return F.binary_cross_entropy_with_logits(output.reshape(target.shape), target.float())


def _cross_entropy(output: Tensor, target: Tensor) -> Tensor:
    return F.cross_entropy(output, target.long())


def _accuracy(output: Tensor, target: Tensor) -> Tensor:
    if output.shape[-1] == 1 or output.dim() == target.dim():
        predicted = (output.reshape(target.shape) > 0).to(target.dtype)
    else:
        predicted = output.argmax(dim=-1).to(target.dtype)
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
    and the targets ``(B,)`` to a scalar tensor. ``higher_is_better`` gives the metric's direction
    (it sets the sign in Δm%).
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


def mlp_encoder(in_features: int, hidden: Sequence[int] = (64, 64), activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """A ready MLP encoder ``(B, in_features) -> (B, hidden[-1])``: Linear and activation per width."""
    if not hidden:
        raise ValueError("an MLP encoder needs at least one hidden width")
    layers: list[nn.Module] = []
    width = in_features
    for out in hidden:
        layers += [nn.Linear(width, out), activation()]
        width = out
    return nn.Sequential(*layers)


class MultiTaskModel(nn.Module):
    """A shared encoder and one head per task.

    ``encoder`` maps a batch ``x`` to the shared representation ``Z`` of shape ``(B, C)`` (or
    ``(B, C, ...)`` for a CNN or a sequence model); each head maps ``Z`` to that task's output.
    When ``heads`` is omitted, every task gets a linear head on ``representation_dim`` features.
    """

    def __init__(
        self,
        encoder: nn.Module,
        tasks: Sequence[Task],
        heads: Mapping[str, nn.Module] | None = None,
        representation_dim: int | None = None,
    ) -> None:
        super().__init__()
        names = [t.name for t in tasks]
        if len(set(names)) != len(names) or not names:
            raise ValueError(f"tasks must be a non-empty list of distinct names, got {names}")
        if heads is None:
            if representation_dim is None:
                raise ValueError("give either heads or representation_dim for linear heads")
            heads = {t.name: nn.Linear(representation_dim, t.out_features) for t in tasks}
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

    def represent(self, x: Tensor) -> Tensor:
        """The shared representation ``Z = encoder(x)``."""
        return self.encoder(x)

    def heads_forward(self, z: Tensor) -> dict[str, Tensor]:
        """Every head applied to the shared representation ``z``."""
        return {name: head(z) for name, head in self.heads.items()}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.heads_forward(self.represent(x))

    def summary(self) -> dict:
        """What the model is, for the attrs of the results it produces."""
        return {
            "encoder": type(self.encoder).__name__,
            "shared_parameters": sum(p.numel() for _, p in self.shared_parameters()),
            "parameters": sum(p.numel() for p in self.parameters()),
            "tasks": self.task_names,
        }

    def shared_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """``(name, parameter)`` of the encoder's trainable parameters, in module order."""
        return [(name, p) for name, p in self.encoder.named_parameters() if p.requires_grad]

    def losses_from_outputs(self, outputs: Mapping[str, Tensor], targets: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``{task: scalar loss}`` for the given outputs; raises on a missing target or a non-finite loss."""
        missing = [name for name in self.tasks if name not in targets]
        if missing:
            raise KeyError(f"no targets for tasks {missing}; targets hold {sorted(targets)}")
        losses = {}
        for name, task in self.tasks.items():
            try:
                losses[name] = task.loss(outputs[name], targets[name])
            except (RuntimeError, ValueError) as error:
                raise ValueError(
                    f"task {name!r}: its loss failed on output {tuple(outputs[name].shape)} and targets {tuple(targets[name].shape)}: {error}"
                ) from error
        check_finite(losses)
        return losses

    def losses(self, x: Tensor, targets: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """One forward pass: ``{task: scalar loss}`` on the batch ``(x, targets)``."""
        return self.losses_from_outputs(self(x), targets)

    @torch.no_grad()
    def evaluate(self, x: Tensor, targets: Mapping[str, Tensor]) -> dict[str, tuple[float, float]]:
        """``{task: (loss, metric)}`` on ``(x, targets)`` without gradients (eval mode, restored after)."""
        was_training = self.training
        self.eval()
        try:
            outputs = self(x)
            losses = self.losses_from_outputs(outputs, targets)
            return {n: (losses[n].item(), t.metric(outputs[n], targets[n]).item()) for n, t in self.tasks.items()}
        finally:
            self.train(was_training)


@dataclass
class MultiTaskData:
    """Inputs ``x`` of shape ``(N, ...)`` and ``targets[task]`` of shape ``(N,)`` for every task."""

    x: Tensor
    targets: dict[str, Tensor]
    tasks: list[Task]
    attrs: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.x.shape[0]
        for task in self.tasks:
            if task.name not in self.targets:
                raise ValueError(f"no targets for task {task.name!r}")
            if self.targets[task.name].shape[0] != n:
                raise ValueError(f"targets of task {task.name!r} have {self.targets[task.name].shape[0]} rows, x has {n}")

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def subset(self, tasks: Sequence[str]) -> MultiTaskData:
        """The same samples with only the named tasks."""
        unknown = set(tasks) - set(self.task_names)
        if unknown:
            raise KeyError(f"unknown tasks {sorted(unknown)}; known: {self.task_names}")
        return MultiTaskData(self.x, {n: self.targets[n] for n in tasks}, [t for t in self.tasks if t.name in tasks], self.attrs)

    def rows(self, index: Tensor) -> MultiTaskData:
        """The samples at ``index`` (a 1-d index tensor)."""
        return MultiTaskData(self.x[index], {n: y[index] for n, y in self.targets.items()}, self.tasks, self.attrs)

    def split(self, test_fraction: float = 0.2, seed: int = 0) -> tuple[MultiTaskData, MultiTaskData]:
        """A seeded random ``(train, test)`` split."""
        if not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        n_test = max(1, int(round(test_fraction * len(self))))
        return self.rows(order[n_test:]), self.rows(order[:n_test])

    def batches(self, batch_size: int, generator: torch.Generator) -> Iterator[tuple[Tensor, dict[str, Tensor]]]:
        """An endless stream of shuffled batches ``(x (B, ...), {task: (B,)})``, epoch after epoch."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        last_start = max(len(self) - batch_size, 0)  # full batches only, or all samples when fewer than one batch
        while True:
            order = torch.randperm(len(self), generator=generator)
            for start in range(0, last_start + 1, batch_size):
                index = order[start : start + batch_size]
                yield self.x[index], {n: y[index] for n, y in self.targets.items()}
