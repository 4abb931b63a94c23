"""The experiments of the model-merging notebook: every registered merge of one set of fine-tuned models, scored.

:func:`load_merge_set` builds (or reuses) the checkpoints of a :class:`~workbench.studies.fine_tuned.Recipe`
and the individual fine-tuned models. Then:

- :func:`lambda_curves`: the mean normalised score over λ of every data-free merge with a λ;
- :func:`compare_merges`: every registered merge that applies to the tasks (λ of the swept ones
  chosen on the validation split), each given the data it declares, scored on the test split
  against the individual models;
- :func:`pairwise_interference`: each pair of tasks merged alone by task arithmetic, its loss of
  normalised score beside the pair's task-vector cosine and sign-conflict rate.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from torch import Tensor

from workbench.merge import MERGES, Merge, MergeData, Merged, applies_to, make_merge
from workbench.probes.task_vectors import task_vector_similarity
from workbench.probes.validation import rank_correlation
from workbench.studies.fine_tuned import FineTunedSet, Recipe, fine_tuned_checkpoints
from workbench.studies.merged_models import encoder_part, individual_model, merged_model, normalised_scores
from workbench.studies.problems import Problem, load_problem
from workbench.train.loop import Monitor

__all__ = [
    "MergeSet", "load_merge_set", "swept_merges", "lambda_curves", "swept_scores", "compare_merges", "published_ordering", "published_data_free_ordering",
    "pairwise_interference", "interference_correlations", "LAMBDAS", "DENSITIES", "KEPT_FRACTION", "density_merges", "density_curves",
]

PUBLISHED_ORDER = ("task_arithmetic", "ties", "layer_wise_adamerging", "regmean")
"""FusionBench's 8-task CLIP ordering: TA < TIES < layer-wise AdaMerging ≈ RegMean < individual (REFERENCES.md)."""
PUBLISHED_DATA_FREE_ORDER = ("task_arithmetic", "ties", ("tsv_merge", "iso_cts"))
"""The data-free ordering FusionBench reports on CLIP-ViT-B/32, eight tasks: TA < TIES < TSV-M and Iso-CTS."""

LAMBDAS = tuple(np.round(np.arange(0.1, 1.01, 0.1), 2).tolist())


@dataclass
class MergeSet:
    """A problem, its checkpoints, the base ``encoder.…`` tensors, each task's checkpoint and fine-tuned model.

    ``encoders[task]`` are the ``encoder.…`` tensors of a task's checkpoint; ``individual[task]`` its
    fine-tuned single-task model (the encoder and its head), what the merges take as task models.
    """

    problem: Problem
    files: FineTunedSet
    base: dict[str, Tensor]
    states: dict[str, dict[str, Tensor]]
    encoders: dict[str, dict[str, Tensor]]
    individual: dict[str, Any]

    @property
    def tasks(self) -> list[str]:
        return list(self.states)

    def model(self, encoder: dict[str, Tensor], tasks: list[str] | None = None):
        """The merged ``encoder`` with the heads of ``tasks`` (all by default)."""
        return merged_model(self.problem, encoder, {t: self.states[t] for t in (tasks or self.tasks)})

    def served(self, merged: Merged):
        """The model that serves every task: one merged model, or ``{task: model}`` for a merge that keeps parts per task."""
        if merged.task_weights is not None:
            return {task: self.model(merged.for_task(task), [task]) for task in self.tasks}
        return self.model(merged.weights)

    def scores(self, models: dict[str, Any], split: str = "test", tasks: list[str] | None = None) -> xr.Dataset:
        chosen = tasks or self.tasks
        problem = self.problem if tasks is None else replace(self.problem, splits=self.problem.splits.subset(chosen))
        return normalised_scores(problem, models, {t: self.individual[t] for t in chosen}, split)

    def data(self, merge: Merge) -> MergeData | None:
        """The data ``merge`` reads: none; every task's training inputs (its test inputs for a merge that adapts
        at test time); or the validation split's labelled examples."""
        need = merge.data_need
        splits = self.problem.splits
        if need == "none":
            return None
        if need == "labelled":
            return MergeData({t: splits.validation.x for t in self.tasks}, {t: splits.validation.targets[t] for t in self.tasks})
        part = splits.test if merge.entry.traits.get("test_time") else splits.train
        return MergeData({t: part.x for t in self.tasks})


