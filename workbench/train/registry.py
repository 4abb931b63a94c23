"""Every training method by name: torchjd's scalarizers and aggregators, wrapped, and the workbench's own.

``make_method("cagrad", c=0.5)`` builds a method for a given number of tasks; ``METHODS`` lists them
with their family, options (and defaults), whether they keep state and what they need installed.

- **Loss weighting** (torchjd scalarizers): ``sum`` (the plain sum), ``ew`` (equal weights, the
  mean), ``uw`` (uncertainty weighting), ``dwa``, ``famo``, ``gls`` (geometric mean), ``imtl_l``,
  ``stch`` (smooth Tchebycheff), ``rlw`` (random loss weights), ``constant``, ``cosmos``, ``pbi``.
- **Gradient aggregation** (torchjd aggregators on the engine's Jacobian): ``upgrad``, ``mgda``,
  ``pcgrad``, ``cagrad``, ``nash_mtl``, ``imtl_g``, ``aligned_mtl``, ``gradvac``, ``graddrop``,
  ``dualproj``, ``config``, ``fairgrad``, ``excess_mtl``, ``pcd``, ``cr_mogm`` (a momentum over
  another weighting), ``rgw`` (random gradient weights), ``jacobian_mean`` and ``jacobian_sum``
  (the mean and sum of the rows: the updates of ``ew`` and ``sum`` for the shared parameters, with
  unweighted heads; the cost of the Jacobian pipeline itself).
- **The workbench's own**: ``gradnorm`` (Chen et al. 2018), ``sam`` (task-based sharpness-aware
  minimisation, Phan et al. 2022, with any aggregator above) and ``rep_mtl`` (Rep-MTL's saliency
  regularisers, Wang et al. 2025, on any method above; equal weighting by default).

Left out: torchjd's Krum and TrimmedMean (robust aggregation of many federated clients, not of a
few tasks) and the MoDo and SDMGrad weightings (they need the Jacobians of two independent batches
per step). Options that torchjd requires get the workbench defaults below, each from its paper:
CAGrad ``c = 0.4``, FairGrad ``alpha = 1``, STCH ``mu = 0.1``, COSMOS ``lambda_ = 1``, PBI
``theta = 5`` with uniform preference weights.
"""

from __future__ import annotations

import importlib.util
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from workbench.train.aggregated import Aggregated
from workbench.train.gradnorm import GradNorm
from workbench.train.method import Method
from workbench.train.repmtl import RepMTL
from workbench.train.sam import TaskSAM
from workbench.train.scalarized import Scalarized

__all__ = ["METHODS", "MethodSpec", "make_method", "method_table"]

SOLVERS_EXTRA = "solvers"


@dataclass(frozen=True)
class MethodSpec:
    """One registered method: its ``family``, the torchjd class it wraps (or the workbench's own
    builder), the options a user may set with their defaults, and the modules it needs."""

    name: str
    family: str
    summary: str
    torchjd_class: str | None = None
    defaults: Mapping[str, Any] = field(default_factory=dict)
    needs: tuple[str, ...] = ()
    build: Callable[..., Method] | None = None

    def target(self):
        """The torchjd class this method wraps."""
        module_name, _, class_name = self.torchjd_class.rpartition(".")
        return getattr(importlib.import_module(module_name), class_name)

    def options(self) -> dict[str, Any]:
        """Every option a user may set, with its default (``inspect.Parameter.empty`` when required)."""
        if self.build is not None:
            parameters = inspect.signature(self.build).parameters
            found = {n: p.default for n, p in parameters.items() if n != "n_tasks" and p.kind is not inspect.Parameter.VAR_KEYWORD}
        else:
            parameters = inspect.signature(self.target().__init__).parameters
            found = {n: p.default for n, p in parameters.items() if n not in ("self", "shape", "n_tasks", "f", "projector")}
        return {**found, **self.defaults}

    @property
    def stateful(self) -> bool:
        if self.build is not None:
            return self.name in ("gradnorm",)
        from torchjd import Stateful

        return issubclass(self.target(), Stateful)


_S, _A = "torchjd.scalarization", "torchjd.aggregation"


def _scalarizer(name: str, cls: str, summary: str, **defaults) -> MethodSpec:
    return MethodSpec(name, "loss weighting", summary, f"{_S}.{cls}", defaults)


