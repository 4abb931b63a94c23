"""Merges that look at data: Fisher merging and RegMean, on the encoders of fine-tuned single-task models.

Both combine the ``encoder.…`` tensors of T fine-tuned models (each model: the shared encoder and
its task's head, as :func:`~workbench.merge.models.individual_model` builds it), using each task's
own training inputs:

- **Fisher merging** (Matena & Raffel 2022): ``θ = Σ_t F_t θ_t / Σ_t F_t`` per entry, with ``F_t``
  the diagonal Fisher of model ``t``: the mean over ``n_examples`` examples of the squared gradient
  of the model's own log-likelihood, the label drawn from the model's predictive distribution
  (a softmax for classification; for regression a unit-variance Gaussian around the prediction,
  whose score is proportional to the output's gradient, so ``F`` is the mean squared output
  gradient). ``eps = 1e-6`` is added to every ``F_t``; tensors without gradients are averaged.
- **RegMean** (Jin et al. 2023): for each linear map of the encoder, ``W* = (Σ_t G_t)^{-1} Σ_t G_t W_t``
  with ``W`` acting on the right (``x W``) and ``G_t = X_tᵀX_t / N`` the Gram matrix of that map's
  inputs on task ``t``'s examples, its off-diagonal entries scaled by ``alpha``. ``nn.Linear`` layers
  and, through their unfolded input patches, ``nn.Conv2d`` layers (one group) are linear maps; every
  other tensor (biases, normalisation) is averaged.
- **AdaMerging** (Yang et al. 2024): ``θ = θ_0 + Σ_t λ_t τ_t`` (``granularity="task"``) or
  ``θ_0 + Σ_t λ_{t,l} τ_{t,l}`` per encoder tensor ``l`` (``"layer"``), the coefficients initialised at
  0.3 and learned with Adam by minimising the mean entropy of every task's predictions on unlabelled
  batches of its own inputs. Entropy needs class probabilities: a regression task is refused.
"""


from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import xarray as xr
from torch import Tensor, nn

from workbench.merge.models import ENCODER
from workbench.tasks import Inputs, num_samples, take_rows

__all__ = ["fisher_information", "fisher_merge", "regmean_grams", "regmean_merge", "adamerging"]


def _trainable_encoder(model) -> dict[str, nn.Parameter]:
    return {f"{ENCODER}{name}": p for name, p in model.encoder.named_parameters() if p.requires_grad}


def _examples(x: Inputs, n_examples: int, seed: int) -> Inputs:
    count = min(n_examples, num_samples(x))
    rows = torch.randperm(num_samples(x), generator=torch.Generator().manual_seed(seed))[:count]
    return take_rows(x, rows)


def _log_likelihood(task, output: Tensor, label: Tensor) -> Tensor:
    """``log p(label | x)`` of one example's output ``(1, C)`` (regression: the output itself, see the module docstring)."""
    if task.kind == "classification" and output.shape[-1] > 1:
        return output.log_softmax(-1)[0].gather(0, label.reshape(1).long()).sum()  # gather, not indexing: vmap-friendly
    if task.kind == "classification":
        return -nn.functional.binary_cross_entropy_with_logits(output[0, 0], label)
    return output.sum()


def _model_labels(task, outputs: Tensor, generator: torch.Generator) -> Tensor:
    """Labels drawn from the model's own predictive distribution, ``(B,)`` (zeros for regression)."""
    if task.kind == "classification" and outputs.shape[-1] > 1:
        return torch.multinomial(outputs.softmax(-1), 1, generator=generator)[:, 0]
    if task.kind == "classification":
        return (torch.rand(outputs.shape[0], generator=generator) < torch.sigmoid(outputs[:, 0])).float()
    return torch.zeros(outputs.shape[0])


