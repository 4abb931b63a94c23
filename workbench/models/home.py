"""HoME, a hierarchy of multi-gate experts (Wang et al. 2024, Kuaishou), under the model contract.

HoME is MMoE/CGC (:mod:`workbench.models.mmoe`) with three remedies, for the three ills the paper names: expert
collapse (the experts' output distributions differ, some with most of their ReLU units dead), expert degradation
(a shared expert that one task alone uses) and underfitting (a sparse task leaning on the shared experts). No
official code was found; the paper gives the remedies' forms, not every equation, so what follows marks what is
the paper's and what is the workbench's choice. Each remedy is an option that can be switched off, so that a
study can test "HoME's remedies reduce collapse" (:func:`~workbench.studies.remedy_study`).

The backbone is a shared trunk; its flattened features ``v`` (``(B, F)``) are the input. An expert is an MLP of
widths ``expert_hidden`` (``meta_hidden`` at the meta level); a gate is a softmax of a linear map,
:class:`~workbench.models.mmoe.SoftmaxGate`.

- ``expert_norm=True`` (expert normalisation, the paper's remedy for collapse): every layer of an expert is
  ``Swish(BN(W h + b))`` (``nn.SiLU`` after ``nn.BatchNorm1d``) instead of ``ReLU(W h + b)``, so that the experts'
  outputs share a scale and no unit dies. (That every layer, not only the last, is normalised is the workbench's
  choice.) Batch norm normalises by the batch in training and by its running statistics in evaluation.
- ``hierarchy=True`` (the hierarchy mask, the paper's remedy for degradation): a first level of *meta* experts,
  ``meta_experts`` shared ones and ``category_experts`` for each task category (``categories`` maps each task to
  its category). Category ``c``'s gate weighs the shared meta experts and its own,
  ``m_c = Σ_{e ∈ S_meta ∪ M_c} g^meta_{c,e}(v) f_e(v)``. At the task level, task ``t`` of category ``c`` reads
  ``m_c``: ``z_t = Σ_{e ∈ S ∪ E_t} g_{t,e}(m_c) f_e(m_c)`` over the ``n_experts`` shared task-level experts (run on
  each category's ``m_c`` apart, as PLE runs them on each task's input) and its ``own_experts``. That the task level
  reads only its category's meta output, and that its shared experts are shared by every category, are the
  workbench's choices (the paper's figure has category-level experts above the meta level too, whose exact wiring
  it leaves open). By default (``categories=None``) every task is a category of its own, so the hierarchy is two
  CGC levels; the paper groups tasks by kind (watch time, interactions), which is what ``categories`` is for.
- ``feature_gates=True`` (the paper's remedy for underfitting): each expert reads its input through its own
  feature gate, ``v ⊙ 2σ(v A B)`` with ``A`` ``(F, rank)`` and ``B`` ``(rank, F)`` (the form of a third-party
  implementation the sheet cites). ``B`` starts at 0, so a gate starts as the identity (``2σ(0) = 1``; the init is
  the workbench's choice, LoRA's). And every gate owner (a task; a category at the meta level) adds a self gate as a
  residual on its own experts, ``+ Σ_{e ∈ E_t} σ(u_t · h)_e f_e(h)`` with ``u_t`` linear on the gate's input
  ``h`` (its form is the workbench's choice; the paper's is unverified). Without experts of its own an owner has
  no self gate.

With every remedy off and one level (``hierarchy=False, expert_norm=False, feature_gates=False``) it is CGC
exactly, and MMoE when ``own_experts=0``: the same modules under the same names (``tests/test_home.py`` loads a
``cgc`` model's weights into it and gets its outputs).

Under the contract ``Z`` is ``(B, T, C)`` and head ``t`` reads slot ``t``. A task's own experts, its gate and its
self gate are its task-specific parameters, and so are the meta experts, gate and self gate of a category that
holds that task alone; a category's of several tasks are shared by them, as are the trunk and the shared experts of
both levels: those are what the gradient engine, the conflict probe and the aggregators see. The saliency probe
reads each task's own representation. ``gate_readings`` gives the ``expert_gates`` probe two levels, ``"meta"``
(each task reads its category's meta gate) and ``"experts"``; the self gates' residual weights are not in the
readings (those are the softmax gates, distributions). The meta experts are named ``shared meta 0``, …,
``{category} meta 0``, …; the task level's as CGC's, ``shared 0``, …, ``{task} 0``, ….
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from workbench.models.backbone import Backbone
from workbench.models.encoders import mlp_encoder
from workbench.models.mmoe import GateReading, MMoEEncoder, slot_heads
from workbench.tasks import Inputs, MultiTaskModel, Task

__all__ = ["FeatureGate", "HoMEEncoder", "home", "home_expert"]


class FeatureGate(nn.Module):
    """``(B, F) -> (B, F)``: ``v ⊙ 2σ(v A B)``, ``A`` ``(F, rank)`` drawn ``N(0, 1/F)``, ``B`` ``(rank, F)`` zero at first."""

    def __init__(self, features: int, rank: int) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.randn(features, rank) / math.sqrt(features))
        self.b = nn.Parameter(torch.zeros(rank, features))

    def forward(self, v: Tensor) -> Tensor:
        return v * 2 * torch.sigmoid(v @ self.a @ self.b)


def home_expert(features: int, hidden: Sequence[int], expert_norm: bool, rank: int | None) -> nn.Module:
    """One expert ``(B, features) -> (B, hidden[-1])``: an MLP of ``hidden``, each layer ``Swish(BN(·))`` with
    ``expert_norm`` (else ReLU, :func:`~workbench.models.encoders.mlp_encoder`), behind a :class:`FeatureGate` of
    ``rank`` unless ``rank`` is ``None``."""
    if expert_norm:
        layers: list[nn.Module] = []
        for width_in, width in zip([features, *hidden], hidden):
            layers += [nn.Linear(width_in, width), nn.BatchNorm1d(width), nn.SiLU()]
        body: nn.Module = nn.Sequential(*layers)
    else:
        body = mlp_encoder(features, hidden)
    return body if rank is None else nn.Sequential(FeatureGate(features, rank), body)


class HoMEEncoder(MMoEEncoder):
    """``x -> Z`` of shape ``(B, T, C)``: MMoE's experts and gates (:class:`~workbench.models.mmoe.MMoEEncoder`),
    with a self gate per task over its own experts (``self_gates``) and, under them, an optional ``meta`` level.

    ``meta`` is a HoMEEncoder without a trunk over the categories (its "tasks"), reading the trunk's features
    ``(B, F)``; ``categories`` maps each task to its category, whose meta mixture ``(B, F')`` its experts and gate
    read (``features`` is then ``F'``). Without ``meta`` the experts and the gates read the trunk's flattened
    features, or, without a trunk, the input ``(B, F)`` itself.
    """

    def __init__(
        self, tasks: Sequence[str], features: int, make_expert: Callable[[], nn.Module], n_experts: int = 1, trunk: nn.Module | None = None,
        own_experts: int = 0, *, self_gates: bool = False, meta: HoMEEncoder | None = None, categories: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(tasks, features, make_expert, n_experts, trunk, own_experts)
        self.self_gates = nn.ModuleDict({task: nn.Linear(features, own_experts) for task in tasks}) if self_gates and own_experts else None
        self.meta = meta
        self.category = dict(categories) if categories is not None else {task: task for task in tasks}

    def _levels(self, x: Inputs) -> tuple[dict[str, Tensor], dict[str, dict[str, GateReading]]]:
        """Each task's representation ``(B, C)`` and the gates' readings, level by level (``"meta"`` first, if any)."""
        features = x if self.trunk is None else self.trunk(x).flatten(1)
        readings: dict[str, dict[str, GateReading]] = {}
        if self.meta is None:
            inputs = dict.fromkeys(self.task_order, features)
        else:
            meta, below = self.meta._levels(features)
            inputs = {task: meta[self.category[task]] for task in self.task_order}
            readings["meta"] = {task: GateReading(self._meta_names(task), below["experts"][self.category[task]].weights,
                                                  below["experts"][self.category[task]].outputs) for task in self.task_order}
        shared: dict[int, Tensor] = {}  # the shared experts' outputs (B, S, C) on each distinct input, run once on it
        mixtures, level = {}, {}
        for task in self.task_order:
            h = inputs[task]
            if self.experts and id(h) not in shared:
                shared[id(h)] = torch.stack([expert(h).flatten(1) for expert in self.experts], dim=1)
            parts = ([shared[id(h)]] if self.experts else []) + ([torch.stack([e(h).flatten(1) for e in self.own_experts[task]], dim=1)]
                                                                  if self.own_experts else [])
            experts = torch.cat(parts, dim=1)  # (B, n, C), shared ones first
            gate = self.gates[task](h)
            z = torch.einsum("be,bec->bc", gate, experts)
            if self.self_gates is not None:
                z = z + torch.einsum("be,bec->bc", torch.sigmoid(self.self_gates[task](h)), experts[:, len(self.experts):])
            mixtures[task] = z
            level[task] = GateReading(super().expert_names(task), gate, experts)
        readings["experts"] = level
        return mixtures, readings

    def mixtures(self, x: Inputs) -> tuple[list[Tensor], list[Tensor]]:
        """Each task's representation ``(B, C)`` (its gate's mixture plus its self gate's residual) and its task-level
        gate's weights ``(B, n)``, shared experts first."""
        mixtures, readings = self._levels(x)
        return [mixtures[task] for task in self.task_order], [readings["experts"][task].weights for task in self.task_order]

    def _meta_names(self, task: str) -> list[str]:
        category, meta = self.category[task], self.meta
        own = len(meta.own_experts[category]) if meta.own_experts else 0
        return [f"shared meta {e}" for e in range(len(meta.experts))] + [f"{category} meta {e}" for e in range(own)]

    def expert_names(self, task: str) -> list[str]:
        """The experts ``task``'s gates weigh: its category's meta experts (with a meta level), then the task level's
        (:func:`~workbench.models.mmoe.gated_expert_names`)."""
        return (self._meta_names(task) if self.meta is not None else []) + super().expert_names(task)

    def gate_readings(self, x: Inputs) -> dict[str, dict[str, GateReading]]:
        """The gates on ``x``: ``{"meta": {task: its category's GateReading}, "experts": {task: GateReading}}``, without
        ``"meta"`` when there is no meta level."""
        return self._levels(x)[1]

    def task_parameters(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """Each task's gate, own experts and self gate, and the meta level's of its category when it holds that task alone."""
        own = super().task_parameters()
        if self.self_gates is not None:
            for task in self.task_order:
                own[task] += [(f"self_gates.{task}.{name}", p) for name, p in self.self_gates[task].named_parameters()]
        if self.meta is not None:
            meta = self.meta.task_parameters()
            for task in self.task_order:
                members = [t for t in self.task_order if self.category[t] == self.category[task]]
                if members == [task]:
                    own[task] += [(f"meta.{name}", p) for name, p in meta[self.category[task]]]
        return own


def _check(counts: Mapping[str, int], widths: Mapping[str, Sequence[int]], rank: int, feature_gates: bool) -> None:
    for name, count in counts.items():
        if count < 0:
            raise ValueError(f"home: {name} must be at least 0, got {count}")
    for shared, own in (("n_experts", "own_experts"), ("meta_experts", "category_experts")):
        if shared in counts and counts[shared] + counts[own] < 1:
            raise ValueError(f"home: a gate needs at least one expert to weigh, got {shared}={counts[shared]} and {own}={counts[own]}")
    for name, hidden in widths.items():
        if not hidden or min(hidden) < 1:
            raise ValueError(f"home: {name} must be one or more positive widths, got {tuple(hidden)}")
    if feature_gates and rank < 1:
        raise ValueError(f"home: the feature gates' rank must be at least 1, got {rank}")


def _categories(tasks: Sequence[str], categories: Mapping[str, str] | None) -> dict[str, str]:
    """Each task's category (its own by default), refusing a mapping that names unknown tasks or misses some."""
    if categories is None:
        return {task: task for task in tasks}
    unknown, missing = sorted(set(categories) - set(tasks)), [task for task in tasks if task not in categories]
    if unknown or missing:
        raise ValueError(f"home: categories must map every task to its category; it names unknown tasks {unknown} and misses {missing} "
                         f"(the tasks: {list(tasks)})")
    for category in dict.fromkeys(categories.values()):  # named after a task, its meta experts would read as that task's own
        members = [task for task in tasks if categories[task] == category]
        if category in tasks and members != [category]:
            raise ValueError(f"home: categories: category {category!r} is named after a task but holds {members}; name it otherwise")
    return dict(categories)


def home(
    tasks: Sequence[Task], backbone: Backbone, n_experts: int = 1, own_experts: int = 1, expert_hidden: Sequence[int] = (64,),
    hierarchy: bool = True, meta_experts: int = 2, category_experts: int = 1, meta_hidden: Sequence[int] = (64,),
    categories: Mapping[str, str] | None = None, expert_norm: bool = True, feature_gates: bool = True, rank: int = 4,
) -> MultiTaskModel:
    """HoME on ``backbone`` as a trunk (see the module docstring), a linear head per task on its slot.

    Task level: ``n_experts`` shared experts and ``own_experts`` per task of widths ``expert_hidden``. With
    ``hierarchy``, under it a meta level of ``meta_experts`` shared and ``category_experts`` per category of
    ``categories`` (task -> category; each task its own by default), of widths ``meta_hidden``. ``expert_norm``:
    BatchNorm and Swish in the experts; ``feature_gates``: a feature gate of ``rank`` per expert and a self gate per
    owner of experts."""
    names = [t.name for t in tasks]
    counts = {"n_experts": n_experts, "own_experts": own_experts}
    if hierarchy:
        counts |= {"meta_experts": meta_experts, "category_experts": category_experts}
    elif categories is not None:
        raise ValueError("home: categories group the tasks of the meta level, which needs hierarchy=True")
    _check(counts, {"expert_hidden": expert_hidden, **({"meta_hidden": meta_hidden} if hierarchy else {})}, rank, feature_gates)
    gate_rank = rank if feature_gates else None
    features, meta = math.prod(backbone.shape), None
    if hierarchy:
        category = _categories(names, categories)
        meta = HoMEEncoder(list(dict.fromkeys(category.values())), features, lambda: home_expert(features, meta_hidden, expert_norm, gate_rank),
                           meta_experts, own_experts=category_experts, self_gates=feature_gates)
        features = meta_hidden[-1]
    encoder = HoMEEncoder(names, features, lambda: home_expert(features, expert_hidden, expert_norm, gate_rank), n_experts, backbone.make(),
                          own_experts, self_gates=feature_gates, meta=meta, categories=category if hierarchy else None)
    return MultiTaskModel(encoder, tasks, heads=slot_heads(tasks, expert_hidden[-1]))
