"""The notebooks run end to end, and their HTML reports and the reports index render offline in a real browser."""

import re
import subprocess
import sys
from html import escape
from pathlib import Path

import pytest

from tests.browser import external_references, open_page, render
from workbench import results, runner
from workbench.runner.index import write_index
from workbench.runner.parameters import title
from workbench.runner.record import RunFiles, RunRecord, write_record

NOTEBOOK = "notebooks/01_gradient_conflict.ipynb"
QUICK = {"quick": True, "steps": 50}


def run_quick(notebook: str, parameters: dict, out: Path) -> Path:
    """``workbench run`` from the command line, as a user would call it; returns the report's folder."""
    done = subprocess.run(
        [sys.executable, "-m", "workbench.cli", "run", notebook, *(a for k, v in parameters.items() for a in ("-p", k, str(v))), "-o", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return runner.report_folder(notebook, parameters, out)


def assert_renders_offline(page: Path, figures: int) -> str:
    """Every plotly figure of ``page`` renders in Chromium with networking off, with no request and no JavaScript error."""
    html = page.read_text()
    assert html.count('class="plotly-graph-div"') == figures
    assert external_references(html) == []
    assert not re.search(r"(training|methods): +\d+%", html), "a progress-bar frame was frozen into the report"
    opened = open_page(page)
    assert opened.requests == [] and opened.errors == []
    assert opened.dom.count("plot-container plotly") == figures, "a figure did not render"
    return html


@pytest.fixture(scope="module")
def conflict_report(tmp_path_factory):
    """The first notebook, quick."""
    return run_quick(NOTEBOOK, QUICK, tmp_path_factory.mktemp("reports"))


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
    html = assert_renders_offline(conflict_report / "01_gradient_conflict.html", figures=7)  # the explorer: 2
    assert "Spearman rank correlation, |realised similarity| vs mean cosine" in html
    assert "Agreement of the probe with the reference during training" in html
    assert str(Path.cwd()) not in html and str(conflict_report) not in html, "the report names a path of this machine"


@pytest.mark.slow
def test_index_opens_offline_and_its_links_resolve(conflict_report):
    out = conflict_report.parents[2]  # OUTPUT/runs/NAME/VALUES
    index = out / "index.html"
    links = re.findall(r'href="([^"]+)"', index.read_text())
    assert conflict_report.relative_to(out).as_posix() == "runs/01_gradient_conflict/steps=50,quick=true"
    assert "runs/01_gradient_conflict/steps=50,quick=true/01_gradient_conflict.html" in links
    results_files = sorted(p.name for p in (conflict_report / "01_gradient_conflict").iterdir())
    assert len(links) == 2 + len(results_files) and all((out / link).is_file() for link in links), links  # report, results, log
    opened = open_page(index)
    assert opened.requests == [] and opened.errors == []
    assert escape(title(NOTEBOOK), quote=False) in opened.dom and ">complete<" in opened.dom


@pytest.mark.slow
def test_index_sorts_by_a_column_when_its_header_is_clicked(tmp_path):
    for name, duration in (("b", 30.0), ("a", 4.5), ("c", 100.0)):
        record = RunRecord(f"{name}.ipynb", f"run {name}", {"seed": 0}, "0" * 64, "complete", "2026-01-01T00:00:00+00:00", duration)
        write_record(RunFiles(tmp_path / name, name), record)
    page = write_index(tmp_path)
    clicks = "<script>const th = [...document.querySelectorAll('th')].find(h => h.textContent === 'duration (s)'); th.click(); %s</script>"
    orders = {}
    for name, script in (("ascending", clicks % ""), ("descending", clicks % "th.click();")):
        clicked = tmp_path / f"{name}.html"
        clicked.write_text(page.read_text().replace("</body>", script + "</body>"))
        opened = open_page(clicked)
        assert opened.errors == []
        orders[name] = re.findall(r"run ([abc])", opened.dom)
    assert orders == {"ascending": ["a", "b", "c"], "descending": ["c", "b", "a"]}  # 4.5 < 30 < 100: numbers, not text


@pytest.mark.slow
@pytest.mark.parametrize("dataset, layer", [("multidigits", "0.weight"), ("lexicon", "transformer.encoder.layer.5")])
def test_conflict_report_on_real_tasks(tmp_path, dataset, layer):
    """The same notebook on MultiDigits (CNN) and the lexicon tasks (MiniLM, layers are its blocks), offline."""
    folder = run_quick(NOTEBOOK, {"quick": True, "dataset": dataset}, tmp_path)
    history = results.load(folder / "01_gradient_conflict" / "conflict_history.nc")
    assert layer in history.layer.values.tolist()
    reference = results.load(folder / "01_gradient_conflict" / "reference.nc")
    assert reference.attrs["dataset"] == dataset and reference.sizes["task"] == history.sizes["task"]
    html = assert_renders_offline(folder / "01_gradient_conflict.html", figures=7)
    assert f"{dataset}: " in html and "LOAD REPORT" not in html


@pytest.mark.slow
def test_methods_report(tmp_path):
    """Notebook 02, quick: both problems, the comparison figures and the published claims, offline."""
    folder = run_quick("notebooks/02_mtl_methods.ipynb", {"quick": True}, tmp_path)
    from workbench.train import comparable_methods

    html = assert_renders_offline(folder / "02_mtl_methods.html", figures=11)  # the explorer: 3
    assert "mean difference" in html and "not DPP" not in html  # the claims tables
    digits = results.load(folder / "02_mtl_methods" / "multidigits_methods.nc")
    assert digits.method.values.tolist() == comparable_methods(per_family=1) == ["ew", "upgrad", "gradnorm"] and digits.sizes["seed"] == 1
    assert results.load(folder / "02_mtl_methods" / "lexicon_methods.nc").sizes["task"] == 4
    assert "multidigits: best Δm%" in html and "lexicon: best Δm%" in html  # the verdict on another shape of the data, stated
    sparse = results.load(folder / "02_mtl_methods" / "multidigits_missing_labels_claimed_methods.nc")
    assert sparse.attrs["data"]["labels_removed"] == 0.5
    own = results.load(folder / "02_mtl_methods" / "lexicon_per_task_claimed_methods.nc")
    assert own.attrs["data"]["mixing"] == "per_task"


@pytest.mark.slow
def test_architectures_report(tmp_path):
    """Notebook 06, quick: every architecture on MultiDigits and the lexicon tasks, the gates, HoME's remedies and the
    tabular claims, offline."""
    folder = run_quick("notebooks/06_architectures.ipynb", {"quick": True}, tmp_path)
    from workbench.models import ARCHITECTURES
    from workbench.studies import claimed_architectures, gated_architectures, load_problem

    gated = gated_architectures(load_problem("multidigits", n_train=50, n_validation=20, n_test=20))
    html = assert_renders_offline(folder / "06_architectures.html", figures=3 + len(gated))  # a gates heatmap per gated architecture
    digits = results.load(folder / "06_architectures" / "multidigits_architectures.nc")
    built = [name for name in ARCHITECTURES if name not in digits.attrs["skipped"]]
    assert digits.method.values.tolist() == ["ew"] and digits.architecture.values.tolist() == built and digits.sizes["task"] == 4
    assert sorted(p.name for p in (folder / "06_architectures").glob("multidigits_*_gates.nc")) == sorted(f"multidigits_{g}_gates.nc" for g in gated)
    assert "max_shared_ownership" in html and "gate mass per task on each expert" in html
    remedies = results.load(folder / "06_architectures" / "multidigits_home_remedies.nc")
    assert remedies.variant.values.tolist()[:2] == ["HoME", "without its remedies"] and "max_dead_fraction" in html
    tabular = results.load(folder / "06_architectures" / "tabular_task_cosine_-0.3_architectures.nc")
    assert tabular.architecture.values.tolist() == claimed_architectures()
    assert "ple beats mmoe" in html and "task cosine -0.3" in html  # the architecture claims' verdicts, stated
    lexicon = results.load(folder / "06_architectures" / "lexicon_architectures.nc")
    assert lexicon.sizes["task"] == 4 and "ple" in lexicon.attrs["skipped"] and "hps" in lexicon.architecture.values


@pytest.mark.slow
def test_parameter_efficient_report(tmp_path):
    """Notebook 07, quick: every scheme against full training on the ratings and the raters, memory, the conflict inside
    the adapter, LoraHub's compositions and the published claims, offline."""
    folder = run_quick("notebooks/07_parameter_efficient.ipynb", {"quick": True}, tmp_path)
    from workbench.studies import claimed_schemes, load_problem, sharing_schemes

    sample = claimed_schemes(per_family=1)
    assert sample == ["lora", "task_lora", "align_lora", "mtl_lora", "molora", "adapter", "adapter_fusion", "scalearn"]
    shared = [s for s in sharing_schemes(load_problem("lexicon", max_words=30)) if s in sample]
    html = assert_renders_offline(folder / "07_parameter_efficient.html", figures=7 + len(shared))  # a cosine figure per sharing scheme, two of the explorer
    ratings = results.load(folder / "07_parameter_efficient" / "ratings_schemes.nc")
    assert ratings.architecture.values.tolist() == ["hps", *sample] and ratings.sizes["task"] == 4
    assert (ratings.peak_mib > 0).all() and ratings.parameters.sel(architecture="lora") < ratings.parameters.sel(architecture="hps")
    assert ratings.conflict.sel(architecture="task_lora").isnull().all() and ratings.conflict.sel(architecture="lora").notnull().all()
    assert results.load(folder / "07_parameter_efficient" / "raters_schemes.nc").sizes["task"] == 10
    assert sorted(p.name for p in (folder / "07_parameter_efficient").glob("ratings_*_conflict.nc")) == sorted(f"ratings_{s}_conflict.nc" for s in shared)
    own = results.load(folder / "07_parameter_efficient" / "own_words_schemes.nc")
    assert own.architecture.values.tolist() == ["hps", "lora", "task_lora", "align_lora", "mtl_lora"]  # the low-rank family, on each task's words
    assert ratings.attrs["source_steps"] == {"adapter_fusion": 3, "scalearn": 3}  # the compositions' first stage
    assert "mtl_lora beats task_lora" in html and "ten raters" in html and "scalearn beats adapter_fusion" in html  # the claims' verdicts, stated
    assert "align_lora beats task_lora" in html and "own words" in html
    hub = results.load(folder / "07_parameter_efficient" / "ratings_lorahub.nc")
    assert hub.sizes["task"] == 4 and hub.weights.notnull().sum() == 4 * 3 and hub.attrs["budget"] == 10  # each rating from the other three
    assert "lorahub beats retrieval" in html
    assert "profiler_start" not in html


@pytest.mark.slow
def test_affinity_report(tmp_path):
    """Notebook 03, quick: affinities, transfer, groupings and the validity study on the three problems, offline."""
    folder = run_quick("notebooks/03_task_affinity.ipynb", {"quick": True}, tmp_path)
    html = assert_renders_offline(folder / "03_task_affinity.html", figures=13)  # the explorer's fallback among them
    assert "TAG affinity among the ten raters" in html and "measured losses (Standley)" in html
    assert "averaged over steps up to " in html  # the affinity explorer's slider
    transfer = results.load(folder / "03_task_affinity" / "synthetic_transfer.nc")
    assert transfer.sizes["subset"] == 2 ** transfer.sizes["task"] - 1
    assert "best predictor of the measured transfer" in html  # the verdict on one dataset per task, stated
    own = results.load(folder / "03_task_affinity" / "lexicon_per_task_transfer.nc")
    assert own.sizes["subset"] == 2 ** own.sizes["task"] - 1
    validity = results.load(folder / "03_task_affinity" / "validity_study.nc")
    assert set(validity.optimizer.values) == {"sgd", "adam"} and validity.sizes["configuration"] == 2


@pytest.mark.slow
def test_saliency_report(tmp_path):
    """Notebook 04, quick: saliency pictures, training curves, validity and Rep-MTL against equal weighting, offline."""
    folder = run_quick("notebooks/04_task_saliency.ipynb", {"quick": True}, tmp_path)
    html = assert_renders_offline(folder / "04_task_saliency.html", figures=8)  # the explorer's fallback among them
    assert "saliency of parity" in html  # the saliency explorer's panels
    assert "rep_mtl minus equal weighting, test Δm% per seed" in html and "support recall: median" in html
    history = results.load(folder / "04_task_saliency" / "multidigits_saliency_history.nc")
    assert history.step.values.tolist() == [0, 10, 20, 30]
    comparison = results.load(folder / "04_task_saliency" / "rep_mtl_comparison.nc")
    assert comparison.method.values.tolist() == ["ew", "rep_mtl", "rep_mtl, λ=0.1"]


@pytest.mark.slow
def test_merging_report(tmp_path):
    """Notebook 05, quick: checkpoints built into a fresh cache, every merge on both sets, task vectors and masks, offline."""
    folder = run_quick("notebooks/05_model_merging.ipynb", {"quick": True, "checkpoints_dir": str(tmp_path / "checkpoints")}, tmp_path / "out")
    html = assert_renders_offline(folder / "05_model_merging.html", figures=12)
    assert "The published ordering TA &lt; TIES" in html or "The published ordering TA < TIES" in html
    from workbench.merge import MERGES

    scores = results.load(folder / "05_model_merging" / "multidigits_scores.nc")
    most = {name: MERGES[name].traits.get("models", (1, None))[1] for name in MERGES}
    taking = [name for name in MERGES if most[name] is None or most[name] >= scores.sizes["task"]]
    assert scores.model.values.tolist() == ["pretrained", *taking] and "model_stock" in taking  # every registered merge of this many models
    lexicon = results.load(folder / "05_model_merging" / "lexicon_scores.nc").model.values
    assert "task_wise_adamerging" not in lexicon and "regmean" in lexicon  # AdaMerging needs classification tasks
    assert len(list((tmp_path / "checkpoints").glob("*/manifest.json"))) == 2
    densities = results.load(folder / "05_model_merging" / "multidigits_density_curves.nc")
    assert "ties" in densities.method.values and densities.density.values.tolist() == [0.2, 0.5]  # the quick run's fractions


@pytest.mark.slow
def test_browser_check_catches_a_page_that_loads_from_the_network(tmp_path):
    page = tmp_path / "leaky.html"
    page.write_text('<html><body><script src="http://plotly.invalid/plotly.js"></script><p>hi</p></body></html>')
    assert external_references(page.read_text()) == ["http://plotly.invalid/plotly.js"]
    _, requests = render(page)
    assert requests == ["http://plotly.invalid/plotly.js"]


@pytest.mark.slow
def test_browser_check_catches_javascript_errors(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text("<html><body><p>hi</p><script>console.log('fine'); console.error('bad data')</script><script>undefinedFunction()</script></body></html>")
    errors = open_page(page).errors
    assert len(errors) == 2
    assert errors[0] == "console.error: bad data" and errors[1].startswith("Uncaught ReferenceError: undefinedFunction is not defined")
