"""Notebook 04's explorer: pick a sample and a task; that task's input attribution on the sample (digit
pixels beside the image, or the sample's word pieces coloured) and every task's representation
saliency on the same sample, side by side.

The representation saliency of a task is its ``∂L_t/∂Z`` averaged over the channels at every position
(a spatial map; one colour scale for all tasks of the sample); a representation without positions
(MiniLM's pooled vector) shows its channels instead, a row per task.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
import xarray as xr
from plotly.subplots import make_subplots

from workbench.progress import batch_run
from workbench.viz.explorer_kit import LiveBox, menu_slider, show, shown_traces

__all__ = ["saliency_traces", "saliency_sample_figure", "saliency_explorer"]

_DIVERGING = "RdBu"


def _positions(saliency: xr.Dataset) -> xr.DataArray:
    """The channel-mean saliency ``(task, sample, *positions)``, or ``(task, sample, channel)`` without positions."""
    values = saliency.saliency
    return values.mean("channel") if values.ndim > 3 else values


def _limit(values: np.ndarray) -> float:
    finite = np.abs(values[np.isfinite(values)])
    return float(finite.max()) if finite.size and finite.max() > 0 else 1.0


def saliency_traces(
    attribution: xr.Dataset, saliency: xr.Dataset, sample: int, task: str, *, images: np.ndarray | None = None, tokens: Sequence[Sequence[str]] | None = None,
) -> tuple[list[go.Heatmap], list[go.Heatmap]]:
    """The input traces (the image and ``task``'s pixel attribution, or the coloured word pieces) and one saliency trace per task (one for all without positions).

    ``attribution`` is :func:`~workbench.probes.input_attribution`'s (``(task, sample, input_channel,
    row, column)`` with ``images`` ``(N, 1, H, W)``, or ``(task, sample, token)`` with ``tokens[s]``
    the word pieces of sample ``s``); ``saliency`` is :func:`~workbench.probes.task_saliency`'s on the
    same samples. ``sample`` is a position along ``sample``.
    """
    values = attribution.attribution.sel(task=task).isel(sample=sample)
    if tokens is not None:
        pieces = list(tokens[sample])
        row = values.values[: len(pieces)]
        inputs = [go.Heatmap(
            z=[row], text=[pieces], texttemplate="%{text}", zmin=-_limit(row), zmax=_limit(row), colorscale=_DIVERGING, showscale=False,
            hovertemplate="%{text}: %{z:.3g}<extra></extra>",
        )]
    elif images is not None:
        pixels = values.sum("input_channel").values
        inputs = [
            go.Heatmap(z=images[sample, 0][::-1], colorscale="Greys", reversescale=True, showscale=False, hoverinfo="skip"),
            go.Heatmap(z=pixels[::-1], zmin=-_limit(pixels), zmax=_limit(pixels), colorscale=_DIVERGING, showscale=False, hovertemplate="%{z:.3g}<extra></extra>"),
        ]
    else:
        raise ValueError("give the digit images (images=) or the word pieces of each sample (tokens=)")
    maps = _positions(saliency).isel(sample=sample)
    limit = _limit(maps.values)
    tasks = [str(t) for t in maps.task.values]
    if "channel" in maps.dims:
        return inputs, [go.Heatmap(z=maps.values, y=tasks, zmin=-limit, zmax=limit, colorscale=_DIVERGING, hovertemplate="%{y}, channel %{x}: %{z:.3g}<extra></extra>")]
    grids = [maps.sel(task=t).values.reshape(maps.sel(task=t).shape[0], -1) if maps.ndim > 2 else maps.sel(task=t).values[None] for t in tasks]
    return inputs, [
        go.Heatmap(z=grid[::-1], zmin=-limit, zmax=limit, colorscale=_DIVERGING, showscale=i == len(tasks) - 1, hovertemplate=f"{t}: %{{z:.3g}}<extra></extra>")
        for i, (t, grid) in enumerate(zip(tasks, grids))
    ]


def _layout(n_inputs: int, tasks: list[str], per_task: bool) -> tuple[go.Figure, list[tuple[int, int]]]:
    """The subplot grid and the cell of every trace: the inputs on the first row, the saliency on the second."""
    cols = max(len(tasks), 2) if per_task else 2
    half = (cols + 1) // 2
    if n_inputs == 2:
        first = [{"colspan": half}, *[None] * (half - 1), {"colspan": cols - half}, *[None] * (cols - half - 1)]
        input_cells, input_titles = [(1, 1), (1, half + 1)], ["input", "attribution of the chosen task"]
    else:
        first, input_cells, input_titles = [{"colspan": cols}, *[None] * (cols - 1)], [(1, 1)], ["attribution of the chosen task per word piece"]
    second = [{} for _ in range(len(tasks))] + [None] * (cols - len(tasks)) if per_task else [{"colspan": cols}, *[None] * (cols - 1)]
    saliency_cells = [(2, c + 1) for c in range(len(tasks))] if per_task else [(2, 1)]
    titles = input_titles + ([f"saliency of {t}" for t in tasks] if per_task else ["saliency of every task, per channel"])
    fig = make_subplots(rows=2, cols=cols, specs=[first, second], subplot_titles=titles, vertical_spacing=0.12, horizontal_spacing=0.03)
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False)
    if not per_task:
        fig.update_yaxes(showticklabels=True, row=2, col=1)
    fig.update_layout(height=560, showlegend=False)
    return fig, input_cells + saliency_cells


def _cells(saliency: xr.Dataset, tokens) -> tuple[go.Figure, list[tuple[int, int]], list[tuple[int, int]]]:
    """The figure and the cells of the input traces and of the saliency traces."""
    n_inputs = 1 if tokens is not None else 2
    fig, cells = _layout(n_inputs, [str(t) for t in saliency.task.values], per_task=saliency.saliency.ndim > 3)
    return fig, cells[:n_inputs], cells[n_inputs:]


def saliency_sample_figure(
    attribution: xr.Dataset, saliency: xr.Dataset, sample: int, task: str, title: str, *, images: np.ndarray | None = None, tokens: Sequence[Sequence[str]] | None = None,
) -> go.Figure:
    """:func:`saliency_traces` of one sample and task in one figure: the inputs above, the saliency below."""
    inputs, maps = saliency_traces(attribution, saliency, sample, task, images=images, tokens=tokens)
    fig, input_cells, saliency_cells = _cells(saliency, tokens)
    for trace, (row, col) in zip([*inputs, *maps], [*input_cells, *saliency_cells]):
        fig.add_trace(trace, row=row, col=col)
    fig.update_layout(title=title)
    return fig


def saliency_explorer(
    attribution: xr.Dataset, saliency: xr.Dataset, title: str, *, images: np.ndarray | None = None, tokens: Sequence[Sequence[str]] | None = None,
    sample: int = 0, task: str | None = None, report_samples: int = 6,
):
    """A sample slider and a task menu over :func:`saliency_sample_figure` (``sample`` and ``task`` shown first).

    In a batch run (a report) it returns one figure instead, the first ``report_samples`` samples
    precomputed: a menu over the tasks and a slider over the samples.
    """
    tasks = [str(t) for t in attribution.attribution.task.values]
    if [str(t) for t in saliency.task.values] != tasks:
        raise ValueError(f"the attribution's tasks {tasks} and the saliency's {saliency.task.values.tolist()} differ")
    n = attribution.sizes["sample"]
    if saliency.sizes["sample"] != n:
        raise ValueError(f"the attribution has {n} samples and the saliency {saliency.sizes['sample']}; give both the same samples")
    task = tasks[0] if task is None else task
    if task not in tasks:
        raise ValueError(f"unknown task {task!r}; the tasks are {tasks}")
    if not 0 <= sample < n:
        raise ValueError(f"sample {sample} is not among the {n} samples (0 to {n - 1})")

    def name(s: int, t: str) -> str:
        return f"{title}: sample {s}, attribution of {t}"

    if batch_run():
        shown = list(range(min(report_samples, n)))
        order = [task, *[t for t in tasks if t != task]]
        fig, input_cells, saliency_cells = _cells(saliency, tokens)
        keys: list[tuple[int, str | None]] = []  # the sample and task of every trace (None: the same for every task)

        def add(traces, cells, key) -> None:
            for trace, (row, col) in zip(traces, cells):
                fig.add_trace(trace, row=row, col=col)
                keys.append(key)

        shared = 0 if tokens is not None else 1  # the image is the same for every task
        for s in shown:
            for i, t in enumerate(order):
                inputs, maps = saliency_traces(attribution, saliency, s, t, images=images, tokens=tokens)
                if i == 0:
                    add(inputs[:shared], input_cells[:shared], (s, None))
                    add(maps, saliency_cells, (s, None))
                add(inputs[shared:], input_cells[shared:], (s, t))
        return menu_slider(
            fig, shown_traces(lambda i, j: [s == shown[j] and t in (None, order[i]) for s, t in keys], lambda i, j: name(shown[j], order[i])),
            order, [str(s) for s in shown], prefix="sample ", active=0,
        )

    import ipywidgets as widgets

    sample_slider = widgets.IntSlider(value=sample, min=0, max=n - 1, description="sample", continuous_update=False)
    task_menu = widgets.Dropdown(options=tasks, value=task, description="task")
    output = widgets.Output()

    def redraw(_=None) -> None:
        s, t = sample_slider.value, task_menu.value
        show(output, saliency_sample_figure(attribution, saliency, s, t, name(s, t), images=images, tokens=tokens))

    sample_slider.observe(redraw, "value")
    task_menu.observe(redraw, "value")
    redraw()
    return LiveBox([widgets.HBox([sample_slider, task_menu]), output])
