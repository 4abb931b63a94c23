"""One way to save and load results: NetCDF files written atomically.

``save`` writes to a temporary file beside the target and renames it over the target only when the
write succeeded, so an interrupted or failed save never leaves a half-written result and never
destroys the previous one. Attributes that NetCDF cannot hold (dicts, lists, booleans, None) are
stored as JSON strings and restored by ``load``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import xarray as xr

from workbench.files import atomic_write
from workbench.version import __version__

__all__ = ["save", "load"]

_JSON_PREFIX = "json:"


def _encode_attrs(attrs: dict) -> dict:
    encoded = {}
    for key, value in attrs.items():
        if isinstance(value, (str, int, float, np.integer, np.floating)) and not isinstance(value, bool):
            encoded[key] = value
        else:
            encoded[key] = _JSON_PREFIX + json.dumps(value)
    return encoded


def _decode_attrs(attrs: dict) -> dict:
    return {
        key: json.loads(value[len(_JSON_PREFIX):]) if isinstance(value, str) and value.startswith(_JSON_PREFIX) else value
        for key, value in attrs.items()
    }


def save(ds: xr.Dataset | xr.DataArray, path: str | os.PathLike) -> Path:
    """Write ``ds`` to ``path`` (NetCDF) atomically; stamps the package version into its attrs."""
    path = Path(path)
    if path.suffix != ".nc":
        raise ValueError(f"results are NetCDF files; {path} should end in .nc")
    if isinstance(ds, xr.DataArray):
        ds = ds.to_dataset(name=ds.name or "value")
    ds = ds.copy()
    ds.attrs = _encode_attrs({**ds.attrs, "workbench_version": __version__})
    for var in ds.variables.values():
        var.attrs = _encode_attrs(var.attrs)
    with atomic_write(path) as temporary:
        ds.to_netcdf(temporary)
    return path


def load(path: str | os.PathLike) -> xr.Dataset:
    """Read a result written by :func:`save` into memory (the file is closed on return)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no result file at {path}")
    if path.suffix != ".nc":
        raise ValueError(f"{path} is not a NetCDF result (.nc); the workbench reads nothing else, pickles least of all")
    try:
        with xr.open_dataset(path) as opened:
            ds = opened.load()
    except (OSError, ValueError) as error:
        raise ValueError(f"{path} is not a readable NetCDF result: {error}") from error
    ds.attrs = _decode_attrs(ds.attrs)
    for var in ds.variables.values():
        var.attrs = _decode_attrs(var.attrs)
    return ds