def fisher_information(model, x: Inputs, n_examples: int = 256, seed: int = 0, chunk: int = 64) -> dict[str, Tensor]:
    """The diagonal Fisher ``{encoder tensor name: F}`` of a single-task model on up to ``n_examples`` of ``x``.

    Per-example gradients are taken ``chunk`` examples at a time under ``vmap`` (one example at a
    time where an operator has no batching rule).
    """
    if len(model.task_names) != 1:
        raise ValueError(f"Fisher merging takes single-task models; this one has tasks {model.task_names}")
    task = model.tasks[model.task_names[0]]
    parameters = {name: p.detach() for name, p in _trainable_encoder(model).items()}
    fixed = {name: p.detach() for name, p in model.named_parameters()}
    examples = _examples(x, n_examples, seed)
    count = num_samples(examples)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            labels = _model_labels(task, model(examples)[task.name], torch.Generator().manual_seed(seed))

        def log_likelihood(params, one_x, label):
            output = torch.func.functional_call(model, {**fixed, **params}, (_unsqueeze(one_x),))[task.name]
            return _log_likelihood(task, output, label)

        per_example = torch.func.grad(log_likelihood)
        fisher = {name: torch.zeros_like(p) for name, p in parameters.items()}
        for start in range(0, count, chunk):
            rows = torch.arange(start, min(start + chunk, count))
            part, part_labels = take_rows(examples, rows), labels[rows]
            try:
                grads = torch.func.vmap(per_example, in_dims=(None, 0, 0))(parameters, part, part_labels)
                for name in fisher:
                    fisher[name] += (grads[name] ** 2).sum(0)
            except RuntimeError:  # an operator without a batching rule: one example at a time
                for row in range(len(rows)):
                    grads = per_example(parameters, _example(part, row), part_labels[row])
                    for name in fisher:
                        fisher[name] += grads[name] ** 2
    finally:
        model.train(was_training)
    return {name: f / count for name, f in fisher.items()}


def _example(batch: Inputs, row: int) -> Inputs:
    """Example ``row`` of a batch, without the sample dim (what ``vmap`` hands the per-example function)."""
    return batch[row] if isinstance(batch, Tensor) else {k: v[row] for k, v in batch.items()}


def _unsqueeze(one_x: Inputs) -> Inputs:
    """One example without its sample dim → a batch of one."""
    if isinstance(one_x, Tensor):
        return one_x.unsqueeze(0)
    return {k: v.unsqueeze(0) for k, v in one_x.items()}


def fisher_merge(encoders: Sequence[Mapping[str, Tensor]], fishers: Sequence[Mapping[str, Tensor]], eps: float = 1e-6) -> dict[str, Tensor]:
    """``Σ_t F_t θ_t / Σ_t F_t`` per entry of every tensor with a Fisher; the other tensors averaged."""
    if len(encoders) != len(fishers) or not encoders:
        raise ValueError(f"one Fisher per model: {len(encoders)} models, {len(fishers)} Fishers")
    merged = {}
    for name in encoders[0]:
        thetas = torch.stack([e[name].float() for e in encoders])
        if all(name in f for f in fishers):
            weights = torch.stack([f[name].float() for f in fishers]) + eps
            merged[name] = ((weights * thetas).sum(0) / weights.sum(0)).to(encoders[0][name].dtype)
        else:
            merged[name] = thetas.mean(0).to(encoders[0][name].dtype)
    return merged


def _linear_maps(model) -> dict[str, nn.Module]:
    maps = {}
    for name, module in model.encoder.named_modules():
        if isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1):
            if module.weight.requires_grad:
                maps[f"{ENCODER}{name}.weight" if name else f"{ENCODER}weight"] = module
    return maps


def _map_inputs(module: nn.Module, inputs: Tensor) -> Tensor:
    """The rows ``X`` (N, in) that ``module``'s weight multiplies: the inputs, or a convolution's unfolded patches."""
    if isinstance(module, nn.Conv2d):
        patches = nn.functional.unfold(inputs, module.kernel_size, module.dilation, module.padding, module.stride)  # (B, C·k·k, L)
        return patches.transpose(1, 2).reshape(-1, patches.shape[1])
    return inputs.reshape(-1, inputs.shape[-1])


def regmean_grams(model, x: Inputs, n_examples: int = 256, alpha: float = 0.95, seed: int = 0, batch_size: int = 64) -> dict[str, Tensor]:
    """``{weight name: G}``: the input Gram matrix ``XᵀX / N`` of every linear map of the encoder, off-diagonal scaled by ``alpha``."""
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    maps = _linear_maps(model)
    grams = {name: None for name in maps}
    rows = dict.fromkeys(maps, 0)

    def hook(name):
        def record(module, args, output):
            inputs = _map_inputs(module, args[0].detach().double())
            grams[name] = inputs.T @ inputs if grams[name] is None else grams[name] + inputs.T @ inputs
            rows[name] += inputs.shape[0]

        return record

    handles = [module.register_forward_hook(hook(name)) for name, module in maps.items()]
    examples = _examples(x, n_examples, seed)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, num_samples(examples), batch_size):
                model.encoder(take_rows(examples, torch.arange(start, min(start + batch_size, num_samples(examples)))))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    scaled = {}
    for name, gram in grams.items():
        gram = gram / rows[name]
        diagonal = torch.diag(torch.diagonal(gram))
        scaled[name] = alpha * gram + (1 - alpha) * diagonal
    return scaled


