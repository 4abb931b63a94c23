"""Plotly in JupyterLab and in the exported report: plotly.js is embedded only where a report is made."""

import json

import nbformat
import plotly.graph_objects as go
import plotly.io as pio
import pytest

from workbench import runner, viz

PLOTLY_MIMETYPE = "application/vnd.plotly.v1+json"


@pytest.fixture
def displayed(monkeypatch):
    """What is displayed as HTML while a test runs (the renderers put back as they were after it)."""
    import IPython.display

    shown = []
    monkeypatch.setattr(IPython.display, "display_html", lambda html, raw=False: shown.append(html))
    default = pio.renderers.default
    yield shown
    pio.renderers.default = default


def test_an_interactive_kernel_renders_plotly_s_mimetype_only(displayed, monkeypatch):
    monkeypatch.delenv("WORKBENCH_BATCH", raising=False)
    viz.use_offline_plotly()
    bundle = go.Figure(go.Scatter(y=[1, 3, 2]))._repr_mimebundle_()
    assert set(bundle) == {PLOTLY_MIMETYPE}
    assert displayed == []  # no plotly.js: JupyterLab draws the mimetype with plotly's own extension


def test_a_batch_run_embeds_plotly_js_once_and_adds_the_html(displayed, monkeypatch):
    monkeypatch.setenv("WORKBENCH_BATCH", "1")
    monkeypatch.setenv("WORKBENCH_PROGRESS", "1")
    viz.use_offline_plotly()
    bundles = [go.Figure(go.Scatter(y=[1, 3, 2]))._repr_mimebundle_() for _ in range(2)]
    assert [set(b) for b in bundles] == [{PLOTLY_MIMETYPE, "text/html"}] * 2
    assert all("Plotly.newPlot" in b["text/html"] and "<script src" not in b["text/html"] for b in bundles)
    assert len(displayed) == 1 and len(displayed[0]) > 3_000_000  # plotly.js, once
    assert "https://" not in bundles[0]["text/html"]


def test_the_plotly_jupyterlab_extension_is_installed():
    import sys
    from pathlib import Path

    assert (Path(sys.prefix) / "share" / "jupyter" / "labextensions" / "jupyterlab-plotly" / "package.json").is_file()


SOURCE = "import plotly.graph_objects as go\nfrom workbench import viz\nviz.use_offline_plotly()"


@pytest.mark.slow
def test_what_lab_saves_holds_no_plotly_js_and_a_report_holds_it_once(tmp_path, monkeypatch):
    """The same notebook executed in a kernel as in JupyterLab, then as the runner's kernels run it."""
    from nbclient import NotebookClient

    sizes = {}
    for batch in (False, True):
        if batch:
            monkeypatch.setenv("WORKBENCH_BATCH", "1")
        else:
            monkeypatch.delenv("WORKBENCH_BATCH", raising=False)
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(SOURCE), nbformat.v4.new_code_cell("go.Figure(go.Bar(y=[1, 2]))"), nbformat.v4.new_code_cell("go.Figure(go.Bar(y=[2, 1]))")])
        NotebookClient(nb, kernel_name=runner.ensure_kernel(), timeout=120, resources={"metadata": {"path": str(tmp_path)}}).execute()
        setup, *figures = [cell.outputs for cell in nb.cells]
        for outputs in figures:
            assert len(outputs) == 1 and outputs[0].output_type in ("display_data", "execute_result")
            assert set(outputs[0].data) - {"text/plain"} == ({PLOTLY_MIMETYPE, "text/html"} if batch else {PLOTLY_MIMETYPE})
        embedded = [o for o in setup if "text/html" in o.get("data", {})]
        assert len(embedded) == (1 if batch else 0)
        sizes[batch] = len(json.dumps(nb))
    assert sizes[False] < 50_000 and sizes[True] > 3_000_000, sizes
