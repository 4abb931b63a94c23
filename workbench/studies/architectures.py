"""Architectures compared on one problem: every registered architecture trained by the same methods (Δm%, cost),
and what the gates of the gated ones do over training (which experts serve which task, whether they collapse)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import xarray as xr

from workbench.models.registry import ARCHITECTURES
from workbench.probes.recorder import ProbeRecorder
from workbench.probes.registry import applies_to
from workbench.studies.claims import paired_verdict
from workbench.studies.methods import compare_methods
from workbench.train.loop import train

__all__ = [
    "ARCHITECTURE_CLAIMS", "compare_architectures", "architecture_summary", "check_architecture_claims", "claimed_architectures",
    "gated_architectures", "expert_usage", "expert_summary", "COLLAPSE_MEASURES", "remedy_study", "check_remedies",
]

ARCHITECTURE_CLAIMS = [
    ("ple", "mmoe", "Tang et al. 2020: PLE above MMoE, most of all where the tasks' correlation is weak or negative (the seesaw)"),
    ("cgc", "mmoe", "Tang et al. 2020: CGC, PLE's single level, above MMoE"),
    ("multitab_net", "hps", "Sinodinos et al. 2026: MultiTab-Net above MLP-based multi-task models on tabular tasks (hard sharing)"),
    ("multitab_net", "mmoe", "Sinodinos et al. 2026: MultiTab-Net above MLP-based multi-task models on tabular tasks (MMoE)"),
]
"""The published orderings of architectures tested: ``(better, worse, source)``."""


def _builds(problem, name: str) -> str | None:
    """Why architecture ``name`` cannot be built on ``problem``'s backbone, or ``None`` when it can."""
    try:
        problem.make_model(problem.splits.tasks, architecture=name)
    except ValueError as error:
        return str(error)
    return None


def _check_done(name: str, comparison: xr.Dataset, problem, methods: list[str], seeds: list[int], steps: int) -> None:
    """Refuse a comparison of ``done`` that was not run as this one would be, naming what differs."""
    differs = []
    if comparison.attrs.get("architecture") != name:
        differs.append(f"its architecture is {comparison.attrs.get('architecture')!r}")
    if comparison.attrs.get("problem") != problem.name:
        differs.append(f"it ran on {comparison.attrs.get('problem')!r}, not {problem.name!r}")
    if comparison.attrs.get("steps") != steps:
        differs.append(f"it ran {comparison.attrs.get('steps')} steps, not {steps}")
    if comparison.seed.values.tolist() != seeds:
        differs.append(f"its seeds are {comparison.seed.values.tolist()}, not {seeds}")
    if missing := [m for m in methods if m not in comparison.method.values]:
        differs.append(f"it lacks the methods {missing}")
    if differs:
        raise ValueError(f"done[{name!r}] is no comparison this one can reuse: " + "; ".join(differs))


def compare_architectures(
    problem, methods: Sequence[str], seeds: Sequence[int] = (0,), steps: int = 300, *, architectures: Sequence[str] | None = None,
    done: Mapping[str, xr.Dataset] | None = None, **options: Any,
) -> xr.Dataset:
    """:func:`~workbench.studies.compare_methods` of ``methods`` for each architecture, along a new ``architecture`` dim.

    Every architecture's Δm% is against the same single-task baselines, hard sharing's (the backbone
    trained on one task), so that the architectures compare with each other: hard sharing runs first
    (or comes from ``done``) and lends its baselines to the others.

    ``architectures``: registered names, every registered one by default; one that refuses the problem's
    backbone is left out, its reason in ``attrs["skipped"]`` (an architecture asked for by name is not:
    its error is raised). ``done``: comparisons already run under the same seeds and steps (as notebook
    02's hard-sharing comparison of every method), used for their architecture, cut to ``methods``.
    ``options`` go to ``compare_methods``. Adds ``parameters`` ``(architecture)``, the trainable parameters.
    """
    done = dict(done or {})
    asked = architectures is not None
    names = list(architectures) if asked else list(ARCHITECTURES)
    if "hps" not in names:
        raise ValueError(f"compare_architectures scores every architecture against hard sharing's single-task baselines: "
                         f"include 'hps' among the architectures {names}")
    for name, comparison in done.items():
        _check_done(name, comparison, problem, list(methods), list(seeds), steps)
    skipped = {} if asked else {name: reason for name in names if (reason := _builds(problem, name))}
    chosen = sorted((name for name in names if name not in skipped), key=lambda name: name != "hps")
    comparisons, parameters, baselines = {}, {}, None
    for name in chosen:
        if name in done:
            comparison = done[name].sel({"method": list(methods)})
        else:
            comparison = compare_methods(problem, methods, seeds, steps, architecture=name, single_task=baselines if name != "hps" else None, **options)
        if name == "hps":
            baselines = comparison.single_task
        comparisons[name] = comparison.expand_dims(architecture=[name])
        model = problem.make_model(problem.splits.tasks, architecture=name)
        parameters[name] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    order = [name for name in names if name in comparisons]
    result = xr.concat([comparisons[name] for name in order], dim="architecture", data_vars="minimal", join="exact", combine_attrs="drop_conflicts")
    result["parameters"] = ("architecture", [parameters[name] for name in order])
    result.attrs.update(skipped=skipped)
    return result


