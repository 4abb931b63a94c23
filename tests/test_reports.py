"""The notebooks run end to end, and their HTML reports render offline in a real browser."""

import subprocess
import sys

import pytest

from tests.browser import external_references, render
from workbench import results

NOTEBOOK = "notebooks/01_gradient_conflict.ipynb"


@pytest.fixture(scope="module")
def conflict_report(tmp_path_factory):
    """``workbench run`` on the first notebook, quick, from the command line as a user would call it."""
    out = tmp_path_factory.mktemp("reports")
    done = subprocess.run(
        [sys.executable, "-m", "workbench.cli", "run", NOTEBOOK, "-p", "quick", "True", "-p", "steps", "50", "-o", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.mark.slow
def test_run_writes_notebook_html_and_results(conflict_report):
    assert (conflict_report / "01_gradient_conflict.ipynb").exists()
    assert (conflict_report / "01_gradient_conflict.html").exists()
    history = results.load(conflict_report / "01_gradient_conflict" / "conflict_history.nc")
    assert history.step.values.tolist() == [0, 10, 20, 30, 40]
    training = results.load(conflict_report / "01_gradient_conflict" / "training_history.nc")
    assert training.sizes["step"] == 50


@pytest.mark.slow
def test_report_renders_every_figure_offline(conflict_report):
    page = conflict_report / "01_gradient_conflict.html"
    html = page.read_text()
    figures = html.count('class="plotly-graph-div"')
    assert figures == 5
    assert "Spearman rank correlation, |planted similarity| vs mean cosine" in html
    assert "Agreement of the probe with the reference during training" in html
    assert "training:" not in html, "a progress-bar frame was frozen into the report"
    assert external_references(html) == []
    dom, requests = render(page)
    assert requests == []
    assert dom.count("plot-container plotly") == figures, "a figure did not render"
    assert dom.count('class="main-svg"') >= figures


@pytest.mark.slow
@pytest.mark.parametrize("dataset, layer", [("multidigits", "0.weight"), ("lexicon", "transformer.encoder.layer.5")])
def test_conflict_report_on_real_tasks(tmp_path, dataset, layer):
    """The same notebook on MultiDigits (CNN) and the lexicon tasks (MiniLM, layers are its blocks), offline."""
    done = subprocess.run(
        [sys.executable, "-m", "workbench.cli", "run", NOTEBOOK, "-p", "quick", "True", "-p", "dataset", dataset, "-o", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    history = results.load(tmp_path / "01_gradient_conflict" / "conflict_history.nc")
    assert layer in history.layer.values.tolist()
    reference = results.load(tmp_path / "01_gradient_conflict" / "reference.nc")
    assert reference.attrs["dataset"] == dataset and reference.sizes["task"] == history.sizes["task"]
    page = tmp_path / "01_gradient_conflict.html"
    html = page.read_text()
    assert f"{dataset}: " in html and "LOAD REPORT" not in html
    dom, requests = render(page)
    assert requests == [] and external_references(html) == []
    assert dom.count("plot-container plotly") == html.count('class="plotly-graph-div"') == 5


@pytest.mark.slow
def test_browser_check_catches_a_page_that_loads_from_the_network(tmp_path):
    page = tmp_path / "leaky.html"
    page.write_text('<html><body><script src="http://plotly.invalid/plotly.js"></script><p>hi</p></body></html>')
    assert external_references(page.read_text()) == ["http://plotly.invalid/plotly.js"]
    _, requests = render(page)
    assert requests == ["http://plotly.invalid/plotly.js"]
