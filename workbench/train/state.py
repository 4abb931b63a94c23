"""What a torchjd aggregator or scalarizer remembers between steps, as a checkpoint tree and back.

torchjd keeps the state of its stateful methods in module parameters and buffers (uncertainty
weighting's log-variances, ExcessMTL's statistics) and in plain attributes (DWA's loss history,
GradVac's targets, Nash-MTL's last solution, FAMO's own Adam). :func:`module_state` takes both from
every submodule; :func:`load_module_state` puts them back, each tensor on the device it came from.
What cannot be stored is rebuilt: the convex problem Nash-MTL solves (from its stored parameters)
and FAMO's Adam (from its state dict).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["module_state", "load_module_state"]

_MODULE_INTERNALS = frozenset(vars(nn.Module()))
_PLAIN = (np.ndarray, np.generic, bool, int, float, str, type(None), torch.dtype, torch.device)
_ON = "__on_device__"


def _storable(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_storable(v) for v in value)
    return isinstance(value, (Tensor, *_PLAIN))


def _tag_devices(value: Any) -> Any:
    if isinstance(value, Tensor):
        return {_ON: str(value.device), "value": value}
    if isinstance(value, (list, tuple)):
        return type(value)(_tag_devices(v) for v in value)
    return value


def _untag_devices(value: Any) -> Any:
    if isinstance(value, dict) and _ON in value:
        return value["value"].to(value[_ON])
    if isinstance(value, (list, tuple)):
        return type(value)(_untag_devices(v) for v in value)
    return value


def module_state(module: nn.Module) -> dict[str, Any]:
    """``{"tensors", "attributes", "optimizers"}``: parameters and buffers, plain attributes of every submodule, optimizers' state dicts."""
    attributes: dict[str, dict[str, Any]] = {}
    optimizers: dict[str, dict[str, Any]] = {}
    for path, sub in module.named_modules():
        for key, value in vars(sub).items():
            if key in _MODULE_INTERNALS:
                continue
            if isinstance(value, torch.optim.Optimizer):
                optimizers.setdefault(path, {})[key] = value.state_dict()
            elif _storable(value):
                attributes.setdefault(path, {})[key] = _tag_devices(value)
    tensors = {name: _tag_devices(t) for name, t in module.state_dict(keep_vars=False).items()}
    return {"tensors": tensors, "attributes": attributes, "optimizers": optimizers}


def load_module_state(module: nn.Module, state: Mapping[str, Any]) -> None:
    """Restore what :func:`module_state` took (buffers that were ``None`` at first included), then rebuild the rest."""
    modules = dict(module.named_modules(remove_duplicate=False))
    for path, values in state["attributes"].items():
        for key, value in values.items():
            setattr(modules[path], key, _untag_devices(value))
    for full, tagged in state["tensors"].items():
        path, _, key = full.rpartition(".")
        sub, tensor = modules[path], _untag_devices(tagged)
        if key in sub._parameters:
            with torch.no_grad():
                sub._parameters[key].copy_(tensor)
        else:
            sub._buffers[key] = tensor
    for path, sub in modules.items():
        _rebuild(sub, state["optimizers"].get(path, {}))


def _rebuild(sub: nn.Module, optimizers: Mapping[str, Any]) -> None:
    """Recreate the parts of torchjd's stateful methods that live outside tensors and plain values."""
    from torchjd.aggregation._nash_mtl import _NashMTLWeighting
    from torchjd.scalarization import FAMO

    if isinstance(sub, FAMO) and "_optimizer" in optimizers:
        sub._optimizer = torch.optim.Adam([sub._w], lr=sub.lr, weight_decay=sub.weight_decay)
        sub._optimizer.load_state_dict(optimizers["_optimizer"])
    if isinstance(sub, _NashMTLWeighting) and sub.step > 0:
        sub._init_optim_problem()  # the convex problem is built from prvs_alpha, which was restored
