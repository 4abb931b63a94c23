"""Ground-truth transfer between tasks, measured by training (Standley et al. 2020).

Every task alone, every pair, and (for few tasks) every subset is trained with the same budget,
method and seeds; each network's loss and metric per member task are measured on the validation and
test splits. From them follow the pairwise transfer

    gain_{i→j} = (L_j(alone) − L_j(trained with i)) / L_j(alone)

(positive: training beside ``i`` lowers ``j``'s loss) and, with every subset measured, the loss of
any grouping of the tasks into networks (:func:`grouping_loss`).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from functools import partial
from typing import Literal

import numpy as np
import torch
import xarray as xr

from workbench.progress import progress as progress_bar
from workbench.tasks import EVALUATION_BATCH
from workbench.train.loop import Monitor, OptimizerFactory, train

__all__ = ["ALL_SUBSETS_UP_TO", "subset_label", "measure_transfer", "pairwise_gain", "grouping_loss"]

ALL_SUBSETS_UP_TO = 6
"""``subsets="auto"`` trains every subset up to this many tasks (63 networks), otherwise singles and pairs."""


def subset_label(members: Sequence[str]) -> str:
    """The label of a group of tasks: ``"a+b+c"``."""
    return "+".join(members)


def _subsets(tasks: list[str], which: str) -> list[tuple[str, ...]]:
    if which == "auto":
        which = "all" if len(tasks) <= ALL_SUBSETS_UP_TO else "pairs"
    if which not in ("pairs", "all"):
        raise ValueError(f"subsets must be 'auto', 'pairs' or 'all', not {which!r}")
    sizes = range(1, len(tasks) + 1) if which == "all" else (1, 2)
    return [combo for size in sizes for combo in itertools.combinations(tasks, size)]


def measure_transfer(
    problem,
    steps: int,
    seeds: Sequence[int] = (0,),
    *,
    subsets: Literal["auto", "pairs", "all"] = "auto",
    method: str = "ew",
    batch_size: int = 64,
    optimizer: OptimizerFactory = partial(torch.optim.Adam, lr=1e-3),
    device: torch.device | str | None = None,
    progress: bool = True,
    monitor: bool | Monitor = False,
) -> xr.Dataset:
    """Train one network per subset of ``problem``'s tasks and seed; their losses and metrics per member task.

    Returns ``loss`` and ``metric`` over ``(split, subset, seed, task)`` (NaN where the task is not in
    the subset), ``members`` ``(subset, task)`` and ``gain`` ``(split, source, target, seed)`` from the
    pairs (NaN on the diagonal). Every network of a seed starts from the same seeded
    initialisation of its parts and sees the same batches. ``monitor`` goes to every run's :func:`~workbench.train.train`.
    """
    splits = problem.splits
    tasks = splits.task_names
    if len(tasks) < 2:
        raise ValueError(f"transfer needs at least two tasks, got {tasks}")
    groups = _subsets(tasks, subsets)
    loss = np.full((2, len(groups), len(seeds), len(tasks)), np.nan)
    metric = np.full_like(loss, np.nan)
    runs = [(g, s) for s in range(len(seeds)) for g in range(len(groups))]
    for g, s in progress_bar(runs, "subsets", enabled=progress):
        members = list(groups[g])
        torch.manual_seed(seeds[s])
        model = problem.make_model([t for t in splits.tasks if t.name in members])
        run = train(
            model, splits.train.subset(members), steps, method=method, eval_data=splits.validation.subset(members),
            batch_size=batch_size, optimizer=optimizer, seed=seeds[s], eval_every=steps, device=device, progress=False, monitor=monitor,
        ).complete(f"the run of {members}, seed {seeds[s]}")
        for index, split in enumerate(("validation", "test")):
            part = getattr(splits, split).subset(members)
            scores = run.model.evaluate_batches(part.batches(EVALUATION_BATCH))
            for name in members:
                loss[index, g, s, tasks.index(name)], metric[index, g, s, tasks.index(name)] = scores[name]
    labels = [subset_label(g) for g in groups]
    ds = xr.Dataset(
        {
            "loss": (("split", "subset", "seed", "task"), loss),
            "metric": (("split", "subset", "seed", "task"), metric),
            "members": (("subset", "task"), np.array([[t in g for t in tasks] for g in groups])),
        },
        coords={"split": ["validation", "test"], "subset": labels, "seed": list(seeds), "task": tasks},
    )
    ds["gain"] = pairwise_gain(ds)
    ds.attrs.update(problem=problem.name, steps=steps, method=method, batch_size=batch_size, subsets=subsets)
    return ds


def pairwise_gain(transfer: xr.Dataset) -> xr.DataArray:
    """``gain_{i→j}`` ``(split, source, target, seed)`` from the singles and pairs of a transfer measurement."""
    tasks = list(transfer.task.values)
    rows = []
    for source in tasks:
        row = []
        for target in tasks:
            if source == target:
                row.append(xr.full_like(transfer.loss.isel(subset=0, task=0, drop=True), np.nan))
                continue
            alone = transfer.loss.sel(subset=target, task=target, drop=True)
            together = transfer.loss.sel(subset=subset_label([t for t in tasks if t in (source, target)]), task=target, drop=True)
            row.append((alone - together) / alone)
        rows.append(xr.concat(row, dim="target"))
    gain = xr.concat(rows, dim="source").assign_coords(source=tasks, target=tasks)
    return gain.transpose("split", "source", "target", "seed").rename("gain")


def grouping_loss(transfer: xr.Dataset, groups: Sequence[Sequence[str]], split: str = "test") -> xr.DataArray:
    """Each task's loss ``(seed, task)`` on ``split`` when served by one of ``groups`` (networks).

    A task in several groups is served by the network with its lowest validation loss (per seed),
    so that the choice never looks at the split being scored. Every group must have been measured
    (``subsets="all"``) and every task must be in a group.
    """
    tasks = [str(t) for t in transfer.task.values]
    labels = [subset_label([t for t in tasks if t in group]) for group in groups]
    missing = [label for label in labels if label not in transfer.subset.values]
    if missing:
        raise ValueError(f"groups {missing} were not measured; measure every subset (subsets='all') to score groupings")
    uncovered = [t for t in tasks if not any(t in group for group in groups)]
    if uncovered:
        raise ValueError(f"tasks {uncovered} are in no group")
    chosen = transfer.loss.sel(subset=labels)
    serving = chosen.sel(split="validation").fillna(np.inf).argmin("subset")
    return chosen.sel(split=split).isel(subset=serving).drop_vars("subset").rename("grouping_loss")
