"""LoraHub (Huang et al. 2023): a few labelled examples choose how to compose LoRAs trained on other tasks, without gradients.

``K`` LoRAs of one shape (``peft`` folders, as :func:`~workbench.models.peft.peft_format.save_lora` writes
them and ``peft`` does) are composed with one weight each, entry-wise on their state dicts, as the official
code does::

    A = Σ_k w_k A_k,    B = Σ_k w_k B_k,    so ΔW = s (Σ_k w_k B_k)(Σ_k w_k A_k), not Σ_k w_k s B_k A_k

The weights minimise, on the few examples, the model's mean task loss plus ``l1 · mean_k |w_k|`` (0.05 in the
paper), within ``[-1.5, 1.5]^K``, by a derivative-free search of ``budget`` evaluations, and the best weights
evaluated are kept. The paper runs nevergrad's NGOpt from ``w = 0``; here SciPy's bounded Nelder–Mead search
(deterministic, no new dependency) starts from the simplex of ``w = 0`` and the ``K`` one-hot weights, so its
first ``K + 1`` evaluations are the model without LoRA and each LoRA alone. Starting from ``w = 0`` alone stalls:
the composition is even in ``w`` (``w`` and ``−w`` give the same ``ΔW``), so ``w = 0`` is a stationary point of the
loss, and the ``l1`` term makes it a local minimum for LoRAs of small effect (measured on the test's planted
problem: SciPy's Powell search from 0 ended at objectives 1.5–3.6 after 80 evaluations where the planted LoRA
scores 0.017; Nelder–Mead from the simplex finds it).

The composed LoRA is left in the model (a ``lora`` scheme model, whose heads score the examples). One-hot
weights give LoRA ``k`` itself. The LoRAs are read from ``peft`` folders (:func:`read_loras`) or taken from a
``task_lora`` model, each task's LoRA one source (:func:`task_loras`).

The paper composes the LoRAs of one language model whose output layer every task shares. An encoder's heads
are per task, and a new task has none trained: with ``ridge`` given, each candidate's heads are fitted on
the examples' representation in closed form (:func:`~workbench.models.few_shot_heads.fit_heads`) and the
objective's loss is that of their leave-one-out predictions, so the search rewards a composition whose
features carry the task rather than one whose head fits the few examples' noise; the heads fitted on all
examples at the found weights are left in the model.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from workbench.models.few_shot_heads import fit_heads
from workbench.models.peft.lora import DEFAULT_ADAPTER
from workbench.models.peft.peft_format import load_lora, lora_layers
from workbench.tasks import Inputs, MultiTaskModel

__all__ = ["compose_loras", "lorahub", "read_loras", "task_loras"]

LoRAs = Mapping[str, Mapping[str, Tensor]]
"""``{label: {"<module>.lora_A" or "<module>.lora_B": tensor}}``: LoRAs of one shape, as :func:`read_loras` and :func:`task_loras` give them."""

BOUND = 1.5


def _lora_parameters(model: MultiTaskModel, adapter: str | None = None) -> dict[str, Tensor]:
    """``{"<module>.lora_A" or "<module>.lora_B": parameter}`` of the model's shared LoRA, or of task ``adapter``'s."""
    name, layers = lora_layers(model, adapter)
    return {f"{module}.lora_{part}": getattr(layer, f"lora_{part}")[name].weight for module, layer in layers.items() for part in "AB"}


@torch.no_grad()
def _restore(parameters: Mapping[str, Tensor], values: Mapping[str, Tensor]) -> None:
    for name, parameter in parameters.items():
        parameter.copy_(values[name])


def read_loras(model: MultiTaskModel, folders: Mapping[str, str | os.PathLike]) -> dict[str, dict[str, Tensor]]:
    """Each folder's LoRA as ``{parameter name: tensor}``, read into the model one by one (every check of
    :func:`~workbench.models.peft.peft_format.load_lora` made), the model's own LoRA restored after."""
    parameters = _lora_parameters(model)
    own = {name: p.detach().clone() for name, p in parameters.items()}
    read = {}
    try:
        for label, folder in folders.items():
            load_lora(model, folder)
            read[label] = {name: p.detach().clone() for name, p in parameters.items()}
    finally:
        _restore(parameters, own)
    return read


def task_loras(model: MultiTaskModel, tasks: Sequence[str] | None = None) -> dict[str, dict[str, Tensor]]:
    """``{task: its LoRA}`` of a ``task_lora`` model (copies, named as a shared LoRA's parameters are, for
    :func:`compose_loras`), of every task or of ``tasks``."""
    return {task: {name: p.detach().clone() for name, p in _lora_parameters(model, task).items()}
            for task in (model.task_names if tasks is None else tasks)}


