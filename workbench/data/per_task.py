"""One dataset per task, combined into training batches by a sampling policy.

A :class:`TaskDatasets` holds, for each task, data of its own (a :class:`~workbench.tasks.MultiTaskData`
in memory or a :class:`~workbench.data.StreamedData`; of several tasks, only that task is used) and
stands where a ``MultiTaskData`` does for training and evaluation. Two choices set its batches:

- ``sampling``, each task's share ``p_t`` of a step's samples: ``"proportional"`` (``p_t ∝ n_t``, the
  task's samples), ``"uniform"`` (``1/T``), a temperature ``τ > 0`` (``p_t ∝ n_t^(1/τ)``: ``τ = 1`` is
  proportional, a large ``τ`` tends to uniform; the temperature sampling of MT-DNN and T5), or
  weights ``{task: weight}`` (every task, positive; normalised);
- ``mixing``: ``"per_task"`` draws a batch from every task's data at every step, the step's samples
  divided among the tasks by their shares (largest remainder, at least one each), as
  ``TaskInputs(groups=(x_1, ..., x_T))``: the encoder runs once per task. ``"mixed"`` draws one
  batch whose per-task counts are a multinomial draw with the shares, seeded by ``(seed, step)``,
  the tasks' inputs concatenated into one group (their inputs must be alike) and each task routed
  to its own rows; a task drawn no sample has targets of zero rows there.

Within a task, the samples come from its own endless sequence of epochs, each a permutation of its
``n_t`` samples seeded by the seed, the task's position and the epoch; a step takes the next
``k_t`` of them, across epoch ends. So every sample of a task is drawn once per its epoch, and a
step's batch depends on ``(seed, step)`` only: :meth:`TaskDatasets.batch` equals the step's item of
any :meth:`~TaskDatasets.stream` (a resumed run sees the batches of an unbroken one). A task whose
data lack some labels keeps them missing: its rows in the batch are its labelled samples among those drawn.
"""

from __future__ import annotations

import contextlib
import functools
import zlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from workbench.data.streamed import StreamedData
from workbench.data.table import table_data
from workbench.tasks import Inputs, MultiTaskData, Task, TaskInputs, masked_batch, num_samples, steps_per_epoch, take_rows

__all__ = ["MIXING", "TaskDatasets", "mixed_counts", "per_task_counts", "sampling_shares", "task_datasets"]

Member = MultiTaskData | StreamedData
Sampling = str | float | Mapping[str, float]
MIXING = ("per_task", "mixed")
_POLICIES = "'proportional', 'uniform', a temperature > 0 (a number) or weights {task: weight}"


def sampling_shares(sizes: Mapping[str, int], sampling: Sampling) -> dict[str, float]:
    """Each task's share of a step's samples under ``sampling`` (see the module docstring), from its number of samples ``sizes[task]``."""
    names = list(sizes)
    n = np.array([sizes[name] for name in names], dtype=float)
    if isinstance(sampling, str) and sampling in ("proportional", "uniform"):
        weights = n if sampling == "proportional" else np.ones_like(n)
    elif isinstance(sampling, Mapping):
        missing, unknown = [t for t in names if t not in sampling], sorted(set(sampling) - set(names))
        if missing or unknown:
            raise ValueError(f"sampling weights must name every task and no other: tasks without a weight {missing}, unknown tasks {unknown}")
        bad = {t: sampling[t] for t in names if not (isinstance(sampling[t], (int, float)) and math.isfinite(sampling[t]) and sampling[t] > 0)}
        if bad:
            raise ValueError(f"sampling weights must be positive finite numbers; got {bad}")
        weights = np.array([float(sampling[t]) for t in names])
    elif isinstance(sampling, (int, float)) and not isinstance(sampling, bool):
        if not (math.isfinite(sampling) and sampling > 0):
            raise ValueError(f"a sampling temperature must be a positive finite number, got {sampling}")
        logs = np.log(n)
        weights = np.exp((logs - logs.max()) / sampling)  # n_t^(1/τ), scaled by the largest: no overflow at small τ
    else:
        raise ValueError(f"unknown sampling {sampling!r}; give {_POLICIES}")
    shares = weights / weights.sum()
    return dict(zip(names, shares.tolist()))


