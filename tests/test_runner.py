import os
import subprocess
import sys
import tomllib
from pathlib import Path

import nbformat
import pytest
import yaml

from tests.notebooks import SAVES_METRICS, write_notebook
from workbench import results, runner
from workbench.runner.record import read_record

NOTEBOOK = Path("notebooks/01_gradient_conflict.ipynb")


def test_every_notebook_has_parameters_with_quick_and_seed_and_no_outputs():
    notebooks = sorted(Path("notebooks").glob("*.ipynb"))
    assert notebooks
    for path in notebooks:
        parameters = runner.notebook_parameters(path)
        assert {"quick", "seed"} <= set(parameters), path
        assert parameters["quick"].default is False, path
        nb = nbformat.read(path, as_version=4)
        first_code = next(c for c in nb.cells if c.cell_type == "code")
        assert "parameters" in first_code.metadata.get("tags", []), f"{path}: the first code cell must be the parameters"
        assert nb.metadata.kernelspec.name == runner.KERNEL_NAME
        assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code"), path


def test_parameters_are_read_with_their_types():
    parameters = runner.notebook_parameters(NOTEBOOK)
    assert parameters["steps"].default == 600 and parameters["steps"].kind is int
    assert parameters["groups"].default == [[0, 1, 2], [3, 4]]


@pytest.mark.parametrize(
    "values, message",
    [
        ({"stepz": 50}, "unknown parameter 'stepz'"),
        ({"steps": "fifty"}, "parameter 'steps' takes a int, got 'fifty'"),
        ({"quick": 1}, "parameter 'quick' takes a bool"),
        ({"steps": 2.5}, "parameter 'steps' takes a int"),
    ],
)
def test_bad_parameters_are_refused_with_the_list(values, message):
    with pytest.raises(ValueError, match=message) as error:
        runner.check_parameters(NOTEBOOK, values)
    assert "Its parameters are: dataset='synthetic', n_tasks=6" in str(error.value)


def test_good_parameters_are_coerced():
    checked = runner.check_parameters(NOTEBOOK, {"lr": 1, "steps": 50, "by": "module", "quick": True})
    assert checked == {"lr": 1.0, "steps": 50, "by": "module", "quick": True}
    assert isinstance(checked["lr"], float)


def test_cli_values_parse_as_literals():
    assert runner.parse_cli_value("50") == 50
    assert runner.parse_cli_value("True") is True
    assert runner.parse_cli_value("[[0, 1]]") == [[0, 1]]
    assert runner.parse_cli_value("module") == "module"


def test_cli_refuses_unknown_parameter_before_running(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "workbench.cli", "run", str(NOTEBOOK), "-p", "stepz", "50", "-o", str(tmp_path)],
        capture_output=True, text=True,
    )
    assert done.returncode == 2
    assert "unknown parameter 'stepz'" in done.stderr and "steps=600" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_run_all_refuses_a_parameter_no_notebook_has(tmp_path):
    with pytest.raises(ValueError, match="no notebook"):
        runner.run_all("notebooks", tmp_path, {"nonsense": 1})


def test_a_failed_run_keeps_the_previous_report(tmp_path):
    notebook = write_notebook(tmp_path / "nb" / "09_fails.ipynb", "assert not fail, 'asked to fail'")
    out = tmp_path / "out"
    report = runner.run_notebook(notebook, {}, out, progress=False)
    good = report.notebook.read_text()
    with pytest.raises(Exception, match="asked to fail"):
        runner.run_notebook(notebook, {"fail": True}, out, progress=False)
    assert report.notebook.read_text() == good and report.html.exists()
    assert "asked to fail" in (out / "09_fails.failed.ipynb").read_text()
    assert "asked to fail" in (out / "09_fails.failed.html").read_text()
    record = read_record(out / "09_fails.run.json")
    assert record.status == "failed" and record.error == "AssertionError: asked to fail"
    assert record.parameters == {"fail": True} and record.report == "09_fails.failed.html"
    assert "AssertionError: asked to fail" in (out / "09_fails.log").read_text()


def test_run_all_writes_every_report_and_the_index(tmp_path, monkeypatch):
    save = "from pathlib import Path\nPath(results_dir).mkdir(parents=True, exist_ok=True)\nPath(results_dir, 'r.txt').write_text(str(seed))"
    write_notebook(tmp_path / "nb" / "01_first.ipynb", save)
    write_notebook(tmp_path / "nb" / "02_second.ipynb", save)
    monkeypatch.chdir(tmp_path)  # relative folders, as `make reports` passes them
    reports = runner.run_all("nb", "out", progress=False)
    assert [r.notebook.name for r in reports] == ["01_first.ipynb", "02_second.ipynb"]
    assert (tmp_path / "out" / "02_second" / "r.txt").read_text() == "0"
    index = (tmp_path / "out" / "index.html").read_text()
    assert '<a href="01_first.html">A small experiment</a>' in index
    assert '<a href="02_second/r.txt">r.txt</a>' in index and "<td>{}</td>" not in index


