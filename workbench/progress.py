"""Progress bars for loops a person waits for, and how a kernel knows whether anyone is watching.

Two settings, apart on purpose:

- ``WORKBENCH_PROGRESS=0`` silences progress bars (in a terminal, a log, a notebook you watch);
  nothing else changes.
- ``WORKBENCH_BATCH=1`` says the notebook runs as a batch job (the runner sets it for the kernels it
  starts): nobody watches, so there are no bars (the saved report would show their first frame,
  "0%", forever), explorers return static figures instead of widgets, and plotly.js is embedded so
  that the exported report draws its figures offline.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import TypeVar

from tqdm.auto import tqdm

__all__ = ["progress", "progress_bytes", "batch_run", "quiet", "ENV_VARIABLE", "BATCH_VARIABLE"]

ENV_VARIABLE = "WORKBENCH_PROGRESS"
BATCH_VARIABLE = "WORKBENCH_BATCH"
T = TypeVar("T")


def batch_run() -> bool:
    """Whether this kernel runs a notebook as a batch job (``WORKBENCH_BATCH=1``), where nobody can move a widget."""
    return os.environ.get(BATCH_VARIABLE) == "1"


def quiet() -> bool:
    """Whether progress bars are off: ``WORKBENCH_PROGRESS=0``, or a batch run."""
    return os.environ.get(ENV_VARIABLE) == "0" or batch_run()


def progress(iterable: Iterable[T], desc: str, enabled: bool = True, **options) -> Iterable[T]:
    """``iterable`` wrapped in a tqdm bar unless ``enabled`` is false or progress is :func:`quiet`.

    In a kernel the bar is tqdm's widget until it closes, then its last line of text (see :func:`_bar`).
    """
    return _bar()(iterable, desc=desc, disable=not enabled or quiet(), **options)


def progress_bytes(items: Sequence[T], sizes: Sequence[int], desc: str, enabled: bool = True, **options) -> Iterator[T]:
    """``items`` with a bar over bytes (as :func:`progress`): ``sizes[k]`` bytes count as done once the caller asks for
    the item after ``items[k]``, so the bar moves with the work on each item, however unequal their sizes."""
    if len(sizes) != len(items):
        raise ValueError(f"{len(sizes)} sizes for {len(items)} items")
    bar = _bar()(total=sum(sizes), desc=desc, disable=not enabled or quiet(), unit="B", unit_scale=True, unit_divisor=1024, **options)
    try:
        for item, size in zip(items, sizes):
            yield item
            bar.update(size)
    finally:
        bar.close()


@functools.cache
def _bar() -> type:
    """``tqdm.auto``'s bar; in a kernel, one whose widget is replaced by its last line of text when it closes.

    A widget lives only as long as its kernel: a saved notebook reopened on a new one would show each finished
    bar as "Error displaying widget: model not found". The text (``train: 100%|██████| 200/200 [00:02<00:00]``,
    or where an error or an interrupt stopped it) is what the saved notebook keeps instead.
    """
    notebook = sys.modules.get("tqdm.notebook")  # tqdm.auto imports it in a kernel only; it would import ipywidgets
    if notebook is None or not issubclass(tqdm, notebook.tqdm_notebook):
        return tqdm

    from IPython.display import display

    class NotebookBar(tqdm):
        def __init__(self, *args, **kwargs):
            self._shown = None
            super().__init__(*args, display=False, **kwargs)
            if not self.disable:
                self._shown = display(self.container, display_id=True)
                self.displayed = True

        def close(self) -> None:
            shown, self._shown = self._shown, None
            super().close()
            if shown is not None:  # a bar that does not stay leaves nothing
                shown.update({"text/plain": self.format_meter(**self.format_dict) if self.leave else ""}, raw=True)

    return NotebookBar
