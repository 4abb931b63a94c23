"""What one run of a notebook leaves in its folder, and how a finished run is recognised.

A complete run of notebook ``NAME`` into folder ``F`` leaves ``F/NAME.ipynb`` and ``F/NAME.html`` (the
report), ``F/NAME/`` (the notebook's result files), ``F/NAME.log`` (the kernel's output and the
outcome) and ``F/NAME.run.json``, its record: notebook, parameters, identity, status, start time and
duration. That record is written only once every other file of the run is in place, so it always
describes the report beside it.

The run under way, or the last one that failed or was killed since, is an *attempt*, recorded apart
in ``F/NAME.attempt.json`` (status ``running`` or ``failed``) and removed when a run completes: a
failure never hides the last complete report. A failed attempt's files are named like a run of
``NAME.failed``: ``NAME.failed.ipynb``, ``.html``, ``.log`` and its partial results in
``NAME.failed/``. Records are written atomically. A run's identity is a hash of the notebook's cells
and its parameters: a rerun is skipped only when a complete record carries the same identity.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import types
import typing
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any

import nbformat

from workbench.files import atomic_write

__all__ = ["RunFiles", "RunRecord", "run_identity", "folder_name", "read_record", "write_record", "find_records", "now"]

COMPLETE, FAILED, RUNNING = "complete", "failed", "running"
RECORD_SUFFIX, ATTEMPT_SUFFIX = ".run.json", ".attempt.json"
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
    def results_dir(self) -> Path:
        return self.folder / self.name

    @property
    def log(self) -> Path:
        return self.folder / f"{self.name}.log"

    @property
    def record(self) -> Path:
        """The record of the last complete run."""
        return self.folder / f"{self.name}{RECORD_SUFFIX}"

    @property
    def attempt(self) -> Path:
        """The record of the run under way, or of the last one that failed or was killed since the last complete run."""
        return self.folder / f"{self.name}{ATTEMPT_SUFFIX}"

    @property
    def lock(self) -> Path:
        """The lock the run under way holds (see :mod:`workbench.runner.staging`)."""
        return self.folder / f"{self.name}.lock"

    @property
    def failed(self) -> RunFiles:
        """Where a failed attempt's notebook, HTML, log and partial results go: ``NAME.failed.ipynb``, ..., ``NAME.failed/``."""
        return RunFiles(self.folder, f"{self.name}.failed")

    @property
    def written(self) -> list[str]:
        """File names this run puts directly in ``folder`` (not in its results folder), whose leftovers of killed writes it removes."""
        published = [path.name for files in (self, self.failed) for path in (files.notebook, files.html, files.log)]
        return [*published, self.record.name, self.attempt.name]


@dataclass(frozen=True)
class RunRecord:
    """A run's record: ``NAME.run.json`` once complete, ``NAME.attempt.json`` while running or once failed.

    ``parameters`` are the values given to the notebook (never ``results_dir``: the runner sets
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
    """Write ``record`` atomically where its status puts it; returns that path.

    A running or failed attempt goes to ``files.attempt``. A complete run goes to ``files.record``,
    and the attempt's record is then removed: that attempt is this run.
    """
    path = files.record if record.status == COMPLETE else files.attempt
    with atomic_write(path) as temporary:
        temporary.write_text(json.dumps(asdict(record), indent=1, default=repr), encoding="utf-8")
    if record.status == COMPLETE:
        files.attempt.unlink(missing_ok=True)
    return path


def _accepted(hint: Any) -> tuple[type, ...]:
    """The types a field annotated ``hint`` takes: ``float | None`` gives ``(float, NoneType)``, ``dict[str, Any]`` ``(dict,)``."""
    alternatives = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    return tuple(typing.get_origin(kind) or kind for kind in alternatives)


_FIELD_TYPES = {name: _accepted(hint) for name, hint in typing.get_type_hints(RunRecord).items()}
_REQUIRED = [field.name for field in fields(RunRecord) if field.default is MISSING]


def _fits(value: Any, accepted: tuple[type, ...]) -> bool:
    """Whether a JSON value fits a field's types: an int fits a float, a bool fits only a bool."""
    if isinstance(value, bool):
        return bool in accepted
    return isinstance(value, accepted) or (isinstance(value, int) and float in accepted)


def _problems(data: Any) -> list[str]:
    """What keeps parsed JSON from being a record: not an object, or fields missing, unknown or of the wrong type."""
    if not isinstance(data, dict):
        return [f"a record is a JSON object, got a {type(data).__name__}"]
    problems = [f"no field {name!r}" for name in _REQUIRED if name not in data]
    for name, value in data.items():
        accepted = _FIELD_TYPES.get(name)
        if accepted is None:
            problems.append(f"unknown field {name!r}")
        elif not _fits(value, accepted):
            kinds = " or ".join("None" if kind is types.NoneType else kind.__name__ for kind in accepted)
            problems.append(f"{name!r} must be a {kinds}, got {value!r}")
    if isinstance(data.get("status"), str) and data["status"] not in (COMPLETE, FAILED, RUNNING):
        problems.append(f"'status' must be {COMPLETE!r}, {FAILED!r} or {RUNNING!r}, got {data['status']!r}")
    return problems


def read_record(path: str | os.PathLike) -> RunRecord | None:
    """The record at ``path``, or ``None`` when there is none.

    A file that is not a record (unreadable, not JSON, not an object, a field missing, unknown or of
    the wrong type: a damaged or stray file, an older format) is taken as none too, with a warning
    naming it and what is wrong, so that one bad file leaves the listing of the others alone.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        problems = [f"unreadable: {error}"]
    else:
        problems = _problems(data)
    if problems:
        warnings.warn(f"{path}: not a run record, taken as none ({'; '.join(problems)})", stacklevel=2)
        return None
    return RunRecord(**data)


def find_records(root: str | os.PathLike) -> Iterator[tuple[RunFiles, RunRecord]]:
    """Every record under ``root`` (at any depth), with its run's files, in path order; for a run with both, its
    last complete record comes before its attempt's. A file that is not a record is left out, with a warning."""
    runs = {
        RunFiles(path.parent, path.name.removesuffix(suffix))
        for suffix in (RECORD_SUFFIX, ATTEMPT_SUFFIX)
        for path in Path(root).rglob(f"*{suffix}")
    }
    for files in sorted(runs, key=lambda files: (files.folder, files.name)):
        for path in (files.record, files.attempt):
            record = read_record(path)
            if record is not None:
                yield files, record
