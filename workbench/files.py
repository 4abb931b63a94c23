"""Atomic file writes: a result or report is replaced only by a complete new version.

The temporary file is hidden and named after its target (``.NAME.partial-XXXXXXXX SUFFIX``), so a
process killed mid-write leaves a leftover that :func:`remove_leftovers` recognises and removes.
Files are created with the mode ``open`` would give them (``0o666`` less the user's umask), so a
report copied to a shared folder or served by a web server is readable like any other file.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_write", "remove_leftovers"]

_MARKER = ".partial-"


def _create_temporary(path: Path, suffix: str) -> Path:
    """A new empty hidden file beside ``path``, created with the umask's mode (``mkstemp`` would give 0600)."""
    while True:
        temporary = path.with_name(f".{path.name}{_MARKER}{secrets.token_hex(4)}{suffix}")
        try:
            os.close(os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:
            continue
        return temporary


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (ending in ``suffix``); on leaving the block it is renamed over ``path``.

    If the block raises, the temporary file is removed and ``path`` keeps its previous content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _create_temporary(path, suffix)
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def remove_leftovers(folder: str | os.PathLike, names: list[str] | None = None, recursive: bool = False) -> list[Path]:
    """Remove the temporary files that killed atomic writes left in ``folder``; returns the paths removed.

    ``names`` limits the clean-up to the leftovers of those target file names (the files one run
    writes), so that runs writing other files in the same folder at the same time are left alone;
    ``None`` removes every leftover (for a folder that one process owns). ``recursive`` also looks
    in the subfolders.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    patterns = [f".{name}{_MARKER}*" for name in names] if names is not None else [f".*{_MARKER}*"]
    removed = []
    for pattern in patterns:
        for leftover in folder.rglob(pattern) if recursive else folder.glob(pattern):
            if leftover.is_file():
                leftover.unlink(missing_ok=True)
                removed.append(leftover)
    return removed
