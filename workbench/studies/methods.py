"""Training methods compared on one problem over seeds: per-task metrics, Δm% against single-task
baselines trained with the same budget, seconds per step, and how often the tasks' gradients conflict.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
import xarray as xr

from workbench.probes.recorder import ProbeRecorder
from workbench.probes.registry import applies_to
from workbench.progress import progress as progress_bar
from workbench.tasks import EVALUATION_BATCH
from workbench.train.loop import Monitor, OptimizerFactory, train
from workbench.train.metrics import delta_m
from workbench.train.registry import make_method

__all__ = ["compare_methods", "method_summary"]

SPLITS = ("validation", "test")


def _specs(methods: Sequence[str] | Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{label: {"name": registered name, **options}}`` from names or labelled specs."""
    if isinstance(methods, Mapping):
        return {label: {"name": label, **dict(spec)} for label, spec in methods.items()}
    return {name: {"name": name} for name in methods}


def _final_metrics(model, splits) -> np.ndarray:
    """``(split, task)`` metrics of ``model`` on the validation and test splits."""
    rows = []
    for split in SPLITS:
        part = getattr(splits, split).subset(model.task_names)
        scores = model.evaluate_batches(part.batches(EVALUATION_BATCH))
        rows.append([scores[t][1] for t in model.task_names])
    return np.array(rows)