@pytest.fixture(scope="module")
def default_and_other_run(tmp_path_factory):
    """``workbench run`` of a small notebook with its defaults, then with seed 7, into one reports folder.

    Runs with umask 027 and with leftovers of killed writes lying in the folders it writes to.
    """
    root = tmp_path_factory.mktemp("runs")
    notebook = write_notebook(root / "nb" / "09_small.ipynb", SAVES_METRICS)
    out = root / "out"
    (out / "09_small").mkdir(parents=True)
    leftovers = [out / ".09_small.ipynb.partial-0badf00d.ipynb", out / "09_small" / ".metrics.nc.partial-0badf00d.tmp"]
    someone_elses = out / ".01_other.ipynb.partial-0badf00d.ipynb"
    for path in [*leftovers, someone_elses]:
        path.write_text("half")
    umask = os.umask(0o027)
    try:
        for values in ({}, {"seed": 7}):
            done = subprocess.run(
                [sys.executable, "-m", "workbench.cli", "run", str(notebook), "-o", str(out), *(a for k, v in values.items() for a in ("-p", k, str(v)))],
                capture_output=True, text=True,
            )
            assert done.returncode == 0, done.stderr[-3000:]
    finally:
        os.umask(umask)
    return root, out, leftovers, someone_elses


def test_a_run_with_other_values_gets_a_folder_of_its_own(default_and_other_run):
    _, out, _, _ = default_and_other_run
    other = out / "runs" / "09_small" / "seed=7"
    assert runner.report_folder(out.parent / "nb" / "09_small.ipynb", {"seed": 7}, out) == other
    assert runner.report_folder(out.parent / "nb" / "09_small.ipynb", {"seed": 0}, out) == out
    both = (out.parent / "nb" / "09_small.ipynb", {"scale": 2, "seed": 7}), (out.parent / "nb" / "09_small.ipynb", {"seed": 7, "scale": 2.0})
    assert {runner.report_folder(*given, out).name for given in both} == {"seed=7,scale=2.0"}
    assert float(results.load(out / "09_small" / "metrics.nc").value[0]) == 0.0
    assert float(results.load(other / "09_small" / "metrics.nc").value[0]) == 7.0
    assert read_record(out / "09_small.run.json").parameters == {}
    assert read_record(other / "09_small.run.json").parameters == {"seed": 7}
    index = (out / "index.html").read_text()
    assert '<a href="09_small.html">' in index and '<a href="runs/09_small/seed=7/09_small.html">' in index


def test_a_report_names_no_path_of_the_machine(default_and_other_run):
    root, out, _, _ = default_and_other_run
    report = out / "09_small.ipynb"
    injected = next(c for c in nbformat.read(report, as_version=4).cells if "injected-parameters" in c.metadata.get("tags", []))
    assert injected.source == '# Parameters\nresults_dir = "09_small"\n'
    for path in [report, out / "09_small.html", out / "09_small.log", out / "09_small.run.json"]:
        text = path.read_text()
        assert str(root) not in text and str(Path.cwd()) not in text, path


def test_files_are_written_with_the_umask_and_leftovers_are_removed(default_and_other_run):
    _, out, leftovers, someone_elses = default_and_other_run
    written = [p for p in out.rglob("*") if p.is_file() and p != someone_elses]
    assert len(written) == 11  # 2 runs x (ipynb, html, log, record, metrics.nc) + index.html
    assert {oct(p.stat().st_mode & 0o777) for p in written} == {oct(0o640)}
    assert not any(p.exists() for p in leftovers)
    assert someone_elses.exists(), "a leftover of another notebook's run, which may still be running, was removed"


def test_kernel_runs_this_python():
    from jupyter_client.kernelspec import KernelSpecManager

    assert runner.ensure_kernel() == "workbench"
    assert KernelSpecManager().get_kernel_spec("workbench").argv[0] == sys.executable


def test_environment_yml_mirrors_pyproject():
    project = tomllib.loads(Path("pyproject.toml").read_text())["project"]
    wanted = set(project["dependencies"]) | {d for extra in project["optional-dependencies"].values() for d in extra}
    environment = yaml.safe_load(Path("environment.yml").read_text())
    pip = next(d["pip"] for d in environment["dependencies"] if isinstance(d, dict))
    assert set(pip) - {"-e ."} == wanted
    assert "-e ." in pip
    python = next(d for d in environment["dependencies"] if isinstance(d, str) and d.startswith("python"))
    assert python.replace("python", "") == project["requires-python"]


def test_cli_reports_a_failing_cell_and_exits_1(tmp_path):
    notebook = tmp_path / "nb" / "09_fails.ipynb"
    write_notebook(notebook, "assert not fail, 'asked to fail'")
    done = subprocess.run(
        [sys.executable, "-m", "workbench.cli", "run", str(notebook), "-p", "fail", "True", "-o", str(tmp_path / "out")],
        capture_output=True, text=True,
    )
    assert done.returncode == 1
    assert "AssertionError: asked to fail" in done.stderr and "previous report is untouched" in done.stderr
