"""The committed notebooks as files: what git keeps of what JupyterLab saves, the metadata Lab would write,
and the folders an interactive run writes to."""

import ast
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from workbench import runner
from workbench.runner.record import RunFiles

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
LANGUAGE_KEYS = {"codemirror_mode", "file_extension", "mimetype", "name", "nbconvert_exporter", "pygments_lexer", "version"}


def git(*args: str, **options) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], check=False, cwd=ROOT, capture_output=True, text=True, encoding="utf-8", **options)


def in_git_checkout() -> bool:
    try:
        done = git("rev-parse", "--show-toplevel")
    except FileNotFoundError:
        return False
    return done.returncode == 0 and Path(done.stdout.strip()).resolve() == ROOT


requires_git = pytest.mark.skipif(not in_git_checkout(), reason="not a git checkout")


def relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def as_lab_saves_it(text: str) -> str:
    """The notebook ``text`` after a run in JupyterLab: outputs of every kind, execution counts, cell timings,
    collapsed outputs and headings, and the widgets' state."""
    nb = json.loads(text)
    figure = {"data": [{"type": "scatter", "y": [1, 2]}], "layout": {}}
    for count, cell in enumerate(nb["cells"], start=1):
        if cell["cell_type"] == "markdown":
            cell["metadata"]["jp-MarkdownHeadingCollapsed"] = True
            continue
        cell["execution_count"] = count
        cell["metadata"] |= {
            "scrolled": True, "collapsed": False,
            "execution": {"iopub.execute_input": "2025-01-01T00:00:00.000Z", "shell.execute_reply": "2025-01-01T00:00:01.000Z"},
        }
        cell["outputs"] = [
            {"output_type": "stream", "name": "stderr", "text": ["training: 100%\n"]},
            {"output_type": "display_data", "metadata": {}, "data": {
                "application/vnd.plotly.v1+json": figure, "text/html": ["<script>/* plotly.js */</script>"], "image/png": "iVBORw0KGgo=",
            }},
            {"output_type": "display_data", "metadata": {}, "data": {
                "application/vnd.jupyter.widget-view+json": {"model_id": "abc", "version_major": 2, "version_minor": 0}, "text/plain": ["VBox()"],
            }},
            {"output_type": "execute_result", "execution_count": count, "metadata": {}, "data": {"text/plain": ["['a.nc']"]}},
        ]
    nb["metadata"]["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {"abc": {"model_name": "VBoxModel"}}, "version_major": 2, "version_minor": 0}}
    return json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def committed_text(path: Path) -> str:
    """What git holds of ``path``: its version in the index (what the next commit takes)."""
    done = git("show", f":{relative(path)}")
    assert done.returncode == 0, done.stderr
    return done.stdout


def blob_of(text: str, path: Path) -> str:
    """The object git would store for ``text`` saved at ``path``, through the filters its attributes name."""
    done = git("hash-object", f"--path={relative(path)}", "--stdin", input=text)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@requires_git
def test_every_notebook_and_a_new_one_pass_through_the_nbstripout_filter():
    paths = [relative(p) for p in NOTEBOOKS] + ["notebooks/99_new.ipynb"]
    done = git("check-attr", "filter", "--", *paths)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"{p}: filter: nbstripout" for p in paths]


@requires_git
def test_make_install_configured_the_filter_in_this_checkout():
    clean = git("config", "--get", "filter.nbstripout.clean")
    assert clean.returncode == 0 and "nbstripout" in clean.stdout, "the nbstripout filter is not configured: run `make install`"
    assert "--keep-id" in clean.stdout  # Lab keeps the committed cell ids; nbstripout would renumber them
    assert git("config", "--get", "filter.nbstripout.smudge").stdout.strip() == "cat"


