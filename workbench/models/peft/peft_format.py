"""LoRA adapters as ``peft`` folders: ``adapter_config.json`` and ``adapter_model.safetensors``.

:func:`save_lora` writes one LoRA of a model built by ``lora`` or ``task_lora`` (the shared one, or a
task's) as ``peft`` saves it: tensor ``base_model.model.<module>.lora_A.weight`` (``r × d_in``) and
``...lora_B.weight`` (``d_out × r``) for each adapted layer ``<module>``, named as in the transformer (or
the encoder), and a config of ``peft_type`` ``"LORA"`` whose ``target_modules`` are those modules'
full names. ``peft.PeftModel.from_pretrained(base, folder)`` loads it onto the same base model and
gives the same outputs. The folder is written beside its place and moved there whole, so it never
holds one adapter's config with another's weights.

:func:`load_lora` reads such a folder (one ``peft`` wrote, or :func:`save_lora`) into a model's LoRA,
after checking everything first: the config's rank, α and rank-stabilisation equal the model's, no
``peft`` feature the workbench's LoRA lacks is on (DoRA, a LoRA bias, modules to save, per-module
ranks or α), the adapted modules are the model's, every tensor has the model's shape (mismatching
tensors are named: an adapter for a base model of another architecture) and is finite. A checkpoint
of the same architecture with other weights has the same shapes and is not told apart: the config's
``base_model_name_or_path`` says which one the adapter was trained on. The tensors are read through
the validated safetensors reader; no pickle is ever opened.

A folder is written only where there is none, or, with ``overwrite=True``, over an adapter folder that
holds nothing but an adapter (its config, its weights, ``peft``'s README); anything else is refused.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from workbench.models.peft.lora import DEFAULT_ADAPTER, LoRALinear
from workbench.tasks import MultiTaskModel
from workbench.weights.state_dicts import copy_into, open_weights, write_state_dict

__all__ = ["CONFIG_FILE", "WEIGHTS_FILE", "save_lora", "load_lora", "lora_layers"]

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_PREFIX = "base_model.model."
_UNSUPPORTED = {"use_dora": False, "lora_bias": False, "modules_to_save": None, "bias": "none", "rank_pattern": {}, "alpha_pattern": {}}
_ADAPTER_FILES = {CONFIG_FILE, WEIGHTS_FILE, "README.md"}


def lora_layers(model: MultiTaskModel, adapter: str | None) -> tuple[str, dict[str, LoRALinear]]:
    """The adapter's name inside the layers and ``{module name: layer}``, names as ``peft`` gives them."""
    from workbench.models.peft.targets import adapted_region

    encoder = getattr(model.encoder, "base", None)
    if encoder is None:
        raise ValueError("a LoRA folder is saved from and loaded into a model built by the 'lora' or 'task_lora' scheme")
    root, _ = adapted_region(encoder)
    layers = {name: module for name, module in root.named_modules() if isinstance(module, LoRALinear)}
    if not layers:
        raise ValueError("the model has no LoRA layer; build it with the 'lora' or 'task_lora' scheme")
    tasks = next(iter(layers.values())).tasks
    name = adapter if adapter is not None else DEFAULT_ADAPTER
    if (name == DEFAULT_ADAPTER and tasks) or (name != DEFAULT_ADAPTER and name not in tasks):
        having = f"one LoRA per task, of {list(tasks)}: name one" if tasks else "one shared LoRA: give no adapter"
        raise ValueError(f"the model has no LoRA {adapter!r}; it has {having}")
    return name, layers


def _config(layers: dict[str, LoRALinear], base_model: str) -> dict:
    first = next(iter(layers.values()))
    return {
        "peft_type": "LORA", "task_type": None, "base_model_name_or_path": base_model, "r": first.rank, "lora_alpha": first.alpha,
        "use_rslora": first.rslora, "lora_dropout": first.lora_dropout.p if isinstance(first.lora_dropout, torch.nn.Dropout) else 0.0,
        "target_modules": sorted(layers), "bias": "none", "use_dora": False, "fan_in_fan_out": False, "init_lora_weights": True,
        "inference_mode": True, "modules_to_save": None,
    }


