"""A run's files are staged apart and published whole, one run of a notebook into a folder at a time.

A run of notebook ``NAME`` into folder ``F`` holds the lock ``F/NAME.lock`` (an exclusive ``flock``;
the file names the holder's pid) from before it writes anything until its files are published, so
a second run of the same notebook into the same folder refuses to start. The system lets go of a
flock when the process holding it ends, so a lock file left by a killed run is taken over by the
next one.

The run's results, executed notebook, HTML and log are written in a hidden staging folder,
``F/.NAME.staging-XXXXXXXX/``, and renamed into place once all of them are complete (or, for a
failed run, to their ``NAME.failed`` names); the previous results folder is first moved aside into
the staging folder, and removed with it. Publishing is a few renames on one file system, with
nothing written between them: a run killed inside that window leaves some of its new files beside
some of the previous run's, under the previous run's record and its own unfinished attempt, and the
next run replaces them all. A staging folder left by a killed run is removed by the next run of
that notebook into that folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from workbench.files import fsync_file, fsync_folder
from workbench.runner.record import RunFiles

__all__ = ["RunInProgress", "holding_lock", "publish", "remove_staged", "staging_folder", "staging_folders"]

_STAGING = ".staging-"
_PREVIOUS = ".previous"  # the previous results folder, moved aside into the staging folder while publishing


class RunInProgress(ValueError):
    """Another run of the same notebook into the same folder holds its lock."""


def _holder(descriptor: int) -> str:
    """The pid written in a lock file, or a phrase when the holder has not written it yet."""
    text = os.pread(descriptor, 32, 0).decode(errors="replace").strip()
    return f"pid {text}" if text.isdigit() else "another process"


def _still_at(lock: Path, descriptor: int) -> bool:
    """Whether the open file is still the one at ``lock``: its holder removes it before letting go, maybe between our open and flock."""
    try:
        return os.path.samestat(os.stat(lock), os.fstat(descriptor))
    except FileNotFoundError:
        return False


def _take(lock: Path, notebook: str) -> int:
    """An open descriptor of ``lock`` holding its exclusive flock; raises ``RunInProgress`` when another process holds it."""
    while True:
        descriptor = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        taken = False
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            taken = _still_at(lock, descriptor)  # else take the file now at ``lock``
        except BlockingIOError:
            raise RunInProgress(f"{notebook} is already running into {lock.parent}: {lock} is held by {_holder(descriptor)}") from None
        finally:
            if not taken:
                os.close(descriptor)
        if taken:
            return descriptor


@contextlib.contextmanager
def holding_lock(files: RunFiles) -> Iterator[None]:
    """Hold ``files.lock`` for the block, with this process's pid in it; removed on leaving."""
    descriptor = _take(files.lock, f"{files.name}.ipynb")
    try:
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, str(os.getpid()).encode(), 0)
        yield
    finally:
        files.lock.unlink(missing_ok=True)  # while still held, so that no other run takes a lock on the removed file
        os.close(descriptor)


def staging_folders(files: RunFiles) -> list[RunFiles]:
    """The runs of ``files``'s notebook staged in ``files.folder`` now: the one under way, or a killed run's leftover."""
    pattern = f".{glob.escape(files.name)}{_STAGING}*"
    return [RunFiles(path, files.name) for path in sorted(files.folder.glob(pattern)) if path.is_dir()]


def remove_staged(files: RunFiles) -> None:
    """Remove the staging folders of ``files``'s notebook in ``files.folder``. Call it holding the lock: then no run
    of it is under way, and every staging folder is a killed run's leftover."""
    for leftover in staging_folders(files):
        shutil.rmtree(leftover.folder, ignore_errors=True)


@contextlib.contextmanager
def staging_folder(files: RunFiles) -> Iterator[RunFiles]:
    """A new, empty staging folder for a run of ``files``, as the same run's files inside it; removed on leaving."""
    folder = Path(tempfile.mkdtemp(prefix=f".{files.name}{_STAGING}", dir=files.folder))
    try:
        yield RunFiles(folder, files.name)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def publish(staging: RunFiles, target: RunFiles) -> None:
    """Move the staged results folder, notebook, HTML and log (those staged) over ``target``'s.

    The target's results folder is moved aside into the staging folder first, also when no results
    were staged: they belonged to the run being replaced. Remove the staging folder afterwards (see
    the module's docstring for what a kill in between leaves).
    """
    if target.results_dir.exists():
        os.rename(target.results_dir, staging.folder / _PREVIOUS)
    if staging.results_dir.exists():
        os.rename(staging.results_dir, target.results_dir)
    for source, destination in ((staging.notebook, target.notebook), (staging.html, target.html), (staging.log, target.log)):
        if source.exists():
            fsync_file(source)  # the notebook and the log were written in place: flushed before they take their names
            os.replace(source, destination)
    fsync_folder(target.folder)
