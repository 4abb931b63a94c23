"""Which affinity probe can be trusted? Each probe against the truth, over many random synthetic problems.

For every random generator configuration (number of tasks, groups, an anti-correlated pair, an
outlier, correlation strengths, noise, nonlinearity) and every optimizer, one multi-task run
records every probe, and the pairwise transfer is measured by training every task alone and every
pair. Each probe is then scored by its Spearman correlation with two truths:

- the **realised similarity** of the drawn tasks (``|cos|`` of their weight vectors, over the pairs
  ``i < j``; a directed probe is symmetrised first);
- the **measured transfer** ``gain_{i→j}`` (over the directed pairs; a symmetric probe counts for
  both directions).

The probes are every registered probe with a task × task reading that applies to the study's hard-sharing
models (:data:`~workbench.probes.PROBES`; the gates' probe does not),
each recorded on the batch its entry names (TAG's lookahead and the gradient-cosine affinity on the
training batch, the others on a fixed held-out batch). Each gives its readings
(:func:`probe_readings`): averaged over all of training, over its first fifth (early) and over its
second half (late), and, for a probe with a per-layer reading, on the first and the last shared
weight alone.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
import torch
import xarray as xr

from workbench.probes.recorder import recorders_for
from workbench.probes.registry import PROBES, pairwise_probes, task_matrix
from workbench.probes.validation import rank_correlation
from workbench.progress import progress as progress_bar
from workbench.studies.transfer import measure_transfer
from workbench.train.loop import Monitor, train

__all__ = ["OPTIMIZERS", "TRUTHS", "probe_readings", "random_configurations", "validity_study"]

OPTIMIZERS = {"sgd": partial(torch.optim.SGD, lr=0.02, momentum=0.9), "adam": partial(torch.optim.Adam, lr=1e-3)}
TRUTHS = ("realised similarity", "measured transfer")


def random_configurations(count: int, seed: int = 0) -> list[dict[str, Any]]:
    """``count`` random options for :func:`~workbench.data.make_synthetic` (3 to 5 tasks), seeded."""
    rng = np.random.default_rng(seed)
    configurations = []
    for index in range(count):
        n_tasks = int(rng.integers(3, 6))
        order = rng.permutation(n_tasks).tolist()
        cut = int(rng.integers(2, n_tasks + 1))
        groups = [order[:cut]] if rng.random() < 0.7 else [order[:2]]
        rest = [t for t in order if not any(t in g for g in groups)]
        anti_pairs = [(groups[0][0], rest[0])] if rest and rng.random() < 0.5 else []
        outliers = [rest[-1]] if len(rest) > 1 and rng.random() < 0.4 else []
        configurations.append(dict(
            n_tasks=n_tasks, groups=groups, anti_pairs=anti_pairs, outliers=outliers,
            within=float(rng.uniform(0.4, 0.95)), anti=float(rng.uniform(-0.9, -0.3)),
            noise=float(rng.choice([0.05, 0.2, 0.5])), complexity=float(rng.uniform(0.0, 0.5)),
            seed=int(seed * 1000 + index),
        ))
    return configurations


def _upper(matrix: np.ndarray) -> np.ndarray:
    return matrix[np.triu_indices(len(matrix), 1)]


def _directed(matrix: np.ndarray) -> np.ndarray:
    return matrix[~np.eye(len(matrix), dtype=bool)]


def probe_readings(history: xr.Dataset) -> dict[str, np.ndarray]:
    """The readings of one recorded probe as ``(source, target)`` matrices, labelled ``"probe"``, ``"probe, early"``, ...

    Averaged over every recorded step, over the first fifth of them (early) and over their second
    half (late); a probe with a per-layer reading also on the first and the last shared weight.
    """
    name = history.attrs["probe"]
    steps = history.step.values
    readings = {
        name: task_matrix(history),
        f"{name}, early": task_matrix(history, stop=int(steps[max(1, len(steps) // 5) - 1]) + 1),
        f"{name}, late": task_matrix(history, start=int(steps[len(steps) // 2])),
    }
    if PROBES.entry(name).traits.get("layered"):
        weights = [layer for layer in history.layer.values if str(layer).endswith("weight")]
        readings[f"{name}, first layer"] = task_matrix(history, layer=weights[0])
        readings[f"{name}, last layer"] = task_matrix(history, layer=weights[-1])
    return {label: matrix.values for label, matrix in readings.items()}


def _probe_matrices(problem, optimizer, steps: int, every: int, batch_size: int, seed: int, monitor: bool | Monitor = False) -> dict[str, np.ndarray]:
    """One multi-task run with every pairwise probe recorded; every reading's ``(task, task)`` matrix (rows: source)."""
    splits = problem.splits
    torch.manual_seed(seed)
    model = problem.make_model(splits.tasks)
    recorders = recorders_for(pairwise_probes(model), every, splits.validation.probe_batch(256))
    run = train(model, splits.train, steps, method="ew", optimizer=optimizer, batch_size=batch_size, seed=seed, recorders=recorders, eval_every=steps, progress=False, monitor=monitor).complete(f"configuration seed {seed}")
    return {label: matrix for history in run.probes.values() for label, matrix in probe_readings(history).items()}


