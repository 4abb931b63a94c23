"""AdapterFusion (Pfeiffer et al. 2021) and ScaLearn (Frohmann et al. 2024): trained task adapters, frozen, composed per target task.

Both learn in two stages. Stage one trains one bottleneck adapter per source task
(:func:`~workbench.models.peft.bottleneck.task_adapter`); stage two freezes them and learns, for each
target task and at each adapted layer, how to combine their outputs. At a layer whose frozen
projection outputs ``y`` ``(..., d)``, the ``N`` source adapters add ``a_n = W_up,n φ(W_down,n y + b) + b``
(:func:`~workbench.models.peft.bottleneck.adapter_delta`), and target task ``t`` reads

- **AdapterFusion** (the ``adapters`` library's ``BertFusion``, its default ``"dynamic"`` configuration)::

      q = W_Q y + b_Q,  k_n = W_K a_n + b_K,  v_n = W_V a_n,  p = softmax(dropout(q · k_n)),  out = y + Σ_n p_n v_n

  ``W_Q`` and ``W_K`` start ``N(0, 0.02²)`` with zero biases, ``W_V`` at the identity with ``1e-6`` off the
  diagonal; the training loss adds ``value_penalty · ||I − W_V||²_F`` of every fusion layer (the library's
  regulariser, 0.01), through the training loop's auxiliary losses. ``value=False`` is the ``"static"``
  configuration (no ``W_V``, no regulariser). The score dropout is BERT's attention dropout, 0.1; the
  temperature schedule the library leaves off is not offered. ``3 d² + 2 d`` parameters per layer and task.
- **ScaLearn** (the official ``ScaLearn`` module, default ``scalearn_2_avg_d03``)::

      out = y + Σ_n dropout(ω_n) ⊙ a_n,     ω_n ∈ R^d (``omega="vector"``) or R (``"scalar"``: ScaLearnUniform)

  ``ω`` starts ``N(init_scale / N, 0.001²)`` (``init_scale`` 2), dropout 0.3 on ``ω``; no softmax or
  normalisation. ``N d`` parameters per layer and task (``N`` for the uniform variant). The "++"
  variants, one ``ω`` for every layer, are not offered.

The composition of each target task is its own parameter (nothing is shared: the probes of shared
gradients refuse these models and every training method trains them alike); the source adapters and
the backbone are frozen. The frozen backbone is the source model's (the one its adapters were trained on) and
each target's head starts as its head of that task, where it has one; a file of saved adapters holds no backbone,
which is then the one the options build. ``sources``: the stage-one model (a ``task_adapter`` model, or a file its :func:`~workbench.models.peft.save_adapters`
wrote); its adapters must sit on the layers and have the width these options give (the mismatching
tensors are named). With ``sources=None`` the source adapters are those of the tasks themselves as
``task_adapter`` starts them, untrained: a shape to load a saved fusion into (:func:`~workbench.models.peft.load_adapters`,
which restores the sources too) or to test, not a trained composition.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from workbench.models.backbone import Backbone
from workbench.models.peft.adapted import adapt
from workbench.models.peft.bottleneck import Activation, check_adapter_options, adapter_delta, bottleneck_pairs, bottleneck_width, output_projections
from workbench.models.peft.layer import AdaptedLinear, check_count, check_dropout
from workbench.models.peft.targets import Targets
from workbench.tasks import MultiTaskModel, Task
from workbench.weights.state_dicts import copy_into, open_weights

__all__ = ["AdapterFusionLayer", "ScaLearnLayer", "FusedAdapters", "adapter_fusion", "scalearn", "source_adapters"]

Sources = MultiTaskModel | str | os.PathLike | None
_SOURCE_TENSOR = re.compile(r"\.adapter_down\.([^.]+)\.weight$")


class AdapterFusionLayer(nn.Module):
    """One target task's attention over the ``N`` source adapters' outputs at one layer (see the module docstring)."""

    def __init__(self, width: int, value: bool = True, dropout: float = 0.1, value_penalty: float = 0.01) -> None:
        super().__init__()
        self.query, self.key = nn.Linear(width, width), nn.Linear(width, width)
        for layer in (self.query, self.key):
            nn.init.normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)
        self.value = None
        if value:
            self.value = nn.Linear(width, width, bias=False)
            with torch.no_grad():
                self.value.weight.fill_(1e-6).fill_diagonal_(1.0)
        self.dropout = nn.Dropout(dropout)
        self.value_penalty = value_penalty

    def forward(self, y: Tensor, added: Tensor) -> Tensor:
        """``y`` ``(..., d)``, ``added`` ``(..., N, d)`` the source adapters' outputs -> ``(..., d)``."""
        scores = (self.query(y).unsqueeze(-2) * self.key(added)).sum(-1)
        weights = torch.softmax(self.dropout(scores), dim=-1)
        values = added if self.value is None else self.value(added)
        return y + (weights.unsqueeze(-1) * values).sum(-2)

    def auxiliary_loss(self, x, targets) -> Tensor | None:
        """``value_penalty · ||I − W_V||²_F``, added to the training loss (``None`` without ``W_V``)."""
        if self.value is None:
            return None
        weight = self.value.weight
        return self.value_penalty * (torch.eye(weight.shape[0], dtype=weight.dtype, device=weight.device) - weight).pow(2).sum()


