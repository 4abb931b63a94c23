"""Which tasks should share a network, on one problem: affinities, measured transfer, groups and the payoff.

:func:`study_task_grouping` runs the whole experiment of the task-affinity notebook for one problem:

1. one multi-task run records every registered affinity probe (TAG's lookahead, the gradient-cosine
   affinity, ...) every few steps, each on the batch its entry names;
2. every subset of the tasks (every pair, for many tasks) is trained under each seed with the same
   budget: the measured transfer ``gain_{i→j}``;
3. each affinity, averaged over training, gets a report card against the measured gain;
4. groups are chosen for ``k = 1 … K`` networks from each affinity (TAG's objective) and from the
   measured validation losses (Standley's);
5. the payoff: the test loss of each choice against all tasks in one network, one network per task
   and random groupings with the same number of networks, from the measured subsets (every subset
   must have been measured), as the mean over tasks of the loss relative to training the task alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import xarray as xr

from workbench.probes.grouping import affinity_scores, grouping_table, measured_scores, select_groups
from workbench.probes.recorder import recorders_for
from workbench.probes.registry import PROBES, task_matrix
from workbench.probes.validation import report_card, with_seed_summary
from workbench.studies.transfer import grouping_loss, measure_transfer, subset_label
from workbench.train.loop import Monitor, OptimizerFactory, train

__all__ = ["GroupingStudy", "study_task_grouping", "random_groupings"]


@dataclass
class GroupingStudy:
    """Everything :func:`study_task_grouping` measured (each a labelled result or a table)."""

    affinities: dict[str, xr.Dataset]
    transfer: xr.Dataset
    report_cards: dict[str, xr.Dataset]
    groupings: dict[str, object]
    payoff: xr.Dataset | None

    def report_table(self):
        """One row per affinity: Spearman, Pearson and top-k agreement with the measured gain, mean ± std over seeds."""
        import pandas as pd

        return pd.DataFrame({
            name: {f"{key} ({stat})": float(card[f"{key}_{stat}"]) for key in ("spearman", "pearson", "top_k") for stat in ("mean", "std")}
            for name, card in self.report_cards.items()
        }).T


def random_groupings(tasks: list[str], k: int, count: int, seed: int = 0) -> list[list[tuple[str, ...]]]:
    """``count`` random partitions of ``tasks`` into ``k`` non-empty groups (fewer when there are fewer tasks)."""
    rng = np.random.default_rng(seed)
    k = min(k, len(tasks))
    groupings = []
    while len(groupings) < count:
        labels = rng.integers(0, k, len(tasks))
        if len(set(labels.tolist())) == k:
            groupings.append([tuple(t for t, label in zip(tasks, labels) if label == g) for g in range(k)])
    return groupings


def _relative_loss(transfer: xr.Dataset, groups) -> xr.DataArray:
    """The mean over tasks of the test loss served by ``groups``, relative to each task alone: ``(seed,)``."""
    alone = xr.concat([transfer.loss.sel(split="test", subset=t, task=t, drop=True) for t in transfer.task.values], dim="task")
    return (grouping_loss(transfer, groups) / alone.assign_coords(task=transfer.task.values)).mean("task")


def study_task_grouping(
    problem,
    steps: int,
    seeds: list[int],
    *,
    optimizer: OptimizerFactory = partial(torch.optim.Adam, lr=1e-3),
    probe_every: int = 10,
    batch_size: int = 64,
    max_groups: int = 3,
    random_count: int = 50,
    held_out: int = 256,
    progress: bool = True,
    monitor: bool | Monitor = False,
) -> GroupingStudy:
    """The grouping experiment on ``problem`` (see the module docstring); the multi-task run uses the first seed.

    ``held_out`` samples of the validation split make the fixed batch of the probes recorded on one. ``monitor`` goes to every run's
    :func:`~workbench.train.train`.
    """
    splits = problem.splits
    recorders = recorders_for(PROBES.names(family="affinity"), probe_every, splits.validation.probe_batch(held_out))
    torch.manual_seed(seeds[0])
    run = train(problem.make_model(splits.tasks), splits.train, steps, method="ew", optimizer=optimizer, batch_size=batch_size, seed=seeds[0], recorders=recorders, eval_every=steps, progress=progress, monitor=monitor)
    transfer = measure_transfer(problem, steps, seeds, optimizer=optimizer, batch_size=batch_size, progress=progress, monitor=monitor)
    gain = transfer.gain.sel(split="validation")
    means = {name: task_matrix(history) for name, history in run.probes.items()}
    cards = {name: report_card(affinity, gain) for name, affinity in means.items()}
    cards["measured gain, other seeds"] = _seed_agreement(gain) if len(seeds) > 1 else None
    cards = {k: v for k, v in cards.items() if v is not None}
    scorings = {name: affinity_scores(affinity) for name, affinity in means.items()}
    complete = len(transfer.subset) == 2 ** len(splits.task_names) - 1
    if complete:
        scorings["measured losses (Standley)"] = measured_scores(transfer)
    groupings = {name: grouping_table(candidates, max_groups) for name, candidates in scorings.items()}
    payoff = _payoff(transfer, scorings, max_groups, random_count, seeds[0]) if complete else None
    return GroupingStudy(run.probes, transfer, cards, groupings, payoff)


def _seed_agreement(gain: xr.DataArray) -> xr.Dataset:
    """Each seed's measured gain predicted by the mean gain of the other seeds: how far any affinity could get."""
    cards = [report_card(gain.drop_sel(seed=seed).mean("seed"), gain.sel(seed=[seed]))[["spearman", "pearson", "top_k"]] for seed in gain.seed.values]
    return with_seed_summary(xr.concat(cards, dim="seed"))


def _payoff(transfer: xr.Dataset, scorings: dict, max_groups: int, random_count: int, seed: int) -> xr.Dataset:
    """``relative_loss`` ``(grouping, seed)`` of each choice, all-in-one and one-per-task; ``random_loss`` ``(k, draw, seed)``."""
    tasks = [str(t) for t in transfer.task.values]
    choices = {"all in one": [tuple(tasks)], "one per task": [(t,) for t in tasks]}
    for name, candidates in scorings.items():
        for k in range(2, max_groups + 1):
            groups, _ = select_groups(candidates, k)
            choices[f"{name}, k={k}"] = groups
    losses = xr.concat([_relative_loss(transfer, groups) for groups in choices.values()], dim="grouping").assign_coords(grouping=list(choices))
    randoms = xr.concat(
        [xr.concat([_relative_loss(transfer, g) for g in random_groupings(tasks, k, random_count, seed)], dim="draw") for k in range(2, max_groups + 1)],
        dim="k",
    ).assign_coords(k=list(range(2, max_groups + 1)))
    labels = {name: " | ".join(subset_label(g) for g in groups) for name, groups in choices.items()}
    return xr.Dataset({"relative_loss": losses, "random_loss": randoms}).assign_coords(groups=("grouping", [labels[g] for g in choices]))