def _aggregator(name: str, cls: str, summary: str, needs: tuple[str, ...] = (), **defaults) -> MethodSpec:
    return MethodSpec(name, "gradient aggregation", summary, f"{_A}.{cls}", defaults, needs)


def _gradnorm(n_tasks: int, alpha: float = 1.5, lr: float = 0.025, layer: str | None = None) -> Method:
    return GradNorm(alpha=alpha, lr=lr, layer=layer)


def _sam(n_tasks: int, rho: float = 0.05, aggregator: str = "jacobian_sum", **aggregator_options) -> Method:
    inner = make_method(aggregator, n_tasks, **aggregator_options)
    if not isinstance(inner, Aggregated):
        raise ValueError(f"sam combines per-task gradients with an aggregator; {aggregator!r} is a {METHODS[aggregator].family} method")
    return TaskSAM(inner, rho)


def _rep_mtl(n_tasks: int, base: str = "ew", lambda_tsr: float = 1.0, lambda_csa: float = 1.0, temperature: float = 0.1) -> Method:
    if base == "rep_mtl":
        raise ValueError("rep_mtl needs another method as its base")
    return RepMTL(make_method(base, n_tasks), lambda_tsr, lambda_csa, temperature)


_UNIFORM = "uniform"  # placeholder default for preference weights: 1/T each

METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in [
        _scalarizer("sum", "Sum", "the plain sum of the losses"),
        _scalarizer("ew", "Mean", "equal weighting: the mean of the losses"),
        _scalarizer("uw", "UW", "uncertainty weighting (Kendall et al. 2018), learned log-variances"),
        _scalarizer("dwa", "DWA", "dynamic weight average (Liu et al. 2019), from the losses' descent rates per epoch"),
        _scalarizer("famo", "FAMO", "fast adaptive multitask optimisation (Liu et al. 2023)"),
        _scalarizer("gls", "GeometricMean", "geometric loss strategy: the geometric mean of the losses"),
        _scalarizer("imtl_l", "IMTLL", "impartial MTL, loss balance (Liu et al. 2021), learned scales"),
        _scalarizer("stch", "STCH", "smooth Tchebycheff scalarisation (Lin et al. 2024)", mu=0.1),
        _scalarizer("rlw", "Random", "random loss weighting (Lin et al. 2022)"),
        _scalarizer("constant", "Constant", "fixed loss weights"),
        _scalarizer("cosmos", "COSMOS", "linear scalarisation with a cosine penalty (Ruchte & Grabocka 2021)", lambda_=1.0, weights=_UNIFORM),
        _scalarizer("pbi", "PBI", "penalty-based boundary intersection (Zhang & Li 2007)", theta=5.0, weights=_UNIFORM),
        _aggregator("upgrad", "UPGrad", "unconflicting projection of gradients (Quinton & Rey 2024)", ("qpsolvers", "quadprog")),
        _aggregator("mgda", "MGDA", "multiple gradient descent (Désidéri 2012; Sener & Koltun 2018)"),
        _aggregator("pcgrad", "PCGrad", "projecting conflicting gradients (Yu et al. 2020)"),
        _aggregator("cagrad", "CAGrad", "conflict-averse gradient descent (Liu et al. 2021)", ("cvxpy", "clarabel"), c=0.4),
        _aggregator("nash_mtl", "NashMTL", "multi-task learning as a bargaining game (Navon et al. 2022)", ("cvxpy", "ecos")),
        _aggregator("imtl_g", "IMTLG", "impartial MTL, gradient balance (Liu et al. 2021)"),
        _aggregator("aligned_mtl", "AlignedMTL", "aligned MTL (Senushkin et al. 2023)"),
        _aggregator("gradvac", "GradVac", "gradient vaccine (Wang et al. 2021)"),
        _aggregator("graddrop", "GradDrop", "gradient sign dropout (Chen et al. 2020)"),
        _aggregator("dualproj", "DualProj", "projection of the mean onto the dual cone (Quinton & Rey 2024)", ("qpsolvers", "quadprog")),
        _aggregator("config", "ConFIG", "conflict-free inverse gradients (Liu et al. 2024)"),
        _aggregator("fairgrad", "FairGrad", "alpha-fair resource allocation (Ban & Ji 2024)", ("scipy",), alpha=1.0),
        _aggregator("excess_mtl", "ExcessMTL", "excess-risk weighting (He et al. 2024)"),
        _aggregator("pcd", "PCD", "priority-constrained descent"),
        _aggregator("cr_mogm", "CRMOGMWeighting", "correlation-reduced momentum over another Gramian weighting (Zhou et al. 2022)", weighting="mgda"),
        _aggregator("rgw", "Random", "random gradient weighting (Lin et al. 2022)"),
        _aggregator("jacobian_mean", "Mean", "the mean of the Jacobian's rows"),
        _aggregator("jacobian_sum", "Sum", "the sum of the Jacobian's rows"),
        MethodSpec("gradnorm", "workbench", "GradNorm (Chen et al. 2018): balanced gradient norms on the last shared layer", build=_gradnorm),
        MethodSpec("sam", "workbench", "task-based sharpness-aware minimisation (Phan et al. 2022) with any aggregator", build=_sam),
        MethodSpec("rep_mtl", "workbench", "Rep-MTL (Wang et al. 2025): saliency entropy and cross-task alignment regularisers on any method", build=_rep_mtl),
    ]
}


