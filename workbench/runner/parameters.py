"""A notebook's knobs: read from its ``parameters`` cell, and values checked against them before anything runs."""

from __future__ import annotations

import ast
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat

__all__ = ["Parameter", "RESULTS_PARAMETER", "notebook_parameters", "check_parameters", "parse_cli_value", "non_default", "title"]

# The parameter through which the runner tells a notebook where to write its result files.
RESULTS_PARAMETER = "results_dir"


@dataclass(frozen=True)
class Parameter:
    """A knob of a notebook's ``parameters`` cell: its name, default value and the type of that default."""

    name: str
    default: Any

    @property
    def kind(self) -> type:
        return type(self.default)

    def accepts(self, value: Any) -> bool:
        """Whether ``value`` fits the default's type (an int fits a float; a bool fits only a bool)."""
        if self.default is None:
            return True
        if isinstance(self.default, bool) or isinstance(value, bool):
            return isinstance(value, bool) and isinstance(self.default, bool)
        if isinstance(self.default, float):
            return isinstance(value, (int, float))
        if isinstance(self.default, (list, tuple)):
            return isinstance(value, (list, tuple))
        return isinstance(value, self.kind)


def _read(path: str | os.PathLike) -> tuple[Path, nbformat.NotebookNode]:
    """The notebook at ``path``; raises ``FileNotFoundError`` or ``ValueError`` naming the file when there is none or it is not one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no notebook at {path}")
    try:
        return path, nbformat.read(path, as_version=4)
    except OSError:
        raise
    except Exception as error:  # noqa: BLE001 - nbformat raises many kinds (JSON, schema, conversion errors) for a file that is not a notebook
        raise ValueError(f"{path} is not a notebook: {error}") from error


def _parameters_cell(nb: nbformat.NotebookNode, path: Path) -> nbformat.NotebookNode:
    for cell in nb.cells:
        if cell.cell_type == "code" and "parameters" in cell.metadata.get("tags", []):
            return cell
    raise ValueError(f"{path} has no code cell tagged 'parameters'")


def notebook_parameters(path: str | os.PathLike) -> dict[str, Parameter]:
    """The parameters declared in the notebook's ``parameters`` cell (``name = literal`` lines), in order."""
    path, nb = _read(path)
    cell = _parameters_cell(nb, path)
    parameters = {}
    for node in ast.parse(cell.source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            target, value = node.targets[0].id, node.value
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            target, value = node.target.id, node.value
        else:
            continue
        try:
            parameters[target] = Parameter(target, ast.literal_eval(value))
        except ValueError as error:
            raise ValueError(f"{path}: parameter {target!r} must have a literal default") from error
    return parameters


def title(path: str | os.PathLike) -> str:
    """The notebook's first markdown heading, or its file stem when it has none."""
    path, nb = _read(path)
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("#"):
                    return line.lstrip("#").strip()
    return path.stem


def parse_cli_value(text: str) -> Any:
    """A command-line value as a Python literal where it is one (``50``, ``0.1``, ``True``, ``[1, 2]``), else the string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def check_parameters(path: str | os.PathLike, values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` checked against the notebook's parameters; raises ``ValueError`` naming them all on a mismatch.

    A value given as a string for a string parameter stays a string even if it looks like a number.
    ``results_dir`` is refused: the runner sets it, so that a run's results lie beside its report.
    """
    declared = notebook_parameters(path)
    listing = ", ".join(f"{p.name}={p.default!r}" for p in declared.values())
    checked, problems = {}, []
    for name, value in values.items():
        if name == RESULTS_PARAMETER:
            problems.append(f"'{RESULTS_PARAMETER}' is set by the runner: a run's results go in the folder NAME beside its report NAME.html")
            continue
        if name not in declared:
            problems.append(f"unknown parameter {name!r}")
            continue
        parameter = declared[name]
        if isinstance(parameter.default, str) and not isinstance(value, str):
            value = str(value)
        if not parameter.accepts(value):
            problems.append(f"parameter {name!r} takes a {parameter.kind.__name__}, got {value!r} ({type(value).__name__})")
            continue
        checked[name] = float(value) if isinstance(parameter.default, float) else value
    if problems:
        raise ValueError(f"{Path(path).name}: " + "; ".join(problems) + f". Its parameters are: {listing}")
    return checked


def non_default(path: str | os.PathLike, checked: Mapping[str, Any]) -> dict[str, Any]:
    """The checked values that differ from the notebook's defaults, in the notebook's order (so the same values
    given in another order name the same run); a list equals the tuple with the same items."""
    declared = notebook_parameters(path)

    def same(value: Any, default: Any) -> bool:
        if isinstance(value, (list, tuple)) and isinstance(default, (list, tuple)):
            return list(value) == list(default)
        return type(value) is type(default) and value == default

    return {name: checked[name] for name in declared if name in checked and not same(checked[name], declared[name].default)}
