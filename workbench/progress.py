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

import os
from collections.abc import Iterable
from typing import TypeVar

from tqdm.auto import tqdm

__all__ = ["progress", "batch_run", "quiet", "ENV_VARIABLE", "BATCH_VARIABLE"]

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
    """``iterable`` wrapped in a tqdm bar unless ``enabled`` is false or progress is :func:`quiet`."""
    return tqdm(iterable, desc=desc, disable=not enabled or quiet(), **options)
