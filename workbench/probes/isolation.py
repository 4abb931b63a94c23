"""Probes observe a model without changing it: buffers, batch-norm statistics and random generators stay as they were.

A probe runs the model forward (the gradient engine's pass, TAG's lookahead evaluations, the
saliency's pass). In training mode that would update a batch norm's running statistics and its
``num_batches_tracked``, and dropout would draw from the random generators, so a run with a probe
recorded would continue differently from the same run without it. :func:`leaves_model_untouched`
makes a probe run its forwards as the training step does (batch statistics, dropout) while
restoring every buffer and the random generators' state afterwards.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import TypeVar

import torch
from torch import nn

__all__ = ["untouched", "leaves_model_untouched"]

F = TypeVar("F", bound=Callable)


@contextlib.contextmanager
def untouched(model: nn.Module) -> Iterator[None]:
    """Within the block, batch norms in training mode normalise by the batch without updating their running
    statistics; on exit every buffer of ``model`` and the random generators (CPU, and the model's CUDA
    devices) are as they were on entry."""
    saved = {name: buffer.detach().clone() for name, buffer in model.named_buffers()}
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    cuda = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=cuda):
        for norm in norms:
            norm.track_running_stats = False
        try:
            yield
        finally:
            for norm in norms:
                norm.track_running_stats = True
            with torch.no_grad():
                for name, buffer in model.named_buffers():
                    buffer.copy_(saved[name])


def leaves_model_untouched(probe: F) -> F:
    """A probe ``probe(model, batch, ...)`` that runs :func:`untouched` around its work."""

    @functools.wraps(probe)
    def wrapped(model, *args, **kwargs):
        with untouched(model):
            return probe(model, *args, **kwargs)

    return wrapped  # type: ignore[return-value]
