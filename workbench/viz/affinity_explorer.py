"""Notebook 03's explorer: an affinity probe, a window of training steps and (for several studies) the
optimizer; the averaged affinity, the groups it chooses for ``k = 1 … K`` and their predicted against
measured payoff redraw together.

The groups are TAG's choice (:func:`~workbench.probes.grouping.select_groups` on
:func:`~workbench.probes.grouping.affinity_scores`) from the affinity averaged over the window; the
predicted payoff is that choice's value (the mean over tasks of the affinity it is served by), the
measured one is what :func:`~workbench.studies.grouping.study_task_grouping` reports: the mean over
tasks and seeds of each task's test loss in its group, relative to the task trained alone (1: as good
as one network per task; lower is better). It needs every subset measured; otherwise it is NaN.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
import xarray as xr
from plotly.subplots import make_subplots

from workbench.probes.grouping import affinity_scores, select_groups
from workbench.probes.registry import PROBES, task_matrix
from workbench.progress import batch_run
from workbench.studies.transfer import grouping_loss, subset_label
from workbench.viz.explorer_kit import LiveBox, busy, menu_slider, show, shown_traces

__all__ = ["AffinityView", "affinity_view", "affinity_view_figure", "affinity_explorer"]

_CELLS = [(1, 1), (1, 2), (2, 1)]  # the (row, col) of the heatmap, the payoff scatter and the table


@dataclass(frozen=True)
class AffinityView:
    """One state of the explorer: the averaged ``(source, target)`` ``affinity`` and, per ``k``, its groups and payoffs.

    ``groups[i]``, ``predicted[i]`` and ``measured[i]`` belong to ``ks[i]``; ``note`` says why there are
    none (an affinity with missing pairs).
    """

    affinity: xr.DataArray
    ks: list[int]
    groups: list[list[tuple[str, ...]]]
    predicted: list[float]
    measured: list[float]
    note: str = ""


def _measured_payoff(transfer: xr.Dataset, groups) -> float:
    """The mean over tasks and seeds of the test loss served by ``groups`` over each task's loss alone (NaN if a group was not measured)."""
    tasks = [str(t) for t in transfer.task.values]
    try:
        served = grouping_loss(transfer, groups)
    except ValueError:
        return float("nan")
    alone = xr.concat([transfer.loss.sel(split="test", subset=t, task=t, drop=True) for t in tasks], dim="task").assign_coords(task=tasks)
    return float((served / alone).mean("task").mean("seed"))


def affinity_view(study, probe: str, start: int, stop: int, max_groups: int) -> AffinityView:
    """The probe's affinity in ``study`` (a :class:`~workbench.studies.GroupingStudy`) averaged over the recorded steps in ``[start, stop]``, and its groups."""
    if probe not in study.affinities:
        raise ValueError(f"the study recorded no {probe!r}; it recorded {sorted(study.affinities)}")
    affinity = task_matrix(study.affinities[probe], start, stop + 1)
    ks, groups, predicted, measured = [], [], [], []
    try:
        candidates = affinity_scores(affinity)
    except ValueError as error:
        return AffinityView(affinity, [], [], [], [], note=str(error))
    for k in range(1, max_groups + 1):
        chosen, value = select_groups(candidates, k)
        ks.append(k)
        groups.append(chosen)
        predicted.append(value)
        measured.append(_measured_payoff(study.transfer, chosen))
    return AffinityView(affinity, ks, groups, predicted, measured)


def _labels(view: AffinityView) -> list[str]:
    return [" | ".join(subset_label(g) for g in groups) for groups in view.groups]


def _traces(view: AffinityView, limit: float) -> list:
    """The heatmap, the payoff scatter and the table of one view (in that order)."""
    tasks = [str(t) for t in view.affinity.source.values]
    values = view.affinity.values
    heatmap = go.Heatmap(
        z=values, x=tasks, y=tasks, zmin=-limit, zmax=limit, colorscale="RdBu", text=np.round(values, 3), texttemplate="%{text}",
        colorbar=dict(x=0.45, len=0.55, y=0.75), hovertemplate="%{y} → %{x}: %{z:.3g}<extra></extra>",
    )
    labels = _labels(view)
    scatter = go.Scatter(
        x=view.predicted, y=view.measured, mode="markers+text", text=[f"k={k}" for k in view.ks], textposition="top center",
        customdata=labels, hovertemplate="%{text}: %{customdata}<br>predicted %{x:.3g}, measured %{y:.3f}<extra></extra>", marker=dict(size=11, color="#4c78a8"),
    )
    cells = [view.ks, labels, [f"{v:.3g}" for v in view.predicted], [f"{v:.3f}" for v in view.measured]] if view.ks else [["–"], [view.note], [""], [""]]
    table = go.Table(header=dict(values=["k", "groups", "predicted (TAG value)", "measured (relative test loss)"]), cells=dict(values=cells, align="left"))
    return [heatmap, scatter, table]


def _layout(title: str) -> go.Figure:
    fig = make_subplots(
        rows=2, cols=2, specs=[[{"type": "heatmap"}, {"type": "xy"}], [{"type": "table", "colspan": 2}, None]], row_heights=[0.62, 0.38],
        subplot_titles=["averaged affinity (rows: source)", "predicted against measured payoff", ""], vertical_spacing=0.1,
    )
    fig.add_hline(y=1.0, line_dash="dot", line_color="grey", annotation_text="one network per task", row=1, col=2)
    fig.update_yaxes(autorange="reversed", row=1, col=1)
    fig.update_xaxes(title_text="predicted: mean served affinity (higher is better)", row=1, col=2)
    fig.update_yaxes(title_text="measured: relative test loss (lower is better)", row=1, col=2)
    fig.update_layout(title=title, height=720, showlegend=False)
    return fig