def compare_methods(
    problem,
    methods: Sequence[str] | Mapping[str, Mapping[str, Any]],
    seeds: Sequence[int] = (0,),
    steps: int = 300,
    *,
    architecture: str = "hps",
    batch_size: int = 64,
    optimizer: OptimizerFactory = partial(torch.optim.Adam, lr=1e-3),
    conflict_every: int = 0,
    eval_every: int | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    monitor: bool | Monitor = False,
    single_task: xr.DataArray | None = None,
) -> xr.Dataset:
    """Train every method (and one single-task model per task) for ``steps`` steps under each seed.

    ``problem`` is a :class:`~workbench.studies.problems.Problem`; ``methods`` a list of registered names or
    ``{label: {"name": ..., **options}}``. Each seed draws the same initialisation for every method
    and the same batches. With ``conflict_every > 0`` a gradient-conflict probe samples the training
    batch every that many steps (gradient methods lend it their Jacobian).

    Returns a Dataset with ``metric`` ``(method, seed, split, task)`` and ``single_task``
    ``(seed, split, task)`` on the validation and test splits, ``delta_m`` ``(method, seed, split)``
    (Δm% in percent: negative is better than single-task training), ``seconds_per_step``
    ``(method, seed)`` (median over the run), ``curve`` ``(method, seed, eval_step, task)`` (the
    validation metric during training), ``weights`` ``(method, seed, step, task)`` and, with the
    probe, ``conflict`` ``(method, seed, task, other_task)``: the fraction of recorded steps in which
    a pair's gradients on the shared encoder had a negative cosine. ``monitor`` goes to every run's
    :func:`~workbench.train.train`. ``single_task``: the baselines' metrics ``(seed, split, task)`` to
    compare against instead of training them (another comparison's ``single_task``, covering ``seeds``).
    """
    specs = _specs(methods)
    splits = problem.splits
    tasks = splits.tasks
    names = [t.name for t in tasks]
    options = dict(batch_size=batch_size, optimizer=optimizer, eval_every=eval_every, device=device, progress=False, monitor=monitor)
    results: dict[str, list] = {key: [] for key in ("metric", "single", "seconds", "curve", "weights", "conflict")}
    if single_task is not None:
        missing = sorted(set(seeds) - set(single_task.seed.values.tolist()))
        if missing or set(single_task.task.values) != set(names):
            raise ValueError(f"single_task must hold the baselines of seeds {list(seeds)} and tasks {names}; it lacks seeds {missing} "
                             f"or has tasks {single_task.task.values.tolist()}")
        results["single"] = [single_task.sel(seed=seed, split=list(SPLITS), task=names).values for seed in seeds]
    runs = [(seed, label) for seed in seeds for label in ([] if single_task is not None else [None]) + list(specs)]
    for seed, label in progress_bar(runs, "methods", enabled=progress):
        if label is None:  # the single-task baselines of this seed
            single = []
            for task in tasks:
                torch.manual_seed(seed)
                model = problem.make_model([task], architecture=architecture)
                run = train(model, splits.train.subset([task.name]), steps, eval_data=splits.validation.subset([task.name]), seed=seed, **options).complete(f"the {task.name} baseline of seed {seed}")
                single.append(_final_metrics(run.model, splits)[:, 0])
            results["single"].append(np.stack(single, axis=1))
            continue
        spec = dict(specs[label])
        method = make_method(spec.pop("name"), len(tasks), **spec)
        torch.manual_seed(seed)
        model = problem.make_model(tasks, architecture=architecture)
        # a model that shares no parameter (one adapter per task) has no shared gradients to compare: its conflict is NaN
        recording = conflict_every and applies_to("gradient_conflict", model)
        recorders = [ProbeRecorder("gradient_conflict", every=conflict_every, by=problem.layers)] if recording else []
        run = train(model, splits.train, steps, method=method, eval_data=splits.validation, seed=seed, recorders=recorders, **options).complete(f"{label}, seed {seed}")
        results["metric"].append(_final_metrics(run.model, splits))
        results["seconds"].append(float(np.median(run.history.step_seconds.values)))
        results["curve"].append(run.history.metric)
        results["weights"].append(run.history.weights.values)
        if recorders:
            cosine = run.probes["gradient_conflict"].cosine
            results["conflict"].append((cosine < 0).where(cosine.notnull()).mean("step").values)
        elif conflict_every:
            results["conflict"].append(np.full((len(names), len(names)), np.nan))
    labels, n_seeds = list(specs), len(seeds)

    def by_method_and_seed(values: list) -> np.ndarray:
        array = np.array(values)
        return array.reshape(n_seeds, len(labels), *array.shape[1:]).swapaxes(0, 1)

    curves = xr.concat(results["curve"], dim="run")
    ds = xr.Dataset(
        {
            "metric": (("method", "seed", "split", "task"), by_method_and_seed(results["metric"])),
            "single_task": (("seed", "split", "task"), np.array(results["single"])),
            "seconds_per_step": (("method", "seed"), by_method_and_seed(results["seconds"])),
            "curve": (("method", "seed", "eval_step", "task"), by_method_and_seed(list(curves.values))),
            "weights": (("method", "seed", "step", "task"), by_method_and_seed(results["weights"])),
        },
        coords={
            "method": labels, "seed": list(seeds), "split": list(SPLITS), "task": names, "eval_step": curves.eval_step.values,
            "step": np.arange(steps), "higher_is_better": ("task", [t.higher_is_better for t in tasks]),
            "metric_name": ("task", [t.metric_name for t in tasks]),
        },
    )
    if results["conflict"]:
        ds["conflict"] = (("method", "seed", "task", "other_task"), by_method_and_seed(results["conflict"]))
        ds = ds.assign_coords(other_task=names)
    ds["delta_m"] = delta_m(ds.metric, ds.single_task, ds.higher_is_better)
    ds.attrs.update(
        problem=problem.name, architecture=architecture, steps=steps, batch_size=batch_size,
        methods={label: specs[label] for label in labels}, data=dict(splits.attrs),
    )
    return ds


def method_summary(comparison: xr.Dataset, split: str = "test", unit: str | None = None):
    """A table (pandas DataFrame), best Δm% first: Δm% mean and standard deviation over seeds, each
    task's mean metric, and seconds per step (also relative to the method ``unit``, when given)."""
    import pandas as pd

    chosen = comparison.sel(split=split)
    table = pd.DataFrame({
        "delta_m_mean": chosen.delta_m.mean("seed").to_pandas(),
        "delta_m_std": chosen.delta_m.std("seed", ddof=1 if comparison.sizes["seed"] > 1 else 0).to_pandas(),
    })
    for task in comparison.task.values:
        table[f"{task} ({str(comparison.metric_name.sel(task=task).values)})"] = chosen.metric.sel(task=task).mean("seed").to_pandas()
    seconds = comparison.seconds_per_step.mean("seed").to_pandas()
    table["ms_per_step"] = seconds * 1e3
    if unit is not None:
        table[f"steps_of_{unit}"] = seconds / seconds[unit]
    return table.sort_values("delta_m_mean")