def architecture_summary(comparison: xr.Dataset, split: str = "test", unit: str = "hps"):
    """A table (pandas DataFrame) per architecture and method: Δm% mean and standard deviation over seeds,
    ms per step and its ratio to architecture ``unit`` under the same method, and the trainable parameters."""
    import pandas as pd

    chosen = comparison.sel(split=split)
    ddof = 1 if comparison.sizes["seed"] > 1 else 0
    seconds = comparison.seconds_per_step.mean("seed")
    table = pd.DataFrame({
        "delta_m_mean": chosen.delta_m.mean("seed").to_series(),
        "delta_m_std": chosen.delta_m.std("seed", ddof=ddof).to_series(),
        "ms_per_step": (seconds * 1e3).to_series(),
    })
    if unit in comparison.architecture.values:
        table[f"steps_of_{unit}"] = (seconds / seconds.sel(architecture=unit)).to_series()
    table["parameters"] = comparison.parameters.to_series().reindex(table.index.get_level_values("architecture")).values
    return table


def gated_architectures(problem) -> list[str]:
    """The registered architectures that build on ``problem``'s backbone and read out their gates (``expert_gates`` applies)."""
    return [name for name in ARCHITECTURES if _builds(problem, name) is None
            and applies_to("expert_gates", problem.make_model(problem.splits.tasks, architecture=name))]


def expert_usage(problem, architecture: str, steps: int, every: int = 10, *, method: str = "ew", seed: int = 0, held_out: int = 256,
                 architecture_options: Mapping[str, Any] | None = None, **options: Any) -> xr.Dataset:
    """The ``expert_gates`` history of one run of ``architecture`` (built with ``architecture_options``) trained by
    ``method`` (recorded every ``every`` steps on a fixed batch of ``held_out`` validation samples); ``options`` go
    to :func:`~workbench.train.train`."""
    splits = problem.splits
    torch.manual_seed(seed)
    model = problem.make_model(splits.tasks, architecture=architecture, **(architecture_options or {}))
    recorder = ProbeRecorder("expert_gates", every=every, batch=splits.validation.probe_batch(held_out))
    run = train(model, splits.train, steps, method=method, seed=seed, recorders=[recorder], progress=False, **options)
    history = run.complete(f"{architecture}'s gates").probes["expert_gates"]
    return history.assign_attrs(architecture=architecture)


def expert_summary(usage: Mapping[str, xr.Dataset]):
    """A table (pandas DataFrame) per architecture, at the last recorded step, over levels and tasks: the mean gate
    entropy against its ceiling (the mean ``log n`` of the ``n`` experts each gate weighs), the mean share of a
    task's gate mass on its own experts (where it has some), the largest ownership of a shared expert (towards
    1: a shared expert serves one task), the largest dead fraction and the smallest output spread of an expert."""
    import pandas as pd

    return pd.DataFrame.from_dict({name: _gate_measures(history) for name, history in usage.items()}, orient="index")


def _gate_measures(history: xr.Dataset) -> dict[str, float]:
    """:func:`expert_summary`'s row: the measures of an ``expert_gates`` history at its last recorded step."""
    last = history.isel(step=-1)
    shared = [e for e in last.expert.values if str(e).startswith("shared ")]
    return {
        "gate_entropy": float(last.gate_entropy.mean()),
        "entropy_ceiling": float(np.log(last.gate_size).mean()),
        "own_share": float(last.own_share.mean()) if bool(last.own_share.notnull().any()) else np.nan,
        "sample_entropy": float(last.sample_entropy.mean()),
        "max_shared_ownership": float(last.ownership.sel(expert=shared).max()) if shared else np.nan,
        "max_dead_fraction": float(last.dead_fraction.max()),
        "min_output_std": float(last.output_std.min()),
    }


COLLAPSE_MEASURES = {
    "max_dead_fraction": "lower",
    "min_output_std": "higher",
    "max_shared_ownership": "lower",
}
"""The measures of expert collapse and degradation a remedy should move, and the direction that is better."""


