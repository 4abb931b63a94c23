import fcntl
import json
import os
import subprocess
import sys
import tomllib
from dataclasses import asdict
from pathlib import Path

import nbformat
import pytest
import yaml

from tests.notebooks import SAVES_METRICS, SAVES_THEN_STOPS, kill_while_held, write_notebook
from workbench import cli, results, runner
from workbench.runner.record import RunFiles, RunRecord, read_record, write_record

NOTEBOOK = Path("notebooks/01_gradient_conflict.ipynb")


def test_every_notebook_has_parameters_with_quick_and_seed_and_no_outputs():
    notebooks = sorted(Path("notebooks").glob("*.ipynb"))
    assert notebooks
    for path in notebooks:
        parameters = runner.notebook_parameters(path)
        assert {"quick", "seed"} <= set(parameters), path
        assert parameters["quick"].default is False, path
        # what git commits: the index version, which the nbstripout filter keeps clean of what Lab autosaves in the working copy
        staged = subprocess.run(["git", "show", f":{path.as_posix()}"], capture_output=True, text=True, encoding="utf-8")
        nb = nbformat.reads(staged.stdout, as_version=4) if staged.returncode == 0 else nbformat.read(path, as_version=4)
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


def _contents(folder: Path, leaving_out: tuple[str, ...] = ()) -> dict[str, bytes]:
    """Every file under ``folder`` by relative path, with its bytes, but those whose path starts with one of ``leaving_out``."""
    files = (p for p in sorted(folder.rglob("*")) if p.is_file())
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in files if not p.relative_to(folder).as_posix().startswith(leaving_out)}


@pytest.mark.slow
def test_a_failed_run_keeps_the_previous_report_and_its_partial_results_apart(tmp_path):
    notebook = write_notebook(tmp_path / "nb" / "09_stops.ipynb", SAVES_THEN_STOPS)
    out = tmp_path / "out"
    runner.run_notebook(notebook, {}, out, progress=False)
    previous = _contents(out)
    with pytest.raises(Exception, match="asked to fail"):
        runner.run_notebook(notebook, {"seed": 1, "fail": True}, out, progress=False)
    assert _contents(out, leaving_out=("09_stops.failed", "09_stops.attempt.json")) == previous, "the previous run's files changed"
    assert [p.name for p in (out / "09_stops.failed").iterdir()] == ["seed1.txt"]
    assert "asked to fail" in (out / "09_stops.failed.ipynb").read_text() and "asked to fail" in (out / "09_stops.failed.html").read_text()
    assert "AssertionError: asked to fail" in (out / "09_stops.failed.log").read_text()
    attempt = read_record(out / "09_stops.attempt.json")
    assert attempt.status == "failed" and attempt.error == "AssertionError: asked to fail"
    assert attempt.parameters == {"seed": 1, "fail": True} and attempt.report == "09_stops.failed.html"
    index = runner.write_index(out).read_text()
    assert '<a href="09_stops.html">' in index and '<a href="09_stops.failed.html">' in index, "the index lists the last good run and the failure"
    assert 'class="complete"' in index and 'class="failed"' in index and '<a href="09_stops.failed/seed1.txt">' in index

    runner.run_notebook(notebook, {"seed": 2}, out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["09_stops", "09_stops.html", "09_stops.ipynb", "09_stops.log", "09_stops.run.json", "index.html"]
    assert [p.name for p in (out / "09_stops").iterdir()] == ["seed2.txt"]


@pytest.mark.slow
def test_a_killed_run_leaves_the_previous_report_whole_and_the_next_run_cleans_up(tmp_path):
    notebook = write_notebook(tmp_path / "nb" / "09_stops.ipynb", SAVES_THEN_STOPS)
    out = tmp_path / "out"
    runner.run_notebook(notebook, {}, out, progress=False)
    previous = _contents(out)
    code = f"from workbench import runner; runner.run_notebook({str(notebook)!r}, {{'seed': 1}}, {str(out)!r}, progress=False)"
    hold = tmp_path / "hold"
    killed = kill_while_held([sys.executable, "-c", code], hold)

    assert _contents(out, leaving_out=(".09_stops.staging-", "09_stops.attempt.json", "09_stops.lock")) == previous
    assert read_record(out / "09_stops.attempt.json").status == "running"
    assert (out / "09_stops.lock").read_text() == str(killed), "the lock names the run that held it"
    [staging] = out.glob(".09_stops.staging-*")
    assert [p.name for p in (staging / "09_stops").iterdir()] == ["seed1.txt"]
    index = runner.write_index(out).read_text()
    assert '<a href="09_stops.html">' in index and 'class="complete"' in index and 'class="unfinished"' in index

    hold.unlink()
    runner.run_notebook(notebook, {"seed": 2}, out, progress=False)  # takes over the lock its dead holder left
    assert sorted(p.name for p in out.iterdir()) == ["09_stops", "09_stops.html", "09_stops.ipynb", "09_stops.log", "09_stops.run.json", "index.html"]
    assert [p.name for p in (out / "09_stops").iterdir()] == ["seed2.txt"]


def test_a_second_run_into_the_same_folder_refuses_to_start(tmp_path):
    notebook = write_notebook(tmp_path / "nb" / "09_small.ipynb", SAVES_METRICS)
    out = tmp_path / "out"
    out.mkdir()
    lock = out / "09_small.lock"
    with lock.open("w") as held:
        held.write(str(os.getpid()))
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ValueError, match="already running") as refused:
            runner.run_notebook(notebook, {}, out, progress=False)
    assert str(lock) in str(refused.value) and f"pid {os.getpid()}" in str(refused.value)
    assert [p.name for p in out.iterdir()] == ["09_small.lock"] and lock.read_text() == str(os.getpid())


