"""LoraHub on a problem's own tasks: each task in turn is the new one, its LoRA composed from the other tasks' LoRAs.

Under each seed, one LoRA per task is trained on its task alone (``task_lora`` by summed losses,
:func:`~workbench.studies.schemes.first_stage`). For each task ``t``, a ``lora`` model of ``t`` alone composes the
other ``K = T − 1`` tasks' LoRAs on ``shots`` labelled training examples of ``t`` (drawn by the seed), its head
fitted on them by ridge regression (:func:`~workbench.models.peft.lorahub.lorahub` with ``ridge``), and is scored on
``t``'s test split beside the other compositions of :data:`COMPOSITIONS`, each with its head fitted on the same
examples:

- ``base``: no LoRA (``w = 0``): the frozen model's features;
- ``uniform``: every other task's LoRA at weight ``1/K``;
- ``retrieval``: the other task's LoRA alone whose few-shot objective is best (the paper's LoRA retrieval);
- ``lorahub``: the weights LoraHub's search finds;
- ``own``: ``t``'s own LoRA, trained on its whole training split: what a LoRA of the task itself gives these heads.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import xarray as xr

from workbench.models.few_shot_heads import fit_heads
from workbench.models.peft.lorahub import compose_loras, lorahub, task_loras
from workbench.studies.claims import paired_verdict
from workbench.studies.schemes import first_stage
from workbench.tasks import MultiTaskData

__all__ = ["COMPOSITIONS", "LORAHUB_CLAIMS", "lorahub_study", "check_lorahub_claims"]

COMPOSITIONS = ("base", "uniform", "retrieval", "lorahub", "own")
LORAHUB_CLAIMS = [
    ("lorahub", "base", "Huang et al. 2023: the composition found on a few examples above the model without LoRA (zero-shot)"),
    ("lorahub", "retrieval", "Huang et al. 2023: the composition above the single best LoRA (LoRA retrieval)"),
    ("lorahub", "uniform", "the composition's search above weighting every LoRA alike"),
]
"""The orderings tested: ``(better, worse, source)``, compositions of :data:`COMPOSITIONS`."""


def lorahub_study(
    problem, seeds: Sequence[int] = (0,), steps: int = 300, *, shots: int = 32, budget: int = 40, l1: float = 0.05, ridge: float = 1.0,
    evaluation_batch: int = 256, **options: Any,
) -> xr.Dataset:
    """Leave each task out and compose its LoRA from the others' (see the module docstring).

    ``options``: :func:`~workbench.studies.schemes.first_stage`'s (batch size, optimizer, device) for the LoRAs.
    Returns a Dataset of ``metric`` ``(seed, task, composition)`` on the test split, ``few_shot_loss`` (same dims:
    the loss of the heads' leave-one-out predictions on the examples, LoraHub's objective without its ``l1``
    term), ``weights`` ``(seed, task,
    source)``, LoraHub's weight of each other task's LoRA (NaN for the task itself), and each task's metric's
    direction ``higher_is_better`` ``(task,)``."""
    splits = problem.splits
    if not isinstance(splits.train, MultiTaskData):
        raise ValueError("lorahub_study draws each task's few examples from one shared training set; load the problem with data='shared'")
    tasks = splits.task_names
    if len(tasks) < 3:
        raise ValueError(f"leaving one task out composes the LoRAs of the others: it needs three tasks or more, got {tasks}")
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 2:
        raise ValueError(f"shots must be a number of examples of at least 2, got {shots!r}")
    metric = np.full((len(seeds), len(tasks), len(COMPOSITIONS)), np.nan)
    few_shot, weights = metric.copy(), np.full((len(seeds), len(tasks), len(tasks)), np.nan)
    sources = first_stage(problem, "task_lora", seeds, steps, **options)
    for s, seed in enumerate(seeds):
        loras = task_loras(sources[seed])
        for t, task in enumerate(tasks):
            others = {name: lora for name, lora in loras.items() if name != task}
            torch.manual_seed(seed)
            model = problem.make_model([splits.tasks[t]], architecture="lora").to(sources[seed].device).eval()  # no dropout in the few-shot fits
            part = splits.train.subset([task])
            chosen = torch.randperm(len(part), generator=torch.Generator().manual_seed(seed))[:shots]
            examples = part.rows(chosen).probe_batch(shots)
            test = splits.test.subset([task])

            def score(w: Sequence[float]) -> tuple[float, float]:
                """The few-shot loss of the leave-one-out predictions and the test metric of ``Σ_k w_k`` of every task's LoRA."""
                compose_loras(model, loras, w)
                return float(fit_heads(model, *examples, ridge)[task]), model.evaluate_batches(test.batches(evaluation_batch))[task][1]

            def on_others(w_others: Sequence[float]) -> list[float]:
                return [0.0 if name == task else float(w_others[list(others).index(name)]) for name in loras]

            singles = {name: score(on_others(np.eye(len(others))[k])) for k, name in enumerate(others)}
            found = lorahub(model, others, examples, budget=budget, l1=l1, ridge=ridge)
            at = {"base": score([0.0] * len(loras)), "uniform": score(on_others([1 / len(others)] * len(others))),
                  "retrieval": min(singles.values()), "lorahub": score(on_others(list(found["weights"].values()))),
                  "own": score([float(name == task) for name in loras])}
            for c, composition in enumerate(COMPOSITIONS):
                few_shot[s, t, c], metric[s, t, c] = at[composition]
            weights[s, t] = on_others(list(found["weights"].values()))
            weights[s, t, t] = np.nan
    return xr.Dataset(
        {"metric": (("seed", "task", "composition"), metric), "few_shot_loss": (("seed", "task", "composition"), few_shot),
         "weights": (("seed", "task", "source"), weights),
         "higher_is_better": ("task", [int(spec.higher_is_better) for spec in splits.tasks])},
        coords={"seed": list(seeds), "task": tasks, "composition": list(COMPOSITIONS), "source": tasks,
                "metric_name": ("task", [spec.metric_name for spec in splits.tasks])},
        attrs={"shots": shots, "budget": budget, "l1": l1, "ridge": ridge, "source_steps": steps},
    )


def check_lorahub_claims(study: xr.Dataset, claims: Sequence[tuple[str, str, str]] = LORAHUB_CLAIMS):
    """A table (pandas DataFrame) of ``claims`` on a :func:`lorahub_study`: each pair of compositions' mean test metric
    and the verdict on their differences paired by seed and task, each signed so that negative is better (clearly:
    beyond two standard errors). ``mean difference``: of the signed differences (negative: the claim's direction)."""
    import pandas as pd

    sign = 1.0 - 2.0 * study.higher_is_better
    rows = []
    for better, worse, source in claims:
        ours, theirs = study.metric.sel(composition=better), study.metric.sel(composition=worse)
        differences = (sign * (ours - theirs)).values.ravel()
        rows.append({"claim": f"{better} beats {worse}", "source": source,
                     "measured": f"{float(ours.mean()):.4f} vs {float(theirs.mean()):.4f}",
                     "mean difference": float(differences.mean()), "verdict": paired_verdict(differences)})
    return pd.DataFrame(rows, columns=["claim", "source", "measured", "mean difference", "verdict"]).set_index("claim")