def load_merge_set(recipe: Recipe, cache: str | Path | None = None, progress: bool = True, monitor: bool | Monitor = False) -> MergeSet:
    """The checkpoints of ``recipe`` (built once in ``cache``, by default the data folder's ``checkpoints/``, see
    :func:`~workbench.studies.fine_tuned.fine_tuned_checkpoints`, which ``monitor`` goes to) and their models."""
    files = fine_tuned_checkpoints(recipe, cache=cache, progress=progress, monitor=monitor)
    problem = load_problem(recipe.dataset, seed=recipe.seed, tasks=list(recipe.tasks), **recipe.options)
    states = {t: files.load(t) for t in recipe.tasks}
    individual = {t: individual_model(problem, t, s) for t, s in states.items()}
    return MergeSet(problem, files, encoder_part(files.load("base")), states, {t: encoder_part(s) for t, s in states.items()}, individual)


def swept_merges() -> list[str]:
    """The registered merges whose λ a study sweeps: every data-free merge with a ``lam`` option."""
    return [name for name, entry in MERGES.items() if entry.traits["data"] == "none" and "lam" in entry.options()]


def swept_scores(merges: MergeSet, method: str, lambdas, split: str = "validation", extend_to: float | None = None) -> xr.DataArray:
    """``normalised`` ``(model, task)`` of the swept ``method`` (one of :func:`swept_merges`) merged with each λ of
    ``lambdas`` (the ``model`` labels, increasing). With ``extend_to``, while the best mean score is at the last λ the
    grid goes on at its last spacing, up to ``extend_to``: a curve still rising at the grid's end has not shown its best."""
    if method not in swept_merges():
        raise ValueError(f"unknown swept method {method!r}; the swept methods are {swept_merges()}")
    lambdas = [float(lam) for lam in lambdas]
    if any(b <= a for a, b in zip(lambdas, lambdas[1:])):
        raise ValueError(f"the λ grid must increase, got {lambdas}")
    at_one = make_merge(method, lam=1.0)(merges.base, merges.individual).weights
    score = lambda grid: merges.scores({lam: merges.model(_at_lambda(merges.base, at_one, lam)) for lam in grid}, split).normalised  # noqa: E731
    scores = score(lambdas)
    step = lambdas[-1] - lambdas[-2] if len(lambdas) > 1 else lambdas[-1]
    while extend_to is not None and int(np.argmax(scores.mean("task").values)) == scores.sizes["model"] - 1 and lambdas[-1] + step <= extend_to + 1e-9:
        lambdas.append(round(lambdas[-1] + step, 6))
        scores = xr.concat([scores, score(lambdas[-1:])], dim="model")
    return scores


def _at_lambda(base: dict[str, Tensor], at_one: dict[str, Tensor], lam: float) -> dict[str, Tensor]:
    """θ_0 + λ (θ(1) − θ_0): a swept merge at ``lam`` from its merge at λ = 1, one merge for the whole curve (every swept
    merge is θ_0 + λ · (a merged task vector that does not depend on λ), a law of the registry's battery)."""
    return {k: (base[k] + lam * (v - base[k])).to(v.dtype) if v.is_floating_point() else v for k, v in at_one.items()}


