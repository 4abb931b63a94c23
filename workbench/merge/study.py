"""The experiments of the model-merging notebook: every merge of one set of fine-tuned checkpoints, scored.

:func:`load_merge_set` builds (or reuses) the checkpoints of a :class:`~workbench.merge.fine_tuned.Recipe`
and the individual fine-tuned models. Then:

- :func:`lambda_curves`: the mean normalised score of task arithmetic, TIES and DARE over λ;
- :func:`compare_merges`: every method (λ of the task-vector methods chosen on the validation split),
  scored on the test split against the individual models;
- :func:`pairwise_interference`: each pair of tasks merged alone by task arithmetic, its loss of
  normalised score beside the pair's task-vector cosine and sign-conflict rate.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr
from torch import Tensor

from workbench.merge.arithmetic import merge, preset
from workbench.merge.data_dependent import adamerging, fisher_information, fisher_merge, regmean_grams, regmean_merge
from workbench.merge.fine_tuned import CheckpointSet, Recipe, fine_tuned_checkpoints
from workbench.merge.models import encoder_part, individual_model, merged_model, normalised_scores
from workbench.merge.tall import choose_tall_lambdas, consensus_merge, retrieve
from workbench.probes.task_vectors import task_vector_similarity
from workbench.probes.validation import rank_correlation

__all__ = [
    "MergeSet", "load_merge_set", "lambda_curves", "swept_scores", "choose_masks", "compare_merges", "published_ordering", "pairwise_interference",
    "interference_correlations", "LAMBDAS", "SWEPT",
]

PUBLISHED_ORDER = ("task arithmetic", "TIES", "AdaMerging (layer)", "RegMean")
"""FusionBench's 8-task CLIP ordering: TA < TIES < layer-wise AdaMerging ≈ RegMean < individual (REFERENCES.md)."""

LAMBDAS = tuple(np.round(np.arange(0.1, 1.01, 0.1), 2).tolist())
SWEPT = {"task arithmetic": "task_arithmetic", "TIES": "ties", "DARE": "dare"}


@dataclass
class MergeSet:
    """A problem, its checkpoints, the base and fine-tuned ``encoder.…`` tensors and the individual models."""

    problem: Any
    files: CheckpointSet
    base: dict[str, Tensor]
    states: dict[str, dict[str, Tensor]]
    encoders: dict[str, dict[str, Tensor]]
    individual: dict[str, Any]

    def model(self, encoder: dict[str, Tensor], tasks: list[str] | None = None):
        """The merged ``encoder`` with the heads of ``tasks`` (all by default)."""
        return merged_model(self.problem, encoder, {t: self.states[t] for t in (tasks or list(self.states))})

    def scores(self, models: dict[str, Any], split: str = "test", tasks: list[str] | None = None) -> xr.Dataset:
        chosen = tasks or list(self.states)
        problem = self.problem if tasks is None else _restricted(self.problem, chosen)
        return normalised_scores(problem, models, {t: self.individual[t] for t in chosen}, split)


def _restricted(problem, tasks: list[str]):
    """``problem`` with only ``tasks`` in its splits (for scoring a pair)."""
    from dataclasses import replace

    return replace(problem, splits=problem.splits.subset(tasks))


def load_merge_set(recipe: Recipe, cache: str = "data/checkpoints", progress: bool = True) -> MergeSet:
    """The checkpoints of ``recipe`` (built once, see :func:`~workbench.merge.fine_tuned.fine_tuned_checkpoints`) and their models."""
    from workbench.problems import load_problem

    files = fine_tuned_checkpoints(recipe, cache=cache, progress=progress)
    problem = load_problem(recipe.dataset, seed=recipe.seed, tasks=list(recipe.tasks), **recipe.options)
    states = {t: files.load(t) for t in recipe.tasks}
    individual = {t: individual_model(problem, t, s) for t, s in states.items()}
    return MergeSet(problem, files, encoder_part(files.load("base")), states, {t: encoder_part(s) for t, s in states.items()}, individual)


def lambda_curves(merges: MergeSet, lambdas=LAMBDAS, split: str = "validation") -> xr.Dataset:
    """``normalised`` ``(method, lam, task)`` of task arithmetic, TIES and DARE at every λ, and its ``mean`` over tasks."""
    curves = [swept_scores(merges, method, lambdas, split).rename(model="lam") for method in SWEPT]
    ds = xr.concat(curves, dim="method").assign_coords(method=list(SWEPT)).to_dataset(name="normalised")
    return ds.assign(mean=ds.normalised.mean("task")).assign_coords(lam=list(lambdas))


def swept_scores(merges: MergeSet, method: str, lambdas, split: str = "validation") -> xr.DataArray:
    """``normalised`` ``(model, task)`` of the swept ``method`` (a key of :data:`SWEPT`) merged with each λ of ``lambdas`` (the ``model`` labels)."""
    if method not in SWEPT:
        raise ValueError(f"unknown swept method {method!r}; the swept methods are {list(SWEPT)}")
    models = {lam: merges.model(merge(merges.encoders, merges.base, preset(SWEPT[method], lam=lam), progress=False)) for lam in lambdas}
    return merges.scores(models, split).normalised


