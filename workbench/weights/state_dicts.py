"""State dicts read tensor by tensor or chunk by chunk, checked against each other, and written as they are made.

A source is a Hugging Face model folder (:mod:`workbench.weights.model_folder`: its shards read as below), a safetensors file (read with positioned reads straight into the destination tensor:
nothing is memory-mapped, so reading a file does not grow the process's resident memory beyond what
the caller holds), a pickle checkpoint (``.pt``, ``.pth``, ``.bin``, ``.ckpt``: loaded only with
``torch.load(weights_only=True)``, memory-mapped where the file allows it), an in-memory state dict
or an ``nn.Module``.

Rules for a set of checkpoints (the base first, then the fine-tuned ones), applied by :func:`plan`:

- Every checkpoint holds the same tensor names. With ``strict=False`` a tensor that some fine-tuned
  checkpoints lack is taken from the base unchanged; a tensor that the base lacks is always an error.
- A tensor has the same shape and dtype in every checkpoint; otherwise the error names the tensor and
  the two checkpoints.
- Floating tensors are merged (in float32; float64 stays float64) and written in their input dtype
  unless an output dtype is given. Non-floating tensors (integer position ids, bool masks) are copied
  when every checkpoint holds the same values, and are an error naming the tensor otherwise.
"""

from __future__ import annotations

import json
import mmap
import os
import pickle
import sys
import weakref
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import torch
from torch import Tensor, nn

from workbench.files import atomic_write, write_behind
from workbench.weights.safetensors_format import encode_header, read_header

__all__ = ["Weights", "MemoryWeights", "SafetensorsWeights", "Selection", "Source", "TensorPlan", "open_weights", "open_task_weights", "plan", "equal_buffer", "write_safetensors", "write_state_dict", "copy_into", "ModelFolderWeights", "is_model_folder", "open_model_folder"]

Source = Union[str, os.PathLike, Mapping[str, Tensor], nn.Module]

_PICKLE_SUFFIXES = {".pt", ".pth", ".bin", ".ckpt"}


class Weights:
    """Named access to one set of weights: a file's, a state dict's or a module's tensors.

    ``keys()``, ``spec(key) -> (shape, dtype)``, ``numel(key)``, ``[key]`` (the whole tensor),
    ``read(key, start, stop)`` (entries start..stop-1 of the flattened tensor, shape (stop − start,),
    in the stored dtype) and ``gather(key, index)`` (the flattened tensor's entries at ``index``, shape
    ``index.shape``). Subclasses implement ``read`` and ``gather``; ``in_memory`` says whether ``read``
    can return views instead of filling the caller's buffer.
    """

    in_memory = False

    def __init__(self, name: str, specs: dict[str, tuple[tuple[int, ...], torch.dtype]]):
        self.name, self._specs = name, specs

    def keys(self) -> list[str]:
        return list(self._specs)

    def __contains__(self, key: str) -> bool:
        return key in self._specs

    def spec(self, key: str) -> tuple[tuple[int, ...], torch.dtype]:
        return self._specs[key]

    def numel(self, key: str) -> int:
        return int(torch.Size(self._specs[key][0]).numel())

    def __getitem__(self, key: str) -> Tensor:
        return self.read(key, 0, self.numel(key)).reshape(self._specs[key][0])

    def read(self, key: str, start: int, stop: int, out: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    def gather(self, key: str, index: Tensor) -> Tensor:
        raise NotImplementedError

    def select(self, keys: Iterable[str]) -> Weights:
        """The tensors of ``keys`` that these weights hold, and no others (a task model's merged part, without its own head)."""
        return Selection(self, keys)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {len(self._specs)} tensors)"