def lambda_curves(merges: MergeSet, lambdas=LAMBDAS, split: str = "validation", extend_to: float | None = 4.0) -> xr.Dataset:
    """``normalised`` ``(method, lam, task)`` of every swept merge at every λ, and its ``mean`` over tasks.

    A method whose best λ is the grid's last is swept further (:func:`swept_scores`' ``extend_to``); the other methods
    hold NaN at those λ. ``attrs["at_edge"]`` names the methods whose best is still their last λ (at ``extend_to``):
    their best λ lies beyond what was swept."""
    methods = swept_merges()
    curves = [swept_scores(merges, method, lambdas, split, extend_to).rename(model="lam") for method in methods]
    curves = [curve.assign_coords(lam=[float(lam) for lam in curve.lam.values]) for curve in curves]
    ds = xr.concat(curves, dim="method", join="outer").assign_coords(method=methods).to_dataset(name="normalised")
    ds = ds.assign(mean=ds.normalised.mean("task", skipna=False))
    last = {method: float(curve.lam.values[-1]) for method, curve in zip(methods, curves)}
    ds.attrs["at_edge"] = [m for m in methods if _best_lambda(ds, m) == last[m]]
    return ds


KEPT_FRACTION = {"density": lambda kept: kept, "drop": lambda kept: 1 - kept, "ratio": lambda kept: kept, "select_topk": lambda kept: kept}
"""The options that set the fraction of each task vector (or of the entries) a merge keeps: ``{option: its value for a
kept fraction}`` (DARE's ``drop`` is the fraction dropped)."""
DENSITIES = (0.1, 0.2, 0.3, 0.5, 0.7, 0.9)


def density_merges() -> dict[str, str]:
    """The registered data-free merges with an option that sets the fraction they keep: ``{merge: that option}``."""
    found = {}
    for name, entry in MERGES.items():
        options = [option for option in KEPT_FRACTION if option in entry.options()]
        if entry.traits["data"] == "none" and options:
            found[name] = options[0]
    return found


def density_curves(merges: MergeSet, curves: xr.Dataset | None = None, densities=DENSITIES, split: str = "validation") -> xr.Dataset:
    """``normalised`` ``(method, density, task)`` and its ``mean`` of every :func:`density_merges` entry at each kept
    fraction (``density``), each at its best λ in ``curves`` (:func:`lambda_curves`; its default λ without). A fraction
    a merge refuses (DELLA's density ± ε must lie in (0, 1)) is NaN; ``attrs["refused"]`` lists them as ``method@density``."""
    densities = [float(d) for d in densities]
    found, refused = [], []
    for method, option in density_merges().items():
        lam = {"lam": _best_lambda(curves, method)} if curves is not None and method in curves.method.values else {}
        models = {}
        for kept in densities:
            try:
                merged = make_merge(method, **lam, **{option: KEPT_FRACTION[option](kept)})(merges.base, merges.individual)
            except ValueError:
                refused.append(f"{method}@{kept}")
                continue
            models[kept] = merges.served(merged)
        if not models:  # every fraction refused: a curve of NaN
            found.append(xr.DataArray(np.nan, coords={"density": densities, "task": merges.tasks}, dims=("density", "task")))
            continue
        scores = merges.scores(models, split).normalised.rename(model="density")
        found.append(scores.assign_coords(density=list(models)).reindex(density=densities))
    ds = xr.concat(found, dim="method").assign_coords(method=list(density_merges())).to_dataset(name="normalised")
    ds = ds.assign(mean=ds.normalised.mean("task", skipna=False))
    ds.attrs["refused"] = refused
    return ds


def _best_lambda(curves: xr.Dataset, method: str) -> float:
    mean = curves["mean"].sel({"method": method})
    return float(mean.lam[int(np.nanargmax(mean.values))])


