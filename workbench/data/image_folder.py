"""A folder of images and a table of their labels, as multi-task data streamed from disk.

The folder holds image files (PNG, JPEG, anything Pillow reads) and ``labels.csv``: a header
``file,TASK,...`` and one row per image, its path relative to the folder and its label for each
task: a class index for a classification task with several classes, 0 or 1 for a binary one, a
number for a regression. An image is read when its sample is, as a float tensor ``(C, H, W)`` in
[0, 1] (grayscale: one channel; anything else: RGB, three), so a folder larger than memory trains
like one in memory (:class:`~workbench.data.StreamedData`).

:func:`write_image_folder` writes a problem's split in this layout (8-bit PNG, so pixels are rounded
to multiples of 1/255), as a user's own image folder would be.
"""

from __future__ import annotations

import csv
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from workbench.data.streamed import StreamedData
from workbench.extras import require
from workbench.files import fsync_folder
from workbench.tasks import MultiTaskData, Task

__all__ = ["ImageFolder", "image_folder_data", "write_image_folder", "LABELS_FILE"]

LABELS_FILE = "labels.csv"


def _dtype(task: Task) -> torch.dtype:
    """How ``task``'s labels are held: int64 class indices for several classes, else float32 (0/1, or a number)."""
    return torch.int64 if task.kind == "classification" and task.out_features > 1 else torch.float32


def _label(task: Task, text: str, where: str) -> float | int:
    """One label parsed and checked for ``task``: a class index, 0 or 1, or a finite number."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{where}: task {task.name!r} has label {text!r}, not a number") from None
    if task.kind == "regression":
        if not np.isfinite(value):
            raise ValueError(f"{where}: task {task.name!r} has label {text!r}, not a finite number")
        return value
    classes = max(task.out_features, 2)
    if value != int(value) or not 0 <= value < classes:
        raise ValueError(f"{where}: task {task.name!r} has label {text!r}, not a class in 0..{classes - 1}")
    return int(value)


class ImageFolder(Dataset):
    """The images of ``folder`` listed in its labels table, each item ``(image (C, H, W), {task: label})``.

    The table is read and checked when the dataset is made (every task a column, every label valid,
    every file a relative path inside the folder that exists); errors name the table's line.
    """

    def __init__(self, folder: str | os.PathLike, tasks: Sequence[Task], labels: str = LABELS_FILE):
        require("PIL", "digits")
        self.folder = Path(folder).resolve()
        table = self.folder / labels
        if not table.is_file():
            raise FileNotFoundError(f"no labels table at {table}")
        self.tasks = list(tasks)
        self.files: list[str] = []  # relative to the folder
        columns: dict[str, list] = {task.name: [] for task in self.tasks}
        with open(table, newline="", encoding="utf-8") as file:
            rows = csv.DictReader(file)
            missing = [column for column in ["file", *(t.name for t in self.tasks)] if column not in (rows.fieldnames or [])]
            if missing:
                raise ValueError(f"{table}: no column for {missing}; its header is {rows.fieldnames}")
            for line, row in enumerate(rows, start=2):
                where = f"{table}, line {line}"
                self.files.append(self._image_path(row["file"], where))
                for task in self.tasks:
                    columns[task.name].append(_label(task, row[task.name], where))
        if not self.files:
            raise ValueError(f"{table} lists no images")
        self.labels = {task.name: torch.tensor(columns[task.name], dtype=_dtype(task)) for task in self.tasks}  # (N,) per task

    def _image_path(self, name: str, where: str) -> str:
        """The image file named in the table, checked: a relative path that stays inside the folder and exists."""
        path = (self.folder / name).resolve()
        if Path(name).is_absolute() or not path.is_relative_to(self.folder):
            raise ValueError(f"{where}: file {name!r} lies outside {self.folder}")
        if not path.is_file():
            raise FileNotFoundError(f"{where}: no image at {path}")
        return name

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        from PIL import Image

        with Image.open(self.folder / self.files[index]) as image:
            mode = "L" if image.mode in ("L", "1", "I;16", "I") else "RGB"
            pixels = np.asarray(image if image.mode == mode else image.convert(mode), dtype=np.float32) / 255.0
        image = torch.from_numpy(pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1).copy())
        return image, {task: labels[index] for task, labels in self.labels.items()}


def image_folder_data(folder: str | os.PathLike, tasks: Sequence[Task], labels: str = LABELS_FILE,
                      num_workers: int = 0, attrs: dict | None = None) -> StreamedData:
    """The images of ``folder`` as multi-task data streamed from disk, ``num_workers`` processes reading ahead."""
    dataset = ImageFolder(folder, tasks, labels)
    return StreamedData(dataset, tasks, {"source": f"image folder {dataset.folder.name}", **(attrs or {})}, num_workers)


def write_image_folder(data: MultiTaskData, folder: str | os.PathLike) -> Path:
    """Write ``data`` (images ``(N, 1 or 3, H, W)`` in [0, 1], one label per sample and task) as an image folder.

    The folder must not exist; it appears whole or not at all (written in a hidden folder beside it, then renamed;
    a killed write leaves that hidden ``.NAME.partial-*`` folder behind).
    """
    require("PIL", "digits")
    from PIL import Image

    folder = Path(folder)
    if folder.exists():
        raise FileExistsError(f"{folder} exists already; an image folder is written into a new folder")
    x = data.x
    if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"an image folder holds images (N, 1 or 3, H, W); these inputs are {getattr(x, 'shape', type(x).__name__)}")
    dense = [name for name, y in data.targets.items() if y.dim() != 1]
    if dense:
        raise ValueError(f"an image folder holds one label per image; tasks {dense} have dense targets")
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-", dir=folder.parent))
    try:
        pixels = (x.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        names = [f"{i:06d}.png" for i in range(len(data))]
        for name, image in zip(names, pixels):
            Image.fromarray(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)).save(partial / name)
        with open(partial / LABELS_FILE, "w", newline="", encoding="utf-8") as file:
            writer = csv.writer(file)
            writer.writerow(["file", *data.task_names])
            columns = [data.targets[name].tolist() for name in data.task_names]
            writer.writerows([name, *(repr(column[i]) for column in columns)] for i, name in enumerate(names))
        try:
            os.rename(partial, folder)
        except OSError as error:
            if folder.exists():  # another writer finished the same folder meanwhile
                raise FileExistsError(f"{folder} was written by another process meanwhile") from error
            raise
        fsync_folder(folder.parent)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return folder