def _best_lambda(curves: xr.Dataset, method: str) -> float:
    mean = curves["mean"].sel({"method": method})
    return float(mean.lam[int(np.argmax(mean.values))])


def _summed(merges: MergeSet) -> dict[str, Tensor]:
    """Task arithmetic with λ = 1: the merged model TALL masks are taken against."""
    return merge(merges.encoders, merges.base, preset("task_arithmetic", lam=1.0), progress=False)


def choose_masks(merges: MergeSet):
    """TALL masks on task arithmetic with λ = 1, each task's λ_t chosen on the validation split; ``(masks, scores)``."""
    return choose_tall_lambdas(merges.encoders, merges.base, _summed(merges), lambda task, state: _validation_score(merges, task, state))


def compare_merges(
    merges: MergeSet, curves: xr.Dataset, masks=None, *, adamerging_steps: int = 100, data_examples: int = 256, seed: int = 0, progress: bool = False,
) -> xr.Dataset:
    """Every merge of the set scored on the test split; λ of the swept methods from ``curves`` (validation).

    Methods: the pretrained encoder, weight averaging, task arithmetic, TIES, DARE (each at its best
    validation λ), Fisher merging, RegMean, AdaMerging task- and layer-wise (classification tasks
    only), Consensus merging and TALL per-task retrieval (``masks`` from :func:`choose_masks`,
    computed when not given); Fisher and RegMean read ``data_examples`` training inputs per task. Returns :func:`~workbench.merge.models.normalised_scores` with
    ``attrs["lambdas"]``.
    """
    splits = merges.problem.splits
    encoders, base = merges.encoders, merges.base
    chosen = {label: _best_lambda(curves, label) for label in SWEPT}
    candidates = {
        "pretrained": base,
        "average": merge(encoders, None, "average", progress=progress),
        **{label: merge(encoders, base, preset(SWEPT[label], lam=lam), progress=progress) for label, lam in chosen.items()},
    }
    train_inputs = {t: splits.train.subset([t]).x for t in encoders}
    fishers = [fisher_information(merges.individual[t], train_inputs[t], data_examples, seed=seed) for t in encoders]
    candidates["Fisher"] = fisher_merge(list(encoders.values()), fishers)
    candidates["RegMean"] = regmean_merge(list(encoders.values()), [regmean_grams(merges.individual[t], train_inputs[t], data_examples, seed=seed) for t in encoders])
    if all(merges.problem.splits.tasks[i].kind == "classification" for i in range(len(splits.tasks))):
        template = merges.model(base)
        unlabelled = {t: splits.test.x for t in encoders}  # AdaMerging adapts on unlabelled test inputs, as published
        for granularity in ("task", "layer"):
            candidates[f"AdaMerging ({granularity})"], _ = adamerging(template, base, encoders, unlabelled, granularity=granularity, steps=adamerging_steps, seed=seed)
    models: dict[str, Any] = {label: merges.model(encoder) for label, encoder in candidates.items()}
    summed = _summed(merges)
    masks = masks if masks is not None else choose_masks(merges)[0]
    models["Consensus"] = merges.model(consensus_merge(base, summed, masks, k=2))
    models["TALL retrieval"] = {t: merges.model(retrieve(base, summed, masks, t)) for t in encoders}
    scores = merges.scores(models, "test")
    scores.attrs.update(lambdas=[f"{k}={v}" for k, v in chosen.items()])
    return scores


def published_ordering(scores: xr.Dataset) -> str:
    """Whether the mean normalised scores follow TA < TIES < AdaMerging ≈ RegMean < individual, in words.

    The strict steps are TA < TIES < AdaMerging (layer) and every method below 1; AdaMerging ≈ RegMean
    is shown, not tested. Methods a set lacks (AdaMerging on regression tasks) are left out.
    """
    mean = scores.normalised.mean("task").to_series()
    present = [m for m in PUBLISHED_ORDER if m in mean.index]
    strict = [m for m in present if m != "RegMean"]
    holds = all(mean[a] < mean[b] for a, b in zip(strict, strict[1:])) and all(mean[m] < 1 for m in present)
    measured = ", ".join(f"{m} {mean[m]:.3f}" for m in present)
    return f"mean normalised scores: {measured} (individual models: 1). The published ordering TA < TIES < AdaMerging ≈ RegMean < individual {'holds' if holds else 'does not hold'} here"


def _validation_score(merges: MergeSet, task: str, encoder: dict[str, Tensor]) -> float:
    return float(merges.scores({"candidate": merges.model(encoder, [task])}, "validation", [task]).normalised.item())


def pairwise_interference(merges: MergeSet, lam: float = 0.3, density: float = 0.2) -> xr.Dataset:
    """For each pair of tasks: the mean normalised test score of the two merged alone by task arithmetic
    (``lam``), and the pair's task-vector ``cosine`` and ``sign_conflict`` (after trimming to ``density``)."""
    tasks = list(merges.encoders)
    similarity = task_vector_similarity(merges.encoders, merges.base, density=density, progress=False)
    rows = []
    for a, b in itertools.combinations(tasks, 2):
        pair = {t: merges.encoders[t] for t in (a, b)}
        model = merges.model(merge(pair, merges.base, preset("task_arithmetic", lam=lam), progress=False), [a, b])
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