def compare_merges(
    merges: MergeSet, curves: xr.Dataset, *, steps: int = 100, n_examples: int = 256, seed: int = 0, progress: bool = False,
) -> tuple[xr.Dataset, dict[str, Merged]]:
    """Every registered merge that applies to the tasks, scored on the test split; λ of the swept ones from ``curves``.

    Each merge reads the data its entry declares (:meth:`MergeSet.data`) and gets the study's
    ``steps`` (learned merges), ``n_examples`` (examples a data-dependent merge reads per task) and
    ``seed`` where it has such an option. The pretrained encoder is scored beside them. Returns
    :func:`~workbench.studies.merged_models.normalised_scores` over every merge (with
    ``attrs["lambdas"]``) and each merge's result (its details: λ_t, coefficients, masks).
    """
    chosen = {name: _best_lambda(curves, name) for name in curves.method.values}
    shared = {"steps": steps, "n_examples": n_examples, "seed": seed}
    models: dict[str, Any] = {"pretrained": merges.model(merges.base)}
    results: dict[str, Merged] = {}
    for name, entry in MERGES.items():
        if not applies_to(name, merges.problem.splits.tasks):
            continue
        options = {key: value for key, value in shared.items() if key in entry.options()} | ({"lam": chosen[name]} if name in chosen else {})
        merge = make_merge(name, **options)
        results[name] = merge(merges.base, merges.individual, merges.data(merge), progress=progress)
        models[name] = merges.served(results[name])
    scores = merges.scores(models, "test")
    scores.attrs.update(lambdas=[f"{k}={v}" for k, v in chosen.items()])
    return scores, results


def published_ordering(scores: xr.Dataset) -> str:
    """Whether the mean normalised scores follow TA < TIES < AdaMerging ≈ RegMean < individual, in words.

    The strict steps are TA < TIES < AdaMerging (layer) and every method below 1; AdaMerging ≈ RegMean
    is shown, not tested. Methods a set lacks (AdaMerging on regression tasks) are left out.
    """
    mean = scores.normalised.mean("task").to_series()
    present = [m for m in PUBLISHED_ORDER if m in mean.index]
    strict = [m for m in present if m != "regmean"]
    holds = all(mean[a] < mean[b] for a, b in zip(strict, strict[1:])) and all(mean[m] < 1 for m in present)
    measured = ", ".join(f"{m} {mean[m]:.3f}" for m in present)
    return f"mean normalised scores: {measured} (individual models: 1). The published ordering TA < TIES < AdaMerging ≈ RegMean < individual {'holds' if holds else 'does not hold'} here"


def published_data_free_ordering(scores: xr.Dataset) -> str:
    """Whether the mean normalised scores follow TA < TIES < TSV-M and Iso-CTS (each of the last two above TIES), in words."""
    mean = scores.normalised.mean("task").to_series()
    ta, ties, top = PUBLISHED_DATA_FREE_ORDER
    holds = mean[ta] < mean[ties] < min(mean[m] for m in top)
    measured = ", ".join(f"{m} {mean[m]:.3f}" for m in (ta, ties, *top))
    return f"mean normalised scores: {measured}. The published data-free ordering TA < TIES < TSV-M, Iso-CTS {'holds' if holds else 'does not hold'} here"


def pairwise_interference(merges: MergeSet, lam: float = 0.3, density: float = 0.2) -> xr.Dataset:
    """For each pair of tasks: the mean normalised test score of the two merged alone by task arithmetic
    (``lam``), and the pair's task-vector ``cosine`` and ``sign_conflict`` (after trimming to ``density``)."""
    similarity = task_vector_similarity(merges.encoders, merges.base, density=density, progress=False)
    arithmetic = make_merge("task_arithmetic", lam=lam)
    rows = []
    for a, b in itertools.combinations(merges.tasks, 2):
        model = merges.model(arithmetic(merges.base, {t: merges.individual[t] for t in (a, b)}).weights, [a, b])
        score = float(merges.scores({"pair": model}, "test", [a, b]).normalised.mean())
        rows.append((f"{a}–{b}", score, float(similarity.cosine.sel(task=a, other_task=b)), float(similarity.sign_conflict.sel(task=a, other_task=b))))
    labels, scores, cosines, conflicts = zip(*rows)
    return xr.Dataset(
        {"score": ("pair", list(scores)), "cosine": ("pair", list(cosines)), "sign_conflict": ("pair", list(conflicts))},
        coords={"pair": list(labels)},
        attrs={"lam": lam, "density": density},
    )


def interference_correlations(pairs: xr.Dataset) -> dict[str, float]:
    """Spearman correlation of each pair's merged ``score`` with its ``cosine`` and its ``sign_conflict``."""
    return {variable: rank_correlation(pairs[variable].values, pairs.score.values) for variable in ("cosine", "sign_conflict")}
