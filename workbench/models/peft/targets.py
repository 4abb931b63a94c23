"""Which linear layers of an encoder a parameter-efficient scheme adapts, matched as ``peft`` matches them.

:func:`adapted_region` is the part of an encoder whose layers may be adapted: a transformer's
trainable blocks (the backbone's ``trainable_layers``, so that the cached output of the frozen blocks
below stays valid), any other encoder whole. :func:`find_targets` picks the ``nn.Linear`` layers of
the region whose names match ``targets``: a list of names, each matching a module called exactly that
or ending in ``.name`` (``"query"`` matches ``encoder.layer.5.attention.self.query``), or one string,
a regular expression the whole name must match. Names are relative to the transformer (a
:class:`~workbench.models.TransformerEncoder`'s inner model) or to the encoder, so that they are
the names ``peft`` reads and writes. ``targets=None`` takes ``peft``'s default for the transformer's
model type, and every linear layer of an encoder that is no transformer (an MLP).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

from torch import nn

from workbench.extras import require

__all__ = ["Targets", "adapted_region", "find_targets", "default_targets", "targets_by_model_type"]

Targets = Sequence[str] | str | None
"""Module names or suffixes to adapt, a regular expression the whole name matches, or ``None`` for the default."""


def adapted_region(encoder: nn.Module) -> tuple[nn.Module, list[nn.Module]]:
    """``(root, blocks)``: the module whose names ``targets`` match (a transformer's inner model, else the encoder)
    and the sub-modules holding the layers that may be adapted (a transformer's trainable blocks, else ``[encoder]``)."""
    from workbench.models.transformers import TransformerEncoder

    if isinstance(encoder, TransformerEncoder):
        return encoder.transformer, encoder._trainable_blocks()
    return encoder, [encoder]


def default_targets(root: nn.Module, scheme: str) -> Targets:
    """``peft``'s default LoRA targets for a transformers model's type (``["query", "value"]`` for BERT), ``None``
    (every linear layer) for a module without a transformers config."""
    if getattr(root, "config", None) is None:
        return None
    require("peft", "text")
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    return targets_by_model_type(root, scheme, TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING)


def targets_by_model_type(root: nn.Module, scheme: str, targets: Mapping[str, Sequence[str]]) -> Targets:
    """``targets[model type]`` of a transformers model, ``None`` (every linear layer) for a module without a config;
    refused, naming the scheme, for a model type the mapping lacks."""
    config = getattr(root, "config", None)
    if config is None:
        return None
    model_type = getattr(config, "model_type", None)
    if model_type not in targets:
        raise ValueError(f"{scheme}: no default target modules for a {model_type!r} transformer; give targets, names of its linear layers")
    return targets[model_type]


def _matches(name: str, targets: Sequence[str] | str | None) -> bool:
    if targets is None:
        return True
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == target or name.endswith(f".{target}") for target in targets)


def find_targets(
    encoder: nn.Module, targets: Targets, scheme: str, *, default: Callable[[nn.Module, str], Targets] | None = None,
) -> dict[str, nn.Linear]:
    """The linear layers to adapt, ``{name: layer}`` in module order (names as the module docstring says).

    ``targets=None`` takes ``default(root, scheme)`` (:func:`default_targets` unless told otherwise; ``root`` is the
    transformer, or the encoder). Refused, naming the
    scheme: targets that are neither names nor a string, and targets that match no linear layer of the
    region that may be adapted (the error lists the linear layers that exist there).
    """
    if targets is not None and not isinstance(targets, str):
        if not all(isinstance(target, str) and target for target in targets) or not len(targets):
            raise ValueError(f"{scheme}: targets must be module names or a regular expression, got {targets!r}")
    root, blocks = adapted_region(encoder)
    wanted = targets if targets is not None else (default or default_targets)(root, scheme)
    inside = {id(module) for block in blocks for module in block.modules()}
    linear = {name: module for name, module in root.named_modules() if isinstance(module, nn.Linear) and id(module) in inside}
    found = {name: module for name, module in linear.items() if _matches(name, wanted)}
    if not found:
        listed = sorted(linear) or ["none"]
        where = "the encoder" if blocks == [encoder] else f"the {len(blocks)} trainable blocks"
        raise ValueError(f"{scheme}: the targets {wanted!r} match no linear layer of {where}; its linear layers: {listed}")
    return found
