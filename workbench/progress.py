"""Progress bars for loops a person waits for, silent when a notebook runs as a batch job.

In JupyterLab ``tqdm.auto`` draws a widget; in a notebook executed by papermill nobody watches it and
the saved report would show its first frame ("0%") forever, so the runner sets
``WORKBENCH_PROGRESS=0`` for the kernels it starts.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TypeVar

from tqdm.auto import tqdm

__all__ = ["progress", "batch_run", "ENV_VARIABLE"]

ENV_VARIABLE = "WORKBENCH_PROGRESS"
T = TypeVar("T")


def batch_run() -> bool:
    """Whether this kernel runs a notebook as a batch job (``WORKBENCH_PROGRESS=0``), where nobody can move a widget."""
    return os.environ.get(ENV_VARIABLE) == "0"


def progress(iterable: Iterable[T], desc: str, enabled: bool = True, **options) -> Iterable[T]:
    """``iterable`` wrapped in a tqdm bar unless ``enabled`` is false or this is a batch run."""
    return tqdm(iterable, desc=desc, disable=not enabled or batch_run(), **options)
