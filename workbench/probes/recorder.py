"""Sample a probe during training every ``k`` steps into one Dataset with a ``step`` dim."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import xarray as xr
from torch import Tensor

from workbench.gradients import TaskJacobian
from workbench.probes.registry import PROBES, Probe, make_probe
from workbench.tasks import Inputs, to_device

__all__ = ["ProbeRecorder", "recorders_for"]

ProbeFunction = Callable[..., xr.Dataset]


class ProbeRecorder:
    """Calls ``probe(model, batch, **options)`` at step 0 and every ``every`` steps.

    ``probe`` is a registered probe's name (``options`` are then its options, checked by
    :func:`~workbench.probes.make_probe`), a :class:`~workbench.probes.Probe`, or any function of
    that shape.

    The training loop calls :meth:`maybe_record` with the batch it is training on; the probe
    measures on that batch, or on the fixed ``batch`` ``(x, {task: targets})`` when one is given (a
    larger held-out batch gives less noisy estimates that are comparable across steps). On the
    training batch, a probe that accepts a ``jacobian`` reuses the per-task gradients the training
    step computed, when its method computed them; a probe that takes an ``optimizer`` (TAG's
    lookahead) gets the training optimizer. The Datasets are concatenated along ``step`` by
    :attr:`history`. ``name`` labels the result in a training history (default: the probe's name).
    A probe that fails is reported with the step it failed at.
    """

    def __init__(
        self,
        probe: str | Probe | ProbeFunction,
        every: int = 10,
        name: str | None = None,
        batch: tuple[Inputs, Mapping[str, Tensor]] | None = None,
        **options: Any,
    ) -> None:
        if every < 1:
            raise ValueError(f"every must be a positive number of steps, got {every}")
        if isinstance(probe, str):
            probe, options = make_probe(probe, **options), {}
        self.probe = probe
        self.every = every
        self.name = name or (probe.name if isinstance(probe, Probe) else probe.__name__)
        self.batch = batch
        self.options = options
        takes = probe.takes if isinstance(probe, Probe) else inspect.signature(probe).parameters.__contains__
        self.reuses_jacobian = takes("jacobian")
        self.needs_optimizer = takes("optimizer")
        self._records: list[xr.Dataset] = []

    def maybe_record(
        self,
        step: int,
        model,
        batch: tuple[Inputs, Mapping[str, Tensor]],
        jacobian: TaskJacobian | None = None,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> bool:
        """Record the probe if ``step`` is due (the fixed batch is moved to the model's device); returns whether it recorded.

        ``jacobian`` is the training step's per-task Jacobian on ``batch``, if it computed one;
        ``optimizer`` the training optimizer.
        """
        if step % self.every:
            return False
        options = dict(self.options)
        if self.needs_optimizer and "optimizer" not in options:
            if optimizer is None:
                raise ValueError(f"probe {self.name!r} needs the training optimizer; record it inside train() or pass optimizer=")
            options["optimizer"] = optimizer
        if self.batch is None:
            measured_on = batch
            if jacobian is not None and self.reuses_jacobian:
                options["jacobian"] = jacobian
        else:
            x, targets = self.batch
            device = model.device
            measured_on = (to_device(x, device), {name: y.to(device) for name, y in targets.items()})
        try:
            record = self.probe(model, measured_on, **options)
        except (ValueError, FloatingPointError) as error:
            raise type(error)(f"probe {self.name!r} at step {step}: {error}") from error
        self._records.append(record.expand_dims(step=[step]))
        return True

    @property
    def history(self) -> xr.Dataset:
        """All records along ``step``, with the probe's attrs and the sampling interval."""
        if not self._records:
            raise RuntimeError(f"recorder {self.name!r} has recorded nothing yet")
        ds = xr.concat(self._records, dim="step", combine_attrs="override")
        ds.attrs.update(every=self.every, batch="fixed" if self.batch is not None else "training")
        return ds

    @property
    def latest(self) -> xr.Dataset | None:
        """The last record (with a ``step`` dim of one step), or ``None`` before the first: what a live view reads,
        in constant time (:attr:`history` concatenates every record, which grows with the run)."""
        return self._records[-1] if self._records else None

    def state_dict(self) -> list[dict]:
        """The records so far, as plain data (for a training checkpoint)."""
        return [record.to_dict(data="list") for record in self._records]

    def load_state_dict(self, records: list[dict]) -> None:
        self._records = [xr.Dataset.from_dict(record) for record in records]


def recorders_for(names: Sequence[str], every: int, held_out: tuple[Inputs, Mapping[str, Tensor]]) -> list[ProbeRecorder]:
    """One recorder per registered probe of ``names``, each on the batch its entry names: the training batch, or ``held_out``."""
    return [ProbeRecorder(name, every=every, batch=None if PROBES.entry(name).traits["batch"] == "training" else held_out) for name in names]
