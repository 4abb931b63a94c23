"""Where the workbench keeps what it caches (fine-tuned checkpoints, ...), the same whatever folder a kernel runs in.

The data folder is ``$WORKBENCH_DATA`` when set (an absolute path: JupyterLab's kernel runs in
``notebooks/``, the runner's in a staging folder inside each report's folder, so a relative one would name a different folder
in each), else ``data/`` of the project when the package lives in its source checkout (a
``pyproject.toml`` of the ``workbench`` project beside the package), else the user's cache folder,
``$XDG_CACHE_HOME/workbench`` or ``~/.cache/workbench``.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

__all__ = ["data_dir", "DATA_VARIABLE"]

DATA_VARIABLE = "WORKBENCH_DATA"
PACKAGE = Path(__file__).resolve().parent


def _checkout() -> Path | None:
    """The project's source checkout holding this package, if it lives in one."""
    pyproject = PACKAGE.parent / "pyproject.toml"
    try:
        name = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {}).get("name")
    except (OSError, tomllib.TOMLDecodeError):
        return None
    return PACKAGE.parent if name == "workbench" else None


def data_dir(*parts: str | os.PathLike) -> Path:
    """The data folder, or ``parts`` within it; an absolute part is kept as it is (``data_dir("/scratch/ckpt")``).

    Nothing is created: whoever writes there makes the folders it needs.
    """
    setting = os.environ.get(DATA_VARIABLE, "")
    if setting:
        base = Path(setting).expanduser()
        if not base.is_absolute():
            raise ValueError(f"{DATA_VARIABLE} must be an absolute path, got {setting!r}: each kernel runs in a folder of its own")
    elif (checkout := _checkout()) is not None:
        base = checkout / "data"
    else:
        cache = Path(os.environ.get("XDG_CACHE_HOME", ""))
        base = (cache if cache.is_absolute() else Path.home() / ".cache") / "workbench"  # a relative XDG_CACHE_HOME is ignored, as the spec says
    return base.joinpath(*parts)
