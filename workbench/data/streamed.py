"""Multi-task data streamed from a ``torch.utils.data.Dataset`` (or a ``DataLoader``'s), batch by batch, never whole in memory.

A :class:`StreamedData` stands where a :class:`~workbench.tasks.MultiTaskData` does for training and
evaluation: :func:`workbench.train.train` draws its batches with ``batch(step, batch_size, seed)``
and evaluates through ``batches(batch_size)``. Each item of the dataset is one sample,
``(x, {task: target})``: ``x`` a tensor or named tensors (token ids and their mask), each target a
0-d tensor (or number) or a dense map. Items are read by a ``DataLoader`` (with worker processes when
``num_workers > 0``) and stacked by ``torch``'s default collation after their structure is checked
against the first item: an item of another structure or shape is refused naming the task and the
sample index.

A step's batch holds the samples :func:`~workbench.tasks.epoch_batch_index` picks, as for data in
memory, so a run on a dataset equals the run on the same samples in memory, and a resumed run sees
the same batches. ``stream(start, ...)`` yields the batches of consecutive steps, read ahead by the
workers, which stop when the stream is closed (the training loop closes it when the run ends).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torch.utils.data import default_collate

from workbench.tasks import Inputs, Task, epoch_batch_index, steps_per_epoch

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
    """Checks every item of a batch against the first item of the dataset, then stacks them (picklable, for worker processes)."""

    def __init__(self, tasks: Sequence[str], expected: tuple[Any, dict[str, Any]] | None = None):
        self.tasks, self.expected = list(tasks), expected

    def check(self, index: int, item: Any) -> tuple[Inputs, dict[str, Tensor]]:
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[1], Mapping)):
            raise ValueError(f"sample {index}: an item must be a pair (x, {{task: target}}), got a {type(item).__name__}")
        x, targets = item
        missing = [task for task in self.tasks if task not in targets]
        if missing:
            raise ValueError(f"sample {index} has no target for tasks {missing}; it holds {sorted(targets)}")
        targets = {task: torch.as_tensor(targets[task]) for task in self.tasks}
        if self.expected is None:
            return x, targets
        inputs, shapes = self.expected
        if _structure(x) != inputs:
            raise ValueError(f"sample {index}: its input is {_structure(x)}, the first sample's is {inputs}")
        for task, target in targets.items():
            if _structure(target) != shapes[task]:
                raise ValueError(f"sample {index}: task {task!r} has target {_structure(target)}, the first sample's is {shapes[task]}")
        return x, targets

    def __call__(self, batch: list[tuple[int, Any]]) -> tuple[Inputs, dict[str, Tensor]]:
        return default_collate([self.check(index, item) for index, item in batch])


class _StepBatches:
    """The index batches of steps ``start``, ``start + 1``, ... (endless), as a ``DataLoader``'s batch sampler."""

    def __init__(self, n: int, batch_size: int, seed: int, start: int):
        self.n, self.batch_size, self.seed, self.start = n, batch_size, seed, start

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start
        while True:
            yield epoch_batch_index(self.n, step, self.batch_size, self.seed).tolist()
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

    def _first_structure(self, names: list[str]) -> tuple[Any, dict[str, Any]]:
        """The structure of the first item, which every other item must share."""
        x, targets = _Collate(names).check(0, self.dataset[0])
        return _structure(x), {name: _structure(target) for name, target in targets.items()}

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def task_names(self) -> list[str]:
        return [task.name for task in self.tasks]

    def subset(self, tasks: Sequence[str]) -> StreamedData:
        """The same samples with only the named tasks."""
        unknown = set(tasks) - set(self.task_names)
        if unknown:
            raise KeyError(f"unknown tasks {sorted(unknown)}; known: {self.task_names}")
        return StreamedData(self.dataset, [t for t in self.tasks if t.name in tasks], self.attrs, self.num_workers, self.pin_memory)

    def steps_per_epoch(self, batch_size: int) -> int:
        return steps_per_epoch(len(self), batch_size)

    def _loader(self, **sampling) -> DataLoader:
        return DataLoader(_Indexed(self.dataset), num_workers=self.num_workers, pin_memory=self.pin_memory, collate_fn=self._collate, **sampling)

    def stream(self, start: int, batch_size: int, seed: int = 0) -> Iterator[tuple[Inputs, dict[str, Tensor]]]:
        """The batches of steps ``start``, ``start + 1``, ... (endless), read ahead by the workers; closing it stops them."""
        yield from self._loader(batch_sampler=_StepBatches(len(self), batch_size, seed, start))

    def batch(self, step: int, batch_size: int, seed: int = 0) -> tuple[Inputs, dict[str, Tensor]]:
        """The batch ``(x (B, ...), {task: (B, ...)})`` of training step ``step``: the samples it picks in memory too."""
        batches = self.stream(step, batch_size, seed)
        try:
            return next(batches)
        finally:
            batches.close()

    def batches(self, batch_size: int) -> Iterator[tuple[Inputs, dict[str, Tensor]]]:
        """The samples in order, ``batch_size`` at a time (the last batch may be smaller): for evaluation."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        return iter(self._loader(batch_size=batch_size, shuffle=False))