def remedy_study(
    problem, architecture: str, variants: Mapping[str, Mapping[str, Any]], seeds: Sequence[int], steps: int, every: int = 10, **options: Any,
) -> xr.Dataset:
    """The gate measures of :func:`expert_summary` at the end of training, for each variant of ``architecture``
    (a label mapped to its architecture options, such as HoME with and without its remedies) and seed:
    variables of dims ``(variant, seed)``; ``options`` go to :func:`expert_usage`."""
    if len(variants) < 2:
        raise ValueError(f"remedy_study compares variants of {architecture}; give at least two, got {list(variants)}")
    if not seeds:
        raise ValueError(f"remedy_study pairs the variants of {architecture} by seed; give at least one seed")
    rows = {label: [_gate_measures(expert_usage(problem, architecture, steps, every, seed=seed, architecture_options=variant, **options))
                    for seed in seeds]
            for label, variant in variants.items()}
    measures = list(next(iter(rows.values()))[0])
    return xr.Dataset(
        {measure: (("variant", "seed"), [[row[measure] for row in rows[label]] for label in variants]) for measure in measures},
        coords={"variant": list(variants), "seed": list(seeds)},
        attrs={"architecture": architecture, "problem": problem.name, "steps": steps, "variants": {k: dict(v) for k, v in variants.items()}},
    )


def check_remedies(study: xr.Dataset, remedied: str, without: str):
    """A table (pandas DataFrame), one row per measure of :data:`COLLAPSE_MEASURES`: variant ``remedied`` against
    ``without`` of a :func:`remedy_study`, their means (columns ``remedied`` and ``without``, so that tables of several
    pairs concatenate), the mean paired difference (oriented so that negative means ``remedied`` is better) and the
    verdict (clearly: beyond two standard errors). A measure that is undefined for the architecture (no shared
    experts: no ownership) is left out."""
    import pandas as pd

    if unknown := [label for label in (remedied, without) if label not in study.variant.values]:
        raise ValueError(f"check_remedies: no variants {unknown} in the study; its variants are {study.variant.values.tolist()}")
    rows = []
    for measure, better in COLLAPSE_MEASURES.items():
        ours, theirs = study[measure].sel(variant=remedied), study[measure].sel(variant=without)
        if bool(ours.isnull().any()) or bool(theirs.isnull().any()):
            continue
        differences = (ours - theirs).values * (1 if better == "lower" else -1)
        rows.append({"measure": measure, "better": better, "remedied": float(ours.mean()), "without": float(theirs.mean()),
                     "mean difference": float(differences.mean()), "verdict": paired_verdict(differences)})
    return pd.DataFrame(rows, columns=["measure", "better", "remedied", "without", "mean difference", "verdict"]).set_index("measure")


def claimed_architectures() -> list[str]:
    """Hard sharing (the baselines' architecture) and the architectures :data:`ARCHITECTURE_CLAIMS` name, in registration order."""
    named = {name for better, worse, _ in ARCHITECTURE_CLAIMS for name in (better, worse)}
    return [name for name in ARCHITECTURES if name == "hps" or name in named]


def check_architecture_claims(settings: Mapping[str, xr.Dataset], split: str = "test", method: str = "ew",
                              claims: Sequence[tuple[str, str, str]] = ARCHITECTURE_CLAIMS):
    """A table (pandas DataFrame) of ``claims`` (:data:`ARCHITECTURE_CLAIMS`) in every setting: ``settings`` maps a label
    (``"task cosine -0.3"``) to a :func:`compare_architectures` result holding both architectures. Each row
    gives both mean Δm% under ``method``, their mean difference paired by seed and the verdict (clearly:
    beyond two standard errors), as :func:`~workbench.studies.check_claims` does for methods."""
    import pandas as pd

    rows = []
    for label, comparison in settings.items():
        delta = comparison.delta_m.sel({"split": split, "method": method})
        for better, worse, source in claims:
            if better in comparison.architecture.values and worse in comparison.architecture.values:
                ours, theirs = delta.sel(architecture=better), delta.sel(architecture=worse)
                differences = (ours - theirs).values
                rows.append({"setting": label, "claim": f"{better} beats {worse}", "source": source,
                             "measured": f"{float(ours.mean()):+.2f} vs {float(theirs.mean()):+.2f}",
                             "mean difference": float(differences.mean()), "verdict": paired_verdict(differences)})
    return pd.DataFrame(rows, columns=["setting", "claim", "source", "measured", "mean difference", "verdict"]).set_index(["setting", "claim"])
