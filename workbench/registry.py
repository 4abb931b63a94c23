"""One registry shape for every family: training methods, architectures, merges and probes.

A registry maps a name to an :class:`Entry`, which states

- its ``family``, the kind inside the registry ("loss weighting", "mixture of experts", "data-free",
  "affinity", ...), and a one-line ``summary``;
- the ``paper`` it implements (or where its definition comes from);
- what it builds (``build``: a callable, or the dotted path of one, imported when first used);
- its options with their defaults, read from the signature of what it builds: every parameter but
  the ``fixed`` ones, which the family's maker passes itself (the tasks of a method, the model and
  batch of a probe, the base and task models of a merge), with ``defaults`` overriding the
  signature where the registry sets a default of its own;
- the modules it ``needs`` and the ``extra`` that installs them;
- whether it holds state between calls (``stateful``);
- ``traits``: what its family needs to know beyond that (a probe's pairwise reading, the data a merge
  reads), each family documenting its own.

Each family has one registry (``METHODS``, ``ARCHITECTURES``, ``MERGES``, ``PROBES``) and one maker
(``make_method``, ``make_architecture``, ``make_merge``, ``make_probe``) that calls
:meth:`Registry.resolve`: an unknown name or option is refused with the list of what exists, a
missing required option named, and a missing dependency named with the extra that installs it.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

__all__ = ["REQUIRED", "Entry", "Registry"]

REQUIRED = inspect.Parameter.empty
"""The default of an option that has none: the user must give it."""

_NOT_OPTIONS = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


@dataclass(frozen=True)
class Entry:
    """One registered method, architecture, merge or probe (see the module docstring for each field).

    ``stateful`` is a bool, or a function of the built target that says (a torchjd class: whether it
    subclasses ``Stateful``), asked only when :attr:`holds_state` is read.
    """

    name: str
    family: str
    summary: str
    build: Callable | str
    paper: str = ""
    needs: tuple[str, ...] = ()
    extra: str | None = None
    stateful: bool | Callable[[Callable], bool] = False
    defaults: Mapping[str, Any] = field(default_factory=dict)
    fixed: tuple[str, ...] = ()
    traits: Mapping[str, Any] = field(default_factory=dict)

    def target(self) -> Callable:
        """What the entry builds: ``build`` itself, or the object its dotted path names."""
        if callable(self.build):
            return self.build
        module, _, attribute = self.build.rpartition(".")
        return getattr(importlib.import_module(module), attribute)

    def _parameters(self) -> list[inspect.Parameter]:
        target = self.target()
        signature = inspect.signature(target.__init__ if inspect.isclass(target) else target)
        return [p for name, p in signature.parameters.items() if name not in ("self", *self.fixed)]

    def options(self) -> dict[str, Any]:
        """Every option a user may set, with its default (:data:`REQUIRED` when there is none)."""
        found = {p.name: p.default for p in self._parameters() if p.kind not in _NOT_OPTIONS}
        return {**found, **self.defaults}

    def passes_on(self) -> bool:
        """Whether it takes further keyword options (``**options``) that it checks itself (SAM's aggregator's)."""
        return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in self._parameters())

    @property
    def holds_state(self) -> bool:
        return self.stateful if isinstance(self.stateful, bool) else self.stateful(self.target())

    def missing(self) -> list[str]:
        """The modules it needs that cannot be imported here."""
        return [module for module in self.needs if importlib.util.find_spec(module) is None]

    def describe_options(self) -> str:
        """``name=default, ...`` (``?`` for a required option), as the table and the errors show them."""
        return ", ".join(f"{k}={'?' if v is REQUIRED else repr(v)}" for k, v in self.options().items()) or "none"


E = TypeVar("E", bound=Entry)


class Registry(Mapping[str, E], Generic[E]):
    """The entries of one family by name, in registration order; ``kind`` names an entry in errors ("method")."""

    def __init__(self, kind: str, entries: Iterable[E]) -> None:
        self.kind = kind
        self._entries: dict[str, E] = {}
        for entry in entries:
            if entry.name in self._entries:
                raise ValueError(f"two {kind}s are registered as {entry.name!r}")
            self._entries[entry.name] = entry

    def __getitem__(self, name: str) -> E:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def entry(self, name: str) -> E:
        """The entry ``name``; ``ValueError`` listing every registered name when there is none."""
        if not isinstance(name, str) or name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; available: {sorted(self._entries)}")
        return self._entries[name]

    def names(self, family: str | None = None, **traits: Any) -> list[str]:
        """The registered names, in order, of ``family`` (all when ``None``) whose traits equal ``traits``."""
        return [
            name for name, entry in self._entries.items()
            if (family is None or entry.family == family) and all(entry.traits.get(k) == v for k, v in traits.items())
        ]

    def resolve(self, name: str, options: Mapping[str, Any]) -> tuple[E, dict[str, Any]]:
        """The entry and ``options`` completed with its defaults, after every check (see the module docstring)."""
        entry = self.entry(name)
        allowed = entry.options()
        unknown = sorted(set(options) - set(allowed))
        if unknown and not entry.passes_on():
            raise ValueError(f"{self.kind} {name!r} has no options {unknown}; its options: {entry.describe_options()}")
        merged = {k: v for k, v in allowed.items() if v is not REQUIRED} | dict(options)
        missing = sorted(set(allowed) - set(merged))
        if missing:
            raise ValueError(f"{self.kind} {name!r} needs the options {missing}")
        absent = entry.missing()
        if absent:
            install = f": pip install 'workbench[{entry.extra}]'" if entry.extra else ""
            raise ImportError(f"{self.kind} {name!r} needs {absent}{install}")
        return entry, merged

    def table(self, **columns: Callable[[E], Any]):
        """A table (pandas DataFrame) of every entry: family, options with defaults, state, needs, summary, paper,
        and one column per keyword (``column=function of the entry``)."""
        import pandas as pd

        rows = []
        for entry in self._entries.values():
            row = {
                self.kind: entry.name, "family": entry.family, "options": entry.describe_options(), "stateful": entry.holds_state,
                "needs": ", ".join(entry.needs), "summary": entry.summary, "paper": entry.paper,
            }
            rows.append(row | {column: describe(entry) for column, describe in columns.items()})
        return pd.DataFrame(rows).set_index(self.kind)
