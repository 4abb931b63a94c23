"""Sweeps: every combination in a folder of its own, on a 2-worker Dask LocalCluster; resumable; failures isolated."""

import os
import re
import sys
from pathlib import Path

import dask
import pytest
import xarray as xr
import yaml

from tests.notebooks import SAVES_METRICS, kill_while_held, write_notebook
from workbench import cli, load_sweep, results, runner
from workbench.runner.record import read_record

GRID = {"seed": [0, 1], "scale": [1.0, 2.5]}
GRID_FOLDERS = {"seed=0,scale=1.0", "seed=0,scale=2.5", "seed=1,scale=1.0", "seed=1,scale=2.5"}


def _sweep_file(path: Path, notebook: Path, **spec) -> Path:
    path.write_text(yaml.safe_dump({"notebooks": [os.path.relpath(notebook, path.parent)], **spec}, sort_keys=False))
    return path


def _run_folders(out: Path, sweep: str, notebook: str) -> dict[str, Path]:
    return {p.name: p for p in (out / "sweeps" / sweep / notebook).iterdir()}


def _leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*") if ".partial-" in p.name or ".staging-" in p.name]


def _status(folder: Path, notebook: str) -> str:
    """The status of the run's current attempt when it has one (running or failed), else of its last complete run."""
    attempt = folder / f"{notebook}.attempt.json"
    return read_record(attempt if attempt.exists() else folder / f"{notebook}.run.json").status


@pytest.fixture(scope="module")
def grid_sweep(tmp_path_factory):
    """A 2 x 2 grid (seed x scale) of a small notebook, run on a new 2-worker LocalCluster."""
    root = tmp_path_factory.mktemp("sweep")
    notebook = write_notebook(root / "nb" / "09_small.ipynb", SAVES_METRICS)
    path = _sweep_file(root / "grid.yaml", notebook, name="grid", parameters={"quick": True}, grid=GRID)
    summary = runner.run_sweep(path, root / "out", workers=2, progress=False)
    return root, path, summary


@pytest.mark.slow
def test_every_combination_runs_in_a_folder_of_its_own(grid_sweep):
    root, _, summary = grid_sweep
    assert (len(summary.outcomes), summary.skipped, summary.failed) == (4, 0, [])
    folders = _run_folders(root / "out", "grid", "09_small")
    assert set(folders) == GRID_FOLDERS
    for folder in folders.values():
        record = read_record(folder / "09_small.run.json")
        assert record.status == "complete" and record.sweep == "grid" and record.report == "09_small.html"
        assert record.parameters["quick"] is True and record.parameters["scale"] in (1.0, 2.5)
        assert (folder / "09_small.html").exists() and (folder / "09_small" / "metrics.nc").exists()


@pytest.mark.slow
def test_the_same_sweep_again_skips_every_run(grid_sweep):
    root, path, _ = grid_sweep
    records = {name: (folder / "09_small.run.json").read_bytes() for name, folder in _run_folders(root / "out", "grid", "09_small").items()}
    summary = runner.run_sweep(path, root / "out", workers=2, progress=False)
    assert (len(summary.outcomes), summary.skipped) == (0, 4)
    assert {name: (folder / "09_small.run.json").read_bytes() for name, folder in _run_folders(root / "out", "grid", "09_small").items()} == records


@pytest.mark.slow
def test_load_sweep_makes_the_swept_parameters_dimensions(grid_sweep):
    root, _, _ = grid_sweep
    combined = load_sweep(root / "out" / "sweeps" / "grid")
    assert combined.value.dims == ("seed", "scale", "step")
    assert combined.seed.values.tolist() == [0, 1] and combined.scale.values.tolist() == [1.0, 2.5]
    assert combined.value.sel(seed=1, scale=2.5).values.tolist() == [2.5, 3.5]
    assert combined.attrs["missing_runs"] == []


@pytest.mark.slow
def test_editing_the_notebook_makes_its_runs_incomplete(grid_sweep):
    root, _, _ = grid_sweep
    for edit, complete in (("", True), ("\nprint('changed')", False)):
        notebook = write_notebook(root / f"edited{len(edit)}" / "09_small.ipynb", SAVES_METRICS + edit)
        path = _sweep_file(root / f"edited{len(edit)}.yaml", notebook, name="grid", parameters={"quick": True}, grid=GRID)
        for run in runner.read_sweep(path, root / "out").runs:
            assert read_record(run.files.record).is_complete(run.identity) is complete


