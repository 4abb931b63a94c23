"""What every parameter-efficient scheme puts in place of a frozen linear layer.

An :class:`AdaptedLinear` holds the frozen ``base_layer`` (an ``nn.Linear``, as ``peft`` names it)
and the scheme's trainable parameters. A scheme whose parameters are all shared reads the batch as it
comes. A scheme with parameters of its own per task reads a batch of ``T`` row blocks, block ``t``
holding the samples as task ``t`` sees them (:class:`~workbench.models.peft.adapted.AdaptedEncoder` repeats
the batch once per task): its :meth:`AdaptedLinear.task_blocks` splits the rows, and its
:meth:`AdaptedLinear.task_parameters` names what serves each task alone. Task-specific parameters
live in ``nn.ModuleDict`` or ``nn.ParameterDict`` attributes keyed by task (named in ``task_keyed``).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

__all__ = ["AdaptedLinear", "check_rank", "check_count", "check_dropout"]


def check_rank(scheme: str, name: str, base: nn.Linear, rank: int, option: str = "rank") -> None:
    """Refuse a rank that is not an int in ``[1, min(d_in, d_out)]`` of layer ``name``, naming the scheme, the option and the layer."""
    width = min(base.in_features, base.out_features)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= width:
        raise ValueError(f"{scheme}: {option} must be an int from 1 to the layer's width, {width} for {name!r} "
                         f"({base.in_features} -> {base.out_features}), got {rank!r}")


def check_count(scheme: str, option: str, value: int) -> None:
    """Refuse ``value`` of ``option`` unless it is a positive int, naming the scheme."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{scheme}: {option} must be a positive int, got {value!r}")


def check_dropout(scheme: str, dropout: float) -> None:
    """Refuse a dropout probability outside ``[0, 1)``, naming the scheme."""
    if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0 <= dropout < 1:
        raise ValueError(f"{scheme}: dropout must be a probability in [0, 1), got {dropout!r}")


class AdaptedLinear(nn.Module):
    """A frozen ``base_layer`` ``(..., d_in) -> (..., d_out)`` and a scheme's parameters; ``tasks`` are the tasks
    with parameters of their own in this layer, in the order of the batch's row blocks (empty when all are shared)."""

    task_keyed: tuple[str, ...] = ()
    """The attributes (``nn.ModuleDict`` or ``nn.ParameterDict``) keyed by task."""

    def __init__(self, base_layer: nn.Linear, tasks: Sequence[str] = ()) -> None:
        super().__init__()
        self.base_layer = base_layer.requires_grad_(False)
        self.tasks = tuple(tasks)

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    def task_blocks(self, x: Tensor) -> Tensor:
        """``(T, B, ..., d)``: the ``T · B`` rows of ``x`` as one block per task; refused when they do not divide."""
        if x.shape[0] % len(self.tasks):
            raise ValueError(f"a layer with parameters for each of the tasks {list(self.tasks)} reads one block of rows per task; "
                             f"got {x.shape[0]} rows")
        return x.unflatten(0, (len(self.tasks), -1))

    def task_parameters(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """``{task: [(name, parameter)]}`` of the parameters serving one task alone, names relative to this layer."""
        own: dict[str, list[tuple[str, nn.Parameter]]] = {task: [] for task in self.tasks}
        for attribute in self.task_keyed:
            keyed = getattr(self, attribute)
            for task in self.tasks:
                member = keyed[task]
                if isinstance(member, nn.Parameter):
                    own[task].append((f"{attribute}.{task}", member))
                else:
                    own[task] += [(f"{attribute}.{task}.{name}", p) for name, p in member.named_parameters()]
        return own
