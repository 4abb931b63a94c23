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


EXPLORERS: dict[str, Callable[[bool], tuple[str, float, Callbacks]]] = {"01 conflict": conflict, "02 methods": methods}


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