@pytest.mark.slow
def test_the_index_lists_every_run_and_its_links_resolve(grid_sweep):
    root, _, _ = grid_sweep
    index = (root / "out" / "index.html").read_text()
    assert index.count("<td>grid</td>") == 4 and index.count('class="complete"') == 4
    links = re.findall(r'href="([^"]+)"', index)
    assert len(links) == 4 * 3  # report, metrics.nc, log
    assert all((root / "out" / link).is_file() for link in links), links


@pytest.mark.slow
def test_without_dask_the_runs_go_one_after_another_with_the_same_results(grid_sweep, monkeypatch, capsys):
    root, path, _ = grid_sweep
    monkeypatch.setitem(sys.modules, "distributed", None)  # `import distributed` now fails as if it were not installed
    summary = runner.run_sweep(path, root / "alone", progress=False)
    assert "Dask is not installed, so the runs go one after another" in capsys.readouterr().err
    assert (len(summary.outcomes), summary.failed) == (4, [])
    on_dask, alone = load_sweep(root / "out" / "sweeps" / "grid"), load_sweep(root / "alone" / "sweeps" / "grid")
    xr.testing.assert_identical(on_dask, alone)
    assert set(_run_folders(root / "alone", "grid", "09_small")) == GRID_FOLDERS


@pytest.fixture(scope="module")
def scheduler():
    """The address of a 2-worker LocalCluster whose scheduler gives up on a run once its worker died twice."""
    from distributed import LocalCluster

    with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
            yield cluster.scheduler_address


@pytest.mark.slow
def test_a_failing_run_is_recorded_and_the_others_complete(tmp_path, monkeypatch, capsys):
    notebook = write_notebook(tmp_path / "nb" / "09_small.ipynb", SAVES_METRICS)
    path = _sweep_file(tmp_path / "fails.yaml", notebook, runs=[{"seed": 0}, {"seed": 1}, {"seed": 2, "fail": True}])
    monkeypatch.setenv("WORKBENCH_PROGRESS", "0")
    assert cli.main(["sweep", str(path), "-o", str(tmp_path / "out"), "--workers", "2"]) == 1
    printed = capsys.readouterr().out
    assert "3 runs" in printed and "2 ran and completed, 0 already complete (skipped), 1 failed" in printed
    assert "failed: 09_small/seed=2,fail=true: AssertionError: asked to fail" in printed
    folders = _run_folders(tmp_path / "out", "fails", "09_small")
    statuses = {name: _status(folder, "09_small") for name, folder in folders.items()}
    assert statuses == {"seed=0,fail=false": "complete", "seed=1,fail=false": "complete", "seed=2,fail=true": "failed"}
    failed = folders["seed=2,fail=true"]
    assert "asked to fail" in (failed / "09_small.failed.ipynb").read_text() and (failed / "09_small.failed.html").exists()
    assert not (failed / "09_small.ipynb").exists() and not (failed / "09_small.run.json").exists()
    assert "AssertionError: asked to fail" in (failed / "09_small.failed.log").read_text()
    assert 'class="failed"' in (tmp_path / "out" / "index.html").read_text()

    again = runner.run_sweep(path, tmp_path / "out", workers=2, progress=False)
    assert again.skipped == 2 and [run.label for run, _ in again.failed] == ["09_small/seed=2,fail=true"]


# Attempt n of a run kills its Dask worker (the kernel's parent) while n <= kills, in the middle of writing its result.
KILLS_ITS_WORKER = """\
import os, signal
from pathlib import Path
import xarray as xr
from workbench import results
from workbench.files import atomic_write
attempts = Path('..', 'attempts.txt')  # the kernel runs in a staging folder inside the run's folder
attempt = int(attempts.read_text()) + 1 if attempts.exists() else 1
attempts.write_text(str(attempt))
if attempt <= kills:
    with atomic_write(Path(results_dir) / 'metrics.nc') as temporary:
        temporary.write_bytes(b'CDF half a result')
        os.kill(os.getppid(), signal.SIGKILL)
        os._exit(1)
results.save(xr.Dataset({'value': ('step', [seed, seed + 1])}), Path(results_dir) / 'metrics.nc')
"""


