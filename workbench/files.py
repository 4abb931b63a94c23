"""Atomic file writes: a result or report is replaced only by a complete new version, one that survives a power cut.

The temporary file is hidden and named after its target, its machine and its process
(``.NAME.partial-HOST-PID-XXXXXXXX SUFFIX``, HOST a short hash of the host name), so a process
killed mid-write leaves a leftover that :func:`remove_leftovers` recognises, and removes once the
process that wrote it is gone. Every atomic write first removes its target's leftovers. Before the
rename the file's data is flushed to disk (``fsync``), and after it the folder's entry, so a file
that looks complete is complete. Files are created with the mode ``open`` would give them
(``0o666`` less the user's umask), so a report copied to a shared folder or served by a web server
is readable like any other file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import socket
import threading
from collections.abc import Callable, Iterator
from queue import Queue
from pathlib import Path

__all__ = ["atomic_write", "remove_leftovers", "fsync_file", "fsync_folder", "write_behind"]

_MARKER = ".partial-"
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]
_WRITER = re.compile(re.escape(_MARKER) + r"(?P<host>[0-9a-f]{6})-(?P<pid>\d+)-")


def _create_temporary(path: Path, suffix: str) -> Path:
    """A new empty hidden file beside ``path``, created with the umask's mode (``mkstemp`` would give 0600)."""
    while True:
        temporary = path.with_name(f".{path.name}{_MARKER}{_HOST}-{os.getpid()}-{secrets.token_hex(4)}{suffix}")
        try:
            os.close(os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:
            continue
        return temporary


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a file's data to disk (before it is renamed into place, say)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_folder(folder: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename into it, say) to disk; a no-op where folders cannot be opened (Windows)."""
    if os.name == "posix":
        fsync_file(Path(folder))


@contextlib.contextmanager
def write_behind(file) -> Iterator[Callable[[object], None]]:
    """A ``write(data)`` that hands ``data`` (bytes, or a buffer kept alive until written) to a second thread writing
    it to the open binary ``file``, while the caller makes the next piece: at most one piece waits, so a writer holds
    the piece being written and one more. A failed write is raised by the next ``write`` or on leaving the block, which
    waits until everything is written.
    """
    pieces: Queue = Queue(maxsize=1)
    failure: list[BaseException] = []

    def drain() -> None:
        while (piece := pieces.get()) is not None:
            if not failure:
                try:
                    file.write(piece)
                except BaseException as error:  # raised on the caller's thread
                    failure.append(error)

    def write(piece) -> None:
        if failure:
            raise failure[0]
        pieces.put(piece)

    thread = threading.Thread(target=drain, name="workbench-write", daemon=True)
    thread.start()
    try:
        yield write
    finally:
        pieces.put(None)
        thread.join()
    if failure:
        raise failure[0]


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (ending in ``suffix``); on leaving the block it is flushed and renamed over ``path``.

    If the block raises, the temporary file is removed and ``path`` keeps its previous content.
    Leftovers of earlier killed writes of ``path`` are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path.parent, [path.name])
    temporary = _create_temporary(path, suffix)
    try:
        yield temporary
        fsync_file(temporary)
        os.replace(temporary, path)
        fsync_folder(path.parent)
    finally:
        temporary.unlink(missing_ok=True)


def _writer_is_gone(leftover: Path) -> bool:
    """Whether the process that wrote ``leftover`` has ended (a name without a writer, from an older version, counts as ended).

    A leftover of another machine is kept: its process cannot be asked from here.
    """
    writer = _WRITER.search(leftover.name)
    if writer is None:
        return True
    if writer["host"] != _HOST:
        return False
    try:
        os.kill(int(writer["pid"]), 0)
    except (ProcessLookupError, OverflowError):  # no such process (an overflowing pid cannot be one)
        return True
    except PermissionError:  # another user's live process
        return False
    return False


def remove_leftovers(folder: str | os.PathLike, names: list[str] | None = None, recursive: bool = False) -> list[Path]:
    """Remove the temporary files that killed atomic writes left in ``folder``; returns the paths removed.

    Only leftovers whose writing process has ended are removed, so writes in progress are left alone.
    ``names`` limits the clean-up to the leftovers of those target file names (the files one run
    writes); ``None`` removes every leftover. ``recursive`` also looks in the subfolders.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    patterns = [f".{name}{_MARKER}*" for name in names] if names is not None else [f".*{_MARKER}*"]
    removed = []
    for pattern in patterns:
        for leftover in folder.rglob(pattern) if recursive else folder.glob(pattern):
            if leftover.is_file() and _writer_is_gone(leftover):
                leftover.unlink(missing_ok=True)
                removed.append(leftover)
    return removed
