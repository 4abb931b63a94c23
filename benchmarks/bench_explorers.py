"""The notebooks' explorers: milliseconds per redraw of each widget callback, from precomputed results (goal: under 300 ms).

Each explorer is built, as in JupyterLab (not a batch run), on results shaped like its notebook's
default run: the files a default report run saved under ``reports/`` when they are there, else results
made here by the studies at a small size (the lines above the table say which). A redraw is
timed from the change of a widget's value (or the click message a browser sends) through the
observers to the updated ``FigureWidget``\\ s, each call changing what is drawn (the value alternates
between two choices); with no kernel attached nothing reaches a browser, and the browser's own
drawing is not measured. Median over rounds in which the callbacks take turns.
Build: seconds to build the explorer once its modules are imported (a first build also imports
ipywidgets and anywidget, about 2 s).

One function per explorer, listed in ``EXPLORERS``: each builds its explorer and returns where its
results came from, the build seconds and its callbacks.

Run: ``python benchmarks/bench_explorers.py [--quick]``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from timing import median_seconds  # benchmarks/timing.py

REPORTS = Path(__file__).resolve().parents[1] / "reports"
GOAL_MS = 300.0
Callbacks = dict[str, Callable[[], object]]


def alternate(widget, first, second) -> Callable[[], None]:
    """A call that sets ``widget.value`` to whichever of ``first`` and ``second`` it does not hold."""
    def call() -> None:
        widget.value = second if widget.value == first else first
    return call


def timed_build(build: Callable[[], object]):
    """The explorer ``build()`` returns and the seconds of a second build (the first pays for imports and caches)."""
    build()  # imports and first-use caches
    start = time.perf_counter()
    explorer = build()
    return explorer, time.perf_counter() - start


def conflict_history():
    """Notebook 01's recorded history: the default report run's, else the synthetic problem trained 150 steps (probed every 10)."""
    from workbench import results

    saved = REPORTS / "01_gradient_conflict" / "conflict_history.nc"
    if saved.exists():
        return results.load(saved), f"reports/ ({saved.name})"
    import torch

    from workbench.probes import ProbeRecorder
    from workbench.studies import load_problem
    from workbench.train import train

    problem = load_problem("synthetic", seed=0, n_tasks=6, groups=[[0, 1, 2], [3, 4]], anti_pairs=[[0, 5]], n_samples=1000, hidden=[64, 64])
    torch.manual_seed(0)
    fixed = problem.splits.validation.head(512)
    recorder = ProbeRecorder("gradient_conflict", every=10, by=problem.layers, batch=(fixed.x, fixed.targets))
    run = train(problem.make_model(problem.splits.tasks), problem.splits.train, 150, recorders=[recorder], progress=False)
    return run.probes["gradient_conflict"], "made here (synthetic, 150 steps)"


def conflict(quick: bool) -> tuple[str, float, Callbacks]:
    """01: the layer menu, the step slider and a click on a pair's cell."""
    from workbench import viz

    history, source = conflict_history()
    explorer, build = timed_build(lambda: viz.conflict_explorer(history))
    (layer, step), heatmaps = explorer.children[0].children, explorer.children[1]
    tasks = [str(t) for t in history.task.values]
    cells = itertools.cycle([(tasks[0], tasks[-1]), (tasks[-1], tasks[0])])  # the pair each way round: a redraw every time

    def click() -> None:
        row, column = next(cells)
        heatmaps._handler_js2py_pointsCallback({"new": {"event_type": "plotly_click", "points": {
            "xs": [column], "ys": [row], "point_indexes": [[tasks.index(row), tasks.index(column)]], "trace_indexes": [0],
        }}})

    source += f": {history.sizes['step']} steps, {history.sizes['layer']} layers, {len(tasks)} tasks"
    return source, build, {
        "layer menu": alternate(layer, layer.options[0], layer.options[-1]),
        "step slider": alternate(step, step.options[0], step.options[len(step.options) // 2]),
        "click a pair": click,
    }


def method_comparison():
    """Notebook 02's MultiDigits comparison: the default report run's, else one method per family, one seed, 40 steps."""
    from workbench import results

    saved = REPORTS / "02_mtl_methods" / "multidigits_methods.nc"
    if saved.exists():
        return results.load(saved), f"reports/ ({saved.name})"
    from workbench.studies import compare_methods, load_problem
    from workbench.train import comparable_methods

    digits = load_problem("multidigits", seed=0, tasks=["left", "right"], n_train=600)
    comparison = compare_methods(digits, comparable_methods(per_family=1), [0], 40, conflict_every=10, progress=False)
    return comparison, "made here (multidigits, one method per family, 40 steps)"


def methods(quick: bool) -> tuple[str, float, Callbacks]:
    """02: the methods picked (all or every other one), the split, the curves' task and the trade-off's pair."""
    from workbench import viz

    comparison, source = method_comparison()
    explorer, build = timed_build(lambda: viz.methods_explorer(comparison))
    picked, (task, pair, split) = explorer.children[0].children[0], explorer.children[0].children[1].children
    source += f": {comparison.sizes['method']} methods, {comparison.sizes['seed']} seeds, {comparison.sizes['task']} tasks"
    callbacks = {
        "methods picked": alternate(picked, picked.options, picked.options[::2]),
        "split toggle": alternate(split, "validation", "test"),
        "curves' task": alternate(task, task.options[0], task.options[1]),
    }
    if len(pair.options) > 1:
        callbacks["trade-off pair"] = alternate(pair, pair.options[0][1], pair.options[1][1])
    return source, build, callbacks


def grouping_study():
    """Notebook 03's synthetic study: the default report run's affinities and transfer, else the study run here at a small size."""
    from workbench import results
    from workbench.probes import PROBES
    from workbench.studies import GroupingStudy, load_problem, study_task_grouping

    saved = REPORTS / "03_task_affinity"
    probes = PROBES.names(family="affinity")
    if all((saved / f"synthetic_{name}.nc").exists() for name in ["transfer", *probes]):
        affinities = {name: results.load(saved / f"synthetic_{name}.nc") for name in probes}
        return GroupingStudy(affinities, results.load(saved / "synthetic_transfer.nc"), {}, {}, None), "reports/ (synthetic_*.nc)"
    problem = load_problem("synthetic", seed=0, n_tasks=6, groups=[[0, 1, 2], [3, 4]], anti_pairs=[[0, 5]], n_samples=2000, hidden=(32, 32), validation_fraction=0.2)
    return study_task_grouping(problem, 60, [0, 1], probe_every=5, progress=False), "made here (synthetic, 60 steps, 2 seeds)"


def affinity(quick: bool) -> tuple[str, float, Callbacks]:
    """03: the probe menu and the window of steps (all of training, or its second half)."""
    from workbench import viz

    study, source = grouping_study()
    explorer, build = timed_build(lambda: viz.affinity_explorer(study, "synthetic", max_groups=3))
    probe, window = explorer.children[0].children[:2]
    steps = list(window.options)
    history = next(iter(study.affinities.values()))
    source += f": {history.sizes['step']} steps, {history.sizes['source']} tasks, k = 1…3"
    return source, build, {
        "probe menu": alternate(probe, probe.options[0], probe.options[-1]),
        "step range": alternate(window, (steps[0], steps[-1]), (steps[len(steps) // 2], steps[-1])),
    }


def saliency(quick: bool) -> tuple[str, float, Callbacks]:
    """04: the sample slider and the task menu, on 256 test images of the four MultiDigits tasks."""
    import torch

    from workbench import viz
    from workbench.probes import input_attribution, task_saliency
    from workbench.studies import load_problem
    from workbench.train import train

    digits = load_problem("multidigits", seed=0, tasks=["left", "right", "parity", "sum"], n_train=3000)
    torch.manual_seed(0)
    model = train(digits.make_model(digits.splits.tasks), digits.splits.train, 30, eval_every=30, progress=False).model
    test = digits.splits.test.head(256)
    attribution, saliency = input_attribution(model, (test.x, test.targets)), task_saliency(model, (test.x, test.targets))
    explorer, build = timed_build(lambda: viz.saliency_explorer(attribution, saliency, "MultiDigits", images=test.x.numpy()))
    sample, task = explorer.children[0].children
    source = f"made here (multidigits, 30 steps): 256 test images {tuple(test.x.shape[2:])}, representation {dict(saliency.saliency.sizes)}"
    return source, build, {"sample slider": alternate(sample, 0, 1), "task menu": alternate(task, task.options[0], task.options[-1])}


def merging(quick: bool) -> tuple[str, float, Callbacks]:
    """05: the λ slider and the merge menu over kept scores (every setting merged once first, live; its time in the results column)."""
    from workbench import results, viz
    from workbench.paths import data_dir
    from workbench.studies import Recipe, lambda_curves, load_merge_set

    os.environ.setdefault("WORKBENCH_PROGRESS", "0")  # the live merges' bars would print between the table's lines
    tasks = ("left", "right", "parity", "greater")
    recipe = Recipe("multidigits", tasks, 30, 20, options={"n_train": 400}) if quick else Recipe("multidigits", tasks, 300, 150, options={"n_train": 3000})
    merges = load_merge_set(recipe, cache=data_dir("checkpoints"), progress=False)  # the notebook's cache: built once
    saved = REPORTS / "05_model_merging" / "multidigits_lambda_curves.nc"
    curves, source = (results.load(saved), f"reports/ ({saved.name})") if saved.exists() and not quick else (lambda_curves(merges, [0.3, 1.0]), "curves made here")
    scorer = viz.MergeScorer(merges)
    explorer, build = timed_build(lambda: viz.merge_explorer(scorer, curves, "MultiDigits", methods=scorer.methods))
    method, lam = explorer.children[0].children
    live = []
    for name, value in [("task_arithmetic", 0.5), ("ties", 0.5), ("ties", 0.3)]:  # the settings the callbacks visit, merged once
        start = time.perf_counter()
        method.value, lam.value = name, value
        live.append(time.perf_counter() - start)
    source += f"; checkpoints of {recipe.key()}, {len(tasks)} tasks; a live merge and score {min(live):.2f}–{max(live):.2f} s; build includes one"
    return source, build, {"λ slider": alternate(lam, 0.3, 0.5), "merge menu": alternate(method, "task_arithmetic", "ties")}


EXPLORERS: dict[str, Callable[[bool], tuple[str, float, Callbacks]]] = {
    "01 conflict": conflict, "02 methods": methods, "03 affinity": affinity, "04 saliency": saliency, "05 merging": merging,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--only", nargs="+", choices=list(EXPLORERS), default=list(EXPLORERS))
    args = parser.parse_args()
    os.environ.pop("WORKBENCH_BATCH", None)  # the explorers as JupyterLab shows them
    repeats = 5 if args.quick else 20
    header = f"{'explorer':12} {'callback':16} {'ms':>8} {'goal':>6}"
    rows, sources = [], []
    for name in args.only:
        source, build, callbacks = EXPLORERS[name](args.quick)
        sources.append(f"{name}: {source}; build {build:.2f} s")
        for callback, seconds in median_seconds(callbacks, repeats, warmup=1).items():
            rows.append({"explorer": name, "callback": callback, "ms": seconds * 1e3, "results": source, "build_s": build})
    print("\n".join(sources) + f"\nmedian of {repeats} rounds per callback\n\n{header}\n" + "-" * len(header))
    for row in rows:
        print(f"{row['explorer']:12} {row['callback']:16} {row['ms']:8.1f} {'met' if row['ms'] < GOAL_MS else 'missed':>6}")
    with open(Path(__file__).parent / "latest_explorers.json", "w") as stream:
        json.dump(rows, stream, indent=1)


if __name__ == "__main__":
    main()
