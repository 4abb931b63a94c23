"""Where ``workbench run`` and ``workbench reports`` put a notebook's report.

A run with the notebook's default parameters is *the* report of that notebook: ``OUTPUT/NAME.html``
(with ``NAME.ipynb`` and its results in ``NAME/``). A run with other values gets a folder of its
own, ``OUTPUT/runs/NAME/<the values>/``, so it never overwrites the default report. Both update
``OUTPUT/index.html``. The values (``results_dir`` is the runner's) and the output folder are
checked before anything is written.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from workbench.progress import progress as progress_bar
from workbench.runner.execute import Report, check_output_folder, ensure_kernel, kernel_environment, run_notebook, thread_share
from workbench.runner.index import write_index
from workbench.runner.parameters import check_parameters, non_default, notebook_parameters
from workbench.runner.record import folder_name

__all__ = ["report_folder", "run_report", "run_all"]


def report_folder(notebook: str | os.PathLike, parameters: Mapping[str, Any], output_dir: str | os.PathLike = "reports") -> Path:
    """The folder a run of ``notebook`` with ``parameters`` writes to: ``output_dir`` itself for its defaults."""
    changed = non_default(notebook, check_parameters(notebook, parameters))
    if not changed:
        return Path(output_dir)
    return Path(output_dir) / "runs" / Path(notebook).stem / folder_name(changed)


def run_report(
    notebook: str | os.PathLike,
    parameters: Mapping[str, Any] | None = None,
    output_dir: str | os.PathLike = "reports",
    progress: bool = True,
) -> Report:
    """Run ``notebook`` into its :func:`report_folder` and update ``OUTPUT/index.html`` (also when the run fails)."""
    folder = report_folder(notebook, parameters or {}, output_dir)
    check_output_folder(folder)
    try:
        return run_notebook(notebook, parameters, folder, progress)
    finally:
        write_index(output_dir)


def run_all(
    notebooks_dir: str | os.PathLike = "notebooks",
    output_dir: str | os.PathLike = "reports",
    parameters: Mapping[str, Any] | None = None,
    progress: bool = True,
    jobs: int = 1,
) -> list[Report]:
    """Run every ``NN_*.ipynb`` in ``notebooks_dir``, each into its :func:`report_folder`, then write the index.

    ``parameters`` go to each notebook that declares them; without them every notebook runs with its
    defaults and writes ``OUTPUT/NAME.html``. ``jobs`` notebooks run side by side, in their order, each
    kernel with its share of the cores (:func:`~workbench.runner.execute.thread_share`); one after another
    by default (on two cores, side by side with one thread each, notebook 03 ran 1.6× longer than alone
    and notebook 02, MiniLM's, became the batch's long pole at 29.8 min). A failing notebook stops the
    batch: no further one starts, the running ones finish, and the first failure (in the notebooks'
    order) is raised, every other one named in its notes; the index is written all the same.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    notebooks = sorted(Path(notebooks_dir).glob("[0-9][0-9]_*.ipynb"))
    if not notebooks:
        raise FileNotFoundError(f"no notebooks named NN_*.ipynb in {notebooks_dir}")
    declared_by = {path: notebook_parameters(path) for path in notebooks}
    unknown = set(parameters or {}) - {name for declared in declared_by.values() for name in declared}
    if unknown:
        raise ValueError(f"no notebook in {notebooks_dir} has the parameters {sorted(unknown)}")
    own = {path: {k: v for k, v in (parameters or {}).items() if k in declared} for path, declared in declared_by.items()}
    folders = {path: report_folder(path, own[path], output_dir) for path in notebooks}  # every value checked first
    for folder in folders.values():
        check_output_folder(folder)
    jobs = min(jobs, len(notebooks))
    try:
        if jobs == 1:
            return [run_notebook(path, own[path], folders[path], progress) for path in notebooks]
        return _side_by_side(notebooks, own, folders, jobs, progress)
    finally:
        write_index(output_dir)


def _side_by_side(notebooks: list[Path], own: Mapping[Path, Mapping[str, Any]], folders: Mapping[Path, Path], jobs: int,
                  progress: bool) -> list[Report]:
    """The notebooks run ``jobs`` at a time in threads (each run's work happens in its own kernel process), in order."""
    stopped = threading.Event()

    def run(path: Path) -> Report | None:
        if stopped.is_set():
            return None
        try:
            return run_notebook(path, own[path], folders[path], progress=False)
        except BaseException:
            stopped.set()
            raise

    ensure_kernel()  # once, before runs in several threads look for it
    with kernel_environment(thread_share(jobs)), ThreadPoolExecutor(jobs) as pool:
        futures = [pool.submit(run, path) for path in notebooks]
        try:
            for _ in progress_bar(as_completed(futures), desc=f"notebooks, {jobs} at a time", enabled=progress, total=len(futures), unit="notebook"):
                pass
        except BaseException:  # an interrupt: no further notebook starts, the running ones finish
            stopped.set()
            raise
    failures = [(path, future.exception()) for path, future in zip(notebooks, futures) if future.exception() is not None]
    if failures:
        first = failures[0][1]
        for path, error in failures[1:]:
            first.add_note(f"{path.name} failed too: {error!r}")
        raise first
    return [future.result() for future in futures]
