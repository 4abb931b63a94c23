"""Explorers of notebooks 01 (gradient conflict) and 02 (training methods): widgets over precomputed results.

In JupyterLab each builder returns ipywidgets whose callbacks redraw plotly ``FigureWidget``\\ s in place
from results computed once, when the explorer is built; nothing trains or probes again. In a batch run
(:func:`workbench.progress.batch_run`: the runner's kernels, whose notebooks become the HTML reports)
each returns the same figures with plotly's own menus and sliders instead, every view precomputed, so
that the exported report can be explored without a kernel.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import xarray as xr
from plotly.subplots import make_subplots

from workbench.probes.conflict import conflict_frequency
from workbench.progress import batch_run
from workbench.viz.explorer_kit import LiveBox, figure_menu, json_cells, menu_slider
from workbench.viz.methods import delta_m_bars, learning_curves, tradeoff

__all__ = ["Figures", "WHOLE", "conflict_views", "conflict_explorer", "methods_explorer"]

WHOLE = "whole"  # the view of the whole shared encoder, beside its layers
QUANTITIES = ("cosine", "magnitude_similarity", "frequency")
_HEATMAP_STYLE = {  # colour scale, range and subplot title of each quantity
    "cosine": ("RdBu", -1.0, 1.0, "cosine"),
    "magnitude_similarity": ("Blues", 0.0, 1.0, "magnitude similarity"),
    "frequency": ("Reds", 0.0, 1.0, "conflict frequency so far"),
}
_SPLITS = ("validation", "test")


class Figures(tuple):
    """Plotly figures that a notebook cell shows one after another: what an explorer returns in a batch run."""

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(*self)


def _choose(value, options: Sequence, what: str):
    """``value`` if it is one of ``options``, else a ValueError that lists them."""
    if value not in list(options):
        raise ValueError(f"unknown {what} {value!r}; choose one of {list(options)}")
    return value


def _replace(widget: go.FigureWidget, fig: go.Figure) -> None:
    """Draw ``fig`` in ``widget``: its traces and layout replace the widget's, in one message to the browser.

    The layout is updated key by key (keys ``fig`` lacks are unset) and the widget keeps its template:
    assigning a whole layout validates the template again, which costs more than the figure itself.
    """
    layout = fig.layout.to_plotly_json()
    layout.pop("template", None)
    stale = {key: None for key in widget.layout.to_plotly_json() if key not in layout and key != "template"}
    with widget.batch_update():
        widget.data = ()
        widget.add_traces(fig.data)
        widget.update_layout({**stale, **layout}, overwrite=True)


# ---- 01: gradient conflict ----

def conflict_views(history: xr.Dataset) -> xr.DataArray:
    """What the conflict explorer draws, ``(view, quantity, step, task, other_task)``.

    ``history`` is a recorded ``gradient_conflict`` probe (``cosine`` and ``magnitude_similarity`` over
    ``(step, task, other_task)``, ``layer_*`` over ``(step, layer, task, other_task)``). The views are
    :data:`WHOLE` (the whole shared encoder) and every layer; the quantities the cosine and the magnitude
    similarity at each recorded step and the conflict frequency (:func:`~workbench.probes.conflict_frequency`)
    over the recorded steps up to it.
    """
    needed = ("cosine", "magnitude_similarity", "layer_cosine", "layer_magnitude_similarity")
    missing = [name for name in needed if name not in history]
    if missing or "step" not in history.dims:
        raise ValueError(f"not a recorded gradient_conflict history: it needs {list(needed)} over a step dim; missing {missing or ['step']}")
    if WHOLE in history.layer.values.tolist():
        raise ValueError(f"a layer is named {WHOLE!r}, the explorer's name for the whole encoder")
    steps = history.step
    so_far = [conflict_frequency(history.sel(step=slice(None, int(s)))) for s in steps.values]
    quantity = pd.Index(QUANTITIES, name="quantity")
    whole = xr.concat([history.cosine, history.magnitude_similarity, xr.concat([f.frequency for f in so_far], dim=steps)], dim=quantity)
    layers = xr.concat(
        [history.layer_cosine, history.layer_magnitude_similarity, xr.concat([f.layer_frequency for f in so_far], dim=steps)], dim=quantity,
    )
    order = ("view", "quantity", "step", "task", "other_task")
    views = xr.concat([whole.expand_dims(view=[WHOLE]).transpose(*order), layers.rename(layer="view").transpose(*order)], dim="view", coords="minimal", compat="override")
    return views.assign_coords(view=[str(v) for v in views.view.values])


def _matrices(views: xr.DataArray, view: str, step: int) -> np.ndarray:
    """``(quantity, task, other_task)`` of one view at one step."""
    return views.sel(view=view, step=step).values


def _heatmap_title(view: str, step: int) -> str:
    where = "the whole shared encoder" if view == WHOLE else f"layer {view}"
    return f"The tasks' gradients on {where} at step {step}"


def _conflict_heatmaps(views: xr.DataArray, view: str, step: int) -> go.Figure:
    """The cosine, magnitude similarity and conflict frequency so far of one view at one step, side by side."""
    tasks = [str(t) for t in views.task.values]
    fig = make_subplots(rows=1, cols=3, subplot_titles=[_HEATMAP_STYLE[q][3] for q in QUANTITIES], horizontal_spacing=0.06)
    for col, (quantity, matrix) in enumerate(zip(QUANTITIES, _matrices(views, view, step)), start=1):
        colours, low, high, name = _HEATMAP_STYLE[quantity]
        fig.add_trace(go.Heatmap(
            z=matrix, x=tasks, y=tasks, colorscale=colours, zmin=low, zmax=high, showscale=False, name=name,
            texttemplate="%{z:.2f}", hovertemplate="%{y} · %{x}: %{z:.3f}<extra>" + name + "</extra>",
        ), row=1, col=col)
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(title=_heatmap_title(view, step), height=380)
    return fig


def _pair_lines(views: xr.DataArray, pair: tuple[str, str]) -> go.Figure:
    """The cosine of one pair's gradients against the step, one line per view (whole encoder and each layer)."""
    first, second = pair
    cosine = views.sel(quantity="cosine", task=first, other_task=second)
    fig = go.Figure([go.Scatter(x=cosine.step.values, y=cosine.sel(view=v).values, mode="lines+markers", name=str(v)) for v in cosine.view.values])
    fig.add_hline(y=0, line_dash="dot", line_color="grey")
    fig.update_layout(title=f"Gradient cosine of {first}–{second} during training, per layer", xaxis_title="step", yaxis_title="cosine", yaxis_range=[-1.05, 1.05], height=380)
    return fig


