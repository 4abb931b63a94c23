"""Multi-task data streamed from a ``torch.utils.data.Dataset`` (or a ``DataLoader``'s), batch by batch, never whole in memory.

A :class:`StreamedData` stands where a :class:`~workbench.tasks.MultiTaskData` does for training and
evaluation: :func:`workbench.train.train` draws its batches with ``batch(step, batch_size, seed)``
and evaluates through ``batches(batch_size)``. Each item of the dataset is one sample,
``(x, {task: target})``: ``x`` a tensor or named tensors (token ids and their mask), each target a
0-d tensor (or number) or a dense map. Items are read by a ``DataLoader`` (with worker processes when
``num_workers > 0``) and stacked by ``torch``'s default collation after their structure is checked
against the first item: an item of another structure or shape is refused naming the task and the
sample index.

A target ``None`` marks a sample unlabelled for that task (a task missing from an item's targets
is an error, not a missing label). A batch holding such samples is the one
:func:`~workbench.tasks.masked_batch` makes in memory: a :class:`~workbench.tasks.TaskInputs` of one
group, each task with a ``None`` in the batch routed to its labelled samples. A task's targets are
checked against its first labelled item: making a ``StreamedData`` reads items from the first on
until every task has met a label (all of them when a task is labelled nowhere, which is refused,
naming it).

A step's batch holds the samples :func:`~workbench.tasks.epoch_batch_index` picks, as for data in
memory, so a run on a dataset equals the run on the same samples in memory, and a resumed run sees
the same batches. ``stream(start, ...)`` yields the batches of consecutive steps, read ahead by the
workers, which stop when the stream is closed (the training loop closes it when the run ends).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torch.utils.data import default_collate

from workbench.tasks import Inputs, Task, TaskInputs, epoch_batch_index, masked_batch, steps_per_epoch

__all__ = ["StreamedData"]


def _structure(x: Any) -> Any:
    """What an input must look like in every item: a tensor's shape and dtype, or those of each named tensor."""
    if isinstance(x, Tensor):
        return (tuple(x.shape), x.dtype)
    if isinstance(x, Mapping):
        return {name: _structure(value) for name, value in x.items()}
    return type(x).__name__