def save_lora(model: MultiTaskModel, folder: str | os.PathLike, adapter: str | None = None, base_model: str = "", overwrite: bool = False) -> Path:
    """Write the model's LoRA ``adapter`` (``None``: the shared one; a task name for ``task_lora``) as a ``peft`` folder;
    ``base_model`` is recorded as the config's ``base_model_name_or_path``. Returns the folder. Refused before anything
    is written: a LoRA holding NaN or infinite values, and a folder that exists (unless ``overwrite`` and it holds an
    adapter only)."""
    name, layers = lora_layers(model, adapter)
    tensors = {}
    for module, layer in layers.items():
        tensors[f"{_PREFIX}{module}.lora_A.weight"] = layer.lora_A[name].weight.detach().cpu().contiguous()
        tensors[f"{_PREFIX}{module}.lora_B.weight"] = layer.lora_B[name].weight.detach().cpu().contiguous()
    bad = [key for key, tensor in tensors.items() if not torch.isfinite(tensor).all()]
    if bad:
        raise ValueError(f"the LoRA to save holds NaN or infinite values in {bad[:6]}; nothing written")
    folder = Path(folder)
    if folder.exists():
        _check_replaceable(folder, overwrite)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        write_state_dict(staging / WEIGHTS_FILE, tensors, metadata={"format": "pt"})
        (staging / CONFIG_FILE).write_text(json.dumps(_config(layers, base_model), indent=2) + "\n")
        _publish(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _check_replaceable(folder: Path, overwrite: bool) -> None:
    """Refuse to write over ``folder`` unless ``overwrite`` and it is an adapter folder holding nothing else."""
    if not overwrite:
        raise FileExistsError(f"{folder} exists; give overwrite=True to replace the adapter in it")
    others = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else [folder.name]
    if not (folder / CONFIG_FILE).is_file() or set(others) - _ADAPTER_FILES:
        raise FileExistsError(f"{folder} is no adapter folder holding an adapter alone (it holds {others[:8]}); not overwriting it")


def _publish(staging: Path, folder: Path) -> None:
    """Move the staged folder into place; a folder already there is moved aside first, put back if the move fails,
    and removed once the new one is in place."""
    if not folder.exists():
        os.replace(staging, folder)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old.", dir=folder.parent))
    os.replace(folder, aside / folder.name)
    try:
        os.replace(staging, folder)
    except OSError:
        os.replace(aside / folder.name, folder)  # the old adapter back in its place
        shutil.rmtree(aside, ignore_errors=True)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def _read_config(folder: Path) -> dict:
    path = folder / CONFIG_FILE
    if not path.is_file() or not (folder / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"{folder} is no LoRA folder: it needs {CONFIG_FILE} and {WEIGHTS_FILE}")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not a JSON adapter config: {error}") from None
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        raise ValueError(f"{path} is not a LoRA adapter config (peft_type {config.get('peft_type') if isinstance(config, dict) else None!r})")
    on = {key: config[key] for key, off in _UNSUPPORTED.items() if config.get(key, off) not in (off, [], False)}
    if on:
        raise ValueError(f"{path} uses peft features the workbench's LoRA does not have: {on}")
    return config


@torch.no_grad()
def load_lora(model: MultiTaskModel, folder: str | os.PathLike, adapter: str | None = None) -> MultiTaskModel:
    """Read a ``peft`` LoRA folder into the model's LoRA ``adapter`` (as :func:`save_lora` names it), every check
    made before any tensor is copied (see the module docstring). Returns the model."""
    folder = Path(folder)
    name, layers = lora_layers(model, adapter)
    config = _read_config(folder)
    first = next(iter(layers.values()))
    ours = {"r": first.rank, "lora_alpha": first.alpha, "use_rslora": first.rslora}
    theirs = {"r": config.get("r"), "lora_alpha": config.get("lora_alpha"), "use_rslora": config.get("use_rslora", False)}
    if any(theirs[key] != value for key, value in ours.items()):
        raise ValueError(f"{folder}: the adapter was trained with {theirs}, the model's LoRA has {ours}; build it with those options")
    weights = open_weights(folder / WEIGHTS_FILE)
    expected = {f"{_PREFIX}{module}.lora_{part}.weight": getattr(layer, f"lora_{part}")[name].weight
                for module, layer in layers.items() for part in "AB"}
    found = {key.replace(f".{DEFAULT_ADAPTER}.weight", ".weight") for key in weights.keys()}
    missing, extra = sorted(set(expected) - found), sorted(found - set(expected))
    if missing or extra:
        raise ValueError(f"{folder}: the adapter's modules are not the model's: missing tensors {missing[:6]}, tensors of modules the model "
                         f"does not adapt {extra[:6]}")
    stored = {key.replace(f".{DEFAULT_ADAPTER}.weight", ".weight"): key for key in weights.keys()}
    copy_into(expected, weights, str(folder), "an adapter for another base model", stored=stored)
    return model
