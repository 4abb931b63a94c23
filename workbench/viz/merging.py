"""Plotly figures of model merging: λ curves, the method comparison, task vectors and TALL masks, and notebook 05's explorer."""

from __future__ import annotations

import ast
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, get_args, get_origin

import numpy as np
import plotly.graph_objects as go
import xarray as xr
from plotly.subplots import make_subplots

from workbench.merge import MERGES, applies_to, make_merge
from workbench.progress import batch_run
from workbench.viz.explorer_kit import LiveBox, busy, show

__all__ = [
    "mean_curve_figure", "per_task_curves_figure", "merge_option_widgets", "scores_figure", "MergeScorer", "merge_explorer", "merge_comparison_figure", "task_vector_heatmap", "mask_overlap_figure", "interference_figure",
]


_SWEPT = {"lam": "λ", "density": "fraction of each task vector kept"}


def mean_curve_figure(curves: xr.Dataset, title: str) -> go.Figure:
    """The mean normalised score ``(method, lam)`` of each swept method against λ, or ``(method, density)`` against the
    fraction kept (:func:`~workbench.studies.merging.density_curves`); 1: as good as the individual models."""
    along = "lam" if "lam" in curves.dims else "density"
    x = curves[along].values
    fig = go.Figure([go.Scatter(x=x, y=curves["mean"].sel({"method": m}).values, mode="lines+markers", name=str(m)) for m in curves.method.values])
    fig.add_hline(y=1.0, line_dash="dot", annotation_text="individual models")
    fig.update_layout(title=title, xaxis_title=_SWEPT[along], yaxis_title="mean normalised score (validation)", height=380)
    return fig


