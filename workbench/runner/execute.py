"""Execute one notebook with papermill into a folder: the executed notebook, its HTML report, a log and a record.

The kernel runs in the run's staging folder, a hidden folder inside the report's folder, and
``results_dir`` is injected relative to it (``NAME``). The executed notebook, HTML and log are
written there too, and all of them are published at once when the run succeeds, or under their
``NAME.failed`` names when it fails (see :mod:`workbench.runner.staging`). So a report names no
path of the machine it ran on, and finds its results, ``NAME/`` beside it, when reopened.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import sys
import threading
import time
import traceback
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import nbformat

from workbench.files import remove_leftovers
from workbench.progress import BATCH_VARIABLE
from workbench.runner.export import export_html
from workbench.runner.parameters import RESULTS_PARAMETER, check_parameters, notebook_parameters, title
from workbench.runner.record import COMPLETE, FAILED, RUNNING, RunFiles, RunRecord, now, run_identity, write_record
from workbench.runner.staging import holding_lock, publish, remove_staged, staging_folder

__all__ = ["KERNEL_NAME", "Report", "check_output_folder", "cores", "ensure_kernel", "kernel_environment", "run_notebook", "thread_share"]

KERNEL_NAME = "workbench"


def ensure_kernel() -> str:
    """Make the ``workbench`` Jupyter kernel run this Python; returns its name.

    The kernel spec lives in this environment (``sys.prefix/share/jupyter``) and is (re)written when
    missing or pointing at another Python. That directory is put first on ``JUPYTER_PATH`` for this
    process, so a ``workbench`` kernel of another environment cannot shadow it.
    """
    data_dir = Path(sys.prefix) / "share" / "jupyter"
    spec_file = data_dir / "kernels" / KERNEL_NAME / "kernel.json"
    current = json.loads(spec_file.read_text()).get("argv", [None])[0] if spec_file.exists() else None
    if current != sys.executable:
        from ipykernel.kernelspec import install

        install(kernel_name=KERNEL_NAME, display_name="Python (workbench)", prefix=sys.prefix)
    paths = os.environ.get("JUPYTER_PATH", "").split(os.pathsep)
    if str(data_dir) not in paths:
        os.environ["JUPYTER_PATH"] = os.pathsep.join([str(data_dir), *filter(None, paths)])
    return KERNEL_NAME


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
"""The environment variables through which numpy, torch and friends take their thread counts."""


def cores() -> int:
    """The CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def thread_share(jobs: int) -> dict[str, str]:
    """The thread variables that give each of ``jobs`` kernels run side by side its share of the cores (at least one)."""
    return {variable: str(max(1, cores() // jobs)) for variable in THREAD_VARIABLES}


_environment_lock = threading.Lock()
_environment_holders: dict[str, tuple[int, str | None]] = {}  # variable -> (blocks holding it, its value before the first)


@contextlib.contextmanager
def kernel_environment(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the duration of the block: the kernels started inside inherit them.

    Safe for runs in several threads of one process: a variable keeps its value until the last
    block that set it ends, then gets its previous value back. Blocks that overlap must agree on
    the value; a disagreement raises ``RuntimeError``.
    """
    with _environment_lock:
        for key, value in values.items():
            holders, before = _environment_holders.get(key, (0, os.environ.get(key)))
            if holders and os.environ.get(key) != value:
                raise RuntimeError(f"{key} is set to {os.environ.get(key)!r} for running kernels; cannot set it to {value!r}")
            _environment_holders[key] = (holders + 1, before)
            os.environ[key] = value
    try:
        yield
    finally:
        with _environment_lock:
            for key in values:
                holders, before = _environment_holders.pop(key)
                if holders > 1:
                    _environment_holders[key] = (holders - 1, before)
                elif before is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = before


@dataclass(frozen=True)
class Report:
    """The files one successful notebook run wrote, and the parameters it ran with."""

    notebook: Path
    html: Path
    results_dir: Path
    parameters: dict


def _describe(error: BaseException) -> str:
    """One line: the failing cell's exception for a notebook error, else the exception itself."""
    from papermill.exceptions import PapermillExecutionError

    if isinstance(error, PapermillExecutionError):
        return f"{error.ename}: {error.evalue}"
    return f"{type(error).__name__}: {error}".rstrip(": ")


def check_output_folder(folder: str | os.PathLike) -> None:
    """Raise ``ValueError`` unless ``folder`` is a folder or can be made one: it, or its nearest parent that exists, is a folder."""
    folder = Path(folder)
    existing = next(path for path in (folder, *folder.parents) if path.exists())
    if not existing.is_dir():
        held = "" if existing == folder else f", so it cannot hold {folder}"
        raise ValueError(f"{existing} is not a folder{held}")


def _injected(notebook: Path, checked: Mapping[str, Any], files: RunFiles) -> dict[str, Any]:
    """The parameters given to papermill: the checked values and, if the notebook declares it, ``results_dir``
    (``NAME``, relative to the kernel's working directory)."""
    if RESULTS_PARAMETER not in notebook_parameters(notebook):
        return dict(checked)
    return {**checked, RESULTS_PARAMETER: files.results_dir.name}


def _as_published(executed: Path, notebook: Path, target: RunFiles) -> None:
    """Papermill's output notebook with the input and output paths in its metadata reduced to file names, as published at ``target``."""
    nb = nbformat.read(executed, as_version=4)
    nb.metadata.setdefault("papermill", {}).update(input_path=notebook.name, output_path=target.notebook.name)
    nbformat.write(nb, executed)


def _keep_failed(staging: RunFiles, notebook: Path, failed: RunFiles, log: TextIO) -> None:
    """Make the staged, partly executed notebook readable (and its HTML) as ``failed``'s; a problem doing so goes to the log."""
    if not staging.notebook.exists() or not staging.notebook.stat().st_size:  # the kernel did not start: nothing was executed
        return
    try:
        _as_published(staging.notebook, notebook, failed)
        export_html(staging.notebook, staging.html)
    except Exception as error:  # noqa: BLE001 - the run's own error is the one to report
        log.write(f"\ncould not keep the partly executed notebook: {type(error).__name__}: {error}\n")


def _execute_staged(notebook: Path, checked: Mapping[str, Any], files: RunFiles, staging: RunFiles, record: RunRecord,
                    progress: bool, start: float) -> float:
    """Execute the notebook with its results, notebook, HTML and log in ``staging``; returns the duration.

    On failure the error is logged and the partly executed notebook kept, readable, in ``staging``, then raised.
    """
    import papermill

    injected = _injected(notebook, checked, files)
    with staging.log.open("w", encoding="utf-8") as log:
        log.write(f"{record.started} {notebook.name} {json.dumps(record.parameters, default=repr)}\n")
        log.flush()
        try:
            # the kernel inherits WORKBENCH_BATCH=1: no progress bars or widgets frozen in the report, plotly.js embedded
            with kernel_environment({BATCH_VARIABLE: "1"}):
                papermill.execute_notebook(
                    str(notebook), str(staging.notebook), parameters=injected, kernel_name=ensure_kernel(),
                    progress_bar=progress, stdout_file=log, stderr_file=log,
                    resources={"metadata": {"path": str(staging.folder)}},  # the kernel's working directory
                )
            _as_published(staging.notebook, notebook, files)
            export_html(staging.notebook, staging.html)
        except BaseException as error:
            _keep_failed(staging, notebook, files.failed, log)
            log.write(f"\nfailed after {time.monotonic() - start:.1f} s\n{''.join(traceback.format_exception(error))}")
            raise
        duration = time.monotonic() - start
        log.write(f"\ncomplete in {duration:.1f} s\n")
    return duration


def _remove_earlier(files: RunFiles) -> None:
    """Remove the leftovers of killed runs (staging folders, temporary files) and the files of an earlier failed attempt."""
    remove_staged(files)
    remove_leftovers(files.folder, files.written)
    shutil.rmtree(files.failed.results_dir, ignore_errors=True)
    for path in (files.failed.notebook, files.failed.html, files.failed.log):
        path.unlink(missing_ok=True)


def run_notebook(
    notebook: str | os.PathLike,
    parameters: Mapping[str, Any] | None = None,
    output_dir: str | os.PathLike = "reports",
    progress: bool = True,
    sweep: str | None = None,
) -> Report:
    """Execute ``notebook`` with ``parameters`` into ``output_dir``; raises what made it fail, after recording it.

    A complete run replaces ``NAME.ipynb``, ``NAME.html``, the results in ``NAME/`` and the kernel's
    output in ``NAME.log`` all at once, then writes the record ``NAME.run.json`` (``sweep`` names the
    sweep it belongs to). The attempt is recorded in ``NAME.attempt.json`` meanwhile. A failed run
    leaves the previous report, results and record in place; its partly executed notebook, partial
    results and log become ``NAME.failed.ipynb``, ``.html``, ``NAME.failed/`` and ``NAME.failed.log``,
    and its attempt's record says what failed. The parameters and the folder are checked before
    anything is written; a run of the same notebook into the same folder under way refuses this one
    (``RunInProgress``, a ``ValueError``). Leftovers of this notebook's killed runs and the files of
    its earlier failure are removed first.
    """
    notebook = Path(notebook).resolve()
    checked = check_parameters(notebook, parameters or {})
    check_output_folder(output_dir)
    files = RunFiles(Path(output_dir).resolve(), notebook.stem)
    files.folder.mkdir(parents=True, exist_ok=True)
    with holding_lock(files):
        _remove_earlier(files)
        record = RunRecord(
            notebook=notebook.name, title=title(notebook), identity=run_identity(notebook, checked), status=RUNNING,
            parameters=checked, started=now(), sweep=sweep,
        )
        write_record(files, record)
        start = time.monotonic()
        with staging_folder(files) as staging:
            try:
                duration = _execute_staged(notebook, checked, files, staging, record, progress, start)
            except BaseException as error:
                publish(staging, files.failed)
                report = files.failed.html.name if files.failed.html.exists() else None
                failed = dataclasses.replace(record, status=FAILED, duration=time.monotonic() - start, error=_describe(error), report=report)
                write_record(files, failed)
                raise
            publish(staging, files)
            # the record says complete only once every other file is in place
            write_record(files, dataclasses.replace(record, status=COMPLETE, duration=duration, report=files.html.name))
    return Report(files.notebook, files.html, files.results_dir, checked)