class _Indexed(Dataset):
    """The items of ``dataset`` with their index, so that a refused item can be named."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[int, Any]:
        return index, self.dataset[index]


class _Collate:
    """Checks every item of a batch against the dataset's first (labelled) items, then stacks them (picklable, for worker processes).

    ``expected`` is ``(input structure, {task: target structure})``; without it items are checked for
    their form only (a pair, a target or ``None`` for every task).
    """

    def __init__(self, tasks: Sequence[str], expected: tuple[Any, dict[str, Any]] | None = None):
        self.tasks, self.expected = list(tasks), expected

    def check(self, index: int, item: Any) -> tuple[Inputs, dict[str, Tensor | None]]:
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[1], Mapping)):
            raise ValueError(f"sample {index}: an item must be a pair (x, {{task: target}}), got a {type(item).__name__}")
        x, targets = item
        missing = [task for task in self.tasks if task not in targets]
        if missing:
            raise ValueError(f"sample {index} has no target for tasks {missing}; it holds {sorted(targets)} (None marks a missing label)")
        targets = {task: None if targets[task] is None else torch.as_tensor(targets[task]) for task in self.tasks}
        if self.expected is None:
            return x, targets
        inputs, shapes = self.expected
        if _structure(x) != inputs:
            raise ValueError(f"sample {index}: its input is {_structure(x)}, the first sample's is {inputs}")
        for task, target in targets.items():
            if target is not None and _structure(target) != shapes[task]:
                raise ValueError(f"sample {index}: task {task!r} has target {_structure(target)}, the first labelled sample's is {shapes[task]}")
        return x, targets

    def __call__(self, batch: list[tuple[int, Any]]) -> tuple[Inputs | TaskInputs, dict[str, Tensor]]:
        items = [self.check(index, item) for index, item in batch]
        targets, masks = {}, {}
        for task in self.tasks:
            column = [target[task] for _, target in items]
            if any(target is None for target in column):
                masks[task] = torch.tensor([target is not None for target in column])
                shape, dtype = self.expected[1][task]
                column = [torch.zeros(shape, dtype=dtype) if target is None else target for target in column]  # never read
            targets[task] = default_collate(column)
        return masked_batch(default_collate([x for x, _ in items]), targets, masks)


class _CountLabelled:
    """The labelled samples per task of a batch of items, checked as :class:`_Collate` checks them (picklable)."""

    def __init__(self, collate: _Collate):
        self.collate = collate

    def __call__(self, batch: list[tuple[int, Any]]) -> dict[str, int]:
        items = [self.collate.check(index, item) for index, item in batch]
        return {task: sum(target[task] is not None for _, target in items) for task in self.collate.tasks}


def _checked(index_batches: Iterable[Sequence[int]], n: int) -> Iterator[list[int]]:
    """Each index batch as a list, refused when it is empty or names a sample outside ``0 .. n - 1``."""
    for number, indices in enumerate(index_batches):
        indices = [int(i) for i in indices]
        if not indices:
            raise ValueError(f"index batch {number} is empty; every batch read needs a sample")
        outside = [i for i in indices if not 0 <= i < n]
        if outside:
            raise ValueError(f"index batch {number} names samples {outside[:5]} outside the dataset's 0 .. {n - 1}")
        yield indices


def _step_batches(n: int, batch_size: int, seed: int, start: int) -> Iterator[list[int]]:
    """The index batches of steps ``start``, ``start + 1``, ... (endless)."""
    step = start
    while True:
        yield epoch_batch_index(n, step, batch_size, seed).tolist()
        step += 1


class StreamedData:
    """Samples of ``tasks`` read from ``dataset`` (a map-style ``Dataset``, or a ``DataLoader`` whose dataset,
    workers and ``pin_memory`` are used; its own batch size and sampler are not: the training loop picks the batches).

    ``num_workers`` worker processes read items ahead (default: the ``DataLoader``'s, else 0: in this
    process). ``attrs`` is the provenance carried into results, as :class:`~workbench.tasks.MultiTaskData`'s.
    """

    def __init__(self, dataset: Dataset | DataLoader, tasks: Sequence[Task], attrs: dict | None = None,
                 num_workers: int | None = None, pin_memory: bool | None = None):
        if isinstance(dataset, DataLoader):
            loader, dataset = dataset, dataset.dataset
            num_workers = loader.num_workers if num_workers is None else num_workers
            pin_memory = loader.pin_memory if pin_memory is None else pin_memory
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise TypeError(f"a {type(dataset).__name__} is not a map-style Dataset (with __len__ and __getitem__)")
        if len(dataset) == 0:
            raise ValueError("the dataset holds no samples")
        names = [task.name for task in tasks]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"tasks must be a non-empty list of distinct tasks, got {names}")
        self.dataset, self.tasks, self.attrs = dataset, list(tasks), dict(attrs or {})
        self.num_workers, self.pin_memory = num_workers or 0, bool(pin_memory)
        self._collate = _Collate(names, self._first_structure(names))
        self._labelled: dict[str, int] | None = None

    def _first_structure(self, names: list[str]) -> tuple[Any, dict[str, Any]]:
        """The structure of the first item's input and of each task's first labelled target, which every other item must share.

        Reads items from the first on until every task has met a label: the whole dataset when one has none.
        """
        check = _Collate(names).check
        x, targets = check(0, self.dataset[0])
        shapes = {name: _structure(target) for name, target in targets.items() if target is not None}
        index = 1
        while len(shapes) < len(names) and index < len(self.dataset):
            _, targets = check(index, self.dataset[index])
            shapes.update({name: _structure(target) for name, target in targets.items() if target is not None and name not in shapes})
            index += 1
        unlabelled = [name for name in names if name not in shapes]
        if unlabelled:
            raise ValueError(f"tasks {unlabelled} are labelled on no sample: their target is None in every item")
        return _structure(x), {name: shapes[name] for name in names}

    @property
    def structure(self) -> tuple[Any, dict[str, Any]]:
        """What one sample looks like: ``(input, {task: target})``, a tensor's ``(shape, dtype)`` or named tensors' ``{name: (shape, dtype)}``."""
        return self._collate.expected

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def task_names(self) -> list[str]:
        return [task.name for task in self.tasks]

    def labelled(self, task: str) -> int:
        """How many samples are labelled for ``task``. The first call reads every item once (through the workers) and
        counts for all tasks; later calls, and those of a :meth:`subset`, reuse the counts."""
        if task not in self.task_names:
            raise KeyError(f"unknown task {task!r}; known: {self.task_names}")
        if self._labelled is None:
            counts = dict.fromkeys(self.task_names, 0)
            for batch in self._loader(batch_size=256, shuffle=False, collate_fn=_CountLabelled(self._collate)):
                counts = {name: counts[name] + batch[name] for name in counts}
            self._labelled = counts
        return self._labelled[task]

    def subset(self, tasks: Sequence[str]) -> StreamedData:
        """The same samples with only the named tasks."""
        unknown = set(tasks) - set(self.task_names)
        if unknown:
            raise KeyError(f"unknown tasks {sorted(unknown)}; known: {self.task_names}")
        subset = StreamedData(self.dataset, [t for t in self.tasks if t.name in tasks], self.attrs, self.num_workers, self.pin_memory)
        if self._labelled is not None:
            subset._labelled = {name: self._labelled[name] for name in subset.task_names}
        return subset

    def steps_per_epoch(self, batch_size: int) -> int:
        return steps_per_epoch(len(self), batch_size)

    def _loader(self, **sampling) -> DataLoader:
        options = {"collate_fn": self._collate, **sampling}
        return DataLoader(_Indexed(self.dataset), num_workers=self.num_workers, pin_memory=self.pin_memory, **options)

    def stream_indices(self, index_batches: Iterable[Sequence[int]]) -> Iterator[tuple[Inputs | TaskInputs, dict[str, Tensor]]]:
        """The batch of the samples each of ``index_batches`` lists (non-empty lists of indices; the iterable may be
        endless), in order, read ahead by the workers; closing it stops them. A batch is ``(x (B, ...), {task: (B, ...)})``,
        or with missing labels as :func:`~workbench.tasks.masked_batch` gives it."""
        yield from self._loader(batch_sampler=_checked(index_batches, len(self)))

    def stream(self, start: int, batch_size: int, seed: int = 0) -> Iterator[tuple[Inputs | TaskInputs, dict[str, Tensor]]]:
        """The batches of steps ``start``, ``start + 1``, ... (endless), read ahead by the workers; closing it stops them."""
        yield from self.stream_indices(_step_batches(len(self), batch_size, seed, start))

    def batch(self, step: int, batch_size: int, seed: int = 0) -> tuple[Inputs | TaskInputs, dict[str, Tensor]]:
        """The batch ``(x (B, ...), {task: (B, ...)})`` of training step ``step``: the samples it picks in memory too."""
        batches = self.stream(step, batch_size, seed)
        try:
            return next(batches)
        finally:
            batches.close()

    def probe_batch(self, n: int) -> tuple[Inputs | TaskInputs, dict[str, Tensor]]:
        """A fixed batch of the first ``n`` samples (all when fewer) for probes, as :meth:`stream_indices` gives it."""
        if n < 1:
            raise ValueError(f"a probe batch needs at least one sample, got n={n}")
        with contextlib.closing(self.stream_indices([list(range(min(n, len(self))))])) as batches:
            return next(batches)

    def batches(self, batch_size: int) -> Iterator[tuple[Inputs | TaskInputs, dict[str, Tensor]]]:
        """The samples in order, ``batch_size`` at a time (the last batch may be smaller): for evaluation."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        return iter(self._loader(batch_size=batch_size, shuffle=False))
