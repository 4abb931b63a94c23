"""What one run of a notebook leaves in its folder, and how a finished run is recognised.

A run of notebook ``NAME`` into folder ``F`` writes ``F/NAME.ipynb`` and ``F/NAME.html`` (the report),
``F/NAME/`` (the notebook's result files), ``F/NAME.log`` (the kernel's output and the outcome) and
``F/NAME.run.json``, its record: notebook, parameters, identity, status, start time and duration.
The record is written atomically with status ``running`` before the notebook starts and with status
``complete`` or ``failed`` after everything else, so a run killed at any point is never taken for a
complete one. A run's identity is a hash of the notebook's cells and its parameters: a rerun is
skipped only when a complete record carries the same identity.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import nbformat

from workbench.files import atomic_write

__all__ = ["RunFiles", "RunRecord", "run_identity", "folder_name", "read_record", "write_record", "find_records", "now"]

COMPLETE, FAILED, RUNNING = "complete", "failed", "running"
_SAFE = re.compile(r"[^A-Za-z0-9._=,+-]")
_LONGEST_NAME = 80


@dataclass(frozen=True)
class RunFiles:
    """The paths of one run of notebook ``name`` (a file stem) in ``folder``."""

    folder: Path
    name: str

    @property
    def notebook(self) -> Path:
        return self.folder / f"{self.name}.ipynb"

    @property
    def html(self) -> Path:
        return self.folder / f"{self.name}.html"

    @property
    def failed_notebook(self) -> Path:
        return self.folder / f"{self.name}.failed.ipynb"

    @property
    def failed_html(self) -> Path:
        return self.folder / f"{self.name}.failed.html"

    @property
    def results_dir(self) -> Path:
        return self.folder / self.name

    @property
    def log(self) -> Path:
        return self.folder / f"{self.name}.log"

    @property
    def record(self) -> Path:
        return self.folder / f"{self.name}.run.json"

    @property
    def written(self) -> list[str]:
        """File names this run writes directly in ``folder`` (not in its results folder)."""
        return [p.name for p in (self.notebook, self.html, self.failed_notebook, self.failed_html, self.log, self.record)]


@dataclass(frozen=True)
class RunRecord:
    """A run's record (``NAME.run.json``).

    ``parameters`` are the values given to the notebook (``results_dir`` excluded: the runner places
    it); ``duration`` is in seconds, ``None`` while running; ``report`` is the file name, in the run's
    folder, of the HTML page to read (the report, or the partly executed notebook of a failed run).
    """

    notebook: str
    title: str
    parameters: dict[str, Any]
    identity: str
    status: str
    started: str
    duration: float | None = None
    error: str | None = None
    sweep: str | None = None
    report: str | None = None

    def is_complete(self, identity: str) -> bool:
        """Whether this record says the run with ``identity`` finished successfully."""
        return self.status == COMPLETE and self.identity == identity


def now() -> str:
    """The local time as an ISO 8601 string with its UTC offset, to the second."""
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def _canonical(parameters: Mapping[str, Any]) -> str:
    return json.dumps(dict(parameters), sort_keys=True, default=repr)


def run_identity(notebook: str | os.PathLike, parameters: Mapping[str, Any]) -> str:
    """A hex SHA-256 of the notebook's cells (type and source, not outputs or metadata) and the parameters."""
    nb = nbformat.read(notebook, as_version=4)
    content = json.dumps([[cell.cell_type, cell.source] for cell in nb.cells])
    return hashlib.sha256(f"{content}\n{_canonical(parameters)}".encode()).hexdigest()


def _value_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def folder_name(parameters: Mapping[str, Any]) -> str:
    """A folder name that reads as the parameters (``seed=1,lr=0.01``), unique to them.

    Characters other than letters, digits and ``._=,+-`` become ``_``; when that loses information
    or the name grows past 80 characters, a hash of the parameters is appended to keep names apart.
    An empty mapping gives ``defaults``.
    """
    if not parameters:
        return "defaults"
    readable = ",".join(f"{name}={_value_text(value)}" for name, value in parameters.items())
    safe = _SAFE.sub("_", readable)
    if safe == readable and len(safe) <= _LONGEST_NAME:
        return safe
    digest = hashlib.sha256(_canonical(parameters).encode()).hexdigest()[:10]
    return f"{safe[:_LONGEST_NAME - 11]}-{digest}"


def write_record(files: RunFiles, record: RunRecord) -> Path:
    """Write ``record`` to ``files.record`` atomically."""
    with atomic_write(files.record) as temporary:
        temporary.write_text(json.dumps(asdict(record), indent=1, default=repr), encoding="utf-8")
    return files.record


def read_record(path: str | os.PathLike) -> RunRecord | None:
    """The record at ``path``, or ``None`` when there is none or it is unreadable (an older format, a stray file)."""
    try:
        return RunRecord(**json.loads(Path(path).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def find_records(root: str | os.PathLike) -> Iterator[tuple[RunFiles, RunRecord]]:
    """Every run recorded under ``root`` (at any depth), with its files, in path order."""
    for path in sorted(Path(root).rglob("*.run.json")):
        record = read_record(path)
        if record is not None:
            yield RunFiles(path.parent, path.name[: -len(".run.json")]), record