class ScaLearnLayer(nn.Module):
    """One target task's learned scaling of the ``N`` source adapters' outputs at one layer (see the module docstring)."""

    def __init__(self, width: int, n_sources: int, omega: Literal["vector", "scalar"] = "vector", init_scale: float = 2.0, dropout: float = 0.3) -> None:
        super().__init__()
        self.omega = nn.Parameter(torch.normal(init_scale / n_sources, 0.001, (n_sources, width if omega == "vector" else 1)))
        self.dropout = nn.Dropout(dropout)

    def forward(self, y: Tensor, added: Tensor) -> Tensor:
        """``y`` ``(..., d)``, ``added`` ``(..., N, d)`` -> ``y + Σ_n ω_n ⊙ a_n`` ``(..., d)``."""
        return y + (self.dropout(self.omega) * added).sum(-2)


class FusedAdapters(AdaptedLinear):
    """A frozen ``base_layer``, the frozen adapters of ``sources`` on its output, and one composition per target task
    (``fusion[t]``, an :class:`AdapterFusionLayer` or :class:`ScaLearnLayer`) on that task's block of rows."""

    task_keyed = ("fusion",)

    def __init__(self, base_layer: nn.Linear, bottleneck: int, sources: Sequence[str], tasks: Sequence[str],
                 make_composition: Callable[[int, int], nn.Module], activation: Activation = "relu") -> None:
        super().__init__(base_layer, tasks)
        self.sources, self.activation = tuple(sources), activation
        self.adapter_down, self.adapter_up = bottleneck_pairs(self.out_features, bottleneck, self.sources)
        self.adapter_down.requires_grad_(False)
        self.adapter_up.requires_grad_(False)
        self.fusion = nn.ModuleDict({t: make_composition(self.out_features, len(self.sources)) for t in self.tasks})

    def forward(self, x: Tensor) -> Tensor:
        y = self.base_layer(x)
        added = torch.stack([adapter_delta(self, source, y) for source in self.sources], dim=-2)
        composed = [self.fusion[t](block, block_added) for t, block, block_added in zip(self.tasks, self.task_blocks(y), self.task_blocks(added))]
        return torch.stack(composed).flatten(0, 1)

    def extra_repr(self) -> str:
        return f"sources={list(self.sources)}, activation={self.activation!r}"


def adapter_fusion(
    tasks: Sequence[Task], backbone: Backbone, sources: Sources = None, reduction: int = 16, activation: Activation = "relu",
    value: bool = True, dropout: float = 0.1, value_penalty: float = 0.01, targets: Targets = None,
) -> MultiTaskModel:
    """AdapterFusion over the frozen task adapters of ``sources`` (built with ``reduction``, ``activation`` and ``targets``),
    one fusion per task at every adapted layer (see the module docstring)."""
    check_dropout("adapter_fusion", dropout)
    if isinstance(value_penalty, bool) or not isinstance(value_penalty, (int, float)) or value_penalty < 0:
        raise ValueError(f"adapter_fusion: value_penalty must be a non-negative number, got {value_penalty!r}")
    return _fused(tasks, backbone, "adapter_fusion", sources, reduction, activation, targets,
                  lambda width, n: AdapterFusionLayer(width, bool(value), dropout, float(value_penalty)))