def validity_study(
    count: int = 20, steps: int = 150, every: int = 10, batch_size: int = 64, n_samples: int = 1000, seed: int = 0, progress: bool = True,
    monitor: bool | Monitor = False,
) -> xr.Dataset:
    """Score every probe against both truths over ``count`` random configurations and both optimizers.

    Returns ``spearman`` ``(configuration, optimizer, probe, truth)``, ``probe`` labelling every
    reading of every pairwise probe (:func:`probe_readings`), with the configurations' options as
    coordinates (``n_tasks``, ``within``, ``noise``, ...). ``monitor`` goes to every run's :func:`~workbench.train.train`.
    """
    from workbench.studies.problems import load_problem

    configurations = random_configurations(count, seed)
    scores: dict[str, np.ndarray] = {}
    runs = [(c, o) for c in range(count) for o in range(len(OPTIMIZERS))]
    for c, o in progress_bar(runs, "configurations", enabled=progress):
        options = dict(configurations[c])
        config_seed = options.pop("seed")
        problem = load_problem("synthetic", seed=config_seed, n_samples=n_samples, hidden=(32, 32), validation_fraction=0.3, **options)
        optimizer = list(OPTIMIZERS.values())[o]
        matrices = _probe_matrices(problem, optimizer, steps, every, batch_size, config_seed, monitor)
        realised = np.abs(problem.splits.reference.values)
        transfer = measure_transfer(problem, steps, [config_seed], subsets="pairs", optimizer=optimizer, batch_size=batch_size, progress=False, monitor=monitor)
        gain = transfer.gain.sel(split="validation").isel(seed=0).values
        for label, matrix in matrices.items():
            cell = scores.setdefault(label, np.full((count, len(OPTIMIZERS), len(TRUTHS)), np.nan))
            cell[c, o, 0] = rank_correlation(_upper((matrix + matrix.T) / 2), _upper(realised))
            cell[c, o, 1] = rank_correlation(_directed(matrix), _directed(gain))
    keys = ["n_tasks", "within", "anti", "noise", "complexity"]
    coords = {key: ("configuration", [cfg[key] for cfg in configurations]) for key in keys}
    coords.update(
        has_anti_pair=("configuration", [bool(cfg["anti_pairs"]) for cfg in configurations]),
        has_outlier=("configuration", [bool(cfg["outliers"]) for cfg in configurations]),
    )
    ds = xr.Dataset(
        {"spearman": (("configuration", "optimizer", "probe", "truth"), np.stack(list(scores.values()), axis=2))},
        coords={"configuration": np.arange(count), "optimizer": list(OPTIMIZERS), "probe": list(scores), "truth": list(TRUTHS), **coords},
    )
    ds.attrs.update(steps=steps, every=every, batch_size=batch_size, n_samples=n_samples, seed=seed, optimizers={k: repr(v) for k, v in OPTIMIZERS.items()})
    return ds
