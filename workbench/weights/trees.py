"""Training-run snapshots as safetensors files: nested dicts and lists of tensors and plain values, never a pickle.

A snapshot (what ``train(checkpoint=...)`` writes and resumes from) holds the model's and the optimizer's state dicts, a method's state, random
number generator states and the history so far: a tree of dicts (any keys: an optimizer's state is
keyed by integers), lists, tuples, tensors, NumPy arrays and JSON values. :func:`save_tree` stores
every tensor in a safetensors file and the tree's shape, with the plain values, as JSON in the file's
metadata; :func:`load_tree` rebuilds it. Writing is atomic: an interrupted save leaves no file that
looks complete and keeps the previous one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from workbench.files import atomic_write

__all__ = ["save_tree", "load_tree"]

_TREE_KEY = "workbench_tree"


def _encode(node: Any, path: str, tensors: dict[str, Tensor]) -> Any:
    if isinstance(node, Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = node.detach().to("cpu", copy=True).contiguous()
        return {"__tensor__": key}
    if isinstance(node, np.ndarray):
        if node.dtype.kind not in "biuf":
            return {"__array_list__": node.tolist()}
        key = f"t{len(tensors)}"
        tensors[key] = torch.from_numpy(np.ascontiguousarray(node).copy())
        return {"__ndarray__": key}
    if isinstance(node, np.generic):
        return node.item()
    if isinstance(node, dict):
        return {"__dict__": [[_encode(k, f"{path}[key]", tensors), _encode(v, f"{path}.{k}", tensors)] for k, v in node.items()]}
    if isinstance(node, tuple):
        return {"__tuple__": [_encode(v, f"{path}[{i}]", tensors) for i, v in enumerate(node)]}
    if isinstance(node, list):
        return [_encode(v, f"{path}[{i}]", tensors) for i, v in enumerate(node)]
    if isinstance(node, torch.dtype):
        return {"__dtype__": str(node).removeprefix("torch.")}
    if isinstance(node, torch.device):
        return {"__device__": str(node)}
    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    raise TypeError(f"a checkpoint cannot hold {type(node).__name__} at {path or 'the root'}")


def _decode(node: Any, tensors: dict[str, Tensor]) -> Any:
    if isinstance(node, list):
        return [_decode(v, tensors) for v in node]
    if not isinstance(node, dict):
        return node
    (kind, value), = node.items()
    if kind == "__tensor__":
        return tensors[value]
    if kind == "__ndarray__":
        return tensors[value].cpu().numpy()
    if kind == "__array_list__":
        return np.array(value)
    if kind == "__dict__":
        return {_decode(k, tensors): _decode(v, tensors) for k, v in value}
    if kind == "__tuple__":
        return tuple(_decode(v, tensors) for v in value)
    if kind == "__dtype__":
        return getattr(torch, value)
    if kind == "__device__":
        return torch.device(value)
    raise ValueError(f"unknown node {kind!r} in a checkpoint")


def save_tree(tree: Any, path: str | os.PathLike) -> Path:
    """Write ``tree`` to the safetensors file ``path`` atomically; raises ``TypeError`` naming an unsupported value."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors: dict[str, Tensor] = {}
    encoded = _encode(tree, "", tensors)
    with atomic_write(path, suffix=".safetensors") as temporary:
        save_file(tensors, str(temporary), metadata={_TREE_KEY: json.dumps(encoded)})
    return path


def load_tree(path: str | os.PathLike, device: str | torch.device = "cpu") -> Any:
    """Read a tree written by :func:`save_tree`; refuses anything else (a pickle above all) with the reason."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as opened:
            metadata = opened.metadata() or {}
            tensors = {key: opened.get_tensor(key) for key in opened.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(
            f"{path} is not a workbench checkpoint (a safetensors file): {error}. Pickled checkpoints are not loaded, since unpickling can run code"
        ) from error
    if _TREE_KEY not in metadata:
        raise ValueError(f"{path} is a safetensors file but not a workbench checkpoint (no {_TREE_KEY!r} in its metadata)")
    return _decode(json.loads(metadata[_TREE_KEY]), tensors)