@pytest.mark.parametrize("call", ["run_notebook", "run_report", "run_all", "cli"])
def test_results_dir_is_refused_before_anything_is_written(tmp_path, capsys, call):
    notebook = write_notebook(tmp_path / "nb" / "09_small.ipynb", SAVES_METRICS)
    elsewhere, out = tmp_path / "elsewhere", tmp_path / "out"
    if call == "cli":
        assert cli.main(["run", str(notebook), "-p", "results_dir", str(elsewhere), "-o", str(out)]) == 2
        assert "'results_dir' is set by the runner" in capsys.readouterr().err
    else:
        with pytest.raises(ValueError, match="'results_dir' is set by the runner"):
            if call == "run_all":
                runner.run_all(notebook.parent, out, {"results_dir": str(elsewhere)}, progress=False)
            else:
                getattr(runner, call)(notebook, {"results_dir": str(elsewhere)}, out, progress=False)
    assert not out.exists() and not elsewhere.exists()


def test_a_malformed_record_is_left_out_of_the_index_with_a_warning(tmp_path):
    good = RunRecord("good.ipynb", "the good run", {}, "0" * 64, "complete", "2026-01-01T00:00:00+00:00", 1.0)
    write_record(RunFiles(tmp_path / "good", "good"), good)
    fields = asdict(good)
    malformed = {
        "started": json.dumps({**fields, "started": 5}),
        "missing": json.dumps({name: value for name, value in fields.items() if name != "identity"}),
        "duration": json.dumps({**fields, "duration": "long"}),
        "status": json.dumps({**fields, "status": "done"}),
        "list": "[1, 2]",
        "text": "not json",
    }
    paths = []
    for name, text in malformed.items():
        paths.append(tmp_path / name / f"{name}.run.json")
        paths[-1].parent.mkdir()
        paths[-1].write_text(text)
    with pytest.warns(UserWarning) as warned:
        index = runner.write_index(tmp_path).read_text()
    assert sorted(str(w.message).split(": ")[0] for w in warned) == sorted(map(str, paths))
    assert "the good run" in index and index.count("<tr>") == 2  # the header and the good run
    with pytest.warns(UserWarning, match="'started' must be a str, got 5"):
        assert read_record(tmp_path / "started" / "started.run.json") is None


@pytest.mark.parametrize("command", [["run", str(NOTEBOOK)], ["reports"]])
@pytest.mark.parametrize("below", ["", "reports"])
def test_cli_refuses_an_output_folder_that_is_a_file(tmp_path, capsys, command, below):
    file = tmp_path / "README.md"
    file.write_text("# readme\n")
    assert cli.main([*command, "-o", str(file / below)]) == 2
    printed = capsys.readouterr().err
    assert printed.startswith("workbench: ") and printed.count("\n") == 1 and f"{file} is not a folder" in printed
    assert [p.name for p in tmp_path.iterdir()] == ["README.md"] and file.read_text() == "# readme\n"


