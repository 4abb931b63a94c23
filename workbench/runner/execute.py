"""Execute one notebook with papermill into a folder: the executed notebook, its HTML report, a log and a record.

The kernel runs in the report's folder, and ``results_dir`` is injected relative to it (``NAME``),
so a report names no path of the machine it ran on and still finds its results when reopened.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import threading
import time
import traceback
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import nbformat

from workbench.files import atomic_write, remove_leftovers
from workbench.progress import BATCH_VARIABLE
from workbench.runner.export import export_html
from workbench.runner.parameters import RESULTS_PARAMETER, check_parameters, notebook_parameters, title
from workbench.runner.record import COMPLETE, FAILED, RUNNING, RunFiles, RunRecord, now, run_identity, write_record

__all__ = ["KERNEL_NAME", "Report", "ensure_kernel", "kernel_environment", "run_notebook"]

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


def _without_machine_paths(executed: Path, notebook: Path, report: Path) -> nbformat.NotebookNode:
    """Papermill's output notebook with the input and output paths in its metadata reduced to file names."""
    nb = nbformat.read(executed, as_version=4)
    nb.metadata.setdefault("papermill", {}).update(input_path=notebook.name, output_path=report.name)
    return nb


def _keep_failed(executed: Path, notebook: Path, files: RunFiles, log: TextIO) -> None:
    """Keep papermill's partly executed notebook as ``NAME.failed.ipynb`` and ``.html``; a problem doing so goes to the log."""
    if not executed.stat().st_size:  # the kernel did not start: nothing was executed
        return
    try:
        with atomic_write(files.failed_notebook, suffix=".ipynb") as failed:
            nbformat.write(_without_machine_paths(executed, notebook, files.failed_notebook), failed)
        export_html(files.failed_notebook, files.failed_html)
    except Exception as error:  # noqa: BLE001 - the run's own error is the one to report
        log.write(f"\ncould not keep the partly executed notebook: {type(error).__name__}: {error}\n")


def run_notebook(
    notebook: str | os.PathLike,
    parameters: Mapping[str, Any] | None = None,
    output_dir: str | os.PathLike = "reports",
    progress: bool = True,
    sweep: str | None = None,
) -> Report:
    """Execute ``notebook`` with ``parameters`` into ``output_dir``; raises what made it fail, after recording it.

    Writes ``NAME.ipynb`` and ``NAME.html``, the notebook's results in ``NAME/``, the kernel's output in
    ``NAME.log`` and the record ``NAME.run.json`` (``sweep`` names the sweep it belongs to). The
    parameters are checked before anything is written. A failed run leaves the previous report in
    place, keeps the partly executed notebook as ``NAME.failed.ipynb`` and ``NAME.failed.html`` and
    records the error. Leftovers of this run's killed writes and of its earlier failure are removed first.
    """
    import papermill

    notebook = Path(notebook).resolve()
    checked = check_parameters(notebook, parameters or {})
    files = RunFiles(Path(output_dir).resolve(), notebook.stem)
    files.folder.mkdir(parents=True, exist_ok=True)
    remove_leftovers(files.folder, files.written)
    remove_leftovers(files.results_dir, recursive=True)
    files.failed_notebook.unlink(missing_ok=True)  # from an earlier failure
    files.failed_html.unlink(missing_ok=True)
    injected = dict(checked)
    if RESULTS_PARAMETER in notebook_parameters(notebook):
        injected.setdefault(RESULTS_PARAMETER, files.results_dir.name)
    record = RunRecord(
        notebook=notebook.name, title=title(notebook), identity=run_identity(notebook, checked), status=RUNNING,
        parameters={k: v for k, v in checked.items() if k != RESULTS_PARAMETER}, started=now(), sweep=sweep,
    )
    write_record(files, record)
    start = time.monotonic()
    with files.log.open("w", encoding="utf-8") as log:
        log.write(f"{record.started} {notebook.name} {json.dumps(record.parameters, default=repr)}\n")
        log.flush()
        try:
            # the kernel inherits WORKBENCH_BATCH=1: no progress bars or widgets frozen in the report, plotly.js embedded
            with atomic_write(files.notebook, suffix=".ipynb") as executed, kernel_environment({BATCH_VARIABLE: "1"}):
                try:
                    papermill.execute_notebook(
                        str(notebook), str(executed), parameters=injected, kernel_name=ensure_kernel(),
                        progress_bar=progress, stdout_file=log, stderr_file=log,
                        resources={"metadata": {"path": str(files.folder)}},  # the kernel's working directory
                    )
                except BaseException:
                    _keep_failed(executed, notebook, files, log)
                    raise
                nbformat.write(_without_machine_paths(executed, notebook, files.notebook), executed)
            export_html(files.notebook, files.html)
        except BaseException as error:
            duration = time.monotonic() - start
            report = files.failed_html.name if files.failed_html.exists() else None
            write_record(files, dataclasses.replace(record, status=FAILED, duration=duration, error=_describe(error), report=report))
            log.write(f"\nfailed after {duration:.1f} s\n{''.join(traceback.format_exception(error))}")
            raise
        duration = time.monotonic() - start
        log.write(f"\ncomplete in {duration:.1f} s\n")
    # the record says complete only once every other file is in place
    write_record(files, dataclasses.replace(record, status=COMPLETE, duration=duration, report=files.html.name))
    return Report(files.notebook, files.html, files.results_dir, checked)
