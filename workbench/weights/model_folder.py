"""Hugging Face model folders as merge inputs and outputs, read and written shard by shard and tensor by tensor.

A model folder holds ``config.json`` and its weights as one of:

- ``model.safetensors``;
- shards ``model-0000k-of-0000n.safetensors`` listed by ``model.safetensors.index.json`` (``weight_map``: tensor → shard);
- only pickles (``pytorch_model.bin``, or shards listed by ``pytorch_model.bin.index.json``), loaded with
  ``torch.load(weights_only=True)`` and refused when they need full unpickling.

:func:`open_model_folder` (defined with the other readers in :mod:`workbench.weights.state_dicts`, which opens a folder
wherever it opens a file) checks the index against the shards before anything is read: a shard it names that is
missing, a tensor it places in a shard that lacks it, a shard holding tensors it does not list; each error names
the shard and the tensors. The folder's tensors are then one :class:`~workbench.weights.state_dicts.Weights`,
each read from its own shard with positioned reads (never a whole model in memory). A sentence-transformers
folder (``modules.json``, pooling and normalisation modules) keeps its transformer's weights at the top, so it
merges as a whole model; its other files are copied like the tokenizer's.

:func:`check_model_folders` compares the base's ``config.json`` with every model's (the fields that differ are
named; fields that do not change the architecture, as the model's name or the transformers version, are
ignored) and warns when the tokenizer files differ.

:func:`write_model_folder` writes a merge as a model folder: shards of at most ``max_shard_bytes`` each (one
``model.safetensors`` when everything fits) with their index, and every file of the base folder that is not a
weight (``config.json``, the tokenizer's, a sentence-transformers model's modules), so that
``transformers.AutoModel.from_pretrained`` (or ``SentenceTransformer``) loads it. The folder is written beside its
place and moved there once complete: an interrupted merge leaves no folder that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from torch import Tensor

from workbench.weights.state_dicts import (
    PICKLE_INDEX, SAFETENSORS_FILE, SAFETENSORS_INDEX, ModelFolderWeights, TensorPlan, is_model_folder, open_model_folder, write_safetensors,
)

__all__ = [
    "CONFIG_FILE", "ModelFolderWeights", "is_model_folder", "open_model_folder", "check_model_folders", "write_model_folder", "shard_plans",
]

CONFIG_FILE = "config.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack")
WEIGHT_INDEXES = (SAFETENSORS_INDEX, PICKLE_INDEX)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "merges.txt", "tokenizer.model",
                   "special_tokens_map.json", "added_tokens.json", "spiece.model", "sentencepiece.bpe.model")
CONFIG_FIELDS_IGNORED = frozenset({"_name_or_path", "transformers_version", "torch_dtype", "dtype", "id2label", "label2id", "finetuning_task",
                                   "problem_type", "gradient_checkpointing", "use_cache"})
"""``config.json`` fields that name, label or tune a model without changing its tensors."""
DEFAULT_SHARD_BYTES = 5 * 2**30


def _config(folder: Path) -> dict:
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise ValueError(f"{folder} has no {CONFIG_FILE}: a model folder needs it to be compared and loaded")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not JSON: {error}") from error


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_model_folders(base: str | os.PathLike, models: Mapping[str, str | os.PathLike]) -> None:
    """Refuse models whose ``config.json`` differs from the base's in a field that shapes the model (the fields and
    their values named); warn when their tokenizer files differ from the base's (the files named)."""
    base = Path(base)
    reference = _config(base)
    for label, folder in models.items():
        config = _config(Path(folder))
        fields = sorted((set(reference) | set(config)) - CONFIG_FIELDS_IGNORED)
        differing = {field: (reference.get(field), config.get(field)) for field in fields if reference.get(field) != config.get(field)}
        if differing:
            raise ValueError(f"{label} ({folder}) is not a model of the base's architecture: its {CONFIG_FILE} differs from {base}'s in "
                             f"{differing} (base's, its)")
        files = [name for name in TOKENIZER_FILES if (base / name).is_file() or (Path(folder) / name).is_file()]
        changed = [name for name in files if not ((base / name).is_file() and (Path(folder) / name).is_file()
                                                  and _digest(base / name) == _digest(Path(folder) / name))]
        if changed:
            warnings.warn(f"{label} ({folder}) has another tokenizer than the base: {changed} differ; the merge keeps the base's", stacklevel=2)


def shard_plans(plans: Sequence[TensorPlan], max_shard_bytes: int) -> list[list[TensorPlan]]:
    """The plans in order, cut into shards of at most ``max_shard_bytes`` (a tensor larger than that gets a shard of its own)."""
    if isinstance(max_shard_bytes, bool) or not isinstance(max_shard_bytes, int) or max_shard_bytes < 1:
        raise ValueError(f"max_shard_bytes must be a positive number of bytes, got {max_shard_bytes!r}")
    shards: list[list[TensorPlan]] = [[]]
    held = 0
    for p in plans:
        size = p.nbytes
        if shards[-1] and held + size > max_shard_bytes:
            shards.append([])
            held = 0
        shards[-1].append(p)
        held += size
    return shards


def _shard_name(k: int, n: int) -> str:
    return SAFETENSORS_FILE if n == 1 else f"model-{k + 1:05d}-of-{n:05d}.safetensors"


def write_model_folder(
    out: str | os.PathLike, plans: Sequence[TensorPlan], tensors: Iterable[Tensor], like: str | os.PathLike | None = None,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES, metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write ``tensors`` (one per plan, in order, as they are made) as the model folder ``out`` (see the module docstring),
    with every file of the folder ``like`` that is not a weight; ``out`` must not exist yet."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists; a merge writes a new folder (remove it, or choose another)")
    if like is not None and not Path(like).is_dir():
        raise ValueError(f"the folder to copy the configuration from, {like}, is not a folder")
    shards = shard_plans(plans, max_shard_bytes)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    try:
        stream: Iterator[Tensor] = iter(tensors)
        weight_map = {}
        for k, shard in enumerate(shards):
            name = _shard_name(k, len(shards))
            write_safetensors(staging / name, shard, (next(stream) for _ in shard), {"format": "pt", **(metadata or {})})
            weight_map |= {p.name: name for p in shard}
        if next(stream, None) is not None:
            raise ValueError(f"more tensors than the {len(plans)} plans")
        if len(shards) > 1:
            total = sum(p.nbytes for p in plans)
            (staging / SAFETENSORS_INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
        if like is not None:
            _copy_non_weights(Path(like), staging)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _copy_non_weights(source: Path, target: Path) -> None:
    """Every file below ``source`` except weights and their indexes, in the same places below ``target``."""
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if path.is_symlink() or any(part.startswith(".") for part in relative.parts):
            continue
        if path.is_dir():
            (target / relative).mkdir(exist_ok=True)
        elif not (path.name.endswith(WEIGHT_SUFFIXES) or path.name in WEIGHT_INDEXES):
            shutil.copyfile(path, target / relative)