@pytest.mark.slow
def test_a_killed_worker_is_retried_then_reported_and_no_result_is_half_written(tmp_path, scheduler):
    notebook = write_notebook(tmp_path / "nb" / "09_killer.ipynb", KILLS_ITS_WORKER, "seed = 0\nkills = 0\nresults_dir = 'out'")
    # one run at a time: a worker's death also counts against the runs waiting on that worker
    once = _sweep_file(tmp_path / "once.yaml", notebook, grid={"seed": [1]}, parameters={"kills": 1})
    retried = runner.run_sweep(once, tmp_path / "out", scheduler=scheduler, progress=False)
    assert (len(retried.outcomes), retried.failed) == (1, [])
    once = _run_folders(tmp_path / "out", "once", "09_killer")["seed=1"]
    assert (once / "attempts.txt").read_text() == "2" and _leftovers(once) == []
    assert results.load(once / "09_killer" / "metrics.nc").value.values.tolist() == [1, 2]

    path = _sweep_file(tmp_path / "twice.yaml", notebook, grid={"seed": [2]}, parameters={"kills": 2})
    reported = runner.run_sweep(path, tmp_path / "out", scheduler=scheduler, progress=False)
    twice = _run_folders(tmp_path / "out", "twice", "09_killer")["seed=2"]
    record = read_record(twice / "09_killer.attempt.json")
    assert (twice / "attempts.txt").read_text() == "2" and record.status == "failed" and "KilledWorker" in record.error
    assert [run.label for run, _ in reported.failed] == ["09_killer/seed=2"]
    assert not (twice / "09_killer").exists() and not (twice / "09_killer.run.json").exists(), "a half-written result"
    assert _leftovers(twice) != [] and not (twice / "09_killer.ipynb").exists()  # the next run removes the leftovers
    with pytest.raises(ValueError, match="no complete run"):
        load_sweep(tmp_path / "out" / "sweeps" / "twice")


# With HOLD_FILE present, the run starts writing its result and waits there to be killed, its kernel's pid in HOLD_FILE.pid.
HOLDS = """\
import os, time
from pathlib import Path
import xarray as xr
from workbench import results
from workbench.files import atomic_write
hold = Path(os.environ.get('HOLD_FILE', '/nonexistent'))
if hold.exists():
    with atomic_write(Path(results_dir) / 'metrics.nc') as temporary:
        temporary.write_bytes(b'CDF half a result')
        hold.with_suffix('.pid').write_text(str(os.getpid()))
        time.sleep(600)
results.save(xr.Dataset({'value': ('step', [seed])}), Path(results_dir) / 'metrics.nc')
"""