def _pairs(tasks: Sequence[str]) -> list[tuple[str, str]]:
    return [(a, b) for i, a in enumerate(tasks) for b in tasks[i + 1 :]]


def _restyle_args(views: xr.DataArray, view: str, step: int) -> list:
    """Plotly ``update`` arguments that draw one view at one step in the three heatmaps (traces 0–2)."""
    z = [json_cells(matrix) for matrix in _matrices(views, view, step)]
    return [{"z": z}, {"title.text": _heatmap_title(view, step)}, [0, 1, 2]]


def _static_conflict_heatmaps(views: xr.DataArray, view: str, step: int) -> go.Figure:
    """The heatmaps with a layer menu and a step slider (which moves within the layer chosen)."""
    layers, steps = [str(v) for v in views.view.values], [int(s) for s in views.step.values]
    return menu_slider(
        _conflict_heatmaps(views, view, step), lambda i, j: _restyle_args(views, layers[i], steps[j]), layers, [str(s) for s in steps],
        prefix="step ", chosen=layers.index(view), active=steps.index(step), menu_y=1.22,
    )


def conflict_explorer(history: xr.Dataset, layer: str = WHOLE, step: int | None = None, pair: tuple[str, str] | None = None):
    """The task × task cosine, magnitude similarity and conflict frequency of a recorded conflict history, by layer and step.

    ``history``: a recorded ``gradient_conflict`` probe (see :func:`conflict_views`). The widgets pick the
    layer (:data:`WHOLE` for the whole encoder) and the recorded step; the three heatmaps redraw together.
    Clicking a cell of a heatmap shows that pair's cosine over training, one line per layer (the diagonal,
    a task with itself, is ignored). ``layer``, ``step`` (the last by default) and ``pair`` (the first two
    tasks by default) are the first selection; unknown ones are refused with the choices.

    Returns ``VBox([HBox([layer menu, step slider]), heatmaps FigureWidget, pair FigureWidget])``; in a
    batch run, :class:`Figures` of the heatmaps (a layer menu and a step slider, precomputed) and the pair
    curves (a menu over the pairs).
    """
    views = conflict_views(history)
    tasks = [str(t) for t in views.task.values]
    if len(tasks) < 2:
        raise ValueError(f"gradient conflict is between tasks; this history has {tasks}")
    steps = [int(s) for s in views.step.values]
    layer = _choose(layer, views.view.values.tolist(), "layer")
    step = steps[-1] if step is None else _choose(step, steps, "step")
    pair = tuple(pair) if pair is not None else (tasks[0], tasks[1])
    _choose(pair, _pairs(tasks) + [(b, a) for a, b in _pairs(tasks)], "task pair")
    if batch_run():
        lines = {f"{a}–{b}": _pair_lines(views, (a, b)) for a, b in _pairs(tasks)}
        return Figures([_static_conflict_heatmaps(views, layer, step), figure_menu(lines, "{}–{}".format(*sorted(pair, key=tasks.index)))])
    import ipywidgets as widgets

    heatmaps = go.FigureWidget(_conflict_heatmaps(views, layer, step))
    curves = go.FigureWidget(_pair_lines(views, pair))
    layer_menu = widgets.Dropdown(options=views.view.values.tolist(), value=layer, description="layer")
    step_slider = widgets.SelectionSlider(options=steps, value=step, description="step", continuous_update=False)

    def redraw(_=None) -> None:
        with heatmaps.batch_update():
            for trace, matrix in zip(heatmaps.data, _matrices(views, layer_menu.value, step_slider.value)):
                trace.z = matrix
            heatmaps.layout.title.text = _heatmap_title(layer_menu.value, step_slider.value)

    def show_pair(trace, points, state) -> None:
        if not points.xs or points.ys[0] == points.xs[0]:  # another trace's event, or a task with itself
            return
        _replace(curves, _pair_lines(views, (str(points.ys[0]), str(points.xs[0]))))

    layer_menu.observe(redraw, "value")
    step_slider.observe(redraw, "value")
    for trace in heatmaps.data:
        trace.on_click(show_pair)
    return LiveBox([widgets.HBox([layer_menu, step_slider]), heatmaps, curves])