class Selection(Weights):
    """Some of the tensors of other weights, read from them (see :meth:`Weights.select`)."""

    def __init__(self, source: Weights, keys: Iterable[str]):
        super().__init__(source.name, {key: source.spec(key) for key in keys if key in source})
        self._source = source
        self.in_memory = source.in_memory

    def __getitem__(self, key: str) -> Tensor:
        self._specs[key]  # a KeyError for a tensor outside the selection
        return self._source[key]

    def read(self, key: str, start: int, stop: int, out: Tensor | None = None) -> Tensor:
        self._specs[key]
        return self._source.read(key, start, stop, out)

    def gather(self, key: str, index: Tensor) -> Tensor:
        self._specs[key]
        return self._source.gather(key, index)


class MemoryWeights(Weights):
    """Weights over tensors in memory (a state dict, a module's, or a memory-mapped pickle's); ``read`` returns views where it can."""

    in_memory = True

    def __init__(self, name: str, tensors: Mapping[str, Tensor]):
        for key, value in tensors.items():
            if not isinstance(value, Tensor):
                raise TypeError(f"{name}: {key!r} is a {type(value).__name__}, not a tensor")
        super().__init__(name, {key: (tuple(value.shape), value.dtype) for key, value in tensors.items()})
        self._tensors = tensors

    def __getitem__(self, key: str) -> Tensor:
        return self._tensors[key].detach()

    def read(self, key: str, start: int, stop: int, out: Tensor | None = None) -> Tensor:
        part = self._tensors[key].detach().reshape(-1)[start:stop]
        return out.copy_(part) if out is not None else part

    def gather(self, key: str, index: Tensor) -> Tensor:
        return self._tensors[key].detach().reshape(-1)[index]


class SafetensorsWeights(Weights):
    """A safetensors file read with positioned reads (``os.preadv``) into the caller's tensors; only the header is held."""

    def __init__(self, path: Path):
        header = read_header(path)
        self._data_start = header.data_start
        self._offsets = {key: entry.start for key, entry in header.tensors.items()}
        super().__init__(str(path), {key: (entry.shape, entry.dtype) for key, entry in header.tensors.items()})
        if sys.byteorder != "little":
            raise RuntimeError("safetensors files are little-endian; reading them on a big-endian machine is not supported")
        self._path = path
        self._fd = os.open(path, os.O_RDONLY)
        weakref.finalize(self, os.close, self._fd)
        if hasattr(os, "posix_fadvise"):  # tensors are read front to back: a larger read-ahead window (Linux doubles it)
            os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)

    def byte_offset(self, key: str, entry: int = 0) -> int:
        """Where entry ``entry`` of the flattened tensor ``key`` starts in the file."""
        return self._data_start + self._offsets[key] + entry * self._specs[key][1].itemsize

    def read(self, key: str, start: int, stop: int, out: Tensor | None = None) -> Tensor:
        dtype = self._specs[key][1]
        if out is not None and out.dtype == dtype and out.is_contiguous():
            target = out
        else:
            target = torch.empty(stop - start, dtype=dtype)
        buffer = memoryview(target.view(torch.uint8).numpy()) if target.numel() else memoryview(b"")
        offset, done = self.byte_offset(key, start), 0
        while done < len(buffer):
            got = os.preadv(self._fd, [buffer[done:]], offset + done)
            if got == 0:
                raise ValueError(f"{self.name} ends inside tensor {key!r}: the file is truncated")
            done += got
        return out.copy_(target) if out is not None and target is not out else target

    def gather(self, key: str, index: Tensor) -> Tensor:
        """The entries at ``index`` through a temporary read-only memory map, released before returning."""
        dtype = self._specs[key][1]
        size = dtype.itemsize
        with mmap.mmap(self._fd, 0, access=mmap.ACCESS_READ) as mapped:
            if len(mapped) < self.byte_offset(key, self.numel(key)):
                raise ValueError(f"{self.name} ends inside tensor {key!r}: the file was truncated after it was opened")
            data = np.frombuffer(mapped, dtype=np.uint8, count=self.numel(key) * size, offset=self.byte_offset(key))
            picked = torch.from_numpy(data[index.reshape(-1, 1).numpy() * size + np.arange(size)])  # fancy indexing copies
            del data  # the map closes only once no array views it
        return picked.view(dtype).reshape(index.shape)


