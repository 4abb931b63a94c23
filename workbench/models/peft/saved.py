"""Any scheme's trained parameters as one safetensors file, and back.

:func:`save_adapters` writes what a scheme trains (every trainable parameter of the model: the scheme's
and the heads') and what its layers keep beside the frozen base layer (SMoRA's balancing bias, the frozen adapters
that AdapterFusion and ScaLearn compose), named as in the model; the
frozen backbone is not written, so the file is the size of the adapter. :func:`load_adapters` reads such
a file into a model built the same way, every tensor checked before any is copied: the names must be the
model's (missing and unexpected ones are named), the shapes too (the mismatching tensors named: an
adapter of another scheme, rank or base model architecture), and every value finite. Files are named
``*.safetensors``, written atomically and read through the validated safetensors reader; no pickle is
opened. A LoRA moves to and from ``peft``
as a ``peft`` folder (:mod:`workbench.models.peft.peft_format`).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

from workbench.models.peft.layer import AdaptedLinear
from workbench.tasks import MultiTaskModel
from workbench.weights.state_dicts import copy_into, open_weights, write_state_dict

__all__ = ["save_adapters", "load_adapters", "adapter_state"]


def adapter_state(model: MultiTaskModel) -> dict[str, Tensor]:
    """``{name: tensor}`` of the model's trainable parameters and what its adapted layers hold beside the frozen base layer
    (the frozen source adapters AdapterFusion composes, SMoRA's balancing bias), named as in the model."""
    state = {name: p for name, p in model.named_parameters() if p.requires_grad}
    for layer_name, layer in model.named_modules():
        if isinstance(layer, AdaptedLinear):
            held = [*layer.named_parameters(), *layer.named_buffers()]
            state |= {f"{layer_name}.{name}": tensor for name, tensor in held if not name.startswith("base_layer.")}
    return state


def _safetensors_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"adapters are saved and read as safetensors files, named *.safetensors; got {path.name!r}")
    return path


def save_adapters(model: MultiTaskModel, path: str | os.PathLike) -> Path:
    """Write :func:`adapter_state` of ``model`` to the safetensors file ``path`` (atomically); returns the path. Refused:
    a name not ending in ``.safetensors``, NaN or infinite values (nothing is written)."""
    path = _safetensors_path(path)
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in adapter_state(model).items()}
    bad = [name for name, tensor in tensors.items() if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if bad:
        raise ValueError(f"the adapters to save hold NaN or infinite values in {bad[:6]}; nothing written")
    return write_state_dict(path, tensors, metadata={"format": "pt", "content": "workbench adapters"})


@torch.no_grad()
def load_adapters(model: MultiTaskModel, path: str | os.PathLike) -> MultiTaskModel:
    """Read a file of :func:`save_adapters` into ``model`` (built with the same scheme and options), every check first."""
    path = _safetensors_path(path)
    weights = open_weights(path)
    ours = adapter_state(model)
    missing, unexpected = sorted(set(ours) - set(weights.keys())), sorted(set(weights.keys()) - set(ours))
    if missing or unexpected:
        raise ValueError(f"{path}: not this model's adapters: missing tensors {missing[:6]}, tensors the model does not have {unexpected[:6]}")
    copy_into(ours, weights, str(path), "adapters of another scheme, rank or base model")
    return model