def scalearn(
    tasks: Sequence[Task], backbone: Backbone, sources: Sources = None, reduction: int = 16, activation: Activation = "relu",
    omega: Literal["vector", "scalar"] = "vector", init_scale: float = 2.0, dropout: float = 0.3, targets: Targets = None,
) -> MultiTaskModel:
    """ScaLearn over the frozen task adapters of ``sources`` (built with ``reduction``, ``activation`` and ``targets``),
    one set of scales per task at every adapted layer (see the module docstring)."""
    check_dropout("scalearn", dropout)
    if omega not in ("vector", "scalar"):
        raise ValueError(f"scalearn: omega must be 'vector' or 'scalar', not {omega!r}")
    if isinstance(init_scale, bool) or not isinstance(init_scale, (int, float)):
        raise ValueError(f"scalearn: init_scale must be a number, got {init_scale!r}")
    return _fused(tasks, backbone, "scalearn", sources, reduction, activation, targets,
                  lambda width, n: ScaLearnLayer(width, n, omega, float(init_scale), dropout))


def _fused(tasks, backbone, scheme: str, sources: Sources, reduction, activation, targets, make_composition) -> MultiTaskModel:
    check_count(scheme, "reduction", reduction)
    check_adapter_options(scheme, activation, "bert")
    weights = None if sources is None else _source_weights(scheme, sources)
    names = source_adapters(weights, scheme) if weights is not None else [t.name for t in tasks]
    targets_names = [t.name for t in tasks]

    def make(name: str, base: nn.Linear) -> FusedAdapters:
        return FusedAdapters(base, bottleneck_width(scheme, name, base, reduction), names, targets_names, make_composition, activation)

    model = adapt(tasks, backbone, scheme, make, targets=targets, per_task=True, default_targets=output_projections)
    if weights is not None:
        _copy_sources(model, weights, scheme)
    return model


def _source_weights(scheme: str, sources: Sources):
    if isinstance(sources, MultiTaskModel):
        return open_weights(sources, "the source model")
    if isinstance(sources, (str, os.PathLike)):
        path = Path(sources)
        if path.suffix != ".safetensors":
            raise ValueError(f"{scheme}: sources is a task_adapter model or the *.safetensors file save_adapters wrote; got {path.name!r}")
        return open_weights(path)
    raise TypeError(f"{scheme}: sources is a task_adapter model or the *.safetensors file save_adapters wrote, not a {type(sources).__name__}")


def source_adapters(weights, scheme: str) -> list[str]:
    """The names of the bottleneck adapters in ``weights`` (a :class:`~workbench.weights.Weights`), in their order."""
    names = list(dict.fromkeys(m.group(1) for key in weights.keys() if (m := _SOURCE_TENSOR.search(key))))
    if not names:
        raise ValueError(f"{scheme}: {weights.name} holds no bottleneck adapters (no '*.adapter_down.<task>.weight' tensor); "
                         "give the stage-one task_adapter model or its saved adapters")
    return names


@torch.no_grad()
def _copy_sources(model: MultiTaskModel, weights, scheme: str) -> None:
    """Copy from ``weights`` into ``model`` the source adapters, and whatever else of the model the sources hold (the
    frozen backbone they were trained on, the heads of their tasks), every check first; the compositions stay."""
    held = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    adapters = {name: tensor for name, tensor in held.items() if ".adapter_down." in name or ".adapter_up." in name}
    available = set(weights.keys())
    missing = sorted(set(adapters) - available)
    if missing:
        raise ValueError(f"{scheme}: the sources have no adapters at {missing[:6]}: trained on other layers (targets) or another backbone")
    wanted = {name: tensor for name, tensor in held.items() if name in available and ".fusion." not in name}
    copy_into(wanted, weights, scheme, "the source adapters were built with another reduction or backbone", where="the sources")