def _tensor_option(value: Any, n_tasks: int) -> Any:
    if isinstance(value, str) and value == _UNIFORM:
        return torch.full((n_tasks,), 1.0 / n_tasks)
    if isinstance(value, (list, tuple)):
        return torch.tensor(value, dtype=torch.float32)
    return value


def make_method(name: str, n_tasks: int, **options: Any) -> Method:
    """The method ``name`` for ``n_tasks`` tasks with ``options``; errors list what exists.

    Raises ``ValueError`` for an unknown method or option (listing the known ones, with defaults) or
    a missing required option, and ``ImportError`` naming the extra that installs a missing solver.
    """
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; available: {sorted(METHODS)}")
    spec = METHODS[name]
    allowed = spec.options()
    if name != "sam":  # sam passes aggregator_* options on to its aggregator, which checks them
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            listing = ", ".join(f"{k}={'(required)' if v is inspect.Parameter.empty else repr(v)}" for k, v in allowed.items())
            raise ValueError(f"method {name!r} has no options {unknown}; its options: {listing or 'none'}")
    merged = {k: v for k, v in allowed.items() if v is not inspect.Parameter.empty} | options
    missing = sorted(set(allowed) - set(merged))
    if missing:
        raise ValueError(f"method {name!r} needs the options {missing}")
    absent = [m for m in spec.needs if importlib.util.find_spec(m) is None]
    if absent:
        raise ImportError(f"method {name!r} needs {absent}: pip install 'workbench[{SOLVERS_EXTRA}]'")
    if spec.build is not None:
        return spec.build(n_tasks, **merged)
    arguments = {k: _tensor_option(v, n_tasks) for k, v in merged.items()}
    cls = spec.target()
    signature = inspect.signature(cls.__init__).parameters
    if "shape" in signature:
        arguments["shape"] = n_tasks
    if "n_tasks" in signature:
        arguments["n_tasks"] = n_tasks
    if name == "cr_mogm":
        from torchjd.aggregation import GramianWeightedAggregator

        base = make_method(arguments.pop("weighting"), n_tasks)
        if not (isinstance(base, Aggregated) and isinstance(base.aggregator, GramianWeightedAggregator)):
            raise ValueError(f"cr_mogm wraps a Gramian weighting; {merged['weighting']!r} has none")
        return Aggregated(name, GramianWeightedAggregator(cls(base.aggregator.gramian_weighting, **arguments)), merged)
    built = cls(**arguments)
    if spec.family == "loss weighting":
        return Scalarized(name, built, merged)
    return Aggregated(name, built, merged)


def method_table():
    """A table (pandas DataFrame) of every method: family, options with defaults, state, what it needs."""
    import pandas as pd

    rows = []
    for spec in METHODS.values():
        options = ", ".join(f"{k}={'?' if v is inspect.Parameter.empty else v}" for k, v in spec.options().items())
        rows.append({"method": spec.name, "family": spec.family, "options": options, "stateful": spec.stateful, "needs": ", ".join(spec.needs), "summary": spec.summary})
    return pd.DataFrame(rows).set_index("method")