def _check_loras(parameters: Mapping[str, Tensor], loras: LoRAs) -> None:
    """Every LoRA of ``loras`` has the model's LoRA ``parameters``' names and shapes; the first that does not is named."""
    for label, lora in loras.items():
        missing, extra = sorted(set(parameters) - set(lora)), sorted(set(lora) - set(parameters))
        if missing or extra:
            raise ValueError(f"LoRA {label!r} is not one of this model's shape: missing {missing[:3]}, unexpected {extra[:3]}")
        shapes = {name: (tuple(lora[name].shape), tuple(p.shape)) for name, p in parameters.items() if lora[name].shape != p.shape}
        if shapes:
            raise ValueError(f"LoRA {label!r} has tensors of other shapes (its, the model's): {dict(list(shapes.items())[:3])}")


@torch.no_grad()
def compose_loras(model: MultiTaskModel, loras: LoRAs, weights: Sequence[float]) -> None:
    """Set the model's LoRA to ``Σ_k w_k`` of ``loras`` (:data:`LoRAs`), entry-wise on every ``A`` and ``B``."""
    if len(weights) != len(loras):
        raise ValueError(f"{len(weights)} weights for {len(loras)} LoRAs {list(loras)}")
    parameters = _lora_parameters(model)
    _check_loras(parameters, loras)
    _restore(parameters, {name: sum(float(w) * lora[name].to(p) for w, lora in zip(weights, loras.values())) for name, p in parameters.items()})


def lorahub(
    model: MultiTaskModel, loras: LoRAs, examples: tuple[Inputs, Mapping[str, Tensor]], budget: int = 40, l1: float = 0.05,
    ridge: float | None = None,
) -> dict:
    """Find LoraHub's weights of ``loras`` (:data:`LoRAs`: :func:`read_loras` of ``peft`` folders, or :func:`task_loras`)
    on the labelled ``examples`` ``(x, targets)`` of the model's tasks, and leave their composition in ``model`` (see the
    module docstring); with ``ridge``, the heads fitted on the examples too.

    Returns ``{"weights": {label: w_k}, "objective": value at the weights, "start": value at w = 0, "evaluations": n}``
    (``n``: the search's, at most ``budget``, and one more that sets the best weights found).
    Refused before any search: fewer than two LoRAs, a budget below 1, a negative ``l1``, a LoRA not of this model's
    shape, examples that label no task (and with ``ridge``, what :func:`~workbench.models.few_shot_heads.fit_heads` refuses).
    """
    from scipy.optimize import minimize

    if len(loras) < 2:
        raise ValueError(f"LoraHub composes two or more LoRAs; got {list(loras)}")
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ValueError(f"budget must be a positive number of evaluations, got {budget!r}")
    if not l1 >= 0:
        raise ValueError(f"l1 must be non-negative, got {l1!r}")
    x, targets = examples
    if not any(target.shape[0] for target in targets.values()):
        raise ValueError(f"the examples label none of the tasks {sorted(targets)}: there is nothing to score the composition on")
    parameters = _lora_parameters(model)
    _check_loras(parameters, loras)
    own = {name: p.detach().clone() for name, p in parameters.items()}
    heads = {name: p.detach().clone() for name, p in model.heads.named_parameters()}
    was_training = model.training
    model.eval()
    evaluations, best = 0, (np.inf, np.zeros(len(loras)))

    def objective(w: np.ndarray) -> float:
        nonlocal evaluations, best
        evaluations += 1
        compose_loras(model, loras, w)
        with torch.no_grad():
            losses = fit_heads(model, x, targets, ridge) if ridge is not None else model.losses(x, targets)
        value = float(torch.stack(list(losses.values())).mean()) + l1 * float(np.abs(w).mean())
        if value < best[0]:
            best = (value, np.array(w, dtype=float))
        return value

    try:
        start = objective(np.zeros(len(loras)))
        simplex = np.vstack([np.zeros(len(loras)), np.eye(len(loras))])
        minimize(objective, simplex[0], method="Nelder-Mead", bounds=[(-BOUND, BOUND)] * len(loras),
                 options={"maxfev": max(budget - 1, 1), "initial_simplex": simplex, "xatol": 1e-3, "fatol": 1e-6})
        value, weights = best
        objective(weights)  # the composition (and heads) left in the model are the best evaluated
    except BaseException:
        _restore(parameters, own)  # a failed search leaves the model's LoRA and heads as it found them
        _restore(dict(model.heads.named_parameters()), heads)
        raise
    finally:
        model.train(was_training)
    return {"weights": dict(zip(loras, weights.tolist())), "objective": value, "start": start, "evaluations": evaluations}
