"""A frozen encoder with a scheme's layers inside, under the model contract.

:func:`adapt` builds the backbone's encoder, freezes every one of its parameters and puts a scheme's
:class:`~workbench.models.peft.layer.AdaptedLinear` in place of each targeted linear layer
(:mod:`workbench.models.peft.targets`). The trainable parameters are then the scheme's and the heads':
what the gradient engine, the probes and the aggregators see as shared are the scheme's shared
parameters (a shared LoRA's ``A`` and ``B``, MTL-LoRA's shared down- and up-projections), and what a
scheme holds for one task (its own LoRA, MTL-LoRA's transform) is that task's, trained on its loss only.

:class:`AdaptedEncoder` maps ``x`` to ``Z`` ``(B, *shape)`` when every adapter is shared, and to
``(B, T, *shape)`` when some serve one task each: it then runs the encoder once on the batch
repeated ``T`` times, row block ``t`` through task ``t``'s parameters, and head ``t`` reads slot ``t``.
Cost: ``T`` times the adapted part's forward (the frozen blocks below, whose output the lexicon
problem caches, run once).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor, nn

from workbench.models.backbone import Backbone
from workbench.models.mmoe import slot_heads
from workbench.models.peft.layer import AdaptedLinear
from workbench.models.peft.targets import Targets, adapted_region, find_targets
from workbench.tasks import Inputs, MultiTaskModel, Task, num_samples

__all__ = ["AdaptedEncoder", "adapt", "repeat_rows"]


def repeat_rows(x: Inputs, copies: int) -> Inputs:
    """``x`` ``(B, ...)`` stacked ``copies`` times along the samples, ``(copies · B, ...)``, every named tensor alike."""
    if isinstance(x, Tensor):
        return x.repeat(copies, *([1] * (x.dim() - 1)))
    return {name: repeat_rows(tensor, copies) for name, tensor in x.items()}


class AdaptedEncoder(nn.Module):
    """``x -> Z``: the frozen ``base`` encoder with adapted layers inside; ``(B, T, ...)`` when ``per_task`` (see the module docstring)."""

    def __init__(self, base: nn.Module, tasks: Sequence[str], per_task: bool) -> None:
        super().__init__()
        self.base = base
        self.task_order = list(tasks)
        self.per_task = per_task

    def forward(self, x: Inputs) -> Tensor:
        if not self.per_task:
            return self.base(x)
        copies, samples = len(self.task_order), num_samples(x)
        return self.base(repeat_rows(x, copies)).unflatten(0, (copies, samples)).transpose(0, 1)

    def adapted_layers(self) -> dict[str, AdaptedLinear]:
        """``{name: layer}`` of every adapted layer, names relative to this encoder."""
        return {name: module for name, module in self.named_modules() if isinstance(module, AdaptedLinear)}

    def task_parameters(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """What each adapted layer, and each module a scheme adds beside the base encoder (HyperFormer's hypernetwork),
        holds for one task alone (named relative to this encoder)."""
        holders = {**self.adapted_layers(), **{name: module for name, module in self.named_children() if name != "base"}}
        own: dict[str, list[tuple[str, nn.Parameter]]] = {task: [] for task in self.task_order}
        for name, holder in holders.items():
            for task, params in holder.task_parameters().items():
                own[task] += [(f"{name}.{local}", p) for local, p in params]
        return {task: params for task, params in own.items() if params}


def _replace(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attribute = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attribute, module)


def adapt(
    tasks: Sequence[Task], backbone: Backbone, scheme: str, make_layer: Callable[[str, nn.Linear], AdaptedLinear], *,
    targets: Targets, per_task: bool, default_targets: Callable[[nn.Module, str], Targets] | None = None,
    encoder: Callable[[nn.Module, Sequence[str], bool], AdaptedEncoder] = AdaptedEncoder,
) -> MultiTaskModel:
    """The backbone's encoder frozen, ``make_layer(name, linear)`` in place of every targeted linear layer
    (``default_targets(root, scheme)`` when ``targets`` is ``None``, :func:`~workbench.models.peft.targets.default_targets` unless told),
    wrapped by ``encoder(base, task_names, per_task)`` (an :class:`AdaptedEncoder`, or one that adds a loss of its own),
    one linear head per task (on its slot when ``per_task``). Errors name ``scheme``."""
    if per_task and len(backbone.shape) != 1:
        raise ValueError(f"{scheme}: a scheme with parameters per task reads each task's representation from a slot of a vector; "
                         f"the {backbone.name} backbone's representation has the shape {backbone.shape}")
    base = backbone.make()
    found = find_targets(base, targets, scheme, default=default_targets)
    base.requires_grad_(False)
    root, _ = adapted_region(base)
    for name, linear in found.items():
        _replace(root, name, make_layer(name, linear))
    base.train(base.training)  # a transformer re-marks its frozen modules
    adapted = encoder(base, [t.name for t in tasks], per_task)
    if per_task:
        return MultiTaskModel(adapted, tasks, heads=slot_heads(tasks, backbone.shape[0]))
    return MultiTaskModel(adapted, tasks, representation_dim=backbone.shape)
