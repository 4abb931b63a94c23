"""The experiments of the task-saliency notebook: saliency during training, against parameter-level
conflict, and whether input attribution finds the features each task reads.

- :func:`saliency_during_training` trains a problem with equal weighting while recording
  :func:`~workbench.probes.saliency.saliency_conflict` and the parameter-level
  :func:`~workbench.probes.conflict.gradient_conflict` on the same held-out batch;
- :func:`representation_vs_parameter` pairs the two probes' pairwise cosines, step by step, with
  their rank correlation;
- :func:`attribution_validity_study` draws random sparse synthetic problems (each task reads a few
  features; a group shares them), trains each and scores the per-task input attribution against
  the planted weights (:func:`~workbench.probes.validation.attribution_recovery`).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
import torch
import xarray as xr

from workbench.probes.conflict import upper_pairs
from workbench.probes.recorder import ProbeRecorder
from workbench.probes.saliency import input_attribution
from workbench.probes.validation import attribution_recovery, rank_correlation
from workbench.progress import progress as progress_bar
from workbench.train.loop import Monitor, OptimizerFactory, TrainingResult, train

__all__ = ["saliency_during_training", "representation_vs_parameter", "random_sparse_configurations", "attribution_validity_study"]


def saliency_during_training(
    problem, steps: int, *, every: int = 10, probe_size: int = 256, method: str = "ew", seed: int = 0,
    optimizer: OptimizerFactory = partial(torch.optim.Adam, lr=1e-3), progress: bool = True,
    monitor: bool | Monitor = False,
) -> TrainingResult:
    """Train ``problem``'s tasks with ``method``, recording ``"saliency"`` and ``"conflict"`` every ``every``
    steps on the first ``probe_size`` validation samples; the run's ``probes`` hold both histories; ``monitor`` goes to :func:`~workbench.train.train`."""
    batch = problem.splits.validation.probe_batch(probe_size)
    recorders = [
        ProbeRecorder("saliency_conflict", every=every, name="saliency", batch=batch),
        ProbeRecorder("gradient_conflict", every=every, name="conflict", batch=batch, by=problem.layers),
    ]
    torch.manual_seed(seed)
    model = problem.make_model(problem.splits.tasks)
    return train(model, problem.splits.train, steps, method=method, optimizer=optimizer, seed=seed, recorders=recorders, eval_every=steps, progress=progress, monitor=monitor)


def representation_vs_parameter(saliency: xr.Dataset, conflict: xr.Dataset) -> xr.Dataset:
    """Per task pair and step, the mean per-sample saliency cosine beside the parameter-gradient cosine.

    Returns ``representation`` and ``parameter`` ``(step, pair)`` and ``spearman`` ``(step,)``, their
    rank correlation over the pairs (NaN with fewer than three pairs).
    """
    representation = upper_pairs(saliency.cosine).transpose("step", "pair")
    parameter = upper_pairs(conflict.cosine).sel(step=representation.step).transpose("step", "pair")
    rho = [rank_correlation(r, p) for r, p in zip(representation.values, parameter.values)]
    return xr.Dataset({"representation": representation, "parameter": parameter, "spearman": ("step", rho)})


def random_sparse_configurations(count: int, seed: int = 0) -> list[dict[str, Any]]:
    """``count`` random sparse synthetic problems: 3 to 6 tasks, 12 to 32 features, 2 to 6 read per task."""
    rng = np.random.default_rng(seed)
    configurations = []
    for index in range(count):
        n_tasks = int(rng.integers(3, 7))
        n_features = int(rng.integers(12, 33))
        order = rng.permutation(n_tasks).tolist()
        configurations.append(dict(
            n_tasks=n_tasks, n_features=n_features, active_features=int(rng.integers(2, 7)),
            groups=[order[: int(rng.integers(2, n_tasks + 1))]] if rng.random() < 0.6 else [],
            within=float(rng.uniform(0.5, 0.95)), noise=float(rng.choice([0.05, 0.2, 0.5])),
            complexity=float(rng.uniform(0.0, 0.5)), seed=int(seed * 1000 + index),
        ))
    return configurations


def attribution_validity_study(count: int = 20, steps: int = 200, n_samples: int = 1000, seed: int = 0, progress: bool = True, monitor: bool | Monitor = False
) -> xr.Dataset:
    """Input attribution against the planted weights over ``count`` random sparse problems.

    Returns ``spearman`` and ``support_recall`` over ``(configuration, task)`` (NaN past a
    configuration's tasks), with the configurations' options as coordinates. ``monitor`` goes to every run's
    :func:`~workbench.train.train`.
    """
    from workbench.studies.problems import load_problem

    configurations = random_sparse_configurations(count, seed)
    width = max(c["n_tasks"] for c in configurations)
    scores = {name: np.full((count, width), np.nan) for name in ("spearman", "support_recall")}
    for c in progress_bar(range(count), "configurations", enabled=progress):
        options = dict(configurations[c])
        config_seed = options.pop("seed")
        problem = load_problem("synthetic", seed=config_seed, n_samples=n_samples, hidden=(32, 32), **options)
        torch.manual_seed(config_seed)
        run = train(problem.make_model(problem.splits.tasks), problem.splits.train, steps, optimizer=partial(torch.optim.Adam, lr=3e-3), seed=config_seed, eval_every=steps, progress=False, monitor=monitor).complete(f"configuration seed {config_seed}")
        held_out = problem.splits.validation
        recovery = attribution_recovery(input_attribution(run.model, held_out.probe_batch(len(held_out))).attribution, problem.truth["weights"])
        for name in scores:
            scores[name][c, : options["n_tasks"]] = recovery[name].values
    coords = {key: ("configuration", [str(c[key]) if isinstance(c[key], list) else c[key] for c in configurations]) for key in configurations[0] if key != "seed"}
    return xr.Dataset({name: (("configuration", "task"), values) for name, values in scores.items()}, coords={"configuration": np.arange(count), **coords})