def per_task_curves_figure(curves: xr.Dataset, title: str) -> go.Figure:
    """Every task's normalised score ``(method, lam, task)`` against λ, one method at a time (a menu picks it)."""
    methods, tasks = [str(m) for m in curves.method.values], [str(t) for t in curves.task.values]
    fig = go.Figure()
    for i, method in enumerate(methods):
        for task in tasks:
            values = curves.normalised.sel({"method": method, "task": task}).values
            fig.add_trace(go.Scatter(x=curves.lam.values, y=values, mode="lines+markers", name=task, visible=i == 0, legendgroup=task))
    buttons = [
        dict(label=method, method="update", args=[{"visible": [j // len(tasks) == i for j in range(len(methods) * len(tasks))]}])
        for i, method in enumerate(methods)
    ]
    fig.add_hline(y=1.0, line_dash="dot", annotation_text="individual models")
    fig.update_layout(
        title=title, xaxis_title="λ", yaxis_title="normalised score (validation)", height=400,
        updatemenus=[dict(buttons=buttons, direction="down", x=1.0, xanchor="right", y=1.15, yanchor="top")],
    )
    return fig


_FLOAT_RANGES = {"density": (0.05, 1.0, 0.05), "drop": (0.0, 0.95, 0.05)}
"""Slider ranges ``(min, max, step)`` of the float options whose generic range would not fit (DARE cannot drop everything)."""


def _literal_values(annotation) -> list | None:
    """The values of a ``Literal[...]`` annotation (also written as a string), else ``None``."""
    if isinstance(annotation, str):
        return list(ast.literal_eval(f"({annotation[len('Literal['):-1]},)")) if annotation.startswith("Literal[") else None
    return list(get_args(annotation)) if get_origin(annotation) is Literal else None


def merge_option_widgets(method: str, n_tasks: int, lam_range: tuple[float, float, float] = (0.0, 1.5, 0.05)) -> dict:
    """An ipywidget for each option of the registered merge ``method`` (but λ), set to its registered default.

    A ``Literal`` option is a menu of its values, a bool a checkbox; a float is a slider on ``[0, 1]``
    (on a log scale for a default below 0.01, on ``[0, 2·default]`` above 1; λ-like ones on
    ``lam_range``; ``density`` and ``drop`` on their own ranges), an int a slider from 1 (0 for a
    default of 0) to ``max(10, 4·default)``, TALL's ``k`` to ``n_tasks``. Options whose default is
    ``None`` or a sequence (per-task weights, TALL's λ_t and candidates) have no widget: the merge
    keeps its default.
    """
    import ipywidgets as widgets

    entry = MERGES.entry(method)
    parameters = inspect.signature(entry.target()).parameters
    made = {}
    for name, default in entry.options().items():
        if name == "lam" or default is None or isinstance(default, (list, tuple, dict)):
            continue
        choices = _literal_values(parameters[name].annotation) if name in parameters else None
        style = dict(description=name, continuous_update=False, style={"description_width": "initial"})
        if choices is not None:
            made[name] = widgets.Dropdown(options=choices, value=default, description=name)
        elif isinstance(default, bool):
            made[name] = widgets.Checkbox(value=default, description=name)
        elif isinstance(default, int):
            high = n_tasks if name == "k" else max(10, 4 * default)
            made[name] = widgets.IntSlider(value=default, min=0 if default == 0 else 1, max=high, step=1 if high <= 40 else max(1, default // 16), **style)
        elif isinstance(default, float) and 0 < default < 0.01:
            exponent = float(np.log10(default))
            made[name] = widgets.FloatLogSlider(value=default, base=10, min=exponent - 2, max=exponent + 2, step=0.25, readout_format=".1e", **style)
        elif isinstance(default, float):
            low, high, step = _FLOAT_RANGES.get(name, (0.0, 1.0, 0.05) if default <= 1 else (0.0, 2 * default, default / 10))
            made[name] = widgets.FloatSlider(value=default, min=low, max=high, step=step, **style)
        else:
            raise ValueError(f"merge {method!r}: no widget for option {name!r} = {default!r}")
    return made


def scores_figure(scores: xr.DataArray, title: str) -> go.Figure:
    """Bars of each task's normalised score ``(task,)``, each with its value printed, and the mean in the title."""
    tasks = [str(t) for t in scores.task.values]
    fig = go.Figure(go.Bar(x=tasks, y=scores.values, marker_color="#69c", text=[f"{v:.3f}" for v in scores.values], textposition="outside", cliponaxis=False))
    fig.add_hline(y=1.0, line_dash="dot", annotation_text="individual models")
    fig.update_layout(title=f"{title} (mean {float(np.nanmean(scores.values)):.3f})", yaxis_title="normalised score (validation)", height=380)
    return fig


@dataclass(frozen=True)
class MergeScorer:
    """``score(method, lam, **options)`` of a :class:`~workbench.studies.MergeSet`: merge its task models live and score each task.

    Each merge reads the data its entry declares (:meth:`~workbench.studies.MergeSet.data`) and shows
    its progress (AdaMerging's steps); the result is ``normalised`` ``(task,)`` on ``split``.
    :attr:`methods` are the registered merges that apply to the set's tasks.
    """

    merges: object
    split: str = "validation"

    @property
    def methods(self) -> list[str]:
        return [name for name in MERGES.names() if applies_to(name, self.merges.problem.splits.tasks)]

    def __call__(self, method: str, lam: float | None = None, **options) -> xr.DataArray:
        merge = make_merge(method, **options, **({} if lam is None else {"lam": lam}))
        merged = merge(self.merges.base, self.merges.individual, self.merges.data(merge), progress=True)
        return self.merges.scores({method: self.merges.served(merged)}, self.split).normalised.sel(model=method, drop=True)


def merge_explorer(
    score: Callable[..., xr.DataArray], curves: xr.Dataset, title: str, lam_range: tuple[float, float, float] = (0.0, 1.5, 0.05), methods: Sequence[str] | None = None,
):
    """A merge menu, a λ slider and the merge's own options over each task's normalised score, merged live.

    ``score(method, lam, **options)`` gives the ``task`` DataArray (``lam`` is ``None`` for a merge
    without one; only the options moved from their registered defaults are passed, so
    ``score(method, lam)`` suffices for the λ alone). ``methods`` are the registered merges offered
    (default: ``curves.method``, the swept ones); each gets :func:`merge_option_widgets`. Every score
    is kept: going back to a setting redraws at once; a new one disables the controls and shows
    "merging…" (and the merge's own progress) until it is scored; a setting the merge refuses is
    said in the status line, the last figure kept. The first row holds the menu and
    the λ slider (λ is shared by the merges that have one), the second the chosen merge's options.

    In a batch run (a report, where no one can move a slider) this returns
    :func:`per_task_curves_figure` of the precomputed ``curves`` instead of the widgets.
    """
    methods = [str(m) for m in (curves.method.values if methods is None else methods)]
    unknown = [m for m in methods if m not in MERGES.names()]
    if unknown or not methods:
        raise ValueError(f"unknown merges {unknown}; the registered merges are {MERGES.names()}")
    if batch_run():
        return per_task_curves_figure(curves, title)
    import ipywidgets as widgets

    low, high, step = lam_range
    n_tasks = curves.sizes["task"]
    options = {m: merge_option_widgets(m, n_tasks, lam_range) for m in methods}
    with_lam = {m for m in methods if "lam" in MERGES.entry(m).options()}
    first_lam = next((MERGES.entry(m).options()["lam"] for m in methods if m in with_lam), 0.3)
    method = widgets.Dropdown(options=methods, description="method")
    lam = widgets.FloatSlider(value=first_lam, min=low, max=high, step=step, description="λ", continuous_update=False)
    option_row = widgets.HBox()
    status = widgets.Label()
    progress = widgets.Output()
    output = widgets.Output()
    cache: dict[tuple, xr.DataArray] = {}

    def changed(name: str) -> dict:
        defaults = MERGES.entry(name).options()
        return {key: w.value for key, w in options[name].items() if w.value != defaults[key]}

    def redraw(_=None) -> None:
        name = method.value
        lam.disabled = name not in with_lam
        option_row.children = tuple(options[name].values())
        moved = changed(name)
        value = lam.value if name in with_lam else None
        key = (name, value, tuple(sorted(moved.items())))
        if key not in cache:
            controls = [method, lam, *options[name].values()]
            try:
                with busy(controls, status, "merging…"), progress:
                    cache[key] = score(name, value, **moved)
            except (ValueError, RuntimeError) as error:  # a setting the merge refuses: said where the figure is
                status.value = f"{name} refused this setting: {error}"
                return
            finally:
                progress.outputs = ()
        label = f"{name}, λ = {value:.2f}" if value is not None else name
        show(output, scores_figure(cache[key], f"{title}: {label}" + "".join(f", {k} = {v:.3g}" if isinstance(v, float) else f", {k} = {v}" for k, v in moved.items())))

    method.observe(redraw, "value")
    lam.observe(redraw, "value")
    for widget in (w for made in options.values() for w in made.values()):
        widget.observe(redraw, "value")
    redraw()
    return LiveBox([widgets.HBox([method, lam]), option_row, status, progress, output])


def merge_comparison_figure(scores: xr.Dataset, title: str) -> go.Figure:
    """Each method's mean normalised test score (bars, best last) and every task's score (points)."""
    mean = scores.normalised.mean("task").to_series().sort_values()
    fig = go.Figure(go.Bar(x=mean.index, y=mean.values, name="mean over tasks", marker_color="#9ab"))
    for task in scores.task.values:
        fig.add_trace(go.Scatter(x=mean.index, y=scores.normalised.sel(task=task).to_series()[mean.index].values, mode="markers", name=str(task)))
    fig.add_hline(y=1.0, line_dash="dot", annotation_text="individual models")
    low = float(np.nanmin(scores.normalised.values))
    fig.update_layout(title=title, yaxis_title="normalised test score", yaxis_range=[min(0.0, low) if low < 0.5 else 0.5, max(1.05, float(np.nanmax(scores.normalised.values)) + 0.02)], height=420)
    return fig


def task_vector_heatmap(similarity: xr.Dataset, title: str) -> go.Figure:
    """The pairwise cosine of the task vectors (whole encoder), with the values printed."""
    cosine = similarity.cosine.values
    tasks = [str(t) for t in similarity.task.values]
    fig = go.Figure(go.Heatmap(z=cosine, x=tasks, y=tasks, zmin=-1, zmax=1, colorscale="RdBu", text=np.round(cosine, 2), texttemplate="%{text}"))
    fig.update_layout(title=title, height=380, yaxis_autorange="reversed")
    return fig


def mask_overlap_figure(overlap: xr.Dataset, title: str) -> go.Figure:
    """How many coordinates are kept by 0, 1, 2, … TALL masks (0: catastrophic, 1: selfish, ≥ 2: consensus)."""
    counts = overlap["count"].values
    labels = [f"{k} ({'catastrophic' if k == 0 else 'selfish' if k == 1 else 'consensus'})" for k in overlap.masks_on.values]
    fig = go.Figure(go.Bar(x=labels, y=counts / counts.sum()))
    fig.update_layout(title=title, xaxis_title="masks on", yaxis_title="share of coordinates", height=360)
    return fig


def interference_figure(pairs: xr.Dataset, title: str) -> go.Figure:
    """Each pair's merged score against its task-vector cosine and its sign-conflict rate."""
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, subplot_titles=["task-vector cosine", "sign conflict after trimming"])
    for col, variable in enumerate(("cosine", "sign_conflict"), start=1):
        fig.add_trace(go.Scatter(x=pairs[variable].values, y=pairs.score.values, mode="markers+text", text=[str(p) for p in pairs.pair.values], textposition="top center", showlegend=False), row=1, col=col)
    fig.update_yaxes(title_text="mean normalised score of the pair merged alone", row=1, col=1)
    fig.update_layout(title=title, height=400)
    return fig