# ---- 02: training methods ----

def _trade_off_label(pair: tuple[str, str]) -> str:
    return f"{pair[0]} against {pair[1]}"


def _empty(title: str) -> go.Figure:
    return go.Figure(layout=dict(title=title))


def methods_explorer(
    comparison: xr.Dataset, methods: Sequence[str] | None = None, task: str | None = None, pair: tuple[str, str] | None = None, split: str = "test",
):
    """Δm% bars, the trade-off between two tasks and the learning curves of a method comparison, for the methods picked.

    ``comparison`` is :func:`~workbench.studies.compare_methods`'s Dataset. The widgets pick the methods
    (a multi-select), the task of the learning curves, the pair of tasks of the trade-off and the split
    (validation or test) of the bars and the trade-off; the learning curves are always the validation
    metric during training. ``methods`` (all by default), ``task`` (the first), ``pair`` (the first two
    tasks) and ``split`` are the first selection; unknown ones are refused with the choices.

    Returns ``VBox([HBox([methods, VBox([task, pair, split])]), bars, trade-off, curves])`` (the figures are
    FigureWidgets); in a batch run, :class:`Figures` of the three for every method, with menus for the
    split (bars), the pair and split (trade-off) and the task (curves).
    """
    labels = [str(m) for m in comparison.method.values]
    tasks = [str(t) for t in comparison.task.values]
    if len(tasks) < 2:
        raise ValueError(f"a trade-off needs two tasks; this comparison has {tasks}")
    chosen = list(labels if methods is None else methods)
    if not chosen:
        raise ValueError(f"pick at least one method of {labels}")
    for method in chosen:
        _choose(method, labels, "method")
    task = _choose(tasks[0] if task is None else task, tasks, "task")
    pair = _choose(tuple(tasks[:2]) if pair is None else tuple(pair), _pairs(tasks), "task pair")
    split = _choose(split, _SPLITS, "split")
    if batch_run():
        return Figures([
            figure_menu({s: delta_m_bars(comparison, s) for s in _SPLITS}, split),
            figure_menu({f"{_trade_off_label(p)}, {s}": tradeoff(comparison, p, s) for p in _pairs(tasks) for s in _SPLITS}, f"{_trade_off_label(pair)}, {split}"),
            figure_menu({t: learning_curves(comparison, t) for t in tasks}, task),
        ])
    import ipywidgets as widgets

    picked = widgets.SelectMultiple(options=labels, value=tuple(chosen), rows=min(len(labels), 10), description="methods")
    task_menu = widgets.Dropdown(options=tasks, value=task, description="curves of")
    pair_menu = widgets.Dropdown(options=[(_trade_off_label(p), p) for p in _pairs(tasks)], value=pair, description="trade-off")
    split_toggle = widgets.ToggleButtons(options=list(_SPLITS), value=split, description="split")
    bars, trade, curves = (go.FigureWidget() for _ in range(3))

    def drawer(widget: go.FigureWidget, figure):
        """A callback that redraws ``widget`` as ``figure(the comparison of the picked methods)``, or asks for a method when none is picked."""
        def draw(_=None) -> None:
            now = list(picked.value)
            _replace(widget, figure(comparison.sel({"method": now})) if now else _empty("Pick at least one method"))
        return draw

    plots = (
        (bars, lambda selected: delta_m_bars(selected, split_toggle.value), (picked, split_toggle)),
        (trade, lambda selected: tradeoff(selected, pair_menu.value, split_toggle.value), (picked, split_toggle, pair_menu)),
        (curves, lambda selected: learning_curves(selected, task_menu.value), (picked, task_menu)),
    )
    for widget, figure, controls in plots:
        draw = drawer(widget, figure)
        for control in controls:
            control.observe(draw, "value")
        draw()
    return LiveBox([widgets.HBox([picked, widgets.VBox([task_menu, pair_menu, split_toggle])]), bars, trade, curves])
