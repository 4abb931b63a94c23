"""What the explorers and the live monitor share: the box they are shown in, which a saved notebook replaces by
"re-run this cell" once its kernel is gone; a figure in an ``Output`` widget; a busy sign; and the report's
fallback, a figure whose menu picks a group of traces and whose slider moves within it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager

import ipywidgets as widgets
import numpy as np
import plotly.graph_objects as go
from plotly.io._base_renderers import PlotlyRenderer

from workbench.progress import batch_run

__all__ = ["LiveBox", "RERUN", "show", "busy", "json_cells", "Update", "menu_slider", "shown_traces", "figure_menu"]

RERUN = "Re-run this cell to explore: the kernel that drew this explorer has stopped."
_LIVE, _NOTE = "wb-live", "wb-live-note"
# Shown by the note's own output while it is drawn. The note hides while its cell's box is connected to a kernel;
# a box whose kernel restarted (the widget manager marks its views disconnected) hides, and so does the manager's
# "Error displaying widget: model not found" (a saved notebook reopened on a new kernel) beside the note.
_STYLE = (
    f".jp-OutputArea:has(.{_LIVE}:not(.jupyter-widgets-disconnected)) .{_NOTE} {{display: none}}"
    f" .{_LIVE}.jupyter-widgets-disconnected {{display: none}}"
    f" .jp-OutputArea:has(.{_NOTE}) .jp-OutputArea-output.jupyter-widgets:not(:has(*)) {{display: none}}"
)


class LiveBox(widgets.VBox):
    """A ``VBox`` of widgets that lives as long as its kernel, shown with a note that replaces it once the kernel is gone.

    Displayed, it makes two outputs: the box, and an HTML note (``note``, :data:`RERUN` by default) that a style rule
    hides while the box is connected. After a kernel restart JupyterLab marks the box's views disconnected, and in
    a saved notebook reopened on a new kernel its widget model is missing: either way the note shows instead,
    and the dead box, or the widget manager's "Error displaying widget: model not found", is hidden. In an exported HTML file without widget state
    the note shows as well. A batch run's notebook becomes a report no kernel drives, so there it is refused.
    """

    def __init__(self, children=(), *, note: str = RERUN, **kwargs):
        super().__init__(children, **kwargs)
        self.note = note
        self.add_class(_LIVE)

    def _ipython_display_(self) -> None:
        from html import escape

        from IPython.display import HTML, display

        if batch_run():
            raise RuntimeError("a live widget is not shown in a batch run (WORKBENCH_BATCH=1), whose report no kernel drives")
        display(self._repr_mimebundle_(), raw=True)
        display(HTML(f'<div class="{_NOTE}">{escape(self.note)}</div><style>{_STYLE}</style>'))


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


def json_cells(matrix, digits: int = 3) -> list[list[float | None]]:
    """A 2-d array as the nested lists a plotly ``update`` carries: each value rounded, NaN as ``None`` (a gap)."""
    return [[None if np.isnan(v) else round(float(v), digits) for v in row] for row in matrix]


Update = Callable[[int, int], list]
"""``update(i, j)``: plotly's ``update`` arguments, ``[trace changes, layout changes]`` and optionally the indices of
the traces changed, that show menu item ``i`` at step ``j``."""


def menu_slider(
    figure: go.Figure, update: Update, menu: Sequence[str], steps: Sequence[str] = (), *,
    prefix: str = "", chosen: int = 0, active: int = -1, menu_y: float = 1.18,
) -> go.Figure:
    """Give ``figure`` a menu over ``menu`` and, given ``steps``, a slider over them that moves within the chosen item.

    ``update(i, j)`` shows item ``i`` at step ``j`` (``j`` is 0 without steps). A menu button shows its item at step
    ``active`` and puts in the item's own slider (plotly.js keeps one slider, so each item carries one), so no
    kernel is needed. The figure starts at item ``chosen``, step ``active``; a menu of one item is left out.
    """
    active = active % len(steps) if steps else 0

    def with_layout(i: int, j: int, **layout) -> list:
        data, changes, *traces = update(i, j)
        return [data, {**changes, **layout}, *traces]

    def slider(i: int) -> dict:
        return dict(active=active, currentvalue=dict(prefix=prefix), pad=dict(t=40),
                    steps=[dict(label=label, method="update", args=update(i, j)) for j, label in enumerate(steps)])

    buttons = [dict(label=label, method="update", args=with_layout(i, active, **({"sliders": [slider(i)]} if steps else {})))
               for i, label in enumerate(menu)]
    data, changes, *traces = update(chosen, active)
    figure.plotly_update(restyle_data=data, relayout_data=changes, trace_indexes=traces[0] if traces else None)
    figure.update_layout(
        sliders=[slider(chosen)] if steps else [],
        updatemenus=[dict(buttons=buttons, active=chosen, direction="down", x=1.0, xanchor="right", y=menu_y, yanchor="top")] if len(menu) > 1 else [],
    )
    return figure


def shown_traces(visible: Callable[[int, int], list[bool]], titles: Callable[[int, int], str]) -> Update:
    """The :data:`Update` that shows the traces ``visible(i, j)`` under the title ``titles(i, j)``."""
    return lambda i, j: [{"visible": visible(i, j)}, {"title.text": titles(i, j)}]


def figure_menu(figures: Mapping[str, go.Figure], active: str) -> go.Figure:
    """One figure holding every figure's traces, the ``active`` one's shown, and a menu that shows another's traces
    with its title and axis titles (the figures share everything else of their layout)."""
    labels = list(figures)
    owner = [label for label in labels for _ in figures[label].data]
    fig = go.Figure(figures[active])
    fig.data = ()
    fig.add_traces([trace for label in labels for trace in go.Figure(figures[label]).data])

    def show(i: int, _step: int) -> list:
        layout = figures[labels[i]].layout
        return [{"visible": [o == labels[i] for o in owner]},
                {"title.text": layout.title.text, "xaxis.title.text": layout.xaxis.title.text, "yaxis.title.text": layout.yaxis.title.text}]

    return menu_slider(fig, show, labels, chosen=labels.index(active))