@pytest.mark.slow
def test_a_killed_sweep_leaves_nothing_that_looks_complete(tmp_path):
    notebook = write_notebook(tmp_path / "nb" / "09_holds.ipynb", HOLDS, "seed = 0\nresults_dir = 'out'")
    path = _sweep_file(tmp_path / "holds.yaml", notebook, grid={"seed": [0, 1]})
    out = tmp_path / "out"
    command = [sys.executable, "-m", "workbench.cli", "sweep", str(path), "-o", str(out), "--workers", "1"]
    hold = tmp_path / "hold"
    kill_while_held(command, hold, {"WORKBENCH_PROGRESS": "0"})

    held = out / "sweeps" / "holds" / "09_holds" / "seed=0"
    assert read_record(held / "09_holds.attempt.json").status == "running" and not (held / "09_holds.run.json").exists()
    assert not (held / "09_holds.ipynb").exists() and not (held / "09_holds" / "metrics.nc").exists()
    assert _leftovers(out) != []
    with pytest.raises(ValueError, match="no complete run"):
        load_sweep(out / "sweeps" / "holds")

    hold.unlink()
    summary = runner.run_sweep(path, out, workers=1, progress=False)
    assert (len(summary.outcomes), summary.skipped, summary.failed) == (2, 0, [])
    assert _leftovers(out) == []
    assert load_sweep(out / "sweeps" / "holds").value.sel(step=0).values.tolist() == [0, 1]


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"grid": {"seed": [0, 1], "stepz": [5]}}, r"run 1 of 09_small.ipynb \(seed=0, stepz=5\): 09_small.ipynb: unknown parameter 'stepz'"),
        ({"runs": [{"seed": 0}, {"seed": "one"}]}, r"1 of 2 runs are refused.*run 2 of 09_small.ipynb \(seed='one'\):.*'seed' takes a int, got 'one'"),
        ({"notebooks": ["nb/99_missing.ipynb"]}, r"no notebook at nb/99_missing.ipynb"),
        ({"grid": {"seed": 3}}, r"grid values are a non-empty list"),
        ({"parameters": {"results_dir": "elsewhere"}}, r"'results_dir' is set by the sweep"),
        ({"grids": {"seed": [0]}}, r"unknown keys \['grids'\]"),
        ({"runs": [{"seed": 1}, {"seed": 1}]}, r"run 2 of 09_small.ipynb \(seed=1\) is the same run as run 1"),
        ({"parameters": {"seed": 1}, "grid": {"seed": [2]}}, r"\['seed'\] are set both in 'parameters' and in the swept values"),
        ({"name": "x" * 300}, r"the sweep's name 'x{300}' is 300 characters long; at most 100"),
    ],
)
def test_a_bad_sweep_file_is_refused_before_anything_runs(tmp_path, spec, message):
    write_notebook(tmp_path / "nb" / "09_small.ipynb", SAVES_METRICS)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"notebooks": ["nb/09_small.ipynb"], **spec}, sort_keys=False))
    with pytest.raises(ValueError, match=re.compile(message, re.DOTALL)):
        runner.run_sweep(path, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_the_cli_refuses_a_bad_sweep_file_with_exit_status_2(tmp_path, capsys):
    write_notebook(tmp_path / "nb" / "09_small.ipynb", SAVES_METRICS)
    path = _sweep_file(tmp_path / "bad.yaml", tmp_path / "nb" / "09_small.ipynb", grid={"scale": ["big"]})
    assert cli.main(["sweep", str(path), "-o", str(tmp_path / "out")]) == 2
    printed = capsys.readouterr().err
    assert "run 1 of 09_small.ipynb (scale='big')" in printed and "parameter 'scale' takes a float" in printed
    assert not (tmp_path / "out").exists()


def test_the_cli_refuses_a_sweep_name_too_long_for_a_folder(tmp_path, capsys):
    write_notebook(tmp_path / "nb" / "09_small.ipynb", SAVES_METRICS)
    path = _sweep_file(tmp_path / "long.yaml", tmp_path / "nb" / "09_small.ipynb", name="x" * 300, grid={"seed": [0]})
    assert cli.main(["sweep", str(path), "-o", str(tmp_path / "out")]) == 2
    printed = capsys.readouterr().err
    assert printed.startswith(f"workbench: {path}: the sweep's name") and printed.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_a_run_that_fails_before_recording_its_attempt_reports_its_own_error_not_an_older_one(tmp_path, monkeypatch):
    from workbench.runner import sweep as sweeping
    from workbench.runner.record import FAILED, RunRecord, write_record
    from workbench.runner.sweepfile import SweepRun

    notebook = write_notebook(tmp_path / "nb" / "09_small.ipynb", SAVES_METRICS)
    run = SweepRun(notebook, {"seed": 1}, {"seed": 1}, tmp_path / "out" / "seed=1", "identity")
    run.folder.mkdir(parents=True)
    old = RunRecord(notebook.name, "t", {"seed": 1}, "identity", FAILED, "2020-01-01T00:00:00+00:00", error="an old error")
    write_record(run.files, old)

    def refuses(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(sweeping, "run_notebook", refuses)
    for attempt in (old, None):
        if attempt is None:
            run.files.attempt.unlink()
        record = sweeping.run_in_sweep(run, "s")
        assert record.status == FAILED and record.error == "disk full"
