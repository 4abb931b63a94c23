"""The package's layers: each module imports only from its own layer and those below, with no cycle, and notebooks
import from the package faces only. Imports are read from the source (every ``import``, at the top or inside a
function), not by importing it."""

import ast
import json
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "workbench"

# Lowest first; a module may import from its own layer and every layer below it.
LAYERS = [
    ("utilities", {"workbench.version", "workbench.extras", "workbench.files", "workbench.progress", "workbench.registry", "workbench.paths"}),
    ("contract", {"workbench.tasks"}),
    ("foundations", {"workbench.data", "workbench.models", "workbench.weights", "workbench.gradients", "workbench.results"}),
    ("algorithms", {"workbench.probes", "workbench.train", "workbench.merge"}),
    ("studies", {"workbench.studies"}),
    ("faces", {"workbench.viz", "workbench.runner", "workbench.cli", "workbench"}),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def layer_of(module: str) -> int:
    """The index of the layer holding ``module``: the layer of its longest listed prefix."""
    for length in range(module.count(".") + 1, 0, -1):
        prefix = ".".join(module.split(".")[:length])
        for index, (_, members) in enumerate(LAYERS):
            if prefix in members:
                return index
    raise AssertionError(f"{module} belongs to no layer; add it to LAYERS in {__file__}")


def imported(module: str) -> set[str]:
    """The workbench modules ``module`` imports (``from workbench import runner`` imports the module workbench.runner)."""
    tree = ast.parse(MODULES[module].read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            submodules = {f"{node.module}.{alias.name}" for alias in node.names} & set(MODULES)
            found |= submodules or {node.module}
    return {name for name in found if name == "workbench" or name.startswith("workbench.")}


GRAPH = {module: imported(module) for module in MODULES}


def test_every_module_belongs_to_a_layer_and_imports_no_module_that_does_not_exist():
    for module, targets in GRAPH.items():
        layer_of(module)
        assert targets <= set(MODULES), f"{module} imports {sorted(targets - set(MODULES))}"


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return [
        f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
        for module, targets in graph.items() for target in sorted(targets) if layer_of(target) > layer_of(module)
    ]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a path that returns to its start, or ``None``."""
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target, path + [target])):
                return cycle
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module, [module])):
            return cycle
    return None


def test_no_module_imports_from_a_layer_above_its_own():
    upward = upward_imports(GRAPH)
    assert not upward, "\n".join(upward)


def test_the_imports_have_no_cycle():
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checks_catch_an_upward_import_and_a_cycle():
    crafted = {"workbench.tasks": {"workbench.train.loop"}, "workbench.train.loop": {"workbench.train.method"}, "workbench.train.method": {"workbench.train.loop"}}
    assert upward_imports(crafted) == ["workbench.tasks (contract) imports workbench.train.loop (algorithms)"]
    assert find_cycle(crafted) == ["workbench.train.loop", "workbench.train.method", "workbench.train.loop"]
    assert "workbench.runner" in imported("workbench.cli")  # `from workbench import runner` is the module


def test_notebooks_import_from_the_package_faces_only():
    deep = []
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for cell in json.loads(notebook.read_text())["cells"]:
            if cell["cell_type"] != "code":
                continue
            for node in ast.walk(ast.parse("".join(cell["source"]))):
                names = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names] if isinstance(node, ast.Import) else []
                deep += [f"{notebook.name}: {name}" for name in names if name and name.startswith("workbench.") and name.count(".") > 1]
    assert not deep, "\n".join(deep)