def per_task_counts(shares: Mapping[str, float], batch_size: int) -> dict[str, int]:
    """``batch_size`` samples divided among the tasks by their ``shares``: largest-remainder rounding, then at least one
    per task (taken from the task furthest above its quota), so they sum to ``batch_size`` when it is at least the number of tasks."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    names = list(shares)
    quota = np.array([shares[name] for name in names]) * batch_size
    counts = np.floor(quota).astype(int)
    by_remainder = np.argsort(-(quota - counts), kind="stable")
    counts[by_remainder[: batch_size - counts.sum()]] += 1
    for task in np.flatnonzero(counts == 0):
        donors = np.flatnonzero(counts > 1)
        if len(donors):
            counts[donors[np.argmax((counts - quota)[donors])]] -= 1
        counts[task] = 1
    return dict(zip(names, counts.tolist()))


def mixed_counts(shares: Mapping[str, float], batch_size: int, seed: int, step: int) -> dict[str, int]:
    """The per-task counts of step ``step``'s mixed batch: a multinomial draw of ``batch_size`` with the ``shares``,
    from ``numpy.random.default_rng([seed, step])`` (so they depend on the seed and the step only)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    drawn = np.random.default_rng([seed, step]).multinomial(batch_size, list(shares.values()))
    return dict(zip(shares, drawn.tolist()))


def _epoch_order(n: int, seed: int, task: str, epoch: int) -> np.ndarray:
    """Epoch ``epoch`` of ``task``: a permutation ``(n,)`` of its ``n`` samples, seeded by the task's name (so a task draws
    the same samples in any set of tasks, a subset's baseline included)."""
    return np.random.default_rng([seed, zlib.crc32(task.encode()), epoch]).permutation(n)


def _sequence(order: Callable[[int], np.ndarray], n: int, start: int, count: int) -> Tensor:
    """Samples ``start .. start + count - 1`` ``(count,)`` of a task's endless sequence of epochs, ``order(epoch)`` each."""
    parts = []
    while count > 0:
        epoch, offset = divmod(start, n)
        take = min(count, n - offset)
        parts.append(order(epoch)[offset : offset + take])
        start, count = start + take, count - take
    return torch.from_numpy(np.concatenate(parts)) if parts else torch.zeros(0, dtype=torch.long)


def _sample_structure(member: Member) -> Any:
    """What one sample's input looks like: ``(shape, dtype)`` of a tensor, ``{name: (shape, dtype)}`` of named tensors."""
    if isinstance(member, StreamedData):
        return member.structure[0]
    if isinstance(member.x, Tensor):
        return (tuple(member.x.shape[1:]), member.x.dtype)
    return {name: (tuple(tensor.shape[1:]), tensor.dtype) for name, tensor in member.x.items()}


def _no_targets(member: Member, task: str) -> Tensor:
    """Targets of zero rows ``(0, ...)`` with the trailing shape and dtype of ``task``'s."""
    if isinstance(member, StreamedData):
        shape, dtype = member.structure[1][task]
        return torch.zeros((0, *shape), dtype=dtype)
    return member.targets[task][:0]


def _parts(batch: tuple[Inputs | TaskInputs, Mapping[str, Tensor]], task: str) -> tuple[Inputs, Tensor, Tensor | None]:
    """A one-task batch as ``(x, targets, rows)``: ``rows`` the samples of ``x`` labelled for the task, ``None`` for all."""
    x, targets = batch
    if isinstance(x, TaskInputs):
        group, rows = x.rows[task]
        return x.groups[group], targets[task], rows
    return x, targets[task], None


def _concatenate(parts: Sequence[Inputs]) -> Inputs:
    """Input batches joined along the samples (named inputs name by name)."""
    if isinstance(parts[0], Tensor):
        return torch.cat(list(parts))
    return {name: torch.cat([part[name] for part in parts]) for name in parts[0]}


def _grouped(parts: Mapping[str, tuple[Inputs, Tensor, Tensor | None]]) -> tuple[TaskInputs, dict[str, Tensor]]:
    """A batch of one input group per task from each task's ``(x, targets, rows)``."""
    rows = {task: (group, part[2]) for group, (task, part) in enumerate(parts.items())}
    return TaskInputs(tuple(part[0] for part in parts.values()), rows), {task: part[1] for task, part in parts.items()}


