"""RegMean (Jin et al. 2023): each linear map merged to fit every task's inputs, in closed form.

For each linear map of the merged tensors, ``W* = (Σ_t G_t)^{-1} Σ_t G_t W_t`` with ``W`` acting on
the right (``x W``) and ``G_t = X_tᵀX_t / N`` the Gram matrix of that map's inputs on task ``t``'s
examples, its off-diagonal entries scaled by ``alpha``. ``nn.Linear`` layers and, through their
unfolded input patches, ``nn.Conv2d`` layers (one group) are linear maps; every other tensor
(biases, normalisation) is averaged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from workbench.merge.examples import draw_examples
from workbench.merge.method import MergeData, Merged, TaskModel, task_tensors
from workbench.tasks import Inputs, num_samples, take_rows
from workbench.weights.state_dicts import Weights

__all__ = ["regmean_grams", "regmean_merge", "regmean"]


def _linear_maps(model: nn.Module, names: Sequence[str]) -> dict[str, nn.Module]:
    """The linear maps (``nn.Linear``, one-group ``nn.Conv2d``) whose weight is one of ``names``, by that name."""
    wanted = set(names)
    maps = {}
    for name, module in model.named_modules():
        weight = f"{name}.weight" if name else "weight"
        if weight in wanted and (isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1)):
            maps[weight] = module
    return maps


def _map_inputs(module: nn.Module, inputs: Tensor) -> Tensor:
    """The rows ``X`` (N, in) that ``module``'s weight multiplies: the inputs, or a convolution's unfolded patches."""
    if isinstance(module, nn.Conv2d):
        patches = nn.functional.unfold(inputs, module.kernel_size, module.dilation, module.padding, module.stride)  # (B, C·k·k, L)
        return patches.transpose(1, 2).reshape(-1, patches.shape[1])
    return inputs.reshape(-1, inputs.shape[-1])


def regmean_grams(
    model: nn.Module, x: Inputs, names: Sequence[str], n_examples: int = 256, alpha: float = 0.95, seed: int = 0, batch_size: int = 64
) -> dict[str, Tensor]:
    """``{weight name: G}``: the input Gram matrix ``XᵀX / N`` of every linear map of ``names`` in ``model``, off-diagonal scaled by ``alpha``."""
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    maps = _linear_maps(model, names)
    grams = {name: None for name in maps}
    rows = dict.fromkeys(maps, 0)

    def hook(name):
        def record(module, args, output):
            inputs = _map_inputs(module, args[0].detach().double())
            grams[name] = inputs.T @ inputs if grams[name] is None else grams[name] + inputs.T @ inputs
            rows[name] += inputs.shape[0]

        return record

    handles = [module.register_forward_hook(hook(name)) for name, module in maps.items()]
    examples = draw_examples(x, n_examples, seed)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, num_samples(examples), batch_size):
                model(take_rows(examples, torch.arange(start, min(start + batch_size, num_samples(examples)))))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    scaled = {}
    for name, gram in grams.items():
        if gram is None:
            raise ValueError(f"the linear map {name!r} never ran on the examples; RegMean needs its inputs")
        gram = gram / rows[name]
        diagonal = torch.diag(torch.diagonal(gram))
        scaled[name] = alpha * gram + (1 - alpha) * diagonal
    return scaled


def regmean_merge(thetas: Sequence[Mapping[str, Tensor]], grams: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """RegMean on every tensor with Gram matrices (``W*ᵀ = (Σ G_t)^{-1} Σ G_t W_tᵀ``); the other tensors averaged.

    A weight ``(out, in, …)`` is flattened to ``(out, in·…)``, the layout the Gram matrices use. A
    ridge of ``1e-10`` times the mean diagonal keeps the solve defined where an input never varies
    (a dead unit): there the weights are the least-norm ones.
    """
    if len(thetas) != len(grams) or not thetas:
        raise ValueError(f"one set of Gram matrices per model: {len(thetas)} models, {len(grams)} sets")
    merged = {}
    for name in thetas[0]:
        if all(name in g for g in grams):
            shape, dtype = thetas[0][name].shape, thetas[0][name].dtype
            weights = [theta[name].double().reshape(shape[0], -1).T for theta in thetas]  # (in, out): x W
            total = sum(g[name] for g in grams)
            ridge = 1e-10 * torch.diagonal(total).mean().clamp_min(1e-30) * torch.eye(total.shape[0], dtype=total.dtype)
            solution = torch.linalg.solve(total + ridge, sum(g[name] @ w for g, w in zip(grams, weights)))
            merged[name] = solution.T.reshape(shape).to(dtype)
        else:
            merged[name] = torch.stack([theta[name].float() for theta in thetas]).mean(0).to(thetas[0][name].dtype)
    return merged


def regmean(
    base: Weights, tasks: Mapping[str, TaskModel], data: MergeData, *, strict: bool, progress: bool,
    n_examples: int = 256, alpha: float = 0.95, seed: int = 0,
) -> Merged:
    """RegMean of the base's tensors, each task's Gram matrices from ``n_examples`` of its inputs."""
    thetas = task_tensors(base, tasks, strict)
    grams = [regmean_grams(model.module, data.inputs[task], base.keys(), n_examples, alpha, seed) for task, model in tasks.items()]
    return Merged(weights=regmean_merge(list(thetas.values()), grams))
