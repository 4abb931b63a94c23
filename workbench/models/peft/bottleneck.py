"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2020): a small residual MLP after a frozen projection.

On the output ``y = W0 x + b`` of each targeted linear layer, as the ``adapters`` library's bottleneck
adapter computes it::

    a(y) = y + W_up φ(W_down y + b_down) + b_up,    W_down: m × d_out,  W_up: d_out × m,  m = d_out / reduction

``φ`` is ReLU (Pfeiffer's default) or Swish (Houlsby's); the weights start ``N(0, 0.02²)`` and the
biases at zero (the library's ``"bert"`` initialisation), or with ``init="zero"`` the up-projection at
zero as well, so that the adapter starts as the identity (the library's ``"mam_adapter"``). The
default positions are a transformer's output projections, after attention and after the
feed-forward block (``output.dense`` in BERT: both of Houlsby's positions), before the residual and
its layer norm; ``targets`` chooses others (``r".*\\.\\d+\\.output\\.dense"``: after the feed-forward
block only, Pfeiffer's). The ``adapters`` library is not a dependency: it pins transformers 4.x.

``adapter``: one adapter shared by the tasks (the probes see it: conflict inside the adapter);
``task_adapter``: one per task, nothing shared (what AdapterFusion and ScaLearn compose:
:mod:`workbench.models.peft.fusion`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from workbench.models.backbone import Backbone
from workbench.models.peft.adapted import adapt
from workbench.models.peft.layer import AdaptedLinear, check_count
from workbench.models.peft.lora import DEFAULT_ADAPTER
from workbench.models.peft.targets import Targets, targets_by_model_type
from workbench.tasks import MultiTaskModel, Task

__all__ = [
    "BottleneckAdapter", "bottleneck_adapter", "task_adapter", "bottleneck_width", "bottleneck_pairs", "adapter_delta", "check_adapter_options", "output_projections",
    "OUTPUT_PROJECTIONS",
]

Activation = Literal["relu", "swish"]
AdapterInit = Literal["bert", "zero"]
OUTPUT_PROJECTIONS = {"bert": ("output.dense",), "roberta": ("output.dense",), "xlm-roberta": ("output.dense",),
                      "llama": ("o_proj", "down_proj"), "mistral": ("o_proj", "down_proj"), "qwen2": ("o_proj", "down_proj")}
"""A transformer's output projections by model type: where the adapters go unless ``targets`` says otherwise."""
_ACTIVATIONS = {"relu": F.relu, "swish": F.silu}


class BottleneckAdapter(AdaptedLinear):
    """``y + up(φ(down(y)))`` with ``y = base_layer(x)``: one adapter shared, or one per task on its block of rows."""

    task_keyed = ("adapter_down", "adapter_up")

    def __init__(self, base_layer: nn.Linear, bottleneck: int, activation: Activation = "relu", init: AdapterInit = "bert",
                 tasks: Sequence[str] = ()) -> None:
        super().__init__(base_layer, tasks)
        check_adapter_options("BottleneckAdapter", activation, init)
        self.activation = activation
        self.adapter_down, self.adapter_up = bottleneck_pairs(self.out_features, bottleneck, self.tasks or (DEFAULT_ADAPTER,), init)

    def _adapted(self, name: str, y: Tensor) -> Tensor:
        return y + adapter_delta(self, name, y)

    def forward(self, x: Tensor) -> Tensor:
        y = self.base_layer(x)
        if not self.tasks:
            return self._adapted(DEFAULT_ADAPTER, y)
        return torch.stack([self._adapted(t, block) for t, block in zip(self.tasks, self.task_blocks(y))]).flatten(0, 1)

    def extra_repr(self) -> str:
        return f"bottleneck={self.adapter_down[next(iter(self.adapter_down))].out_features}, activation={self.activation!r}"


def bottleneck_pairs(width: int, bottleneck: int, names: Sequence[str], init: AdapterInit = "bert") -> tuple[nn.ModuleDict, nn.ModuleDict]:
    """``(adapter_down, adapter_up)``: for each name a ``width -> bottleneck`` and a ``bottleneck -> width`` linear layer,
    initialised as the module docstring says."""
    down = nn.ModuleDict({a: nn.Linear(width, bottleneck) for a in names})
    up = nn.ModuleDict({a: nn.Linear(bottleneck, width) for a in names})
    for a in names:
        for layer in (down[a], up[a]):
            nn.init.normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)
        if init == "zero":
            nn.init.zeros_(up[a].weight)
    return down, up


def adapter_delta(layer: nn.Module, name: str, y: Tensor) -> Tensor:
    """``W_up φ(W_down y + b_down) + b_up`` ``(..., d)``: what adapter ``name`` of ``layer`` (its ``adapter_down``,
    ``adapter_up`` and ``activation``) adds to ``y`` ``(..., d)``."""
    return layer.adapter_up[name](_ACTIVATIONS[layer.activation](layer.adapter_down[name](y)))


def bottleneck_adapter(
    tasks: Sequence[Task], backbone: Backbone, reduction: int = 16, activation: Activation = "relu", init: AdapterInit = "bert",
    targets: Targets = None,
) -> MultiTaskModel:
    """One bottleneck adapter of width ``d_out // reduction`` after each targeted linear layer of the backbone's trainable part
    (its output projections by default), shared by the tasks, everything else frozen; a linear head per task."""
    return _bottleneck(tasks, backbone, "adapter", reduction, activation, init, targets, per_task=False)


def task_adapter(
    tasks: Sequence[Task], backbone: Backbone, reduction: int = 16, activation: Activation = "relu", init: AdapterInit = "bert",
    targets: Targets = None,
) -> MultiTaskModel:
    """One bottleneck adapter per task, as :func:`bottleneck_adapter` builds one; nothing shared but the frozen backbone."""
    return _bottleneck(tasks, backbone, "task_adapter", reduction, activation, init, targets, per_task=True)


def _bottleneck(tasks, backbone, scheme: str, reduction, activation, init, targets, *, per_task: bool) -> MultiTaskModel:
    check_count(scheme, "reduction", reduction)
    check_adapter_options(scheme, activation, init)
    names = [t.name for t in tasks] if per_task else []

    def make(name: str, base: nn.Linear) -> BottleneckAdapter:
        return BottleneckAdapter(base, bottleneck_width(scheme, name, base, reduction), activation, init, names)

    return adapt(tasks, backbone, scheme, make, targets=targets, per_task=per_task, default_targets=output_projections)


def bottleneck_width(scheme: str, name: str, base: nn.Linear, reduction: int) -> int:
    """``d_out // reduction`` of layer ``name``; refused, naming the scheme and the layer, when it leaves no unit."""
    if reduction > base.out_features:
        raise ValueError(f"{scheme}: reduction {reduction} leaves no unit of {name!r}'s {base.out_features} outputs")
    return base.out_features // reduction


def check_adapter_options(scheme: str, activation: str, init: str) -> None:
    """Refuse an activation or an initialisation a bottleneck adapter does not have, naming the scheme."""
    if activation not in _ACTIVATIONS:
        raise ValueError(f"{scheme}: activation must be one of {sorted(_ACTIVATIONS)}, not {activation!r}")
    if init not in ("bert", "zero"):
        raise ValueError(f"{scheme}: init must be 'bert' or 'zero', not {init!r}")


def output_projections(root: nn.Module, scheme: str) -> Targets:
    """The output projections of a transformer (:data:`OUTPUT_PROJECTIONS`), ``None`` (every linear layer) for an
    encoder that is no transformer."""
    return targets_by_model_type(root, scheme, OUTPUT_PROJECTIONS)
