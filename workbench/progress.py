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

__all__ = ["progress", "ENV_VARIABLE"]

ENV_VARIABLE = "WORKBENCH_PROGRESS"
T = TypeVar("T")


def progress(iterable: Iterable[T], desc: str, enabled: bool = True, **options) -> Iterable[T]:
    """``iterable`` wrapped in a tqdm bar unless ``enabled`` is false or ``WORKBENCH_PROGRESS=0``."""
    return tqdm(iterable, desc=desc, disable=not enabled or os.environ.get(ENV_VARIABLE) == "0", **options)
