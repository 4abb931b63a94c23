"""Plotly output that works offline, in JupyterLab and in the exported HTML report alike.

:func:`use_offline_plotly` embeds plotly.js once in the notebook and makes every figure render as
both plotly's own mimetype (JupyterLab draws it natively) and an HTML snippet that calls the embedded
plotly.js (the HTML report shows it). Unlike plotly's ``notebook`` renderer it loads no MathJax from
a CDN, so the report references nothing outside its own file.
"""

from __future__ import annotations

import plotly.io as pio
from plotly.io._base_renderers import HtmlRenderer, PlotlyRenderer

__all__ = ["use_offline_plotly"]

RENDERER = "workbench_offline"


class _OfflineRenderer(HtmlRenderer):
    def __init__(self) -> None:
        super().__init__(connected=False, full_html=False, global_init=True, include_plotlyjs=False)

    def to_mimebundle(self, fig_dict: dict) -> dict:
        html = pio.to_html(
            fig_dict, config=self.config, include_plotlyjs=False, include_mathjax=False,
            full_html=False, default_width="100%", default_height=525, validate=False,
        )
        return {**PlotlyRenderer(config=self.config).to_mimebundle(fig_dict), "text/html": html}


def use_offline_plotly() -> None:
    """Embed plotly.js in the running notebook and make it the default renderer; call once per notebook."""
    pio.renderers[RENDERER] = _OfflineRenderer()
    pio.renderers.default = RENDERER