@requires_git
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_what_lab_saves_is_committed_as_the_committed_notebook(path):
    committed = committed_text(path)
    saved = as_lab_saves_it(committed)
    assert len(saved) > len(committed)
    wanted = git("rev-parse", f":{relative(path)}").stdout.strip()
    assert blob_of(committed, path) == wanted, "the filter changes the committed notebook: keep what it keeps"
    assert blob_of(saved, path) == wanted, "git would commit what Lab saved with some of it left"


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_install_sets_up_the_filter_in_a_git_checkout():
    done = subprocess.run(["make", "-n", "install"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert "filter.nbstripout.clean" in done.stdout and "--keep-id" in done.stdout
    assert "git rev-parse --show-toplevel" in done.stdout  # only where the folder is a git checkout


def test_the_lab_extra_installs_nbstripout():
    import tomllib

    lab = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["lab"]
    assert any(d.startswith("nbstripout") for d in lab)


@pytest.fixture(scope="module")
def kernel_language_info() -> dict:
    """The ``language_info`` that this environment's kernel (the one the notebooks name) reports: what Lab writes."""
    from jupyter_client.manager import start_new_kernel

    manager, client = start_new_kernel(kernel_name=runner.ensure_kernel())
    try:
        client.kernel_info()
        return client.get_shell_msg(timeout=60)["content"]["language_info"]
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_notebook_stores_the_metadata_lab_writes(path, kernel_language_info):
    """Lab marks a notebook modified when it opens it if the kernel's ``language_info`` differs from the stored one.

    The stored version is the Python of the last machine that saved it; only its release line must be the
    kernel's (another patch release changes that one key on that machine only)."""
    nb = json.loads(path.read_text())
    stored = nb["metadata"]["language_info"]
    assert set(stored) == LANGUAGE_KEYS
    assert {k: v for k, v in stored.items() if k != "version"} == {k: v for k, v in kernel_language_info.items() if k != "version"}
    assert stored["version"].split(".")[:2] == kernel_language_info["version"].split(".")[:2]
    assert (nb["nbformat"], nb["nbformat_minor"]) == (4, 5)
    assert all(cell.get("id") for cell in nb["cells"])


def parameters_cell(path: Path) -> dict:
    return next(c for c in json.loads(path.read_text())["cells"] if "parameters" in c["metadata"].get("tags", []))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_an_interactive_run_writes_results_of_its_own(path):
    """Lab's kernel runs in ``notebooks/``; the runner injects ``results_dir`` for its own runs."""
    default = runner.notebook_parameters(path)["results_dir"].default
    interactive = Path(os.path.normpath(ROOT / "notebooks" / default))
    report_results = RunFiles(runner.report_folder(path, {}, ROOT / "reports"), path.stem).results_dir
    assert interactive != report_results
    assert interactive == ROOT / "reports" / "interactive" / path.stem  # no run of the runner's writes there
    line = next(line for line in "".join(parameters_cell(path)["source"]).splitlines() if line.startswith("results_dir"))
    assert "#" in line and "interactive" in line.split("#", 1)[1], line
    text = "".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "markdown")
    assert f"reports/interactive/{path.stem}" in text


def test_no_notebook_caches_relative_to_the_kernels_folder():
    for path in NOTEBOOKS:
        for cell in json.loads(path.read_text())["cells"]:
            assert "../data" not in "".join(cell["source"]), path.name


def test_notebook_05_caches_its_checkpoints_in_the_data_folder_wherever_its_kernel_runs(tmp_path, monkeypatch):
    from workbench.paths import data_dir

    path = ROOT / "notebooks" / "05_model_merging.ipynb"
    default = runner.notebook_parameters(path)["checkpoints_dir"].default
    code = [ast.unparse(ast.parse("".join(c["source"]))) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    calls = [node for source in code for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "load_merge_set"]
    assert len(calls) == 2
    assert all(ast.unparse(k.value) == "data_dir(checkpoints_dir)" for call in calls for k in call.keywords if k.arg == "cache")
    monkeypatch.delenv("WORKBENCH_DATA", raising=False)
    resolved = set()
    for folder in (ROOT / "notebooks", tmp_path):  # Lab's kernel, and a runner's kernel in a report folder
        monkeypatch.chdir(folder)
        resolved.add(data_dir(default))
    assert resolved == {ROOT / "data" / "checkpoints"}


def test_the_readme_documents_the_progress_and_batch_settings():
    readme = (ROOT / "README.md").read_text()
    assert "WORKBENCH_PROGRESS=0" in readme and "WORKBENCH_BATCH=1" in readme and "WORKBENCH_DATA" in readme


def test_the_explorers_read_batch_run_and_the_bars_quiet():
    """``WORKBENCH_PROGRESS=0`` only silences bars: no figure or explorer of the viz face reads it."""
    for module in sorted((ROOT / "workbench" / "viz").glob("*.py")):
        source = module.read_text()
        assert "WORKBENCH_PROGRESS" not in source and "ENV_VARIABLE" not in source and "quiet(" not in source, module.name
        if "ipywidgets" in source:
            assert "batch_run()" in source, module.name