def _from_pickle(path: Path) -> Weights:
    """A pickle checkpoint loaded with ``weights_only=True``, memory-mapped when it is a zip archive (as ``torch.save`` writes)."""
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as error:
        raise _refusal(path, error) from error
    except Exception as error:  # torch reports a damaged file as RuntimeError, OSError, EOFError ... naming no file
        raise ValueError(f"{path} cannot be read as a PyTorch checkpoint (truncated or damaged?): {type(error).__name__}: {error}") from error
    if not isinstance(loaded, Mapping):
        raise ValueError(f"{path} holds a {type(loaded).__name__}, not a state dict (a mapping of names to tensors)")
    return MemoryWeights(str(path), loaded)


def _refusal(path: Path, error: Exception) -> ValueError:
    return ValueError(
        f"{path} needs full unpickling, which can run arbitrary code, so it is not loaded; only plain tensors "
        f"(torch.load(weights_only=True)) are read. Save its state dict as safetensors instead. ({error})"
    )


SAFETENSORS_FILE, SAFETENSORS_INDEX = "model.safetensors", "model.safetensors.index.json"
PICKLE_FILE, PICKLE_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"
"""The weight files of a Hugging Face model folder (:mod:`workbench.weights.model_folder`)."""


class ModelFolderWeights(Weights):
    """The tensors of a model folder, each read from the shard that holds it (see the module docstring)."""

    def __init__(self, folder: Path, shards: Mapping[str, Weights]):
        self.folder = folder
        self._where = {key: weights for weights in shards.values() for key in weights.keys()}
        super().__init__(str(folder), {key: weights.spec(key) for key, weights in self._where.items()})
        self.shards = {name: weights for name, weights in shards.items()}
        self.in_memory = all(weights.in_memory for weights in shards.values())

    def __getitem__(self, key: str) -> Tensor:
        return self._where[key][key]

    def read(self, key: str, start: int, stop: int, out: Tensor | None = None) -> Tensor:
        return self._where[key].read(key, start, stop, out)

    def gather(self, key: str, index: Tensor) -> Tensor:
        return self._where[key].gather(key, index)


def is_model_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder holding model weights in one of the layouts of the module docstring."""
    path = Path(path)
    return path.is_dir() and any((path / name).is_file() for name in (SAFETENSORS_FILE, SAFETENSORS_INDEX, PICKLE_FILE, PICKLE_INDEX))


def open_model_folder(folder: str | os.PathLike) -> ModelFolderWeights:
    """The weights of a model folder, the index checked against its shards first (see the module docstring)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no model folder at {folder}")
    for index_name, single, opener in ((SAFETENSORS_INDEX, SAFETENSORS_FILE, SafetensorsWeights), (PICKLE_INDEX, PICKLE_FILE, _from_pickle)):
        if (folder / index_name).is_file():
            return ModelFolderWeights(folder, _indexed_shards(folder, index_name, opener))
        if (folder / single).is_file():
            return ModelFolderWeights(folder, {single: opener(folder / single)})
    present = sorted(p.name for p in folder.iterdir())
    raise ValueError(f"{folder} holds no model weights ({SAFETENSORS_FILE}, {SAFETENSORS_INDEX}, {PICKLE_FILE} or {PICKLE_INDEX}); "
                     f"it holds {present[:12]}")


