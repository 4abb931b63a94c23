"""LoraHub (Huang et al. 2023): a few labelled examples choose how to compose LoRAs trained on other tasks, without gradients.

``K`` LoRAs of one shape (``peft`` folders, as :func:`~workbench.models.peft.peft_format.save_lora` writes
them and ``peft`` does) are composed with one weight each, entry-wise on their state dicts, as the official
code does::

    A = Σ_k w_k A_k,    B = Σ_k w_k B_k,    so ΔW = s (Σ_k w_k B_k)(Σ_k w_k A_k), not Σ_k w_k s B_k A_k

The weights minimise, on the few examples, the model's mean task loss plus ``l1 · mean_k |w_k|`` (0.05 in the
paper), within ``[-1.5, 1.5]^K`` from ``w = 0``, by a derivative-free search of ``budget`` evaluations: the paper
uses nevergrad's NGOpt; here SciPy's bounded Powell search stands in (deterministic, no new dependency).
The composed LoRA is left in the model (a ``lora`` scheme model, whose heads score the examples). One-hot
weights give LoRA ``k`` itself.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from workbench.models.peft.lora import DEFAULT_ADAPTER
from workbench.models.peft.peft_format import load_lora, lora_layers
from workbench.tasks import Inputs, MultiTaskModel

__all__ = ["compose_loras", "lorahub"]

BOUND = 1.5


def _lora_parameters(model: MultiTaskModel) -> dict[str, Tensor]:
    """``{"<module>.lora_A" or "<module>.lora_B": parameter}`` of the model's shared LoRA."""
    _, layers = lora_layers(model, None)
    return {f"{name}.lora_{part}": getattr(layer, f"lora_{part}")[DEFAULT_ADAPTER].weight for name, layer in layers.items() for part in "AB"}


@torch.no_grad()
def _restore(parameters: Mapping[str, Tensor], values: Mapping[str, Tensor]) -> None:
    for name, parameter in parameters.items():
        parameter.copy_(values[name])


def _read(model: MultiTaskModel, folders: Mapping[str, str | os.PathLike]) -> dict[str, dict[str, Tensor]]:
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


@torch.no_grad()
def compose_loras(model: MultiTaskModel, loras: Mapping[str, Mapping[str, Tensor]], weights: Sequence[float]) -> None:
    """Set the model's LoRA to ``Σ_k w_k`` of ``loras`` (``{label: {parameter name: tensor}}``, as :func:`lorahub` reads them),
    entry-wise on every ``A`` and ``B``."""
    if len(weights) != len(loras):
        raise ValueError(f"{len(weights)} weights for {len(loras)} LoRAs {list(loras)}")
    _restore(_lora_parameters(model), {name: sum(float(w) * lora[name] for w, lora in zip(weights, loras.values()))
                                       for name in next(iter(loras.values()))})


def lorahub(
    model: MultiTaskModel, folders: Mapping[str, str | os.PathLike], examples: tuple[Inputs, Mapping[str, Tensor]], budget: int = 40,
    l1: float = 0.05,
) -> dict:
    """Find LoraHub's weights of the LoRA ``folders`` (``{label: peft folder}``) on the labelled ``examples`` ``(x, targets)``
    of the model's tasks, and leave their composition in ``model`` (see the module docstring).

    Returns ``{"weights": {label: w_k}, "objective": value at the weights, "start": value at w = 0, "evaluations": n}``.
    Refused before any search: fewer than two LoRAs, a budget below 1, a negative ``l1``, a folder that is no LoRA of this model's shape.
    """
    from scipy.optimize import minimize

    if len(folders) < 2:
        raise ValueError(f"LoraHub composes two or more LoRAs; got {list(folders)}")
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ValueError(f"budget must be a positive number of evaluations, got {budget!r}")
    if not l1 >= 0:
        raise ValueError(f"l1 must be non-negative, got {l1!r}")
    x, targets = examples
    if not any(target.shape[0] for target in targets.values()):
        raise ValueError(f"the examples label none of the tasks {sorted(targets)}: there is nothing to score the composition on")
    loras = _read(model, folders)
    was_training = model.training
    model.eval()
    evaluations = 0

    def objective(w: np.ndarray) -> float:
        nonlocal evaluations
        evaluations += 1
        compose_loras(model, loras, w)
        with torch.no_grad():
            losses = model.losses(x, targets)
        return float(torch.stack(list(losses.values())).mean()) + l1 * float(np.abs(w).mean())

    parameters = _lora_parameters(model)
    own = {name: p.detach().clone() for name, p in parameters.items()}
    try:
        start = objective(np.zeros(len(loras)))
        found = minimize(objective, np.zeros(len(loras)), method="Powell", bounds=[(-BOUND, BOUND)] * len(loras),
                         options={"maxfev": budget, "xtol": 1e-3, "ftol": 1e-6})
        weights = np.clip(found.x, -BOUND, BOUND)
        value = objective(weights)  # the composition left in the model is the one returned
    except BaseException:
        _restore(parameters, own)  # a failed search leaves the model's LoRA as it found it
        raise
    finally:
        model.train(was_training)
    return {"weights": dict(zip(loras, weights.tolist())), "objective": value, "start": start, "evaluations": evaluations}
