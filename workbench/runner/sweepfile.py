"""Sweep files: notebooks and a grid (or list) of parameter values, read and checked into a plan of runs.

A sweep file is YAML::

    name: conflict-seeds              # optional; the file's name without .yaml by default
    notebooks:                        # paths relative to the sweep file
      - ../notebooks/01_gradient_conflict.ipynb
    parameters: {quick: true}         # the same for every run (optional)
    grid:                             # every combination is one run (optional)
      seed: [0, 1, 2, 3]
      lr: [0.001, 0.01]
    runs:                             # a list of runs (optional); with a grid, each is combined with every grid point
      - {by: tensor}
      - {by: module, threshold: -0.1}

Every notebook runs every combination. The parameters named in ``grid`` and ``runs`` are the
sweep's *swept* parameters: they name each run's folder, ``OUTPUT/sweeps/NAME/NOTEBOOK/seed=0,lr=0.001/``,
and become the dimensions of :func:`workbench.load_sweep`. Every run's values are checked against
its notebook's ``parameters`` cell by :func:`read_sweep`, before anything runs or is written.
"""

from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from workbench.runner.parameters import RESULTS_PARAMETER, check_parameters, notebook_parameters
from workbench.runner.record import RunFiles, folder_name, run_identity

__all__ = ["Sweep", "SweepRun", "read_sweep", "MANIFEST"]

# The file in a sweep's folder that lists its runs and swept parameters (written by run_sweep, read by load_sweep).
MANIFEST = "sweep.json"

_KEYS = ("name", "notebooks", "parameters", "grid", "runs")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_LONGEST_NAME = 100  # a folder's name; most file systems take 255 bytes
_SHOWN_PROBLEMS = 12


@dataclass(frozen=True)
class SweepRun:
    """One run of a sweep: a notebook, all its given values, the swept ones among them, and where it writes."""

    notebook: Path
    parameters: dict[str, Any]
    swept: dict[str, Any]
    folder: Path
    identity: str

    @property
    def files(self) -> RunFiles:
        return RunFiles(self.folder, self.notebook.stem)

    @property
    def label(self) -> str:
        """``NOTEBOOK/FOLDER``: how messages and the summary name the run."""
        return f"{self.notebook.stem}/{self.folder.name}"


@dataclass(frozen=True)
class Sweep:
    """A checked sweep: its name, its folder (``OUTPUT/sweeps/NAME``), the swept parameters' names and its runs."""

    name: str
    folder: Path
    swept: tuple[str, ...]
    runs: tuple[SweepRun, ...]


def _fail(path: Path, message: str) -> ValueError:
    return ValueError(f"{path}: {message}")


def _mapping(path: Path, spec: dict, key: str) -> dict:
    value = spec.get(key) or {}
    if not isinstance(value, dict) or not all(isinstance(name, str) for name in value):
        raise _fail(path, f"'{key}' must map parameter names to values, got {value!r}")
    return value


def _points(path: Path, spec: dict) -> tuple[list[str], list[dict]]:
    """The swept parameters' names and one mapping of values per point: each ``runs`` entry times each grid point."""
    grid = _mapping(path, spec, "grid")
    for name, values in grid.items():
        if not isinstance(values, list) or not values:
            raise _fail(path, f"grid values are a non-empty list, as in '{name}: [0, 1]'; got {name}: {values!r}")
    runs = spec.get("runs")
    if runs is not None and (not isinstance(runs, list) or not runs or not all(isinstance(run, dict) for run in runs)):
        raise _fail(path, f"'runs' must be a non-empty list of mappings, as in '- {{seed: 0}}'; got {runs!r}")
    runs = runs or [{}]
    listed = list(dict.fromkeys(name for run in runs for name in run))
    both = set(listed) & set(grid)
    if both:
        raise _fail(path, f"{sorted(both)} are set both in 'grid' and in 'runs'")
    combinations = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    return listed + list(grid), [{**run, **combination} for run in runs for combination in combinations]


