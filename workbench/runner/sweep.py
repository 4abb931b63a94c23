"""Run a sweep: every run not already complete, on Dask when it is installed, one after another otherwise.

By default the runs go to a Dask ``LocalCluster`` on this machine: one worker per core (at most one
per run), each running one notebook kernel at a time, with the kernels' math libraries limited to
the cores left per worker. The LocalCluster's workers are threads of the sweep's process, because
the work of a run happens in its own kernel process; a worker process would first spend seconds
importing papermill and nbconvert (see ``benchmarks/README.md``). With ``scheduler`` the runs go to
an existing Dask cluster (a SLURM or Kubernetes deployment, say) whose workers see the same files.
Without the ``distributed`` extra, or with ``workers=1``, the runs go one after another in this
process; the runs, folders and records are the same either way.

A run whose complete record (``NAME.run.json``) carries the run's identity (the notebook's cells and
the parameters) is skipped; failed and unfinished runs run again. A failing run is recorded as a
failed attempt (``NAME.attempt.json``) and the sweep goes on. A worker that dies mid-run (killed,
out of memory) has its run retried on another worker, up to Dask's
``distributed.scheduler.allowed-failures`` times, then recorded failed.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import json
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from workbench.files import atomic_write, remove_leftovers
from workbench.progress import progress as progress_bar
from workbench.runner.execute import check_output_folder, cores, ensure_kernel, kernel_environment, run_notebook, thread_share
from workbench.runner.index import write_index
from workbench.runner.parameters import title
from workbench.runner.record import COMPLETE, FAILED, RUNNING, RunRecord, now, read_record, write_record
from workbench.runner.staging import RunInProgress
from workbench.runner.sweepfile import MANIFEST, Sweep, SweepRun, read_sweep

__all__ = ["SweepSummary", "run_sweep", "run_in_sweep"]



@dataclass(frozen=True)
class SweepSummary:
    """How a sweep went: the outcome of every run it executed, and how many it skipped as already complete."""

    sweep: Sweep
    outcomes: tuple[tuple[SweepRun, RunRecord], ...]
    skipped: int

    @property
    def failed(self) -> list[tuple[SweepRun, RunRecord]]:
        return [(run, record) for run, record in self.outcomes if record.status != COMPLETE]

    def __str__(self) -> str:
        completed = len(self.outcomes) - len(self.failed)
        lines = [
            f"sweep {self.sweep.name}: {len(self.sweep.runs)} runs in {self.sweep.folder}: "
            f"{completed} ran and completed, {self.skipped} already complete (skipped), {len(self.failed)} failed"
        ]
        lines += [f"  failed: {run.label}: {record.error}{_log_of(run)}" for run, record in self.failed]
        return "\n".join(lines)


def _log_of(run: SweepRun) -> str:
    """`` (log: PATH)`` for a failed run whose log was kept, else nothing (a run lost with its worker, say)."""
    return f" (log: {run.files.failed.log})" if run.files.failed.log.exists() else ""


def _is_complete(run: SweepRun) -> bool:
    record = read_record(run.files.record)
    return record is not None and record.is_complete(run.identity) and run.files.html.exists()


def _write_manifest(sweep: Sweep) -> Path:
    """``sweep.json``: the sweep's name, swept parameters and runs (folder relative to the sweep's folder), for ``load_sweep``."""
    runs = [{"notebook": run.notebook.stem, "folder": run.folder.relative_to(sweep.folder).as_posix(), "swept": run.swept} for run in sweep.runs]
    path = sweep.folder / MANIFEST
    with atomic_write(path) as temporary:
        temporary.write_text(json.dumps({"name": sweep.name, "swept": list(sweep.swept), "runs": runs}, indent=1, default=repr))
    return path


_thread_contexts = threading.local()


def _thread_context() -> contextvars.Context:
    """A context of this thread's own. Dask runs a task in a copy of its event loop's context, where
    jupyter_core may have recorded another thread's event loop for nbclient; in a context of its own
    each thread has its own, reused from run to run."""
    if not hasattr(_thread_contexts, "context"):
        _thread_contexts.context = contextvars.Context()
    return _thread_contexts.context


def run_in_sweep(run: SweepRun, sweep_name: str) -> RunRecord:
    """Execute one run of a sweep and return its record (a failed attempt's for a failure, which is recorded, not raised).

    A run of the same notebook into the same folder already under way (another sweep's) keeps its
    records; this run's refusal, like a failure before the run recorded its attempt, is returned as a
    failed record, written nowhere. This is the task a
    Dask worker executes: it needs only the run and the shared files.
    """
    began = now()
    try:
        _thread_context().run(run_notebook, run.notebook, run.parameters, run.folder, progress=False, sweep=sweep_name)
    except Exception as error:  # noqa: BLE001 - the failure is in the attempt's record, log and failed notebook
        record = read_record(run.files.attempt)
        if isinstance(error, RunInProgress) or record is None or record.started < began:  # refused, or failed before recording
            return RunRecord(run.notebook.name, title(run.notebook), run.parameters, run.identity, FAILED, began, error=str(error), sweep=sweep_name)
        return record
    record = read_record(run.files.record)
    if record is None:
        raise RuntimeError(f"{run.label}: the run left no record at {run.files.record}")
    return record


def _record_lost(run: SweepRun, sweep_name: str, error: BaseException) -> RunRecord:
    """Record as failed a run whose task raised (its worker died too often, say) and return that record."""
    earlier = read_record(run.files.attempt)
    if earlier is None or earlier.status != RUNNING:
        earlier = RunRecord(run.notebook.name, title(run.notebook), run.parameters, run.identity, RUNNING, now(), sweep=sweep_name)
    record = dataclasses.replace(earlier, status=FAILED, error=f"{type(error).__name__}: {error}", report=None)
    write_record(run.files, record)
    return record


def _one_after_another(runs: Sequence[SweepRun], sweep_name: str) -> Iterator[tuple[SweepRun, RunRecord]]:
    for run in runs:
        yield run, run_in_sweep(run, sweep_name)


def _on_dask(runs: Sequence[SweepRun], sweep_name: str, scheduler: str | None, workers: int | None) -> Iterator[tuple[SweepRun, RunRecord]]:
    """Submit every run to a Dask cluster (a new LocalCluster, or the one at ``scheduler``); yield them as they finish."""
    from distributed import Client, LocalCluster, as_completed

    with contextlib.ExitStack() as stack:
        if scheduler:
            client = stack.enter_context(Client(scheduler))
        else:
            # Workers are threads of this process: each run's work happens in its own kernel process, and
            # a worker process would first spend seconds importing papermill and nbconvert.
            n_workers = workers or min(len(runs), cores())
            stack.enter_context(kernel_environment(thread_share(n_workers)))
            cluster = stack.enter_context(LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=False, dashboard_address=None))
            client = stack.enter_context(Client(cluster))
        futures = {client.submit(run_in_sweep, run, sweep_name, pure=False): run for run in runs}
        for future in as_completed(futures):
            run = futures[future]
            try:
                yield run, future.result()
            except Exception as error:  # noqa: BLE001 - a lost worker fails this run, not the sweep
                yield run, _record_lost(run, sweep_name, error)


def _dask_installed() -> bool:
    try:
        import distributed  # noqa: F401
    except ImportError:
        return False
    return True


def run_sweep(
    sweep: str | os.PathLike | Sweep,
    output_dir: str | os.PathLike = "reports",
    scheduler: str | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> SweepSummary:
    """Run the sweep (a sweep file's path, or one read by :func:`read_sweep`) and update ``OUTPUT/index.html``.

    ``scheduler`` is the address of an existing Dask scheduler (``tcp://host:8786``); ``workers`` the
    number of LocalCluster workers (default: one per core, at most one per run; 1 runs in this
    process). Every run and the output folder are checked before anything starts. Leftovers of
    killed writes anywhere in the sweep's folder are removed first.
    """
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if scheduler and not _dask_installed():
        raise ValueError("--scheduler needs Dask: pip install 'workbench[distributed]'")
    if not isinstance(sweep, Sweep):
        sweep = read_sweep(sweep, output_dir)
    check_output_folder(output_dir)
    sweep.folder.mkdir(parents=True, exist_ok=True)
    remove_leftovers(sweep.folder, recursive=True)
    _write_manifest(sweep)
    pending = [run for run in sweep.runs if not _is_complete(run)]
    on_dask = scheduler is not None or (workers != 1 and _dask_installed())
    if pending and not on_dask and workers != 1:
        print("workbench: Dask is not installed, so the runs go one after another", file=sys.stderr)
    if pending:
        ensure_kernel()  # once, before runs in several threads look for it
    execution = _on_dask(pending, sweep.name, scheduler, workers) if on_dask and pending else _one_after_another(pending, sweep.name)
    try:
        outcomes = tuple(progress_bar(execution, desc=f"sweep {sweep.name}", enabled=progress and bool(pending), total=len(pending), unit="run"))
    finally:
        write_index(output_dir)
    return SweepSummary(sweep, outcomes, len(sweep.runs) - len(pending))