def _indexed_shards(folder: Path, index_name: str, opener) -> dict[str, Weights]:
    """``{shard file: its weights}`` of the index ``index_name``, every shard checked against what the index says it holds."""
    try:
        weight_map = json.loads((folder / index_name).read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{folder / index_name} is not a weights index (a JSON object with a 'weight_map'): {error}") from error
    if not isinstance(weight_map, Mapping) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ValueError(f"{folder / index_name}: 'weight_map' must map tensor names to shard files")
    listed: dict[str, list[str]] = {}
    for key, shard in weight_map.items():
        listed.setdefault(shard, []).append(key)
    unsafe = [shard for shard in listed if Path(shard).name != shard or shard in ("", ".", "..")]
    if unsafe:
        raise ValueError(f"{folder / index_name} names shards outside the folder: {unsafe}")
    missing = {shard: len(keys) for shard, keys in listed.items() if not (folder / shard).is_file()}
    if missing:
        raise ValueError(f"{folder / index_name} names shards that are missing from the folder: {missing} (shard: tensors it should hold)")
    shards = {}
    for shard, keys in listed.items():
        weights = opener(folder / shard)
        lacking, unlisted = sorted(set(keys) - set(weights.keys())), sorted(set(weights.keys()) - set(keys))
        if lacking or unlisted:
            raise ValueError(f"{folder / shard} disagrees with {index_name}: it lacks {lacking[:5]} that the index places there"
                             f"{f' and holds {unlisted[:5]} that the index does not place there' if unlisted else ''}")
        shards[shard] = weights
    return shards


def open_weights(source: Source | Weights, name: str | None = None) -> Weights:
    """A :class:`Weights` over a file path, a Hugging Face model folder (:mod:`~workbench.weights.model_folder`), a state dict
    or a module (opened weights are returned as they are); ``name`` labels it in errors."""
    if isinstance(source, Weights):
        return source
    if isinstance(source, nn.Module):
        return MemoryWeights(name or type(source).__name__, source.state_dict())
    if isinstance(source, Mapping):
        return MemoryWeights(name or "state dict", source)
    path = Path(source)
    if path.is_dir():
        return open_model_folder(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.suffix == ".safetensors":
        return SafetensorsWeights(path)
    if path.suffix in _PICKLE_SUFFIXES:
        return _from_pickle(path)
    raise ValueError(f"{path}: unknown checkpoint format (expected .safetensors, or a pickle {sorted(_PICKLE_SUFFIXES)})")


def open_task_weights(models: Sequence[Source] | Mapping[str, Source]) -> tuple[list[str], list[Weights]]:
    """Task names and checkpoints: a mapping keeps its keys, a sequence is named by its files or ``task0``, ``task1``, ..."""
    if isinstance(models, Mapping):
        items = list(models.items())
    else:
        items = [(Path(m).stem if isinstance(m, (str, os.PathLike)) else f"task{i}", m) for i, m in enumerate(models)]
    if not items:
        raise ValueError("no checkpoints to merge")
    names = [name for name, _ in items]
    if len(set(names)) != len(names):
        raise ValueError(f"two checkpoints share a name: {names}")
    return names, [open_weights(source, name if not isinstance(source, (str, os.PathLike)) else None) for name, source in items]


@dataclass(frozen=True)
class TensorPlan:
    """What happens to one tensor: ``"merge"`` (floating), ``"copy"`` (from the base) or ``"buffer"`` (non-floating, all equal)."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    action: str

    @property
    def nbytes(self) -> int:
        """The tensor's bytes in ``dtype``."""
        return int(torch.Size(self.shape).numel()) * self.dtype.itemsize


def plan(checkpoints: Sequence[Weights], base: Weights | None = None, strict: bool = True) -> list[TensorPlan]:
    """Check the checkpoints against each other (rules in the module docstring) and say what happens to each tensor.

    The order is the base's (or, without a base, the first checkpoint's). Raises ``ValueError`` naming
    the tensor and the checkpoints at the first mismatch.
    """
    reference = base if base is not None else checkpoints[0]
    others = [c for c in ([base] if base is not None else []) + list(checkpoints) if c is not reference]
    for checkpoint in others:
        extra = [key for key in checkpoint.keys() if key not in reference]
        if extra:
            raise ValueError(f"{checkpoint.name} holds tensors that {reference.name} lacks: {extra[:5]}{' ...' if len(extra) > 5 else ''}")
    plans = []
    for key in reference.keys():
        shape, dtype = reference.spec(key)
        lacking = [c.name for c in others if key not in c]
        if lacking and (strict or base is None):
            rule = "pass strict=False to take it from the base" if base is not None else "without a base there is nothing to take it from"
            raise ValueError(f"tensor {key!r} is missing from {lacking} ({rule})")
        for checkpoint in others:
            if key in checkpoint and checkpoint.spec(key) != (shape, dtype):
                other_shape, other_dtype = checkpoint.spec(key)
                raise ValueError(
                    f"tensor {key!r} is {list(shape)} {dtype} in {reference.name} but {list(other_shape)} {other_dtype} in {checkpoint.name}"
                )
        action = "copy" if lacking else "merge" if dtype.is_floating_point else "buffer"
        plans.append(TensorPlan(key, shape, dtype, action))
    return plans


def equal_buffer(key: str, checkpoints: Sequence[Weights]) -> Tensor:
    """The non-floating tensor ``key``, which every checkpoint must hold with the same values."""
    first = checkpoints[0][key]
    for checkpoint in checkpoints[1:]:
        if not torch.equal(first, checkpoint[key]):
            raise ValueError(
                f"non-floating tensor {key!r} differs between {checkpoints[0].name} and {checkpoint.name}; "
                "it cannot be averaged, so every checkpoint must hold the same values"
            )
    return first


def write_safetensors(path: str | os.PathLike, plans: Sequence[TensorPlan], tensors: Iterable[Tensor], metadata: Mapping[str, str] | None = None) -> Path:
    """Write ``tensors`` (one per plan, in order, each of the plan's shape and dtype) as a safetensors file, one at a time.

    The header is written first from the plans, so no tensor waits for the others. The file appears
    under ``path`` only once complete (an interrupted write leaves nothing that looks finished).
    """
    header = encode_header([(p.name, p.shape, p.dtype) for p in plans], metadata)
    # each tensor is written by a second thread while the next is made (write_behind)
    with atomic_write(path, suffix=".safetensors") as temporary, open(temporary, "wb") as file, write_behind(file) as write:
        write(header)
        for p, tensor in zip(plans, tensors, strict=True):
            if tuple(tensor.shape) != p.shape or tensor.dtype != p.dtype:
                raise ValueError(f"tensor {p.name!r} is {list(tensor.shape)} {tensor.dtype}, the header says {list(p.shape)} {p.dtype}")
            write(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)
    return Path(path)



def write_state_dict(path: str | os.PathLike, tensors: Mapping[str, Tensor], metadata: Mapping[str, str] | None = None) -> Path:
    """Write the tensors of a state dict (in memory) as a safetensors file, atomically (see :func:`write_safetensors`)."""
    plans = [TensorPlan(name, tuple(tensor.shape), tensor.dtype, "copy") for name, tensor in tensors.items()]
    return write_safetensors(path, plans, tensors.values(), metadata)


@torch.no_grad()
def copy_into(targets: Mapping[str, Tensor], weights: Weights, label: str, other_shapes: str, where: str = "the file",
              stored: Mapping[str, str] | None = None) -> None:
    """Copy ``weights[stored[name]]`` into each tensor of ``targets`` (``{name: a model's parameter or buffer}``; ``stored``
    maps a name to its key in ``weights``, the name itself by default), every tensor checked before any is copied.

    Refused, naming the tensors: a shape other than the target's (``"{label}: {other_shapes}; tensors of other
    shapes: {name: '<shape> in {where}, <shape> here'}"``), a floating-point tensor with NaN or infinite values.
    """
    stored = stored or {name: name for name in targets}
    shapes = {name: (tuple(weights.spec(stored[name])[0]), tuple(target.shape)) for name, target in targets.items()}
    mismatched = {name: f"{theirs} in {where}, {ours} here" for name, (theirs, ours) in shapes.items() if theirs != ours}
    if mismatched:
        raise ValueError(f"{label}: {other_shapes}; tensors of other shapes: {mismatched}")
    values = {name: weights[stored[name]] for name in targets}
    bad = [name for name, value in values.items() if value.is_floating_point() and not torch.isfinite(value).all()]
    if bad:
        raise ValueError(f"{label}: tensors {bad[:6]} hold NaN or infinite values")
    for name, target in targets.items():
        target.copy_(values[name].to(target.dtype))