def regmean_merge(encoders: Sequence[Mapping[str, Tensor]], grams: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """RegMean on every tensor with Gram matrices (``W*ᵀ = (Σ G_t)^{-1} Σ G_t W_tᵀ``); the other tensors averaged.

    A weight ``(out, in, …)`` is flattened to ``(out, in·…)``, the layout the Gram matrices use. A
    ridge of ``1e-10`` times the mean diagonal keeps the solve defined where an input never varies
    (a dead unit): there the weights are the least-norm ones.
    """
    if len(encoders) != len(grams) or not encoders:
        raise ValueError(f"one set of Gram matrices per model: {len(encoders)} models, {len(grams)} sets")
    merged = {}
    for name in encoders[0]:
        if all(name in g for g in grams):
            shape, dtype = encoders[0][name].shape, encoders[0][name].dtype
            weights = [e[name].double().reshape(shape[0], -1).T for e in encoders]  # (in, out): x W
            total = sum(g[name] for g in grams)
            ridge = 1e-10 * torch.diagonal(total).mean().clamp_min(1e-30) * torch.eye(total.shape[0], dtype=total.dtype)
            solution = torch.linalg.solve(total + ridge, sum(g[name] @ w for g, w in zip(grams, weights)))
            merged[name] = solution.T.reshape(shape).to(dtype)
        else:
            merged[name] = torch.stack([e[name].float() for e in encoders]).mean(0).to(encoders[0][name].dtype)
    return merged


def _entropy(output: Tensor) -> Tensor:
    """Mean prediction entropy of logits ``(B, C)`` (``C = 1``: a sigmoid's two outcomes)."""
    if output.shape[-1] == 1:
        p = torch.sigmoid(output)
        return -(p * p.clamp_min(1e-12).log() + (1 - p) * (1 - p).clamp_min(1e-12).log()).mean()
    return -(output.softmax(-1) * output.log_softmax(-1)).sum(-1).mean()


def adamerging(
    model,
    base: Mapping[str, Tensor],
    task_encoders: Mapping[str, Mapping[str, Tensor]],
    unlabelled: Mapping[str, Inputs],
    *,
    granularity: str = "task",
    steps: int = 100,
    lr: float = 1e-3,
    init: float = 0.3,
    batch_size: int = 64,
    seed: int = 0,
) -> tuple[dict[str, Tensor], xr.DataArray]:
    """Learn the merging coefficients by entropy minimisation; the merged encoder and the coefficients.

    ``model`` serves every task (its heads are the tasks' own, e.g. from
    :func:`~workbench.merge.models.merged_model`); ``base`` and ``task_encoders[task]`` are
    ``encoder.…`` tensors; ``unlabelled[task]`` that task's inputs (targets are never read). Returns
    ``(encoder tensors, coefficients)`` with coefficients ``(task)`` or ``(task, layer)``.
    """
    if granularity not in ("task", "layer"):
        raise ValueError(f"granularity must be 'task' or 'layer', got {granularity!r}")
    tasks = list(task_encoders)
    for task in tasks:
        if model.tasks[task].kind != "classification":
            raise ValueError(f"AdaMerging minimises prediction entropy, which task {task!r} ({model.tasks[task].kind}) does not have")
    names = list(base)
    vectors = {name: torch.stack([task_encoders[t][name].float() - base[name].float() for t in tasks]) for name in names}  # (T, *shape)
    shape = (len(tasks),) if granularity == "task" else (len(tasks), len(names))
    coefficients = torch.full(shape, float(init), requires_grad=True)
    optimizer = torch.optim.Adam([coefficients], lr=lr)
    generator = torch.Generator().manual_seed(seed)
    fixed = {name: p.detach() for name, p in model.named_parameters()}  # the heads and frozen blocks, without gradients
    model.eval()

    def merged() -> dict[str, Tensor]:
        result = {}
        for index, name in enumerate(names):
            weights = coefficients if granularity == "task" else coefficients[:, index]
            result[name] = base[name].float() + torch.tensordot(weights, vectors[name], dims=1)
        return result

    for _ in range(steps):
        optimizer.zero_grad()
        parameters = merged()
        loss = 0.0
        for task in tasks:
            rows = torch.randint(num_samples(unlabelled[task]), (batch_size,), generator=generator)
            outputs = torch.func.functional_call(model, {**fixed, **parameters}, (take_rows(unlabelled[task], rows),))
            loss = loss + _entropy(outputs[task])
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        encoder = {name: tensor.to(base[name].dtype) for name, tensor in merged().items()}
    dims = ("task",) if granularity == "task" else ("task", "layer")
    coords = {"task": tasks} | ({} if granularity == "task" else {"layer": names})
    return encoder, xr.DataArray(coefficients.detach().numpy().astype(np.float64), dims=dims, coords=coords, name="coefficient")