def test_cli_names_a_notebook_that_is_not_json(tmp_path, capsys):
    notebook = tmp_path / "09_broken.ipynb"
    notebook.write_text("{not json")
    for command in (["run", str(notebook), "-o", str(tmp_path / "out")], ["params", str(notebook)]):
        assert cli.main(command) == 2
        printed = capsys.readouterr().err
        assert printed.startswith(f"workbench: {notebook} is not a notebook") and printed.count("\n") == 1
    assert [p.name for p in tmp_path.iterdir()] == ["09_broken.ipynb"]


def test_cli_reports_an_os_error_in_one_line(tmp_path, capsys, monkeypatch):
    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "out"))

    monkeypatch.setattr(runner, "run_report", denied)
    assert cli.main(["run", str(NOTEBOOK), "-o", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == f"workbench: [Errno 13] Permission denied: '{tmp_path / 'out'}'\n"


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
        assert str(root) not in text and str(Path.cwd()) not in text and ".staging-" not in text, path


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


def test_publishing_flushes_each_staged_file_before_it_takes_its_name_and_the_folder_after(tmp_path, monkeypatch):
    from workbench.runner.record import RunFiles
    from workbench.runner.staging import publish

    target, staging = RunFiles(tmp_path, "09_x"), RunFiles(tmp_path / ".09_x.staging-test", "09_x")
    staging.results_dir.mkdir(parents=True)
    for path in (staging.notebook, staging.html, staging.log):
        path.write_text("complete")
    events, real_fsync, real_replace = [], os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))) or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: events.append(("replace", str(b))) or real_replace(a, b))
    publish(staging, target)
    for staged, published in ((staging.notebook, target.notebook), (staging.html, target.html), (staging.log, target.log)):
        assert events.index(("fsync", str(staged))) < events.index(("replace", str(published)))
    assert events[-1] == ("fsync", str(tmp_path)) and target.log.read_text() == "complete"


SAVES_ITS_THREADS = """\
import os
from pathlib import Path
Path(results_dir).mkdir(parents=True, exist_ok=True)
Path(results_dir, 'threads.txt').write_text(os.environ.get('OMP_NUM_THREADS', 'unset'))
assert not fail, 'asked to fail'
"""


@pytest.mark.slow
def test_notebooks_run_side_by_side_each_kernel_with_its_share_of_the_cores(tmp_path, monkeypatch):
    monkeypatch.setattr("workbench.runner.execute.cores", lambda: 4)
    for name in ("01_first", "02_second", "03_third"):
        write_notebook(tmp_path / "nb" / f"{name}.ipynb", SAVES_ITS_THREADS)
    out, before = tmp_path / "out", os.environ.get("OMP_NUM_THREADS")
    done = runner.run_all(tmp_path / "nb", out, progress=False, jobs=2)
    assert [report.notebook.name for report in done] == ["01_first.ipynb", "02_second.ipynb", "03_third.ipynb"]  # in the notebooks' order
    assert [(report.results_dir / "threads.txt").read_text() for report in done] == ["2", "2", "2"]  # 4 cores, 2 kernels at a time
    assert os.environ.get("OMP_NUM_THREADS") == before  # the variable is given back
    assert (out / "index.html").exists()
    with pytest.raises(ValueError, match="jobs must be at least 1, got 0"):
        runner.run_all(tmp_path / "nb", out, progress=False, jobs=0)


@pytest.mark.slow
def test_a_failure_side_by_side_is_raised_and_the_index_written(tmp_path):
    write_notebook(tmp_path / "nb" / "01_fine.ipynb", SAVES_ITS_THREADS)
    write_notebook(tmp_path / "nb" / "02_fails.ipynb", SAVES_ITS_THREADS.replace("assert not fail", "assert fail"))
    out = tmp_path / "out"
    with pytest.raises(Exception, match="asked to fail"):
        runner.run_all(tmp_path / "nb", out, progress=False, jobs=2)
    assert (out / "01_fine.html").exists() and (out / "02_fails.failed.ipynb").exists() and (out / "index.html").exists()


@pytest.mark.slow
def test_every_failure_side_by_side_is_told(tmp_path):
    for name in ("01_fails", "02_fails"):  # both start at once
        write_notebook(tmp_path / "nb" / f"{name}.ipynb", SAVES_ITS_THREADS.replace("assert not fail", "assert fail"))
    with pytest.raises(Exception, match="asked to fail") as failed:
        runner.run_all(tmp_path / "nb", tmp_path / "out", progress=False, jobs=2)
    assert any("02_fails.ipynb failed too" in note for note in failed.value.__notes__)
