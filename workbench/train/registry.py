"""Every training method by name: torchjd's scalarizers and aggregators, wrapped, and the workbench's own.

``make_method("cagrad", 3, c=0.5)`` builds a method for a given number of tasks; :data:`METHODS` (a
:class:`~workbench.registry.Registry`) lists them with their family, options and defaults (read from
the torchjd class or the builder), whether they keep state, what they need installed, their paper,
and two traits:

- ``cost``, what one step computes beyond a forward pass: ``"losses"`` (one backward of a combination
  of the losses), ``"jacobian"`` (the per-task Jacobian of the shared parameters, combined in closed
  form or by a few iterations), ``"solver"`` (the Jacobian and a convex program per step) or
  ``"passes"`` (further forward and backward passes: one per task for SAM, second order for Rep-MTL);
  :data:`COSTS` orders them, so that a study can keep the methods within a budget;
- ``reference``: the method exists to check and time the Jacobian pipeline (``jacobian_mean`` and
  ``jacobian_sum`` give ``ew``'s and ``sum``'s updates of the shared parameters), not to be compared.

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

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from workbench.registry import REQUIRED, Entry, Registry
from workbench.train.aggregated import Aggregated
from workbench.train.gradnorm import GradNorm
from workbench.train.method import Method
from workbench.train.repmtl import RepMTL
from workbench.train.sam import TaskSAM
from workbench.train.scalarized import Scalarized

__all__ = ["COSTS", "METHODS", "make_method", "method_for_tasks", "method_table", "comparable_methods"]

SOLVERS_EXTRA = "solvers"
COSTS = ("losses", "jacobian", "solver", "passes")
_S, _A = "torchjd.scalarization", "torchjd.aggregation"
_TORCHJD_FIXED = ("shape", "n_tasks", "f", "projector")
_UNIFORM = "uniform"  # placeholder default for preference weights: 1/T each


def _torchjd_stateful(target: type) -> bool:
    from torchjd import Stateful

    return issubclass(target, Stateful)


def _scalarizer(name: str, cls: str, summary: str, paper: str, **defaults) -> Entry:
    return Entry(name, "loss weighting", summary, f"{_S}.{cls}", paper=paper, stateful=_torchjd_stateful, defaults=defaults,
                 fixed=_TORCHJD_FIXED, traits={"cost": "losses"})


def _aggregator(name: str, cls: str, summary: str, paper: str, needs: tuple[str, ...] = (), cost: str = "jacobian", reference: bool = False, **defaults) -> Entry:
    return Entry(name, "gradient aggregation", summary, f"{_A}.{cls}", paper=paper, needs=needs, extra=SOLVERS_EXTRA if needs else None,
                 stateful=_torchjd_stateful, defaults=defaults, fixed=_TORCHJD_FIXED, traits={"cost": cost, "reference": reference})


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


def _own(name: str, summary: str, build, paper: str, cost: str, stateful: bool = False) -> Entry:
    return Entry(name, "workbench", summary, build, paper=paper, stateful=stateful, fixed=("n_tasks",), traits={"cost": cost})


METHODS: Registry[Entry] = Registry("method", [
    _scalarizer("ew", "Mean", "equal weighting: the mean of the losses", "linear scalarisation with equal weights"),
    _scalarizer("sum", "Sum", "the plain sum of the losses", "linear scalarisation"),
    _scalarizer("uw", "UW", "uncertainty weighting, learned log-variances",
                "Kendall et al. 2018, Multi-task learning using uncertainty to weigh losses for scene geometry and semantics"),
    _scalarizer("dwa", "DWA", "dynamic weight average, from the losses' descent rates per epoch", "Liu et al. 2019, End-to-end multi-task learning with attention"),
    _scalarizer("famo", "FAMO", "fast adaptive multitask optimisation", "Liu et al. 2023, FAMO: fast adaptive multitask optimization"),
    _scalarizer("gls", "GeometricMean", "geometric loss strategy: the geometric mean of the losses",
                "Chennupati et al. 2019, MultiNet++: multi-stream feature aggregation and geometric loss strategy for multi-task learning"),
    _scalarizer("imtl_l", "IMTLL", "impartial MTL, loss balance: learned scales", "Liu et al. 2021, Towards impartial multi-task learning"),
    _scalarizer("stch", "STCH", "smooth Tchebycheff scalarisation", "Lin et al. 2024, Smooth Tchebycheff scalarization for multi-objective optimization", mu=0.1),
    _scalarizer("rlw", "Random", "random loss weighting", "Lin et al. 2022, Reasonable effectiveness of random weighting: a litmus test for multi-task learning"),
    _scalarizer("constant", "Constant", "fixed loss weights", "linear scalarisation with given weights"),
    _scalarizer("cosmos", "COSMOS", "linear scalarisation with a cosine penalty",
                "Ruchte & Grabocka 2021, Scalable Pareto front approximation for deep multi-objective learning", lambda_=1.0, weights=_UNIFORM),
    _scalarizer("pbi", "PBI", "penalty-based boundary intersection",
                "Zhang & Li 2007, MOEA/D: a multiobjective evolutionary algorithm based on decomposition", theta=5.0, weights=_UNIFORM),
    _aggregator("upgrad", "UPGrad", "unconflicting projection of gradients", "Quinton & Rey 2024, Jacobian descent for multi-objective optimization",
                ("qpsolvers", "quadprog"), cost="solver"),
    _aggregator("mgda", "MGDA", "multiple gradient descent",
                "Désidéri 2012, Multiple-gradient descent algorithm; Sener & Koltun 2018, Multi-task learning as multi-objective optimization"),
    _aggregator("pcgrad", "PCGrad", "projecting conflicting gradients", "Yu et al. 2020, Gradient surgery for multi-task learning"),
    _aggregator("cagrad", "CAGrad", "conflict-averse gradient descent", "Liu et al. 2021, Conflict-averse gradient descent for multi-task learning",
                ("cvxpy", "clarabel"), cost="solver", c=0.4),
    _aggregator("nash_mtl", "NashMTL", "multi-task learning as a bargaining game", "Navon et al. 2022, Multi-task learning as a bargaining game",
                ("cvxpy", "ecos"), cost="solver"),
    _aggregator("imtl_g", "IMTLG", "impartial MTL, gradient balance", "Liu et al. 2021, Towards impartial multi-task learning"),
    _aggregator("aligned_mtl", "AlignedMTL", "aligned MTL: the gradients' principal components balanced",
                "Senushkin et al. 2023, Independent component alignment for multi-task learning"),
    _aggregator("gradvac", "GradVac", "gradient vaccine", "Wang et al. 2021, Gradient vaccine: investigating and improving multi-task optimization"),
    _aggregator("graddrop", "GradDrop", "gradient sign dropout", "Chen et al. 2020, Just pick a sign: optimizing deep multitask models with gradient sign dropout"),
    _aggregator("dualproj", "DualProj", "projection of the mean onto the dual cone", "Quinton & Rey 2024, Jacobian descent for multi-objective optimization",
                ("qpsolvers", "quadprog"), cost="solver"),
    _aggregator("config", "ConFIG", "conflict-free inverse gradients", "Liu et al. 2024, ConFIG: towards conflict-free training of physics informed neural networks"),
    _aggregator("fairgrad", "FairGrad", "alpha-fair resource allocation", "Ban & Ji 2024, Fair resource allocation in multi-task learning",
                ("scipy",), cost="solver", alpha=1.0),
    _aggregator("excess_mtl", "ExcessMTL", "excess-risk weighting", "He et al. 2024, Robust multi-task learning with excess risks"),
    _aggregator("pcd", "PCD", "priority-constrained descent: the first task first",
                "Not all objectives are born equal: priority-constrained descent for hierarchical multi-objective optimization (TMLR 2026)"),
    _aggregator("cr_mogm", "CRMOGMWeighting", "correlation-reduced momentum over another Gramian weighting",
                "Zhou et al. 2022, On the convergence of stochastic multi-objective gradient manipulation and beyond", weighting="mgda"),
    _aggregator("rgw", "Random", "random gradient weighting", "Lin et al. 2022, Reasonable effectiveness of random weighting: a litmus test for multi-task learning"),
    _aggregator("jacobian_mean", "Mean", "the mean of the Jacobian's rows", "a check of the Jacobian pipeline: ew's update of the shared parameters", reference=True),
    _aggregator("jacobian_sum", "Sum", "the sum of the Jacobian's rows", "a check of the Jacobian pipeline: sum's update of the shared parameters", reference=True),
    _own("gradnorm", "balanced gradient norms on the last shared layer", _gradnorm,
         "Chen et al. 2018, GradNorm: gradient normalization for adaptive loss balancing in deep multitask networks", "losses", stateful=True),
    _own("sam", "task-based sharpness-aware minimisation with any aggregator", _sam,
         "Phan et al. 2022, Improving multi-task learning via seeking task-based flat regions", "passes"),
    _own("rep_mtl", "saliency entropy and cross-task alignment regularisers on any method", _rep_mtl,
         "Wang et al. 2025, Rep-MTL: unleashing the power of representation-level task saliency for multi-task learning", "passes"),
])


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
    entry, merged = METHODS.resolve(name, options)
    if entry.family == "workbench":
        return entry.target()(n_tasks, **merged)
    arguments = {k: _tensor_option(v, n_tasks) for k, v in merged.items()}
    cls = entry.target()
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
    if entry.family == "loss weighting":
        return Scalarized(name, built, merged)
    return Aggregated(name, built, merged)


def _restricted(value: Any, tasks: Sequence[int], n_tasks: int) -> Any:
    """A per-task option (a sequence or 1-d tensor of ``n_tasks`` entries) cut to ``tasks``; any other option unchanged."""
    if isinstance(value, Tensor) and value.dim() == 1 and len(value) == n_tasks:
        return value[list(tasks)]
    if isinstance(value, (list, tuple)) and len(value) == n_tasks:
        return [value[i] for i in tasks]
    return value


def method_for_tasks(method: Method, tasks: Sequence[int], n_tasks: int) -> Method:
    """A fresh instance of ``method`` for the problem of some of its tasks: positions ``tasks`` of ``n_tasks``.

    The training loop trains a batch on which only some tasks are labelled through it. Options given
    per task (a sequence of ``n_tasks`` weights or preferences) keep the entries of those tasks; SAM
    and Rep-MTL wrap the instance of their inner method. Built from the registry by name: a method
    outside it cannot train such batches.
    """
    if isinstance(method, TaskSAM):
        return TaskSAM(method_for_tasks(method.inner, tasks, n_tasks), method.rho, method.name)
    if isinstance(method, RepMTL):
        return RepMTL(method_for_tasks(method.base, tasks, n_tasks), *method.weights, name=method.name)
    if method.name not in METHODS:
        raise ValueError(f"method {method.name!r} is not registered, so it cannot train a batch labelled for some tasks only")
    return make_method(method.name, len(tasks), **{key: _restricted(value, tasks, n_tasks) for key, value in method.options.items()})


def comparable_methods(budget: str = "passes", per_family: int | None = None) -> list[str]:
    """The methods a comparison runs within ``budget`` (one of :data:`COSTS`): every registered method that costs
    no more, needs no option without a default and is not a pipeline ``reference``, in registration order;
    with ``per_family``, only the first that many of each family (a quick run's sample: ``ew``, ``upgrad``, ``gradnorm``)."""
    if budget not in COSTS:
        raise ValueError(f"unknown budget {budget!r}; the costs, cheapest first: {list(COSTS)}")
    limit = COSTS.index(budget)
    chosen = [
        name for name, entry in METHODS.items()
        if COSTS.index(entry.traits["cost"]) <= limit and not entry.traits.get("reference") and all(v is not REQUIRED for v in entry.options().values())
    ]
    if per_family is None:
        return chosen
    families = [METHODS[name].family for name in chosen]
    return [name for i, (name, family) in enumerate(zip(chosen, families)) if families[:i].count(family) < per_family]


def method_table():
    """A table (pandas DataFrame) of every method: family, options with defaults, state, needs, cost, summary, paper."""
    return METHODS.table(cost=lambda entry: entry.traits["cost"])