def _notebooks(path: Path, spec: dict) -> list[Path]:
    notebooks = spec.get("notebooks")
    if isinstance(notebooks, str):
        notebooks = [notebooks]
    if not isinstance(notebooks, list) or not notebooks or not all(isinstance(n, str) for n in notebooks):
        raise _fail(path, f"'notebooks' must list one or more notebook paths (relative to the sweep file); got {notebooks!r}")
    resolved = [(path.parent / notebook).resolve() for notebook in notebooks]
    missing = [notebook for notebook, full in zip(notebooks, resolved) if not full.is_file()]
    if missing:
        raise _fail(path, f"no notebook at {', '.join(missing)} (paths are relative to the sweep file's folder, {path.parent})")
    return resolved


def _name(path: Path, spec: dict) -> str:
    name = spec.get("name", path.stem)
    if not isinstance(name, str) or not _NAME.match(name):
        raise _fail(path, f"the sweep's name {name!r} must be letters, digits and ._- (it names the sweep's folder)")
    if len(name) > _LONGEST_NAME:
        raise _fail(path, f"the sweep's name {name!r} is {len(name)} characters long; at most {_LONGEST_NAME} (it names the sweep's folder)")
    return name


def read_sweep(path: str | os.PathLike, output_dir: str | os.PathLike = "reports") -> Sweep:
    """Read the sweep file at ``path`` and check every run; raises ``ValueError`` naming each bad run.

    Nothing is written. Runs go to ``output_dir/sweeps/NAME/NOTEBOOK/FOLDER`` where ``FOLDER`` reads
    as the run's swept values (see :func:`workbench.runner.record.folder_name`).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no sweep file at {path}")
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise _fail(path, f"not valid YAML: {error}") from error
    if not isinstance(spec, dict):
        raise _fail(path, "a sweep file is a mapping with the keys " + ", ".join(_KEYS))
    unknown = set(spec) - set(_KEYS)
    if unknown:
        raise _fail(path, f"unknown keys {sorted(unknown)}; a sweep file has " + ", ".join(_KEYS))
    name, notebooks = _name(path, spec), _notebooks(path, spec)
    fixed = _mapping(path, spec, "parameters")
    swept, points = _points(path, spec)
    if RESULTS_PARAMETER in set(fixed) | set(swept):
        raise _fail(path, f"'{RESULTS_PARAMETER}' is set by the sweep: every run writes its results in its own folder")
    both = set(fixed) & set(swept)
    if both:
        raise _fail(path, f"{sorted(both)} are set both in 'parameters' and in the swept values")
    folder = Path(output_dir).resolve() / "sweeps" / name  # absolute: workers may run elsewhere
    runs, problems, folders = [], [], {}
    for notebook in notebooks:
        declared = notebook_parameters(notebook)
        for number, point in enumerate(points, start=1):
            described = f"run {number} of {notebook.name} ({', '.join(f'{k}={v!r}' for k, v in point.items()) or 'defaults'})"
            try:
                checked = check_parameters(notebook, {**fixed, **point})
            except ValueError as error:
                problems.append(f"{described}: {error}")
                continue
            values = {k: checked[k] if k in checked else getattr(declared.get(k), "default", None) for k in swept}
            run_folder = folder / notebook.stem / folder_name(values)
            if run_folder in folders:
                problems.append(f"{described} is the same run as {folders[run_folder]}")
                continue
            folders[run_folder] = described
            runs.append(SweepRun(notebook, checked, values, run_folder, run_identity(notebook, checked)))
    if problems:
        shown = problems[:_SHOWN_PROBLEMS] + ([f"and {len(problems) - _SHOWN_PROBLEMS} more"] if len(problems) > _SHOWN_PROBLEMS else [])
        raise _fail(path, f"{len(problems)} of {len(points) * len(notebooks)} runs are refused, nothing ran:\n  " + "\n  ".join(shown))
    return Sweep(name, folder, tuple(swept), tuple(runs))
