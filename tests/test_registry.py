"""The registry shape every family shares: options read from a signature, checks that name what exists, the table."""

import pytest

from workbench.merge import MERGES
from workbench.models import ARCHITECTURES
from workbench.probes import PROBES
from workbench.registry import REQUIRED, Entry, Registry
from workbench.train import METHODS


def build(tasks, width: int, depth: int = 2, *, kind: str = "plain"):
    return (tasks, width, depth, kind)


def build_more(tasks, rate: float = 0.1, **passed_on):
    return (tasks, rate, passed_on)


REGISTRY = Registry("widget", [
    Entry("plain", "small", "a plain widget", build, paper="nobody 2026", fixed=("tasks",), traits={"colour": "red"}),
    Entry("open", "large", "a widget passing options on", build_more, fixed=("tasks",), defaults={"rate": 0.5}, needs=("no_such_module_anywhere",), extra="widgets"),
])


def test_options_come_from_the_signature_after_the_fixed_arguments_with_the_registrys_defaults_on_top():
    assert REGISTRY["plain"].options() == {"width": REQUIRED, "depth": 2, "kind": "plain"}
    assert REGISTRY["open"].options() == {"rate": 0.5}
    assert REGISTRY["plain"].describe_options() == "width=?, depth=2, kind='plain'"


def test_resolve_fills_defaults_and_names_what_is_wrong():
    entry, options = REGISTRY.resolve("plain", {"width": 3})
    assert entry.name == "plain" and options == {"width": 3, "depth": 2, "kind": "plain"}
    with pytest.raises(ValueError, match=r"unknown widget 'plane'; available: \['open', 'plain'\]"):
        REGISTRY.resolve("plane", {})
    with pytest.raises(ValueError, match=r"widget 'plain' has no options \['colour'\]; its options: width=\?, depth=2, kind='plain'"):
        REGISTRY.resolve("plain", {"width": 3, "colour": "blue"})
    with pytest.raises(ValueError, match=r"widget 'plain' needs the options \['width'\]"):
        REGISTRY.resolve("plain", {})
    with pytest.raises(ImportError, match=r"widget 'open' needs \['no_such_module_anywhere'\]: pip install 'workbench\[widgets\]'"):
        REGISTRY.resolve("open", {"anything": 1})  # passed on to the builder, which checks it


def test_names_filter_by_family_and_traits_and_a_name_is_registered_once():
    assert REGISTRY.names() == ["plain", "open"] and REGISTRY.names(family="large") == ["open"] and REGISTRY.names(colour="red") == ["plain"]
    with pytest.raises(ValueError, match="two widgets are registered as 'plain'"):
        Registry("widget", [REGISTRY["plain"], REGISTRY["plain"]])


def test_every_family_has_one_registry_of_the_shape_and_a_table_of_its_entries():
    from workbench.merge import merge_table
    from workbench.models import architecture_table
    from workbench.probes import probe_table
    from workbench.train import method_table

    for table, registry, extra in ((method_table(), METHODS, {"cost"}), (architecture_table(), ARCHITECTURES, set()), (merge_table(), MERGES, {"data"}),
                                   (probe_table(), PROBES, {"pairwise", "directed", "batch"})):
        assert isinstance(registry, Registry) and all(isinstance(entry, Entry) for entry in registry.values())
        assert list(table.index) == list(registry)
        assert {"family", "options", "stateful", "needs", "summary", "paper"} | extra <= set(table.columns)
