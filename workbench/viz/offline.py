"""Plotly output that works offline, in JupyterLab and in the exported HTML report alike.

In an interactive kernel (JupyterLab) :func:`use_offline_plotly` makes every figure render as plotly's
own mimetype only: JupyterLab draws it natively, with the extension the plotly package installs
(``jupyterlab-plotly``), and the notebook Lab saves holds each figure's data but no copy of plotly.js.
In a batch run (:func:`workbench.progress.batch_run`: the runner's kernels, whose notebooks become the
HTML reports) it embeds plotly.js once in the notebook and every figure also carries an HTML snippet
that calls the embedded plotly.js (the HTML report shows it). Unlike plotly's ``notebook`` renderer it
loads no MathJax from a CDN, so the report references nothing outside its own file.
"""

from __future__ import annotations

import plotly.io as pio
from plotly.io._base_renderers import HtmlRenderer, PlotlyRenderer

from workbench.progress import batch_run

__all__ = ["use_offline_plotly"]

RENDERER = "workbench_offline"
INTERACTIVE_RENDERER = "plotly_mimetype"


class _OfflineRenderer(HtmlRenderer):
    def __init__(self) -> None:
        super().__init__(connected=False, full_html=False, global_init=False, include_plotlyjs=False)

    def to_mimebundle(self, fig_dict: dict) -> dict:
        html = pio.to_html(
            fig_dict, config=self.config, include_plotlyjs=False, include_mathjax=False,
            full_html=False, default_width="100%", default_height=525, validate=False,
        )
        return {**PlotlyRenderer(config=self.config).to_mimebundle(fig_dict), "text/html": html}


def use_offline_plotly() -> None:
    """Make figures render offline; call once per notebook, before its first figure.

    Interactively, figures are plotly's mimetype only; in a batch run plotly.js is displayed here, once,
    and every figure adds the HTML that draws it with that copy.
    """
    if not batch_run():
        pio.renderers.default = INTERACTIVE_RENDERER
        return
    pio.renderers[RENDERER] = _OfflineRenderer()
    pio.renderers.default = RENDERER
    HtmlRenderer(connected=False, global_init=True).activate()  # displays plotly.js, without MathJax from a CDN
