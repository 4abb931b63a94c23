"""Pictures of the experts' probe (:func:`~workbench.probes.experts.expert_gates`): which experts serve which task, over training."""

from __future__ import annotations

import plotly.graph_objects as go
import xarray as xr

from workbench.viz.explorer_kit import json_cells, menu_slider

__all__ = ["expert_utilisation"]


def expert_utilisation(history: xr.Dataset, title: str = "Gate mass per task on each expert") -> go.Figure:
    """A task × expert heatmap of ``utilisation`` with a slider over the recorded steps and a menu over the levels.

    ``history`` is a recorded ``expert_gates`` probe (``(step, level, task, expert)``) or one reading
    (no ``step``). The figure starts at the last step of the first level; no kernel is needed to move it.
    """
    if history.attrs.get("probe") != "expert_gates":
        raise ValueError(f"expert_utilisation draws an expert_gates reading, not {history.attrs.get('probe')!r}")
    utilisation = history.utilisation if "step" in history.dims else history.utilisation.expand_dims(step=[0])
    levels, steps = [str(v) for v in utilisation.level.values], [int(s) for s in utilisation.step.values]
    fig = go.Figure(go.Heatmap(
        z=json_cells(utilisation.isel(step=-1, level=0).values), x=[str(e) for e in utilisation.expert.values], y=[str(t) for t in utilisation.task.values],
        zmin=0, zmax=1, colorscale="Viridis", colorbar=dict(title="gate mass"), hovertemplate="%{y} on %{x}: %{z:.3f}<extra></extra>",
    ))
    fig.update_layout(xaxis_title="expert", yaxis_title="task", yaxis_autorange="reversed")

    def show(i: int, j: int) -> list:
        return [{"z": [json_cells(utilisation.isel(level=i, step=j).values)]}, {"title.text": f"{title}: {levels[i]}, step {steps[j]}"}, [0]]

    return menu_slider(fig, show, levels, [str(s) for s in steps] if len(steps) > 1 else (), prefix="step ", active=-1)
