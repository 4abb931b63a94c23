"""Which affinity probe can be trusted? Each probe against the truth, over many random synthetic problems.

For every random generator configuration (number of tasks, groups, an anti-correlated pair, an
outlier, correlation strengths, noise, nonlinearity) and every optimizer, one multi-task run
records every probe, and the pairwise transfer is measured by training every task alone and every
pair. Each probe is then scored by its Spearman correlation with two truths:

- the **realised similarity** of the drawn tasks (``|cos|`` of their weight vectors, over the pairs
  ``i < j``; a directed probe is symmetrised first);
- the **measured transfer** ``gain_{i→j}`` (over the directed pairs; a symmetric probe counts for
  both directions).

The probes: the gradient cosine of the conflict probe on a held-out batch, averaged over the first
fifth of training (early) and over its second half (late), and on the first and the last shared
weight alone; TAG's lookahead affinity and the gradient-cosine affinity on the training batch,
averaged over training.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
import torch
import xarray as xr

from workbench.probes.affinity import cosine_affinity, tag_affinity
from workbench.probes.conflict import gradient_conflict
from workbench.probes.recorder import ProbeRecorder
from workbench.probes.validation import rank_correlation
from workbench.progress import progress as progress_bar
from workbench.train.loop import train
from workbench.train.transfer import measure_transfer

__all__ = ["OPTIMIZERS", "PROBES", "TRUTHS", "random_configurations", "validity_study"]

OPTIMIZERS = {"sgd": partial(torch.optim.SGD, lr=0.02, momentum=0.9), "adam": partial(torch.optim.Adam, lr=1e-3)}
PROBES = ("conflict cosine, early", "conflict cosine, late", "conflict cosine, first layer", "conflict cosine, last layer", "TAG affinity", "gradient-cosine affinity")
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


def _probe_matrices(problem, optimizer, steps: int, every: int, batch_size: int, seed: int) -> dict[str, np.ndarray]:
    """One multi-task run with every probe recorded; each probe's ``(task, task)`` matrix (rows: source)."""
    splits = problem.splits
    held_out = splits.validation.head(256)
    recorders = [
        ProbeRecorder(gradient_conflict, every=every, name="conflict", batch=(held_out.x, held_out.targets)),
        ProbeRecorder(tag_affinity, every=every, name="tag"),
        ProbeRecorder(cosine_affinity, every=every, name="cosine"),
    ]
    torch.manual_seed(seed)
    run = train(problem.make_model(splits.tasks), splits.train, steps, method="ew", optimizer=optimizer, batch_size=batch_size, seed=seed, recorders=recorders, eval_every=steps, progress=False)
    conflict = run.probes["conflict"]
    recorded = conflict.step.values
    early = conflict.cosine.sel(step=recorded[: max(1, len(recorded) // 5)]).mean("step")
    late = conflict.cosine.sel(step=recorded[len(recorded) // 2 :]).mean("step")
    weights = [layer for layer in conflict.layer.values if str(layer).endswith("weight")]
    return {
        "conflict cosine, early": early.values,
        "conflict cosine, late": late.values,
        "conflict cosine, first layer": conflict.layer_cosine.sel(layer=weights[0]).mean("step").values,
        "conflict cosine, last layer": conflict.layer_cosine.sel(layer=weights[-1]).mean("step").values,
        "TAG affinity": run.probes["tag"].affinity.mean("step").values,
        "gradient-cosine affinity": run.probes["cosine"].affinity.mean("step").values,
    }


def validity_study(
    count: int = 20, steps: int = 150, every: int = 10, batch_size: int = 64, n_samples: int = 1000, seed: int = 0, progress: bool = True
) -> xr.Dataset:
    """Score every probe against both truths over ``count`` random configurations and both optimizers.

    Returns ``spearman`` ``(configuration, optimizer, probe, truth)`` with the configurations'
    options as coordinates (``n_tasks``, ``within``, ``noise``, ...).
    """
    from workbench.problems import load_problem

    configurations = random_configurations(count, seed)
    scores = np.full((count, len(OPTIMIZERS), len(PROBES), len(TRUTHS)), np.nan)
    runs = [(c, o) for c in range(count) for o in range(len(OPTIMIZERS))]
    for c, o in progress_bar(runs, "configurations", enabled=progress):
        options = dict(configurations[c])
        config_seed = options.pop("seed")
        problem = load_problem("synthetic", seed=config_seed, n_samples=n_samples, hidden=(32, 32), validation_fraction=0.3, **options)
        optimizer = list(OPTIMIZERS.values())[o]
        matrices = _probe_matrices(problem, optimizer, steps, every, batch_size, config_seed)
        realised = np.abs(problem.splits.reference.values)
        transfer = measure_transfer(problem, steps, [config_seed], subsets="pairs", optimizer=optimizer, batch_size=batch_size, progress=False)
        gain = transfer.gain.sel(split="validation").isel(seed=0).values
        for p, name in enumerate(PROBES):
            matrix = matrices[name]
            scores[c, o, p, 0] = rank_correlation(_upper((matrix + matrix.T) / 2), _upper(realised))
            scores[c, o, p, 1] = rank_correlation(_directed(matrix), _directed(gain))
    keys = ["n_tasks", "within", "anti", "noise", "complexity"]
    coords = {key: ("configuration", [cfg[key] for cfg in configurations]) for key in keys}
    coords.update(
        has_anti_pair=("configuration", [bool(cfg["anti_pairs"]) for cfg in configurations]),
        has_outlier=("configuration", [bool(cfg["outliers"]) for cfg in configurations]),
    )
    ds = xr.Dataset(
        {"spearman": (("configuration", "optimizer", "probe", "truth"), scores)},
        coords={"configuration": np.arange(count), "optimizer": list(OPTIMIZERS), "probe": list(PROBES), "truth": list(TRUTHS), **coords},
    )
    ds.attrs.update(steps=steps, every=every, batch_size=batch_size, n_samples=n_samples, seed=seed, optimizers={k: repr(v) for k, v in OPTIMIZERS.items()})
    return ds
