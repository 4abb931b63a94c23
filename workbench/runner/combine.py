"""A sweep's results as one labelled Dataset: the swept parameters become dimensions."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import xarray as xr

from workbench import results
from workbench.runner.record import COMPLETE, RunFiles, read_record
from workbench.runner.sweepfile import MANIFEST

__all__ = ["load_sweep"]


def _label(value: Any) -> Any:
    """A swept value as a coordinate label: numbers, strings and booleans as they are, anything else as JSON."""
    return value if isinstance(value, (bool, int, float, str)) else json.dumps(value)


def _choose(kind: str, given: str | None, available: list[str], folder: Path) -> str:
    if given is None and len(available) == 1:
        return available[0]
    if given is None or given not in available:
        wanted = "which one" if given is None else f"{given!r} is not among them"
        raise ValueError(f"{folder}: the sweep has the {kind}s {available}; {wanted}? Pass {kind}=...")
    return given


def load_sweep(path: str | os.PathLike, result: str | None = None, notebook: str | None = None) -> xr.Dataset:
    """The result file ``result`` of every complete run of a sweep, combined along the swept parameters.

    ``path`` is the sweep's folder (``reports/sweeps/NAME``, written by ``workbench sweep``).
    ``result`` is a result file's name (``metrics.nc`` or ``metrics``) and ``notebook`` a notebook's
    file stem; either may be left out when the sweep has only one. The returned Dataset has the
    swept parameters as dimensions (in the sweep file's order) followed by the result's own, e.g.
    ``(seed, lr, step)``; a parameter whose values are lists has their JSON text as labels. Runs
    that are not complete (failed, unfinished or not yet run) leave NaN in their cells: a warning
    names them and ``attrs["missing_runs"]`` lists their folders.
    """
    folder = Path(path)
    manifest = folder / MANIFEST
    if not manifest.is_file():
        raise FileNotFoundError(f"{folder} is not a sweep's folder: it has no {MANIFEST} (`workbench sweep` writes it)")
    spec = json.loads(manifest.read_text(encoding="utf-8"))
    notebook = _choose("notebook", notebook, sorted({run["notebook"] for run in spec["runs"]}), folder)
    runs = [(run, RunFiles(folder / run["folder"], notebook)) for run in spec["runs"] if run["notebook"] == notebook]
    complete = [(run, files) for run, files in runs if getattr(read_record(files.record), "status", None) == COMPLETE]
    names = sorted({p.stem for _, files in complete for p in files.results_dir.glob("*.nc")})
    if not names:
        raise ValueError(f"{folder}: no complete run of {notebook} has a result file (.nc) yet")
    result = _choose("result", result.removesuffix(".nc") if result else None, names, folder)
    found = [(run, files.results_dir / f"{result}.nc") for run, files in complete if (files.results_dir / f"{result}.nc").is_file()]
    found_folders = {run["folder"] for run, _ in found}
    missing = [run["folder"] for run, _ in runs if run["folder"] not in found_folders]
    if missing:
        warnings.warn(f"{len(missing)} of {len(runs)} runs of {folder.name} have no complete {result}.nc (NaN in the Dataset): {missing}", stacklevel=2)
    combined = xr.concat([results.load(file) for _, file in found], dim="run", coords="different", compat="equals", join="outer", combine_attrs="drop_conflicts")
    swept = spec["swept"]
    combined = combined.assign_coords({name: ("run", [_label(run["swept"][name]) for run, _ in found]) for name in swept})
    if not swept:
        combined = combined.squeeze("run", drop=True)
    else:
        combined = combined.swap_dims(run=swept[0]) if len(swept) == 1 else combined.set_index(run=swept).unstack("run")
        every_value = {name: list(dict.fromkeys(_label(run["swept"][name]) for run, _ in runs)) for name in swept}
        combined = combined.reindex(every_value).transpose(*swept, ...)
    combined.attrs.update(sweep=spec["name"], notebook=notebook, result=f"{result}.nc", missing_runs=missing)
    return combined