class TaskDatasets:
    """``datasets[task]``, each task's own data, combined into batches by ``sampling`` and ``mixing`` (see the module docstring).

    Training reads ``stream`` / ``batch``, evaluation ``batches``; ``attrs`` (``attrs`` given, plus the
    sampling, mixing, the tasks' sizes and shares, and each task's data's own attrs) is carried into
    results. ``n_t`` is the task's number of samples (``len`` of its data, labelled or not);
    :meth:`labelled` counts its labels.
    A task's :class:`~workbench.data.StreamedData` is read by its own ``DataLoader``, its workers
    reading the drawn samples ahead.
    """

    def __init__(self, datasets: Mapping[str, Member], sampling: Sampling = "proportional", mixing: str = "per_task", attrs: dict | None = None):
        if not datasets:
            raise ValueError("TaskDatasets needs the data of at least one task")
        if mixing not in MIXING:
            raise ValueError(f"unknown mixing {mixing!r}; give one of {list(MIXING)}")
        self._datasets: dict[str, Member] = {}
        for task, data in datasets.items():
            if not isinstance(data, (MultiTaskData, StreamedData)):
                raise TypeError(
                    f"the data of task {task!r} is a {type(data).__name__}; give a MultiTaskData or a StreamedData "
                    "(task_datasets makes them from Datasets and tables)"
                )
            if task not in data.task_names:
                raise ValueError(f"the data given for task {task!r} do not hold it; their tasks: {data.task_names}")
            if len(data) == 0:
                raise ValueError(f"task {task!r} has no data")
            self._datasets[task] = data.subset([task])
        if mixing == "mixed":
            kinds = {task: _sample_structure(data) for task, data in self._datasets.items()}
            first = next(iter(kinds))
            differing = {task: kind for task, kind in kinds.items() if kind != kinds[first]}
            if differing:
                raise ValueError(
                    f"mixing='mixed' concatenates the tasks' inputs, which must be alike; task {first!r} has inputs {kinds[first]}, "
                    + ", ".join(f"task {task!r} {kind}" for task, kind in differing.items())
                )
        self.sampling, self.mixing, self._attrs = sampling, mixing, dict(attrs or {})
        self.sizes = {task: len(data) for task, data in self._datasets.items()}
        self._shares = sampling_shares(self.sizes, sampling)
        self._epoch_order = functools.lru_cache(maxsize=2 * len(self.sizes))(_epoch_order)  # the epochs in use: two per task

    @property
    def task_names(self) -> list[str]:
        return list(self._datasets)

    @property
    def tasks(self) -> list[Task]:
        return [data.tasks[0] for data in self._datasets.values()]

    @property
    def attrs(self) -> dict:
        sampling = dict(self.sampling) if isinstance(self.sampling, Mapping) else self.sampling
        datasets = {task: dict(data.attrs) for task, data in self._datasets.items()}
        return {**self._attrs, "sampling": sampling, "mixing": self.mixing, "sizes": dict(self.sizes), "shares": self.shares(), "datasets": datasets}

    def shares(self) -> dict[str, float]:
        """Each task's share of a step's samples (they sum to 1)."""
        return dict(self._shares)

    def __len__(self) -> int:
        return sum(self.sizes.values())

    def data_of(self, task: str) -> Member:
        """``task``'s own data (a single-task :class:`~workbench.tasks.MultiTaskData` or :class:`~workbench.data.StreamedData`)."""
        if task not in self._datasets:
            raise KeyError(f"unknown task {task!r}; known: {self.task_names}")
        return self._datasets[task]

    def labelled(self, task: str) -> int:
        """How many samples of ``task``'s data are labelled for it."""
        return self.data_of(task).labelled(task)

    def __repr__(self) -> str:
        where = {task: "streamed" if isinstance(data, StreamedData) else "in memory" for task, data in self._datasets.items()}
        tasks = ", ".join(f"{task}: {self.sizes[task]} samples {where[task]}, share {share:.3f}" for task, share in self._shares.items())
        return f"TaskDatasets({tasks}; sampling={self.sampling!r}, mixing={self.mixing!r})"

    def subset(self, tasks: Sequence[str]) -> TaskDatasets:
        """The named tasks only, with the same policy (weights of the kept tasks, renormalised)."""
        unknown = sorted(set(tasks) - set(self.task_names))
        if unknown:
            raise KeyError(f"unknown tasks {unknown}; known: {self.task_names}")
        kept = [task for task in self.task_names if task in tasks]
        sampling = {task: self.sampling[task] for task in kept} if isinstance(self.sampling, Mapping) else self.sampling
        return TaskDatasets({task: self._datasets[task] for task in kept}, sampling, self.mixing, self._attrs)

    def map_inputs(self, transform: Callable[[Inputs], Inputs]) -> TaskDatasets:
        """Every task's inputs replaced by ``transform(x)`` (cached features); its data must be in memory."""
        streamed = [task for task, data in self._datasets.items() if isinstance(data, StreamedData)]
        if streamed:
            raise TypeError(f"map_inputs transforms inputs in memory; the data of tasks {streamed} are streamed")
        mapped = {task: data.with_inputs(transform(data.x)) for task, data in self._datasets.items()}
        return TaskDatasets(mapped, self.sampling, self.mixing, self._attrs)

    def steps_per_epoch(self, batch_size: int) -> int:
        """Full batches per pass over all tasks' samples (one when there are fewer samples than a batch)."""
        return steps_per_epoch(len(self), batch_size)

    def _counts(self, step: int, batch_size: int, seed: int) -> np.ndarray:
        """The samples ``(T,)`` each task gives step ``step``'s batch."""
        if self.mixing == "per_task":
            return np.array(list(per_task_counts(self._shares, batch_size).values()))
        return np.array(list(mixed_counts(self._shares, batch_size, seed, step).values()))

    def _steps(self, start: int, batch_size: int, seed: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """For steps ``start``, ``start + 1``, ... (endless): the samples ``(T,)`` each task gave the earlier steps, and gives this one.

        Mixed counts are drawn per step, so the first needs the draws of every step before ``start`` (O(start)).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if start < 0:
            raise ValueError(f"steps count from 0, got {start}")
        if self.mixing == "per_task":
            taken = start * self._counts(0, batch_size, seed)
        else:
            taken = sum((self._counts(step, batch_size, seed) for step in range(start)), np.zeros(len(self.sizes), dtype=int))
        step = start
        while True:
            counts = self._counts(step, batch_size, seed)
            yield taken, counts
            taken, step = taken + counts, step + 1

    def _indices(self, position: int, taken: np.ndarray, counts: np.ndarray, seed: int) -> Tensor:
        """The samples ``(k_t,)`` the task at ``position`` gives a step, after the ``taken[position]`` of the earlier steps."""
        task = self.task_names[position]
        n = self.sizes[task]
        return _sequence(lambda epoch: self._epoch_order(n, seed, task, epoch), n, int(taken[position]), int(counts[position]))

    def step_indices(self, step: int, batch_size: int, seed: int = 0) -> dict[str, Tensor]:
        """The samples ``{task: (k_t,)}`` of each task's data in step ``step``'s batch (``k_t`` may be 0 in mixed batches)."""
        taken, counts = next(self._steps(step, batch_size, seed))
        return {task: self._indices(position, taken, counts, seed) for position, task in enumerate(self.task_names)}

    def _read(self, task: str, index: Tensor) -> tuple[Inputs, Tensor, Tensor | None]:
        """``(x, targets, rows)`` of the samples ``index`` of ``task``'s data in memory (``rows``: those labelled, ``None`` for all)."""
        data = self._datasets[task]
        masks = {task: data.masks[task][index]} if task in data.masks else {}
        return _parts(masked_batch(take_rows(data.x, index), {task: data.targets[task][index]}, masks), task)

    def _batch(self, parts: Mapping[str, tuple[Inputs, Tensor, Tensor | None] | None]) -> tuple[TaskInputs, dict[str, Tensor]]:
        """One step's batch from each task's ``(x, targets, rows)`` (``None`` for a task drawn no sample, in mixed batches only)."""
        if self.mixing == "per_task":
            return _grouped(parts)
        rows, inputs, targets, offset = {}, [], {}, 0
        for task, part in parts.items():
            if part is None:
                rows[task], targets[task] = (0, torch.zeros(0, dtype=torch.long)), _no_targets(self._datasets[task], task)
                continue
            x, targets[task], labelled = part
            size = num_samples(x)
            rows[task] = (0, offset + (torch.arange(size) if labelled is None else labelled))
            inputs.append(x)
            offset += size
        return TaskInputs((_concatenate(inputs),), rows), targets

    def _reader(self, position: int, start: int, batch_size: int, seed: int) -> Iterator[tuple[Inputs | TaskInputs, dict[str, Tensor]]]:
        """The batches of the streamed task at ``position`` in the steps from ``start`` that draw it, read ahead by its workers."""
        plan = (self._indices(position, taken, counts, seed).tolist() for taken, counts in self._steps(start, batch_size, seed) if counts[position])
        return self._datasets[self.task_names[position]].stream_indices(plan)

    def stream(self, start: int, batch_size: int, seed: int = 0) -> Iterator[tuple[TaskInputs, dict[str, Tensor]]]:
        """The batches of steps ``start``, ``start + 1``, ... (endless); each streamed task's workers read its samples ahead
        and stop when the stream is closed. Each batch is ``(TaskInputs, {task: (k_t, ...)})``: per-task groups, or one mixed group."""
        steps = self._steps(start, batch_size, seed)
        readers = {
            task: self._reader(position, start, batch_size, seed)
            for position, (task, data) in enumerate(self._datasets.items())
            if isinstance(data, StreamedData)
        }
        try:
            for taken, counts in steps:
                parts = {}
                for position, task in enumerate(self.task_names):
                    if not counts[position]:
                        parts[task] = None
                    elif task in readers:
                        parts[task] = _parts(next(readers[task]), task)
                    else:
                        parts[task] = self._read(task, self._indices(position, taken, counts, seed))
                yield self._batch(parts)
        finally:
            for reader in readers.values():
                reader.close()

    def batch(self, step: int, batch_size: int, seed: int = 0) -> tuple[TaskInputs, dict[str, Tensor]]:
        """The batch of training step ``step``: the step's item of every :meth:`stream`."""
        with contextlib.closing(self.stream(step, batch_size, seed)) as batches:
            return next(batches)

    def probe_batch(self, n: int) -> tuple[TaskInputs, dict[str, Tensor]]:
        """A fixed batch for probes: the first ``n`` samples of each task's data (all when fewer), one input group per task."""
        if n < 1:
            raise ValueError(f"a probe batch needs at least one sample per task, got n={n}")
        return _grouped({task: _parts(data.probe_batch(n), task) for task, data in self._datasets.items()})

    def batches(self, batch_size: int) -> Iterator[tuple[TaskInputs, dict[str, Tensor]]]:
        """For evaluation: each task's samples in order, ``batch_size`` at a time, task after task; each batch
        ``(TaskInputs((x,), {task: rows}), {task: targets})`` holds that one task's targets."""
        for task, data in self._datasets.items():
            for batch in data.batches(batch_size):
                x, targets, rows = _parts(batch, task)
                yield TaskInputs((x,), {task: (0, rows)}), {task: targets}


def task_datasets(sources: Mapping[str, Any], tasks: Sequence[Task], *, inputs: str | Sequence[str] | None = None,
                  targets: Mapping[str, str] | None = None, num_workers: int | None = None, **options: Any) -> TaskDatasets:
    """A :class:`TaskDatasets` from each task's own source: ``sources[task]`` a ``torch`` ``Dataset`` or ``DataLoader`` of
    items ``(x, {task: target})`` (a :class:`~workbench.data.StreamedData`), a table (a Hugging Face ``datasets.Dataset``:
    its column(s) ``inputs`` and the label column ``targets.get(task, task)``, see :func:`~workbench.data.table_data`),
    or data already made. ``tasks`` defines the tasks named; ``num_workers`` reads each source ahead (default: a
    ``DataLoader``'s own, else none); ``options`` go to :class:`TaskDatasets` (``sampling``, ``mixing``, ``attrs``).
    """
    known = {task.name: task for task in tasks}
    unknown = sorted(set(sources) - set(known))
    if unknown:
        raise ValueError(f"sources name tasks {unknown} that tasks does not define; defined: {sorted(known)}")
    made = {}
    for name, source in sources.items():
        if isinstance(source, (MultiTaskData, StreamedData)):
            made[name] = source
        elif hasattr(source, "column_names"):
            if inputs is None:
                raise ValueError(f"the source of task {name!r} is a table; name its input column(s) with inputs=")
            made[name] = table_data(source, [known[name]], inputs, {name: (targets or {}).get(name, name)}, num_workers or 0)
        else:
            made[name] = StreamedData(source, [known[name]], num_workers=num_workers)
    return TaskDatasets(made, **options)
