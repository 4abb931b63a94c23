"""What the explorers of notebooks 03–05 share: a figure in an ``Output`` widget, a busy sign, and the
report's fallback, a figure whose menu picks a group of traces and whose slider moves within it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager

import plotly.graph_objects as go
from plotly.io._base_renderers import PlotlyRenderer

__all__ = ["show", "busy", "menu_slider"]


def show(output, figure: go.Figure) -> None:
    """Replace what the ``Output`` widget ``output`` shows by ``figure`` (plotly's own mimetype, which JupyterLab draws).

    The figure is written into ``output.outputs`` directly, so it lands there from a widget callback
    and outside a kernel alike (where ``output.outputs[0]["data"]`` holds the figure's JSON).
    """
    bundle = PlotlyRenderer().to_mimebundle(figure.to_dict())
    output.outputs = ({"output_type": "display_data", "data": {**bundle, "text/plain": f"figure: {figure.layout.title.text}"}, "metadata": {}},)


@contextmanager
def busy(controls: Sequence, status, message: str):
    """Disable ``controls`` and show ``message`` in the ``status`` label until the block ends (also on an error)."""
    before = [control.disabled for control in controls]
    for control in controls:
        control.disabled = True
    status.value = message
    try:
        yield
    finally:
        for control, was in zip(controls, before):
            control.disabled = was
        status.value = ""


def menu_slider(
    figure: go.Figure, visible: Callable[[int, int], list[bool]], menu: Sequence[str], steps: Sequence[str], *,
    prefix: str, titles: Callable[[int, int], str], active: int = -1,
) -> go.Figure:
    """Give ``figure`` a menu over ``menu`` and a slider over ``steps``, the slider moving within the chosen item.

    ``visible(i, j)`` is the traces' visibility for menu item ``i`` at step ``j`` and ``titles(i, j)`` the
    figure's title there. A menu button shows its item at step ``active`` and puts in the item's own
    slider (plotly.js keeps one slider, so each item carries one), so no kernel is needed.
    """
    active = active % len(steps)

    def slider(i: int) -> dict:
        return dict(
            active=active, currentvalue=dict(prefix=prefix), pad=dict(t=40),
            steps=[dict(label=label, method="update", args=[{"visible": visible(i, j)}, {"title.text": titles(i, j)}]) for j, label in enumerate(steps)],
        )

    buttons = [
        dict(label=label, method="update", args=[{"visible": visible(i, active)}, {"title.text": titles(i, active), "sliders": [slider(i)]}])
        for i, label in enumerate(menu)
    ]
    for trace, shown in zip(figure.data, visible(0, active)):
        trace.visible = shown
    figure.update_layout(
        title_text=titles(0, active), sliders=[slider(0)],
        updatemenus=[dict(buttons=buttons, direction="down", x=1.0, xanchor="right", y=1.18, yanchor="top")] if len(menu) > 1 else [],
    )
    return figure
