"""Fisher merging (Matena & Raffel 2022): θ = Σ_t F_t θ_t / Σ_t F_t per entry, from per-example gradients.

``F_t`` is the diagonal Fisher of task ``t``'s model: the mean over ``n_examples`` of its unlabelled
inputs of the squared gradient of the model's own log-likelihood, the label drawn from the model's
predictive distribution (a softmax for classification; for regression a unit-variance Gaussian
around the prediction, whose score is proportional to the output's gradient, so ``F`` is the mean
squared output gradient). ``eps = 1e-6`` is added to every ``F_t``; tensors without gradients
(buffers, frozen tensors) are averaged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from workbench.merge.examples import draw_examples
from workbench.merge.method import MergeData, Merged, TaskModel, task_tensors
from workbench.tasks import Inputs, Task, num_samples, take_rows
from workbench.weights.state_dicts import Weights

__all__ = ["fisher_information", "fisher_merge", "fisher"]


def _log_likelihood(task: Task, output: Tensor, label: Tensor) -> Tensor:
    """``log p(label | x)`` of one example's output ``(1, C)`` (regression: the output itself, see the module docstring)."""
    if task.kind == "classification" and output.shape[-1] > 1:
        return output.log_softmax(-1)[0].gather(0, label.reshape(1).long()).sum()  # gather, not indexing: vmap-friendly
    if task.kind == "classification":
        return -nn.functional.binary_cross_entropy_with_logits(output[0, 0], label)
    return output.sum()


def _model_labels(task: Task, outputs: Tensor, generator: torch.Generator) -> Tensor:
    """Labels drawn from the model's own predictive distribution, ``(B,)`` (zeros for regression)."""
    if task.kind == "classification" and outputs.shape[-1] > 1:
        return torch.multinomial(outputs.softmax(-1), 1, generator=generator)[:, 0]
    if task.kind == "classification":
        return (torch.rand(outputs.shape[0], generator=generator) < torch.sigmoid(outputs[:, 0])).float()
    return torch.zeros(outputs.shape[0])


def _example(batch: Inputs, row: int) -> Inputs:
    """Example ``row`` of a batch, without the sample dim (what ``vmap`` hands the per-example function)."""
    return batch[row] if isinstance(batch, Tensor) else {k: v[row] for k, v in batch.items()}


def _unsqueeze(one_x: Inputs) -> Inputs:
    """One example without its sample dim → a batch of one."""
    if isinstance(one_x, Tensor):
        return one_x.unsqueeze(0)
    return {k: v.unsqueeze(0) for k, v in one_x.items()}


def fisher_information(
    model, task: str, x: Inputs, names: Sequence[str], n_examples: int = 256, seed: int = 0, chunk: int = 64
) -> dict[str, Tensor]:
    """The diagonal Fisher ``{name: F}`` of ``model``'s output for ``task`` on up to ``n_examples`` of ``x``.

    ``names`` are the parameters (named as in the model) to take it for; those that are not
    trainable parameters are left out. Per-example gradients are taken ``chunk`` examples at a time
    under ``vmap`` (one example at a time where an operator has no batching rule).
    """
    spec = model.tasks[task]
    wanted = set(names)
    parameters = {name: p.detach() for name, p in model.named_parameters() if name in wanted and p.requires_grad}
    fixed = {name: p.detach() for name, p in model.named_parameters()}
    examples = draw_examples(x, n_examples, seed)
    count = num_samples(examples)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            labels = _model_labels(spec, model(examples)[task], torch.Generator().manual_seed(seed))

        def log_likelihood(params, one_x, label):
            output = torch.func.functional_call(model, {**fixed, **params}, (_unsqueeze(one_x),))[task]
            return _log_likelihood(spec, output, label)

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


def fisher_merge(thetas: Sequence[Mapping[str, Tensor]], fishers: Sequence[Mapping[str, Tensor]], eps: float = 1e-6) -> dict[str, Tensor]:
    """``Σ_t F_t θ_t / Σ_t F_t`` per entry of every tensor with a Fisher; the other tensors averaged.

    ``thetas[t]`` holds task t's tensors (every model the same names), ``fishers[t]`` their Fishers.
    """
    if len(thetas) != len(fishers) or not thetas:
        raise ValueError(f"one Fisher per model: {len(thetas)} models, {len(fishers)} Fishers")
    merged = {}
    for name in thetas[0]:
        stacked = torch.stack([theta[name].float() for theta in thetas])
        if all(name in f for f in fishers):
            weights = torch.stack([f[name].float() for f in fishers]) + eps
            merged[name] = ((weights * stacked).sum(0) / weights.sum(0)).to(thetas[0][name].dtype)
        else:
            merged[name] = stacked.mean(0).to(thetas[0][name].dtype)
    return merged


def fisher(
    base: Weights, tasks: Mapping[str, TaskModel], data: MergeData, *, strict: bool, progress: bool,
    n_examples: int = 256, eps: float = 1e-6, seed: int = 0,
) -> Merged:
    """Fisher merging of the base's tensors, each task's Fisher from ``n_examples`` of its inputs."""
    thetas = task_tensors(base, tasks, strict)
    fishers = [fisher_information(model.module, task, data.inputs[task], base.keys(), n_examples, seed) for task, model in tasks.items()]
    return Merged(weights=fisher_merge(list(thetas.values()), fishers, eps))
