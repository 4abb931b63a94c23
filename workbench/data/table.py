"""A table's rows as multi-task data: a Hugging Face ``datasets.Dataset``, or any sequence of mappings, streamed row by row.

Each row names its input column(s) and one label column per task. A row is read when its sample
is (a ``datasets.Dataset`` reads it from its Arrow files on disk, memory-mapped), turned into tensors
(``torch.as_tensor``: lists of floats become float32, of ints int64), and handed to
:class:`~workbench.data.StreamedData`, which checks and stacks the samples.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from workbench.data.streamed import StreamedData
from workbench.tasks import Inputs, Task

__all__ = ["TableRows", "table_data"]


def _columns(table: Any) -> list[str]:
    """The table's column names: a ``datasets.Dataset``'s, or the first row's keys."""
    names = getattr(table, "column_names", None)
    if names is not None:
        return list(names)
    if len(table) == 0:
        raise ValueError("the table holds no rows")
    first = table[0]
    if not isinstance(first, Mapping):
        raise TypeError(f"a table's rows are mappings of column names to values; row 0 is a {type(first).__name__}")
    return list(first)


class TableRows(Dataset):
    """The rows of ``table`` as items ``(x, {task: target})``: ``x`` the column ``inputs`` (a tensor), or the
    columns ``inputs`` (named tensors, as token ids and their mask); ``targets[task]`` the column it names."""

    def __init__(self, table: Any, inputs: str | Sequence[str], targets: Mapping[str, str]):
        columns = _columns(table)
        wanted = [inputs] if isinstance(inputs, str) else list(inputs)
        missing = [column for column in [*wanted, *targets.values()] if column not in columns]
        if missing:
            raise ValueError(f"the table has no columns {missing}; its columns are {columns}")
        self.table, self.inputs, self.targets = table, inputs, dict(targets)

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int) -> tuple[Inputs, dict[str, Tensor]]:
        row = self.table[index]
        if isinstance(self.inputs, str):
            x = torch.as_tensor(row[self.inputs])
        else:
            x = {column: torch.as_tensor(row[column]) for column in self.inputs}
        return x, {task: torch.as_tensor(row[column]) for task, column in self.targets.items()}


def table_data(table: Any, tasks: Sequence[Task], inputs: str | Sequence[str], targets: Mapping[str, str] | None = None,
               num_workers: int = 0, attrs: dict | None = None) -> StreamedData:
    """The rows of ``table`` as multi-task data; ``targets`` maps each task to its label column (default: the task's name)."""
    targets = dict(targets) if targets is not None else {task.name: task.name for task in tasks}
    unknown = sorted(set(targets) - {task.name for task in tasks})
    unlabelled = [task.name for task in tasks if task.name not in targets]
    if unknown or unlabelled:
        raise ValueError(f"targets must name a column for every task and no other: unknown tasks {unknown}, tasks without a column {unlabelled}")
    return StreamedData(TableRows(table, inputs, targets), tasks, {"source": f"table of {len(table)} rows", **(attrs or {})}, num_workers)