def _limit(history: xr.Dataset) -> float:
    variable = history[PROBES.entry(history.attrs["probe"]).traits["pairwise"]]
    return float(np.nanmax(np.abs(variable.values))) or 1.0


def affinity_view_figure(view: AffinityView, title: str, limit: float | None = None) -> go.Figure:
    """The heatmap of ``view``'s affinity, its payoff scatter (one point per ``k``) and the table of its groups.

    ``limit`` fixes the colour scale at ``±limit`` (default: the view's own largest magnitude).
    """
    fig = _layout(title)
    limit = limit or float(np.nanmax(np.abs(view.affinity.values))) or 1.0
    for trace, (row, col) in zip(_traces(view, limit), _CELLS):
        fig.add_trace(trace, row=row, col=col)
    return fig


def _studies(study) -> dict[str, object]:
    return dict(study) if isinstance(study, Mapping) else {"": study}


def _chosen(value: str | None, options: list[str], what: str) -> str:
    if value is None:
        return options[0]
    if value not in options:
        raise ValueError(f"unknown {what} {value!r}; choose one of {options}")
    return value


def affinity_explorer(study, title: str, max_groups: int = 3, probe: str | None = None, optimizer: str | None = None):
    """Widgets over the probe, a step range and the optimizer, redrawing :func:`affinity_view_figure`.

    ``study`` is a :class:`~workbench.studies.GroupingStudy`, or ``{optimizer: study}`` (a menu picks
    it). The probes offered are the registered affinity probes (``PROBES.names(family="affinity")``)
    the studies recorded; ``probe`` and ``optimizer`` are the first shown. Each view is computed once
    and kept. In a batch run (a report) it returns one figure instead: a menu over the optimizers and
    probes, and a slider over the window's last step (the window starting at the first recorded step),
    every view precomputed.
    """
    studies = _studies(study)
    optimizers = list(studies)
    registered = PROBES.names(family="affinity")
    probes = [p for p in registered if all(p in s.affinities for s in studies.values())]
    if not probes:
        raise ValueError(f"the studies recorded none of the registered affinity probes {registered}")
    first_optimizer, first_probe = _chosen(optimizer, optimizers, "optimizer"), _chosen(probe, probes, "probe")
    cache: dict[tuple, AffinityView] = {}

    def view(opt: str, name: str, start: int, stop: int) -> AffinityView:
        key = (opt, name, start, stop)
        if key not in cache:
            cache[key] = affinity_view(studies[opt], name, start, stop, max_groups)
        return cache[key]

    def label(opt: str, name: str) -> str:
        return f"{opt}: {name}" if opt else name

    def steps_of(opt: str, name: str) -> list[int]:
        return [int(s) for s in studies[opt].affinities[name].step.values]

    pairs = [(o, p) for o in optimizers for p in probes]
    pairs.sort(key=lambda pair: pair != (first_optimizer, first_probe))
    steps = steps_of(*pairs[0])
    if any(steps_of(*pair) != steps for pair in pairs):
        raise ValueError(f"the probes recorded different steps ({ {label(*pair): steps_of(*pair) for pair in pairs} }); explore one study at a time")
    if batch_run():
        fig = _layout(title)
        for opt, name in pairs:
            limit = _limit(studies[opt].affinities[name])
            for stop in steps:
                for trace, (row, col) in zip(_traces(view(opt, name, steps[0], stop), limit), _CELLS):
                    fig.add_trace(trace, row=row, col=col)
        per_pair = 3 * len(steps)
        return menu_slider(
            fig, shown_traces(lambda i, j: [i * per_pair + 3 * j <= t < i * per_pair + 3 * j + 3 for t in range(len(fig.data))],
                              lambda i, j: f"{title}: {label(*pairs[i])}, steps {steps[0]}–{steps[j]}"),
            [label(*pair) for pair in pairs], [str(s) for s in steps], prefix="averaged over steps up to ",
        )

    import ipywidgets as widgets

    menus = []
    optimizer_menu = widgets.Dropdown(options=optimizers, value=first_optimizer, description="optimizer")
    if len(optimizers) > 1:
        menus.append(optimizer_menu)
    probe_menu = widgets.Dropdown(options=probes, value=first_probe, description="probe")
    window = widgets.SelectionRangeSlider(options=steps, index=(0, len(steps) - 1), description="steps", continuous_update=False)
    status = widgets.Label()
    output = widgets.Output()
    controls = [*menus, probe_menu, window]

    def redraw(_=None) -> None:
        opt, name = optimizer_menu.value, probe_menu.value
        start, stop = window.value
        with busy(controls, status, "computing…") if (opt, name, start, stop) not in cache else nullcontext():
            shown = view(opt, name, start, stop)
        show(output, affinity_view_figure(shown, f"{title}: {label(opt, name)}, steps {start}–{stop}", _limit(studies[opt].affinities[name])))

    for control in controls:
        control.observe(redraw, "value")
    redraw()
    return LiveBox([widgets.HBox([*menus, probe_menu, window, status]), output])
